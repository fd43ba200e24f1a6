"""GPU smoke run: the GPU paths of `train`, `generate` and `augment-eval`, end to end, on one machine's GPUs.

On a machine with one or more NVIDIA GPUs, synthgen installed with a CUDA build of torch (README), and the
PTB-XL subset (or any PTB-XL copy):

    python benchmarks/gpu_smoke.py --ptbxl ../shared/data/ptbxl --out /tmp/gpu-smoke

1. `synthgen prepare ptbxl` (skipped if OUT/shards is there);
2. `synthgen train all --preset tiny --gpu --workers 1` and, with two or more GPUs, `--workers 2` (DDP over
   NCCL: the validation mean is all-reduced on the GPU);
3. `synthgen generate --gpu` with the 1-worker model (64 ECGs, 2 shards);
4. `synthgen augment-eval --gpu` on one task (af), one seed, its synthetic set sampled with that model.

Each command runs as a user would run it (its own local Ray, which sees the GPUs; SYNTHGEN_TORCH_DEVICE is
dropped). Prints, per step, the exit code, the wall time and what ran on which device (the model card's
`GPU:` — Ray Train then puts each worker's model on its GPU, and a two-worker run all-reduces over NCCL, which
has no CPU tensors —, `generate`'s `devices`, the trials' `device`, e.g. `cuda (Ray GPU 0)`), and exits 1 if a
step failed or did not run on a GPU. Without a GPU it prints "NOT RUN: no GPU …" and exits 2. Figures from a
tiny preset are not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from synthgen.cluster import TORCH_DEVICE_ENV

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "synthgen/assets/examples/minority_af.csv"


def synthgen(*args: str, log: Path) -> tuple[int, float]:
    """Run `synthgen ARGS` (this interpreter's install), its output to ``log``; (exit code, wall seconds).
    SYNTHGEN_TORCH_DEVICE is dropped: here torch must use the GPUs Ray hands out."""
    env = {k: v for k, v in os.environ.items() if k != TORCH_DEVICE_ENV}
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "synthgen", *args], stdout=f, stderr=subprocess.STDOUT,
                            env=env).returncode
    return rc, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ptbxl", required=True, help="PTB-XL folder (PhysioNet layout).")
    p.add_argument("--out", required=True, type=Path, help="Working folder (shards, runs, logs).")
    opts = p.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}; {gpus} GPU(s): {names}", flush=True)
    if not gpus:
        print(f"gpu_smoke: NOT RUN: no GPU visible to torch (torch.cuda.device_count() == 0; torch's CUDA build: "
              f"{torch.version.cuda}). Run it on a machine with an NVIDIA GPU and a CUDA build of torch.",
              file=sys.stderr)
        return 2
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    rows, ok = [], True

    def step(name: str, rc: int, wall: float, device: str, good: bool) -> None:
        nonlocal ok
        ok &= rc == 0 and good
        rows.append((name, rc, f"{wall:.0f} s", device, "ok" if rc == 0 and good else "FAILED"))
        print(f"{name}: exit {rc}, {wall:.0f} s, {device}", flush=True)

    shards = out / "shards"
    if not (shards / "dataset.json").exists():
        rc, wall = synthgen("prepare", "ptbxl", "--src", opts.ptbxl, "--out", str(shards), log=out / "prepare.log")
        step("prepare", rc, wall, "CPU", True)
        if rc:
            return 1

    for workers in (1, 2) if gpus >= 2 else (1,):
        run = out / f"train-{workers}gpu"
        rc, wall = synthgen("train", "all", "--data", str(shards), "--out", str(run), "--preset", "tiny", "--gpu",
                            "--workers", str(workers), log=out / f"train-{workers}gpu.log")
        card = (run / "bundle" / "MODEL_CARD.md").read_text() if rc == 0 else ""
        line = next((x for x in card.splitlines() if x.startswith("- Preset:")), "no model card")
        step(f"train, {workers} worker(s)", rc, wall, line.removeprefix("- "), "GPU: True" in card)
    model = str(out / "train-1gpu" / "bundle")

    gen = out / "generate"
    rc, wall = synthgen("generate", "--manifest", str(MANIFEST), "--out", str(gen), "--n", "64", "--model", model,
                        "--shard-size", "32", "--gpu", "--no-progress", log=out / "generate.log")
    devices = json.loads((gen / "_SUCCESS.json").read_text())["devices"] if rc == 0 else []
    step("generate", rc, wall, f"sampler actors on {devices}", bool(devices) and
         all(d.startswith("cuda") for d in devices))

    ae = out / "augment-eval"
    rc, wall = synthgen("augment-eval", "--data", str(shards), "--out", str(ae), "--task", "af", "--seeds", "1",
                        "--epochs", "2", "--n-synthetic", "32", "--model", model, "--sampler", "ddim",
                        "--sampler-steps", "20", "--gpu", "--no-progress", log=out / "augment-eval.log")
    trials = pd.read_csv(ae / "trials.csv") if rc == 0 else pd.DataFrame({"device": []})
    syn = json.loads((ae / "synthetic" / "af" / "_SUCCESS.json").read_text()) if rc == 0 else {"devices": []}
    step("augment-eval (af, 1 seed)", rc, wall,
         f"trials on {sorted(set(trials['device']))}, sampler actors on {syn['devices']}",
         len(trials) == 4 and all(str(d).startswith("cuda") for d in [*trials["device"], *syn["devices"]]))

    print("\n| step | exit | wall | where it ran | |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print(f"\nlogs in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
