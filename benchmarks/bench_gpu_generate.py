"""GPU throughput: `synthgen generate --n 40000` on one GPU, end to end, and the pipeline alone at the same batch.

On a machine with an NVIDIA GPU and a CUDA build of torch (README):

    python benchmarks/bench_gpu_generate.py --model runs/distill/distilled --sampler lcm --steps 2 \
        --precision fp16 --batch-size 1024 --n 40000 --out /tmp/gpu-gen [--decoder tiny]

1. In process: ``ECGPipeline(device="cuda", precision=...)`` on ``--batch-size`` conditions, median of 5 calls
   after a warm-up → ECG/s of sampling + decoding alone (CUDA synchronised).
2. As a user runs it: ``synthgen generate --manifest (the shipped AF example) --n N --gpu --actors 1`` into
   ``--out`` (its own local Ray), then its ``_SUCCESS.json``: wall ECG/s including Ray start-up, the per-ECG
   plausibility check (CPU, in the actor) and writing Parquet; the actors' seconds sampling + checking, and
   writing.
Prints one JSON object. Without a GPU it prints "NOT RUN: no GPU" and exits 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "synthgen/assets/examples/minority_af.csv"


def in_process(model: str | None, sampler: str, steps: int, precision: str, batch: int,
               decoder: str) -> tuple[float, float]:
    """(ECG/s of the pipeline alone on the GPU: median of 5 timed calls of ``batch`` ECGs after a warm-up, the
    guidance used: the student's, else 2)."""
    import torch

    from synthgen.conditions.spec import Condition
    from synthgen.pipeline import ECGPipeline

    pipe = ECGPipeline.from_bundle(model, device="cuda", precision=precision)
    conditions = [Condition(("atrial fibrillation",), 70.0, "M", 60.0 + 80.0 * i / batch) for i in range(batch)]
    guidance = float(pipe.bundle.config.get("student", {}).get("guidance", 2.0))
    seconds = []
    for repeat in range(6):
        torch.cuda.synchronize()
        t = time.perf_counter()
        pipe(conditions, list(range(batch)), sampler=sampler, steps=steps, guidance=guidance, decoder=decoder)
        torch.cuda.synchronize()
        if repeat:  # the first call warms up kernels and the embedder
            seconds.append(time.perf_counter() - t)
    return batch / statistics.median(seconds), guidance


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="bundle (default: the shipped model)")
    p.add_argument("--sampler", default="lcm")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--precision", default="fp16")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--n", type=int, default=40000)
    p.add_argument("--decoder", default="vae", help="vae, or tiny (the bundle's tiny decoder)")
    p.add_argument("--out", type=Path, required=True, help="generate's output folder (replaced)")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("NOT RUN: no GPU (torch.cuda.is_available() is False)")
        return 2
    rate, guidance = in_process(args.model, args.sampler, args.steps, args.precision, args.batch_size, args.decoder)
    torch.cuda.empty_cache()  # the GPU to the generate run
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "sampler": args.sampler,
              "steps": args.steps, "decoder": args.decoder, "precision": args.precision,
              "batch_size": args.batch_size, "n": args.n,
              "guidance": guidance, "pipeline_ecg_per_s": round(rate, 1)}
    shutil.rmtree(args.out, ignore_errors=True)
    cmd = [sys.executable, "-m", "synthgen", "generate", "--manifest", str(MANIFEST), "--n", str(args.n),
           "--out", str(args.out), "--gpu", "--actors", "1", "--sampler", args.sampler, "--steps", str(args.steps),
           "--guidance", str(guidance), "--precision", args.precision, "--batch-size", str(args.batch_size),
           "--decoder", args.decoder, "--no-progress"]
    if args.model:
        cmd += ["--model", args.model]
    t = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    result.update(generate_rc=rc, generate_wall_s=round(time.perf_counter() - t, 1))
    if rc == 0:
        summary = json.loads((args.out / "_SUCCESS.json").read_text())
        result.update({k: summary[k] for k in ("ecg_per_s", "wall_s", "actor_sample_s", "actor_write_s",
                                               "devices", "implausible_written")})
    print(json.dumps(result, indent=2))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
