"""Benchmark `synthgen generate`: ECG/s with 1 and 2 actors, DDPM-1000 and DDIM-50, and the time not sampling.

    python benchmarks/bench_generate.py [--model BUNDLE] [--n-fast 64] [--n-ddpm 4] [--json out.json]

Without ``--model`` it uses the shipped model. Local Ray with 4 logical CPUs, as `generate` starts it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from synthgen.generate.run import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="bundle folder or URL (default: the shipped model)")
    ap.add_argument("--n-fast", type=int, default=64, help="ECGs per DDIM-50 run")
    ap.add_argument("--n-ddpm", type=int, default=4, help="ECGs per DDPM-1000 run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=4, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        manifest = Path(tmp) / "manifest.csv"
        manifest.write_text("report,age,sex,hr\natrial fibrillation,70,M,\nsinus rhythm,45,F,70\n")
        results = []
        for sampler, steps, n in (("ddim", 50, args.n_fast), ("ddpm", 1000, args.n_ddpm)):
            for actors in (1, 2):
                s = generate(str(manifest), f"{tmp}/out-{sampler}-{actors}", n, model=model, sampler=sampler,
                             steps=steps, actors=actors, batch_size=args.batch_size,
                             shard_size=max(1, -(-n // (2 * actors))), progress=False)
                not_sampling = 1 - s["actor_sample_s"] / (actors * s["wall_s"])
                results.append(dict(sampler=f"{sampler}-{steps}", actors=actors, n=n, wall_s=s["wall_s"],
                                    ecg_per_s=s["ecg_per_s"],
                                    sampling_ecg_per_s=round(n * actors / s["actor_sample_s"], 2),
                                    write_share=s["write_share"],
                                    not_sampling_share=round(not_sampling, 3)))
                print(json.dumps(results[-1]), flush=True)
    ray.shutdown()
    print("\n| sampler | actors | ECGs | wall s | ECG/s (wall) | ECG/s (sampling only) | writing share of actor "
          "time | wall not sampling |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['sampler']} | {r['actors']} | {r['n']} | {r['wall_s']:.1f} | {r['ecg_per_s']:.2f} "
              f"| {r['sampling_ecg_per_s']:.2f} "
              f"| {100 * r['write_share']:.1f} % | {100 * r['not_sampling_share']:.0f} % |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model or "shipped", "runs": results}, indent=2))


if __name__ == "__main__":
    main()
