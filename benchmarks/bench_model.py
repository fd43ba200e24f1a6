"""Benchmark of a model bundle (default: the shipped one): sampling speed and heart-rate control.

- ms per denoising step at batch 1 and 64 (classifier-free guidance on, so the U-Net sees 2× the batch),
  plus the VAE decode;
- heart-rate error: for requested HR 60/80/100/120 bpm ("sinus rhythm", age 55, alternating sex), the HR
  measured on each generated ECG by the project's QRS detection (`synthgen.data.heart_rate`, XQRS on the
  102.4 Hz signal upsampled ×5) against the requested HR, for each sampler:steps given.

Usage: python benchmarks/bench_model.py [--model DIR] [--per-hr 8] [--threads 2]
                                        [--samplers ddim:50,dpm++:50,ddpm:1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from synthgen.conditions.spec import Condition
from synthgen.data.heart_rate import hr_from_signal
from synthgen.ecg import FS
from synthgen.pipeline import ECGPipeline


def ms_per_step(pipe: ECGPipeline, batch: int, steps: int = 20) -> dict[str, float]:
    conditions = [Condition(("sinus rhythm",), 55.0, "M", 70.0)] * batch
    pipe(conditions[:1], seeds=[0], sampler="ddim", steps=2)  # warm-up
    t = time.perf_counter()
    pipe(conditions, seeds=list(range(batch)), sampler="ddim", steps=steps)
    total = time.perf_counter() - t
    z = torch.randn(batch, pipe.unet.cfg.in_channels, 128)
    t = time.perf_counter()
    with torch.inference_mode():
        pipe.vae.decode(z)
    decode = time.perf_counter() - t
    return {"batch": batch, "ms_per_step": 1000 * (total - decode) / steps, "decode_ms": 1000 * decode}


def hr_error(pipe: ECGPipeline, sampler: str, steps: int, per_hr: int) -> dict:
    rows = []
    for target in (60, 80, 100, 120):
        conditions = [Condition(("sinus rhythm",), 55.0, "MF"[i % 2], float(target)) for i in range(per_hr)]
        t = time.perf_counter()
        ecgs = pipe(conditions, seeds=[1000 * target + i for i in range(per_hr)], sampler=sampler, steps=steps)
        seconds = time.perf_counter() - t
        measured = [hr_from_signal(e, FS) for e in ecgs]
        ok = [m for m in measured if m is not None]
        rows.append({"requested": target, "n": per_hr, "measured_mean": float(np.mean(ok)) if ok else None,
                     "mae": float(np.mean([abs(m - target) for m in ok])) if ok else None,
                     "unmeasured": per_hr - len(ok), "seconds": round(seconds, 1)})
    ok_rows = [r for r in rows if r["mae"] is not None]
    overall = sum(r["mae"] * (r["n"] - r["unmeasured"]) for r in ok_rows) / max(
        1, sum(r["n"] - r["unmeasured"] for r in ok_rows))
    return {"sampler": sampler, "steps": steps, "per_hr": rows, "mae": overall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="bundle folder or URL (default: shipped model)")
    ap.add_argument("--per-hr", type=int, default=8, help="ECGs per requested heart rate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samplers", default="ddim:50,dpm++:50,ddpm:1000", help="sampler:steps, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = ECGPipeline.from_bundle(args.model)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "model_hash": pipe.bundle.model_hash,
        "speed": [ms_per_step(pipe, 1), ms_per_step(pipe, 64)],
        "hr": [hr_error(pipe, name, int(steps), args.per_hr)
               for name, steps in (item.split(":") for item in args.samplers.split(","))],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
