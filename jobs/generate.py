"""Entry point for `ray job submit … -- python jobs/generate.py [--config FILE] [flags]`.

Takes the `synthgen generate` flags (same names, same exit code 2 for bad input) and/or a YAML config whose
keys are the keyword arguments of `synthgen.generate.run.generate` (jobs/configs/generate.yaml). Inside a job
Ray sets RAY_ADDRESS, and `generate` joins that cluster.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jobargs

KEYS = ("manifest", "out", "n", "model", "sampler", "steps", "guidance", "seed", "batch_size", "actors",
        "shard_size", "output_format", "wfdb_fs", "storage_options", "gpu", "progress", "replace_implausible")


def parse_args(argv: Sequence[str]) -> dict:
    """Config + flags → keyword arguments of `synthgen.generate.run.generate`."""
    p = jobargs.new_parser("jobs/generate.py", "Generate synthetic ECGs for a manifest (see docs/generate.md).")
    p.add_argument("--manifest", help="Condition specs (CSV or Parquet; local or s3://).")
    p.add_argument("--out", help="Output folder or s3:// URL (every node must reach it).")
    p.add_argument("--n", type=int, help="Total ECGs, spread over the manifest rows.")
    p.add_argument("--model", help="Model bundle folder or URL (default: the shipped model).")
    p.add_argument("--sampler", help="ddim, dpm++ or ddpm.")
    p.add_argument("--steps", type=int, help="Denoising steps.")
    p.add_argument("--guidance", type=float, help="Classifier-free guidance scale.")
    p.add_argument("--seed", type=int, help="Run seed.")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="ECGs per forward pass in each actor.")
    p.add_argument("--actors", type=int,
                   help="Sampler actors (default: one per GPU the cluster has or can add, else per 2 CPUs).")
    p.add_argument("--shard-size", dest="shard_size", type=int, help="ECGs per output shard.")
    p.add_argument("--format", dest="output_format", choices=("parquet", "wfdb", "both"), help="Output format.")
    p.add_argument("--wfdb-fs", dest="wfdb_fs", type=float, help="WFDB sampling rate in Hz.")
    jobargs.add_gpu_flags(p, "One sampler actor per GPU")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="Show the progress bar (default on).")
    p.add_argument("--replace-implausible", dest="replace_implausible", type=int,
                   help="Redraw an implausible ECG up to this many times (next seeds of its own stream).")
    return jobargs.parse(p, argv, KEYS, required=("manifest", "out"))


if __name__ == "__main__":
    from synthgen.generate.run import generate

    jobargs.main(parse_args, generate)
