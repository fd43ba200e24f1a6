"""`ray job submit … -- python jobs/generate.py [--config jobs/configs/generate.yaml] [flags]` = `synthgen generate`."""

from synthgen.cli import job

if __name__ == "__main__":
    job("generate")
