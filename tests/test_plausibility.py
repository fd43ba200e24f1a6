"""The per-ECG plausibility check: real PTB-XL passes, made-up failures are named by their reason."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.data.plausibility import REASONS, check, check_many, reason_shares
from synthgen.ecg import FS, LEADS, N_SAMPLES


def _beats(hr: float = 72.0, amplitude: float = 1.0) -> np.ndarray:
    """A crude 12-lead ECG with QRS-like spikes at ``hr`` bpm whose limb leads obey Einthoven's law."""
    t = np.arange(N_SAMPLES) / FS
    beat_times = np.arange(0.3, 10.0, 60.0 / hr)
    qrs = sum(np.exp(-0.5 * ((t - b) / 0.02) ** 2) for b in beat_times) * amplitude
    x = np.tile(qrs, (12, 1)) * np.linspace(0.6, 1.4, 12)[:, None]
    i, ii = x[LEADS.index("I")], x[LEADS.index("II")]
    x[LEADS.index("III")] = ii - i
    return x


def test_real_ptbxl_passes(ptbxl_shards) -> None:
    from synthgen.io.shards import read_shards, signals

    table = read_shards(str(ptbxl_shards), split="test", columns=["signal", "hr"])
    verdicts = check_many(signals(table), table["hr"].to_numpy(zero_copy_only=False).astype(float))
    shares = reason_shares(verdicts)
    assert len(verdicts) == 255
    assert shares["implausible"] <= 0.01, shares
    assert shares["near_flat"] == 0.0 and shares["nan"] == 0.0


def test_a_clean_synthetic_beat_train_passes() -> None:
    verdict = check(_beats(72), requested_hr=72)
    assert verdict.ok, verdict
    assert verdict.measured_hr == pytest.approx(72, abs=3)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda x: x * 0.05, "near_flat"),
    (lambda x: x * 20, "amplitude"),
    (lambda x: np.where(np.isfinite(x), x, 0) * np.r_[[np.nan], np.ones(N_SAMPLES - 1)], "nan"),
    (lambda x: np.clip(x, None, 0.3), "clipped"),
    (lambda x: np.tile(np.sin(2 * np.pi * 0.1 * np.arange(N_SAMPLES) / FS), (12, 1)), "hr_unmeasurable"),
])
def test_made_up_failures_are_named(make, reason: str) -> None:
    x = make(_beats(72))
    assert reason in check(x, requested_hr=72).reasons


def test_heart_rate_far_from_the_request() -> None:
    assert "hr_mismatch" in check(_beats(120), requested_hr=60).reasons
    assert "hr_mismatch" not in check(_beats(120), requested_hr=None).reasons
    assert check(_beats(66), requested_hr=60).ok


def test_limb_leads_that_break_einthoven() -> None:
    x = _beats(72)
    x[LEADS.index("III")] = x[LEADS.index("II")]  # III = II breaks III = II − I by all of lead I
    assert "einthoven" in check(x).reasons


def test_shares() -> None:
    verdicts = [check(_beats(72)), check(_beats(72) * 0.01)]
    shares = reason_shares(verdicts)
    assert set(shares) == {*REASONS, "implausible"}
    assert shares["near_flat"] == 0.5 and shares["implausible"] == 0.5
