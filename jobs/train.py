"""`ray job submit … -- python jobs/train.py STAGE [--config jobs/configs/train.yaml] [flags]` = `synthgen train STAGE`
(STAGE: vae, diffusion or all)."""

from synthgen.cli import job

if __name__ == "__main__":
    job("train")
