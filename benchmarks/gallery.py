"""A gallery of generated ECGs on the paper grid, to look at before a model ships (docs/figures/).

    python benchmarks/gallery.py --out docs/figures/gallery-shipped.png [--model BUNDLE] [--sampler ddpm --steps 100]
        [--decoder tiny]
    (default: the model's default sampling, as `synthgen generate`)
    python benchmarks/gallery.py --describe brugada_type1,hyperkalemia,wpw,complete_heart_block \
        --out docs/figures/gallery-describe.png

Three ECGs each for AF, PVC, normal and LVH (conditions below, seeds 0–2), drawn with `synthgen plot`'s
printout and tiled 3 × 4 into one PNG; each caption gives the condition, the measured heart rate and the
plausibility verdict. ``--describe`` draws curated conditions of `synthgen manifest describe` instead (their
findings as reports, their typical HR, no age or sex), as the two-stage flow would.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synthgen.conditions.describe import find_curated  # noqa: E402
from synthgen.conditions.spec import Condition  # noqa: E402
from synthgen.data.plausibility import check_many  # noqa: E402
from synthgen.evaluate.plot import plot_ecg  # noqa: E402
from synthgen.model.bundle import default_sampling  # noqa: E402
from synthgen.model.schedulers import resolve_sampling  # noqa: E402
from synthgen.pipeline import ECGPipeline  # noqa: E402

GALLERY = [  # (label, condition)
    ("AF", Condition(("atrial fibrillation",), 72, "M", 95)),
    ("PVC", Condition(("sinus rhythm", "ventricular premature complex"), 64, "F", 75)),
    ("normal", Condition(("sinus rhythm", "normal ECG"), 40, "F", 65)),
    ("LVH", Condition(("sinus rhythm", "left ventricular hypertrophy"), 68, "M", 70)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sampler", default=None, help="default: the model's default sampling")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--decoder", default=None, help="vae, or tiny (the bundle's tiny decoder); default: as "
                    "`synthgen generate`")
    ap.add_argument("--describe", default=None, help="Comma-separated curated condition names or keys.")
    args = ap.parse_args()
    rows = GALLERY
    if args.describe:
        found = [find_curated(name) for name in args.describe.split(",")]
        rows = [(c.condition, Condition(c.findings, hr=c.typical_hr)) for c in found]
    pipe = ECGPipeline.from_bundle(args.model)
    conds = [c for _, c in rows for _ in range(3)]
    sampler, steps, decoder = resolve_sampling(default_sampling(pipe.bundle.config), args.sampler, args.steps,
                                               args.decoder)
    x = pipe(conds, [0, 1, 2] * len(rows), sampler=sampler, steps=steps, guidance=args.guidance, decoder=decoder)
    verdicts = check_many(x, np.array([np.nan if c.hr is None else c.hr for c in conds], float))
    fig, axes = plt.subplots(len(rows), 3, figsize=(30, 4.2 * len(rows)), squeeze=False)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (ax, cond, v) in enumerate(zip(axes.flat, conds, verdicts)):
            path = os.path.join(tmp, f"{i}.png")
            plot_ecg(x[i], path)
            ax.imshow(plt.imread(path))
            ax.axis("off")
            hr = "—" if v.measured_hr is None else f"{v.measured_hr:.0f}"
            asked = "—" if cond.hr is None else f"{cond.hr:.0f}"
            ax.set_title(f"{rows[i // 3][0]}; HR asked {asked}, measured {hr}; "
                         f"{'plausible' if v.ok else ', '.join(v.reasons)} (seed {i % 3})\n"
                         f"{textwrap.shorten(' | '.join(cond.reports), 95)}", fontsize=11)
    fig.suptitle(f"model {pipe.bundle.model_hash[:12]}, {sampler}-{steps}, guidance {args.guidance}, "
                 f"{decoder} decoder",
                 fontsize=14, y=1.0)
    fig.tight_layout()
    fig.savefig(args.out, dpi=60)
    print(f"{sum(v.ok for v in verdicts)}/{len(verdicts)} plausible → {args.out}")


if __name__ == "__main__":
    main()
