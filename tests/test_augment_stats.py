"""The paired intervals of augment-eval (classifiers/stats.py): weighted scores equal scikit-learn's on repeated
records, and on simulated test sets whose true difference is known the 95 % intervals cover it and the verdicts
follow it. numpy only, a few seconds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from classifiers.metrics import binary_scores
from classifiers.stats import CANNOT_TELL, HELPS, HURTS, paired_differences, verdict, weighted_scores


@pytest.mark.parametrize("minority", [0, 1])
def test_weighted_scores_equal_sklearn_on_repeated_records(minority: int) -> None:
    rng = np.random.default_rng(minority)
    y, p = rng.integers(0, 2, 60), np.round(rng.random(60), 1)  # rounded: many ties
    k = rng.integers(0, 4, size=(3, 60))
    got = weighted_scores(y, p, minority, k)
    for b in range(3):
        want = binary_scores(np.repeat(y, k[b]), np.repeat(p, k[b]), minority)
        assert {s: got[s][b] for s in want} == pytest.approx(want, abs=1e-12)
    only_one_class = weighted_scores(y, p, minority, (y == 0)[None].astype(float))
    assert np.isnan(only_one_class["auroc"][0])


# A simulated test set with known population scores: patients with two ECGs each (same label), scores
# s = mu_arm * y + patient effect + ECG effect (both shared by the arms: paired) + seed noise, so for each arm
# positives ~ N(mu, V) and negatives ~ N(0, V) with V = A² + B² + C²; P(class 1) = logistic(s - T).
A, B, C, T = 0.7, 0.5, 0.3, 0.6
V = A * A + B * B + C * C


def _truth(mu: float) -> dict[str, float]:
    sd = np.sqrt(V)
    return {"auroc": norm.cdf(mu / np.sqrt(2 * V)),
            "balanced_accuracy": 0.5 * ((1 - norm.cdf((T - mu) / sd)) + norm.cdf(T / sd))}


def _simulate(rng: np.random.Generator, mu_arm: float, mu_ref: float, patients: int, seeds: int):
    y_pat = (rng.random(patients) < 0.3).astype(np.int64)
    y, pid = np.repeat(y_pat, 2), np.repeat(np.arange(patients), 2)
    shared = np.repeat(A * rng.standard_normal(patients), 2) + B * rng.standard_normal(2 * patients)

    def probs(mu: float) -> np.ndarray:
        s = mu * y + shared + C * rng.standard_normal((seeds, 2 * patients))
        return 1 / (1 + np.exp(-(s - T)))

    return y, pid, probs(mu_arm), probs(mu_ref)


def test_intervals_cover_the_known_difference() -> None:
    rng = np.random.default_rng(7)
    mu_arm, mu_ref = 1.3, 1.0
    truth = {k: _truth(mu_arm)[k] - _truth(mu_ref)[k] for k in ("auroc", "balanced_accuracy")}
    covered = {k: 0 for k in truth}
    runs = 200
    for i in range(runs):
        y, pid, p_arm, p_ref = _simulate(rng, mu_arm, mu_ref, patients=100, seeds=2)
        d = paired_differences(y, pid, p_arm, p_ref, minority=1, replicates=300, seed=i)
        for k in truth:
            covered[k] += d[k].low <= truth[k] <= d[k].high
    assert all(c >= 0.90 * runs for c in covered.values()), covered


def test_verdicts_follow_a_known_difference() -> None:
    rng = np.random.default_rng(1)
    y, pid, p_good, p_poor = _simulate(rng, 2.0, 0.5, patients=200, seeds=3)
    better = paired_differences(y, pid, p_good, p_poor, minority=1, replicates=500)
    assert better["auroc"].verdict == HELPS and better["auroc"].low > 0
    assert better["auroc"].estimate == pytest.approx(np.mean(better["auroc"].per_seed))
    assert paired_differences(y, pid, p_poor, p_good, minority=1, replicates=500)["auroc"].verdict == HURTS
    same = paired_differences(y, pid, p_good, p_good, minority=1, replicates=200)
    assert same["auprc"].estimate == 0 and same["auprc"].verdict == CANNOT_TELL
    assert verdict(-0.1, 0.2) == CANNOT_TELL and verdict(float("nan"), float("nan")) == CANNOT_TELL
    with pytest.raises(ValueError, match="do not pair"):
        paired_differences(y, pid, p_good[:, :-1], p_good[:, :-1], minority=1)
