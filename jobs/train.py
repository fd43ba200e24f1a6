"""Entry point for `ray job submit … -- python jobs/train.py [--config FILE] [flags]`.

Takes the `synthgen train STAGE` flags and/or a YAML config whose keys are the keyword arguments of
`synthgen.train.run.train` (jobs/configs/train.yaml). Checkpoints go to `OUT/checkpoints/`; resubmitting the
same job resumes a killed run and skips finished stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import jobargs

from synthgen.io.paths import shown_command

KEYS = ("stage", "data", "out", "preset", "workers", "gpu", "embedder", "cache", "seed", "storage_options")


def parse_args(argv: Sequence[str]) -> dict:
    """Config + flags → keyword arguments of `synthgen.train.run.train` (plus the command, for the model card)."""
    p = jobargs.new_parser("jobs/train.py", "Train the VAE and/or the latent diffusion model (see docs/model.md).")
    p.add_argument("--stage", choices=("vae", "diffusion", "all"), help="What to train (default all).")
    p.add_argument("--data", help="Training shards from `synthgen prepare` (folder or s3:// URL).")
    p.add_argument("--out", help="Run folder or s3:// URL: checkpoints, the VAE, the model bundle.")
    p.add_argument("--preset", help="small, paper or tiny.")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP).")
    jobargs.add_gpu_flags(p, "One GPU per worker")
    p.add_argument("--embedder", help="Text embedder: local or openai[:model].")
    p.add_argument("--cache", help="Embedding cache folder or URL.")
    p.add_argument("--seed", type=int, help="Random seed.")
    kwargs = jobargs.parse(p, argv, KEYS, required=("data", "out"))
    kwargs.setdefault("stage", "all")
    return {**kwargs, "command": shown_command("jobs/train.py", list(argv))}


if __name__ == "__main__":
    from synthgen.train.run import train

    jobargs.main(parse_args, train)
