"""Tune a bundle's Epsilon Scaling factors on more validation conditions than training's sample check uses.

    python benchmarks/tune_eps_scale.py --data shards --n 242 \
        --sampler ddpm:100:1.3,1.5@500,1.6@500 --sampler dpm++:20:1.05,1.1 [--model DIR] [--write OUT]

Training chooses the factor per sampler on 32 validation conditions (``TrainConfig.sample_check_n``), where
one near-flat ECG moves the sample score by 3 points: too coarse to tell 1 % from 3 %. This runs the same
``train.diffusion_stage.choose_eps_scale`` on ``--n`` validation conditions (spread over the HR range, seeds
0…n−1) and prints near-flat share, HR-unmeasurable share and HR MAE per setting (``model.schedulers.EpsScale``:
a factor, or FACTOR@T for the steps at t ≥ T only). ``--write OUT`` writes a copy
of the bundle (same weights) whose ``config.json: sampling`` holds the chosen factors and their scores.
"""

from __future__ import annotations

import argparse
import time

from synthgen.conditions.spec import Condition
from synthgen.io.bundles import read_card
from synthgen.io.paths import join
from synthgen.io.shards import read_shards
from synthgen.model.bundle import save_bundle
from synthgen.model.schedulers import EpsScale
from synthgen.pipeline import ECGPipeline
from synthgen.train.diffusion_stage import choose_eps_scale
from synthgen.train.run import CONDITION_COLUMNS, check_conditions


def parse_sampler(text: str) -> tuple[str, int, tuple[str, ...]]:
    """``ddpm:100:1.25,1.6@500`` -> ("ddpm", 100, ("1.25", "1.6@500"))."""
    name, steps, grid = text.split(":")
    return name, int(steps), tuple(str(EpsScale.parse(g)) for g in grid.split(","))


def retuned_note(sampling: dict) -> str:
    """The model card's section on retuned factors (the card is not hashed; config.json is)."""
    return (f"\n## Epsilon Scaling retuned\nOn {sampling['tuned_on']}, rule `train.diffusion_stage.pick_eps_scale`: "
            f"{sampling['eps_scale']} (sample score per setting: {sampling['scores']}). These supersede the settings "
            "above.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="training shards (their validation split is used)")
    ap.add_argument("--model", default=None, help="bundle directory (default: the shipped model)")
    ap.add_argument("--n", type=int, default=242, help="validation conditions")
    ap.add_argument("--sampler", action="append", type=parse_sampler, required=True,
                    help="NAME:STEPS:S1,S2,… with settings such as 1.3 or 1.6@500 (repeatable)")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--write", default=None, help="write the retuned bundle here")
    args = ap.parse_args()

    pipeline = ECGPipeline.from_bundle(args.model)
    conditions = [Condition(**c) for c in check_conditions(read_shards(args.data, columns=CONDITION_COLUMNS), args.n)]
    print(f"model {pipeline.bundle.model_hash[:12]}, {len(conditions)} validation conditions, "
          f"current settings { {k: str(v) for k, v in pipeline.eps_scale.items()} }", flush=True)
    old = pipeline.bundle.config.get("sampling", {})
    sampling = {key: dict(old.get(key, {})) for key in ("eps_scale", "steps", "scores")}
    for name, steps, grid in args.sampler:
        start = time.perf_counter()
        found = choose_eps_scale(pipeline, conditions, ((name, steps),), grid, args.guidance)
        for key in sampling:
            sampling[key].update(found[key])
        print(f"{name}-{steps}: chosen {found['eps_scale'][name]} ({time.perf_counter() - start:.0f} s)", flush=True)
    sampling["tuned_on"] = (f"{len(conditions)} validation conditions of {args.data} "
                            f"(benchmarks/tune_eps_scale.py), guidance {args.guidance:g}")
    if args.write:
        bundle = pipeline.bundle
        card = read_card(bundle.url) + retuned_note(sampling)
        config = bundle.saved_config()
        if "default" in old:  # the default sampling is not what is retuned here
            sampling["default"] = old["default"]
        model_hash = save_bundle(args.write, bundle.vae, bundle.unet, {**config, "sampling": sampling}, card,
                                 student=bundle.student, tiny_decoder=bundle.tiny_decoder)
        print(f"wrote {join(args.write, 'config.json')} (model hash {model_hash})")


if __name__ == "__main__":
    main()
