"""`ray job submit … -- python jobs/augment_eval.py [--config jobs/configs/augment-eval.yaml] [flags]` =
`synthgen augment-eval`."""

from synthgen.cli import job

if __name__ == "__main__":
    job("augment-eval")
