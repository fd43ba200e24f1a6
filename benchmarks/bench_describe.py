"""Do ECGs generated from a condition's findings match its own description better than the others' descriptions?

    nice -n 19 .venv/bin/python benchmarks/bench_describe.py --out bench/describe                  # all, 16 each
    nice -n 19 .venv/bin/python benchmarks/bench_describe.py --conditions brugada_type1 hyperkalemia \
        --per-condition 2 --steps 10 --out bench/describe-smoke                                     # a smoke test

The two-stage flow end to end: `manifest describe` (curated table) writes one manifest row per condition
(findings, the condition's typical HR where it has one, ``--per-condition`` ECGs), `generate` samples it
(Ray; resumable, so a rerun into the same --out reuses the ECGs), then the shipped evaluation encoder
(synthgen/evaluate, CLIP-style Net1D; or --encoder) embeds every ECG and every condition's description (the
ordered prompt of its findings). For each condition, over its ECGs:

    own      mean CLIP score (cosine) to its own description
    others   mean CLIP score to the other conditions' descriptions
    margin   own - others (> 0: the ECGs carry something of their own description)
    top1     share of its ECGs whose best-scoring description is its own (chance: 1 / conditions)

Writes describe_clip.csv (one row per condition) and describe_clip.json (the same plus the parameters, model
and encoder hashes) into --out and prints the table. Figures go to docs/benchmarks.md (## describe).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd


def run(out: str, conditions: list[str] | None, per_condition: int, model: str | None, encoder: str | None,
        sampler: str, steps: int, seed: int) -> pd.DataFrame:
    from synthgen.conditions.describe import curated_conditions
    from synthgen.conditions.prompts import ordered_prompt
    from synthgen.evaluate.encoder import load_encoder
    from synthgen.evaluate.metrics import clip_scores
    from synthgen.generate.manifest import build_describe_manifest
    from synthgen.generate.run import generate
    from synthgen.io.generated import read_generated
    from synthgen.io.shards import signals
    from synthgen.model.bundle import shipped_bundle_url

    names = conditions or [c.key for c in curated_conditions()]
    os.makedirs(out, exist_ok=True)
    manifest = os.path.join(out, "manifest.csv")
    descriptions = build_describe_manifest(names, manifest, n=per_condition)
    t0 = time.perf_counter()
    summary = generate(manifest, os.path.join(out, "generated"), model=model, sampler=sampler, steps=steps,
                       seed=seed, progress=False)
    gen_s = time.perf_counter() - t0
    table = read_generated(os.path.join(out, "generated"))
    labels = np.array(table.column("label").to_pylist())
    x = signals(table)

    enc = load_encoder(encoder or shipped_bundle_url("encoder"))
    prompts = [ordered_prompt(d.findings) for d in descriptions]
    text = enc.embed_text(enc.text_embedder().embed(prompts))                                     # (C, D)
    ecg = enc.embed_ecg(x)                                                                        # (N, D)
    scores = np.stack([clip_scores(ecg, np.repeat(t[None], len(ecg), 0)) for t in text], axis=1)  # (N, C)

    rows = []
    for c, d in enumerate(descriptions):
        mine = labels == d.condition
        s = scores[mine]
        others = np.delete(s, c, axis=1)
        rows.append({"condition": d.condition, "n": int(mine.sum()), "own": float(s[:, c].mean()),
                     "others": float(others.mean()) if others.size else float("nan"),
                     "margin": float(s[:, c].mean() - others.mean()) if others.size else float("nan"),
                     "top1": float((s.argmax(axis=1) == c).mean())})
    result = pd.DataFrame(rows)
    result.to_csv(os.path.join(out, "describe_clip.csv"), index=False)
    with open(os.path.join(out, "describe_clip.json"), "w") as f:
        json.dump({"conditions": rows, "chance_top1": 1 / len(descriptions), "per_condition": per_condition,
                   "sampler": sampler, "steps": steps, "seed": seed, "model_hash": summary["params"]["model_hash"],
                   "encoder_hash": enc.model_hash, "generate_wall_s": round(gen_s, 1)}, f, indent=2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the manifest, the generated ECGs and the results")
    ap.add_argument("--conditions", nargs="*", help="curated condition keys or names (default: every one)")
    ap.add_argument("--per-condition", type=int, default=16, help="ECGs generated per condition")
    ap.add_argument("--model", help="model bundle (default: the shipped model)")
    ap.add_argument("--encoder", help="evaluation encoder bundle (default: the shipped encoder)")
    ap.add_argument("--sampler", default="ddpm")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = run(args.out, args.conditions, args.per_condition, args.model, args.encoder, args.sampler, args.steps,
                 args.seed)
    with pd.option_context("display.width", 160, "display.max_colwidth", 50):
        print(result.round(3).to_string(index=False))
    print(f"mean margin {result.margin.mean():.3f}, mean top1 {result.top1.mean():.3f} (chance "
          f"{1 / len(result):.3f}); {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
