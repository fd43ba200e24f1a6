"""Entry point for `ray job submit … -- python jobs/augment_eval.py [--config FILE] [flags]`.

Takes the `synthgen augment-eval` flags and/or a YAML config whose keys are the keyword arguments of
`classifiers.experiment.augment_eval` (jobs/configs/augment-eval.yaml). Trials spread over the cluster's CPUs
or GPUs; finished trials are kept in OUT/trials/, so resubmitting the same job trains only what is missing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jobargs

KEYS = ("data", "out", "tasks", "synthetic", "external", "seeds", "epochs", "batch_size", "ratios", "n_synthetic",
        "model", "sampler", "sampler_steps", "seed", "bootstrap", "gpu", "storage_options", "progress")


def _tasks(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _ratios(value: str) -> list[float]:
    try:
        return [float(r) for r in value.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected comma-separated numbers, e.g. 0.25,0.5,1") from None


def parse_args(argv: Sequence[str]) -> dict:
    """Config + flags → keyword arguments of `classifiers.experiment.augment_eval`."""
    p = jobargs.new_parser("jobs/augment_eval.py", "Net1D classifiers on original vs weighted-loss vs "
                                                   "synthetic-augmented data (see docs/augment-eval.md).")
    p.add_argument("--data", help="Prepared shards with train/val/test splits (local or s3://).")
    p.add_argument("--out", help="Output folder or s3:// URL (every node must reach it).")
    p.add_argument("--task", dest="tasks", type=_tasks, help="Comma-separated tasks: af, pvc, abnormal.")
    p.add_argument("--synthetic", help="A `synthgen generate` output (default: generate one per task).")
    p.add_argument("--external", help="Prepared shards from another source, scored by every trained model.")
    p.add_argument("--seeds", type=int, help="Trials per arm.")
    p.add_argument("--epochs", type=int, help="Budget in passes over the real training split.")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="Training batch size.")
    p.add_argument("--ratios", type=_ratios, help="Synthetic : real minority ECGs, one augmented arm each "
                                                  "(e.g. 0.25,0.5,1).")
    p.add_argument("--n-synthetic", dest="n_synthetic", type=int, help="ECGs per class to generate.")
    p.add_argument("--model", help="Model bundle for generating (default: the shipped model).")
    p.add_argument("--sampler", help="ddpm, ddim or dpm++.")
    p.add_argument("--sampler-steps", dest="sampler_steps", type=int, help="Denoising steps.")
    p.add_argument("--seed", type=int, help="Seed of the synthetic set, the augmented arms' rows, the bootstrap.")
    p.add_argument("--bootstrap", type=int, help="Bootstrap replicates of the paired intervals.")
    jobargs.add_gpu_flags(p, "Trials and sampling on GPUs, one each")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="Progress bars (default on).")
    return jobargs.parse(p, argv, KEYS, required=("data", "out"))


if __name__ == "__main__":
    from classifiers.experiment import augment_eval

    jobargs.main(parse_args, augment_eval)
