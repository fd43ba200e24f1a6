"""The four training sets of the experiment, all scored on the same real validation and test splits.

original   the real, imbalanced training split, plain cross-entropy
weighted   the same, cross-entropy with the minority class weighted by the imbalance ratio
augmented  the real split plus synthetic minority-class ECGs, up to ``target_ratio`` minority : majority
synthetic  synthetic ECGs only (both classes), tested on real ECGs
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from classifiers.data import LabelledSet

ARMS = ("original", "weighted", "augmented", "synthetic")


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


def build_arms(train: LabelledSet, synthetic: LabelledSet | None, target_ratio: float,
               seed: int = 0) -> tuple[list[Arm], dict[str, str]]:
    """The arms that can be built, and for each one that cannot, why (e.g. no synthetic majority-class rows).

    The synthetic rows added to ``augmented`` are a fixed random subset (``seed``), the same for every trial
    seed, so the seeds measure training noise only.
    """
    minority = minority_class(train)
    counts = train.counts()
    ratio = counts[1 - minority] / counts[minority]
    weight = [1.0, 1.0]
    weight[minority] = ratio
    arms = [Arm("original", train), Arm("weighted", train, (weight[0], weight[1]))]
    skipped: dict[str, str] = {}
    if synthetic is None:
        return arms, {"augmented": "no synthetic set", "synthetic": "no synthetic set"}
    pool = synthetic.of_class(minority)
    need = max(0, math.ceil(target_ratio * counts[1 - minority]) - counts[minority])
    picked = np.random.default_rng(seed).permutation(len(pool))[:min(need, len(pool))]
    if len(pool) == 0 and need > 0:
        skipped["augmented"] = f"the synthetic set has no class-{minority} (minority) rows"
    else:
        arms.append(Arm("augmented", LabelledSet.concat(train, pool.take(picked)), synthetic_rows=len(picked)))
    syn_counts = synthetic.counts()
    if min(syn_counts.values()) == 0:
        skipped["synthetic"] = f"the synthetic set has only one class ({syn_counts})"
    else:
        arms.append(Arm("synthetic", synthetic, synthetic_rows=len(synthetic)))
    return arms, skipped
