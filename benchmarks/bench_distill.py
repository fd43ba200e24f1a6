"""A/B sampling speed of a distilled student (`synthgen train distill`) against deepfake-ecg, in one process.

Same torch threads, same batch, interleaved repeats (A, B, A, B, …; the median of each arm), after one
warm-up call per arm. Arms:
- ``lcm-<steps>``: ``ECGPipeline(..., sampler="lcm")`` end to end — report embedding (cached in memory after
  the warm-up), patient encoding, ``steps`` student calls (guidance folded in), VAE decode → (B, 12, 1024) mV;
  ``lcm-<steps>+tiny``: the same with the bundle's tiny decoder (``--decoders vae,tiny``);
- the teacher at ``--teacher`` (default ddpm-100, guidance 2: the `generate` default) for reference;
- ``deepfake-ecg (network)``: the Pulse2Pulse generator's forward pass on (B, 8, 5000) noise only, the
  peer's cost at its most favourable (``synthgen.evaluate.peers.DeepfakeECG``);
- ``deepfake-ecg (12x1024 mV)``: that plus the conversion to the same output format (``DeepfakeECG.batch``).
Prints JSON with ECG/s per arm and the ratio of each student arm to deepfake-ecg's network.

Usage: python benchmarks/bench_distill.py --model RUN/distilled [--batch 32] [--threads 2] [--steps 1,2,4]
                                          [--repeats 5] [--teacher ddpm:100] [--decoders vae,tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch

from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.evaluate.peers import DeepfakeECG
from synthgen.pipeline import ECGPipeline

PEER = "deepfake-ecg (network)"


def arms(pipe: ECGPipeline, peer: DeepfakeECG, batch: int, steps: list[int], teacher: str,
         guidance: float, decoders: list[str]) -> dict[str, Callable[[], object]]:
    """Name → a call that makes ``batch`` ECGs; all arms share the seeds (and, for ours, the conditions)."""
    conditions = [Condition(("sinus rhythm",), 55.0, "MF"[i % 2], 60.0 + 60.0 * i / max(batch - 1, 1))
                  for i in range(batch)]
    seeds = list(range(batch))
    noise = peer.noise(seeds)
    out: dict[str, Callable[[], object]] = {
        f"lcm-{s}" + ("" if d == "vae" else f"+{d}"): (
            lambda s=s, d=d: pipe(conditions, seeds, sampler="lcm", steps=s, guidance=guidance, decoder=d))
        for s in steps for d in decoders}
    if teacher:
        name, n = teacher.split(":")
        out[f"teacher {name}-{n}"] = lambda: pipe(conditions, seeds, sampler=name, steps=int(n), guidance=guidance)

    def network() -> object:
        with torch.inference_mode():
            return peer.model(noise)

    out[PEER] = network
    out["deepfake-ecg (12x1024 mV)"] = lambda: peer.batch(seeds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a bundle with a student (OUT/distilled of `train distill`)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", default="1,2,4", help="student step counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--teacher", default="ddpm:100", help="teacher sampler:steps for reference ('' = none)")
    ap.add_argument("--decoders", default="vae", help="decoders of the student arms, comma-separated (vae, tiny)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:  # a missing bundle, or one without a student: one line, not a traceback
        pipe = ECGPipeline.from_bundle(args.model)
        guidance = float(pipe.bundle.config.get("student", {}).get("guidance", 2.0))
        calls = arms(pipe, DeepfakeECG(), args.batch, [int(s) for s in args.steps.split(",")], args.teacher,
                     guidance, args.decoders.split(","))
        for call in calls.values():  # warm-up: embedder cache, allocator, lazy imports
            call()
    except InputError as err:
        raise SystemExit(f"error: {err}") from None
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - t)
    ecg_per_s = {name: args.batch / statistics.median(s) for name, s in seconds.items()}
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "model_hash": pipe.bundle.model_hash, "batch": args.batch, "repeats": args.repeats,
        "guidance": guidance,
        "ecg_per_s": {k: round(v, 1) for k, v in ecg_per_s.items()},
        "seconds": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
        f"ratio_to_{PEER}": {k: round(v / ecg_per_s[PEER], 2) for k, v in ecg_per_s.items() if k.startswith("lcm")},
    }
    print(json.dumps(result, indent=2))
    for name in (k for k in ecg_per_s if k.startswith("lcm")):
        print(f"{name}: {ecg_per_s[name]:.1f} ECG/s = {ecg_per_s[name] / ecg_per_s[PEER]:.2f}x {PEER} "
              f"({ecg_per_s[PEER]:.1f} ECG/s), batch {args.batch}, {args.threads} threads")


if __name__ == "__main__":
    main()
