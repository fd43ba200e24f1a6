"""The training sets of the experiment, all scored on the same real validation and test splits.

original      the real, imbalanced training split, plain cross-entropy (the reference every arm is compared with)
weighted      the same, cross-entropy with the minority class weighted by the imbalance ratio
augmented-R   the real split plus R × (its minority-class count) synthetic minority-class ECGs, one arm per
              synthetic-to-real minority ratio R (e.g. augmented-0.25, augmented-0.5, augmented-1)
synthetic     synthetic ECGs only (both classes), tested on real ECGs
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from classifiers.data import LabelledSet

ARMS = ("original", "weighted", "augmented", "synthetic")  # kinds, in table order; augmented has one arm per ratio


def augmented_name(ratio: float) -> str:
    """The arm name of one synthetic-to-real minority ratio: ``augmented-0.25``, ``augmented-1``."""
    return f"augmented-{ratio:g}"


def arm_order(name: str) -> tuple[int, float]:
    """Sort key: the kinds in ARMS order, augmented arms by ratio."""
    kind, _, ratio = name.partition("-")
    return ARMS.index(kind), float(ratio or 0)


@dataclass
class Arm:
    """One training set and its loss weighting (``class_weight[c]`` for class c; None = unweighted)."""

    name: str
    train: LabelledSet
    class_weight: tuple[float, float] | None = None
    synthetic_rows: int = 0


def minority_class(train: LabelledSet) -> int:
    """The rarer class of the real training split (1 on a tie: the task's label)."""
    counts = train.counts()
    return 0 if counts[0] < counts[1] else 1


def build_arms(train: LabelledSet, synthetic: LabelledSet | None, ratios: list[float],
               seed: int = 0) -> tuple[list[Arm], dict[str, str]]:
    """The arms that can be built, and for each one that cannot, why (e.g. no synthetic majority-class rows).

    ``augmented-R`` adds round(R × real minority count) synthetic minority ECGs. They are the first rows of one
    fixed random order of the synthetic minority rows (``seed``), the same for every trial seed (the seeds
    measure training noise only), so a smaller ratio's rows are a subset of a larger one's. A ratio that needs
    more rows than there are is left out (it would repeat a smaller ratio or claim a ratio it does not have).
    """
    minority = minority_class(train)
    counts = train.counts()
    weight = [1.0, 1.0]
    weight[minority] = counts[1 - minority] / counts[minority]
    arms = [Arm("original", train), Arm("weighted", train, (weight[0], weight[1]))]
    skipped: dict[str, str] = {}
    if synthetic is None:
        return arms, {**{augmented_name(r): "no synthetic set" for r in ratios}, "synthetic": "no synthetic set"}
    pool = synthetic.of_class(minority)
    order = np.random.default_rng(seed).permutation(len(pool))
    for ratio in sorted(ratios):
        need = max(1, math.floor(ratio * counts[minority] + 0.5))
        if need > len(pool):
            skipped[augmented_name(ratio)] = (f"needs {need} synthetic class-{minority} (minority) ECGs, the "
                                              f"plausible synthetic set has {len(pool)}")
            continue
        arms.append(Arm(augmented_name(ratio), LabelledSet.concat(train, pool.take(order[:need])),
                        synthetic_rows=need))
    syn_counts = synthetic.counts()
    if min(syn_counts.values()) == 0:
        skipped["synthetic"] = f"the synthetic set has only one class ({syn_counts})"
    else:
        arms.append(Arm("synthetic", synthetic, synthetic_rows=len(synthetic)))
    return arms, skipped
