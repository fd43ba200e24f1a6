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


def test_local_peaks_are_wfdbs_and_xqrs_finds_the_same_beats(ptbxl_shards) -> None:
    """heart_rate.local_peaks (vectorised) gives wfdb's find_local_peaks exactly — real leads at 512 Hz as the
    check sees them, random quantised signals full of ties, a constant signal — and XQRS with it (and the
    memoised filter gains, band-pass and filtfilt states, the lean normalize) detects the same beats as XQRS
    alone; the memoised upsampling filter, band-pass and filtfilt states are scipy's own."""
    import scipy.signal
    from scipy.signal import _signaltools, resample_poly
    from wfdb.processing import basic as wfdb_basic
    from wfdb.processing import qrs as wfdb_qrs
    from wfdb.processing import xqrs_detect
    from wfdb.processing.peaks import find_local_peaks

    from synthgen.data.heart_rate import _fast_xqrs, butter, lfilter_zi, local_peaks, upsample
    from synthgen.io.shards import read_shards, signals

    ecgs = signals(read_shards(str(ptbxl_shards), split="test", columns=["signal"]))[:24]
    leads = [resample_poly(ecg[lead], 5, 1) * 1000.0 for ecg in ecgs for lead in (1, 7)]
    for ecg in ecgs[:4]:
        np.testing.assert_array_equal(upsample(ecg[1], 5), resample_poly(ecg[1], 5, 1))
        np.testing.assert_array_equal(upsample(ecg[1].astype(np.float64), 5),
                                      resample_poly(ecg[1].astype(np.float64), 5, 1))
    for band, fs in (([5, 20], 512), ([5, 20], 500), ([0.5, 40], 360)):
        wn = [f * 2 / fs for f in band]
        for mine, scipys in zip(butter(2, wn, "pass"), scipy.signal.butter(2, wn, "pass")):
            np.testing.assert_array_equal(mine, scipys)
        b, a = butter(2, wn, "pass")
        for bb, aa in ((b, a), (b[::-1], [1]), (b.astype(np.float32), a.astype(np.float32))):
            mine, scipys = lfilter_zi(bb, aa), scipy.signal.lfilter_zi(bb, aa)
            np.testing.assert_array_equal(mine, scipys)
            assert mine.dtype == scipys.dtype
    np.testing.assert_array_equal(butter(4, 0.2), scipy.signal.butter(4, 0.2))  # other calls: scipy's own
    with pytest.raises(ValueError):  # as scipy refuses a 2-D numerator
        lfilter_zi(np.ones((2, 3)), [1.0])
    rng = np.random.default_rng(0)
    noise = [np.round(rng.normal(size=rng.integers(40, 2000)), 1) for _ in range(100)]
    for sig, radius in [(s, r) for s in leads for r in (25, 51)] + [(s, int(rng.integers(1, 40))) for s in noise]:
        np.testing.assert_array_equal(local_peaks(sig, radius), find_local_peaks(sig, radius))
    assert len(local_peaks(np.ones(100), 5)) == 0 and len(find_local_peaks(np.ones(100), 5)) == 0
    for sig in leads[:8]:
        with _fast_xqrs():
            fast = xqrs_detect(sig, 512, verbose=False)
        np.testing.assert_array_equal(fast, xqrs_detect(sig, 512, verbose=False))
        assert len(fast) >= 3
    with pytest.raises(ZeroDivisionError), _fast_xqrs():  # wfdb's own functions come back, even after an error
        raise ZeroDivisionError
    assert wfdb_qrs.get_filter_gain is wfdb_basic.get_filter_gain and wfdb_qrs.normalize is wfdb_basic.normalize
    assert wfdb_qrs.find_local_peaks is find_local_peaks and wfdb_qrs.signal is scipy.signal
    assert _signaltools.lfilter_zi is scipy.signal.lfilter_zi


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
