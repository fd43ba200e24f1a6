"""Paired differences between two arms on the same test ECGs and training seeds, with 95 % bootstrap intervals.

Why paired: every arm is scored on the same test records with the same seeds, so most of the test-set luck
(which hard ECGs happen to be in it) is shared; the difference of two arms' scores on the same resample is far
less noisy than the difference of two independent means ± sd.

Method (a two-way "pigeonhole" bootstrap, Owen 2007; percentile intervals, Efron & Tibshirani 1993, ch. 13):
each replicate draws

- the test **patients** with replacement (all ECGs of a drawn patient come along, so a patient's several ECGs
  are not counted as independent evidence: the cluster bootstrap of Field & Welsh 2007), the same draw for
  both arms and every seed, and
- the training **seeds** with replacement (seed s of the arm is paired with seed s of the reference arm),

recomputes each arm's score on the drawn patients (as weights: a patient drawn k times weighs k), and takes the
mean over the drawn seeds of (arm − reference). The 2.5th and 97.5th percentiles of that over the replicates
are the 95 % interval; the estimate is the mean over seeds of the difference on the whole test set. Resampling
both factors covers both sources of noise — which test patients there are and how training went — and Owen
shows it errs on the wide (conservative) side for such crossed designs. With one seed only the test patients
are resampled, and the interval says nothing about training noise.

Verdict per score: *helps* when the whole interval is above 0, *hurts* when it is below 0, otherwise
*cannot tell at this size*. Many arms × tasks × scores are compared at once and none is corrected for
multiplicity, so about 1 in 20 of comparisons with no true difference still reads helps or hurts.

Sources: A. B. Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 1(2):386–411, 2007; B. Efron and
R. Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993; C. A. Field and A. H. Welsh,
"Bootstrapping clustered data", J. R. Stat. Soc. B 69(3):369–390, 2007.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifiers.metrics import SCORES

HELPS, HURTS, CANNOT_TELL = "helps", "hurts", "cannot tell at this size"


def weighted_scores(y: np.ndarray, p1: np.ndarray, minority: int, w: np.ndarray) -> dict[str, np.ndarray]:
    """`classifiers.metrics.binary_scores` for many weightings at once: ``w`` (B, N) non-negative record weights
    → each score as a (B,) array (NaN where a weighting has no minority or no majority record).

    Integer weights give exactly the scores of the records repeated that often (tests compare with
    scikit-learn); ties in ``p1`` count half in AUROC and form one threshold in AUPRC, as scikit-learn does.
    """
    y, p1, w = np.asarray(y), np.asarray(p1, dtype=np.float64), np.atleast_2d(np.asarray(w, dtype=np.float64))
    pos = (y == minority).astype(np.float64)  # the minority class is the positive one
    pred_pos = ((p1 >= 0.5).astype(np.int64) == minority).astype(np.float64)
    tp, fn = w @ (pos * pred_pos), w @ (pos * (1 - pred_pos))
    fp, tn = w @ ((1 - pos) * pred_pos), w @ ((1 - pos) * (1 - pred_pos))
    n_pos, n_neg = tp + fn, fp + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        bacc = 0.5 * (tp / n_pos + tn / n_neg)
        # threshold groups: records of equal minority-class probability, highest first
        p_min = p1 if minority == 1 else 1.0 - p1
        order = np.argsort(-p_min, kind="stable")
        s = p_min[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        ws = w[:, order]
        pos_g = np.add.reduceat(ws * pos[order], starts, axis=1)
        neg_g = np.add.reduceat(ws * (1 - pos[order]), starts, axis=1)
        tp_c, fp_c = np.cumsum(pos_g, axis=1), np.cumsum(neg_g, axis=1)
        # AUROC: each positive beats the negatives below its group, ties count half
        neg_below = n_neg[:, None] - fp_c
        auroc = (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1) / (n_pos * n_neg)
        # AUPRC (average precision): recall steps × precision at each threshold
        prec = np.divide(tp_c, tp_c + fp_c, out=np.zeros_like(tp_c), where=tp_c + fp_c > 0)
        auprc = (pos_g * prec).sum(axis=1) / n_pos
    bad = (n_pos <= 0) | (n_neg <= 0)
    out = {"f1": f1, "auroc": auroc, "auprc": auprc, "balanced_accuracy": bacc}
    return {k: np.where(bad, np.nan, out[k]) for k in SCORES}


@dataclass(frozen=True)
class Difference:
    """One score's paired difference (arm − reference): estimate, 95 % interval, verdict, per-seed differences
    on the whole test set, and how many bootstrap replicates were usable (a replicate without a minority record
    has no AUROC)."""

    estimate: float
    low: float
    high: float
    verdict: str
    per_seed: tuple[float, ...]
    replicates: int


def verdict(low: float, high: float) -> str:
    """helps if the interval is above 0, hurts if below, else cannot tell (NaN bounds: cannot tell)."""
    return HELPS if low > 0 else HURTS if high < 0 else CANNOT_TELL


def paired_differences(y: np.ndarray, patients: np.ndarray, p_arm: np.ndarray, p_ref: np.ndarray, minority: int,
                       *, replicates: int = 2000, level: float = 0.95, seed: int = 0,
                       max_cells: int = 20_000_000) -> dict[str, Difference]:
    """Each score's difference arm − reference with its bootstrap interval (the module docstring's method).

    ``y`` (N,) labels and ``patients`` (N,) patient ids of the test records; ``p_arm``, ``p_ref`` (S, N):
    P(class 1) from seed s of each arm, row s of both from the same training seed. ``max_cells`` bounds the
    (replicates × N) weight matrix held at once. Deterministic for a given ``seed``.
    """
    p_arm, p_ref = np.atleast_2d(p_arm), np.atleast_2d(p_ref)
    if p_arm.shape != p_ref.shape or p_arm.shape[1] != len(y):
        raise ValueError(f"predictions {p_arm.shape} and {p_ref.shape} do not pair with {len(y)} test records")
    n_seeds, n = p_arm.shape
    _, group = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    n_groups = int(group.max()) + 1
    full = np.ones((1, n))
    per_seed = {k: np.array([weighted_scores(y, p_arm[s], minority, full)[k][0]
                             - weighted_scores(y, p_ref[s], minority, full)[k][0] for s in range(n_seeds)])
                for k in SCORES}
    rng = np.random.default_rng(seed)
    boot: dict[str, list[np.ndarray]] = {k: [] for k in SCORES}
    chunk = max(1, min(replicates, max_cells // max(n, 1)))
    for start in range(0, replicates, chunk):
        b = min(chunk, replicates - start)
        w = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)[:, group].astype(np.float64)
        drawn = rng.integers(0, n_seeds, size=(n_seeds, b))  # the seeds of each replicate, with replacement
        diffs = {k: np.empty((n_seeds, b)) for k in SCORES}
        for s in range(n_seeds):
            arm, ref = weighted_scores(y, p_arm[s], minority, w), weighted_scores(y, p_ref[s], minority, w)
            for k in SCORES:
                diffs[k][s] = arm[k] - ref[k]
        for k in SCORES:
            boot[k].append(np.take_along_axis(diffs[k], drawn, axis=0).mean(axis=0))
    alpha = 100 * (1 - level) / 2
    out = {}
    for k in SCORES:
        d = np.concatenate(boot[k])
        d = d[np.isfinite(d)]
        low, high = (np.percentile(d, [alpha, 100 - alpha]) if len(d) else (np.nan, np.nan))
        out[k] = Difference(float(np.mean(per_seed[k])), float(low), float(high), verdict(low, high),
                            tuple(float(v) for v in per_seed[k]), int(len(d)))
    return out
