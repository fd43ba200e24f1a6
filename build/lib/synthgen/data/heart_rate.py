"""Heart rate for each record: the source's own RR interval when valid, else QRS detection on the signal.

QRS detection runs at >= 500 Hz (slower records are upsampled first: XQRS at 100 Hz double-counts
beats on PTB-XL) and XQRS gets µV (on mV it sometimes finds no beat). Lead II first, then I, V5, V2; XQRS,
then GQRS. A detection counts only with >= 3 beats and a plausible rate (25–250 bpm, from the median RR).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import resample_poly
from wfdb import processing

from synthgen.ecg import LEADS

RR_MS_RANGE = (300.0, 1500.0)  # 40–200 bpm: a source RR outside it is treated as unmeasured
HR_RANGE = (25.0, 250.0)       # a detected rate outside it is treated as a failed detection
DETECT_FS = 500
_DETECT_LEADS = tuple(LEADS.index(name) for name in ("II", "I", "V5", "V2"))


def hr_from_rr(rr_ms: float | None) -> float | None:
    """60000 / RR (ms) when RR is a valid number in ``RR_MS_RANGE``, else None."""
    if rr_ms is None or not np.isfinite(rr_ms) or not RR_MS_RANGE[0] <= rr_ms <= RR_MS_RANGE[1]:
        return None
    return 60000.0 / float(rr_ms)


def _rate(beats: np.ndarray, fs: float) -> float | None:
    """Median-RR rate of detected beat indices, or None if too few beats or an implausible rate."""
    if len(beats) < 3:
        return None
    hr = 60.0 * fs / float(np.median(np.diff(beats)))
    return hr if HR_RANGE[0] <= hr <= HR_RANGE[1] else None


def hr_from_signal(signal: np.ndarray, fs: float) -> float | None:
    """Beats per minute from a (12, n) canonical-order mV signal at ``fs`` Hz, or None if no lead works."""
    up = max(1, int(np.ceil(DETECT_FS / fs)))
    rate = fs * up
    for lead in _DETECT_LEADS:
        mv = resample_poly(signal[lead], up, 1) if up > 1 else signal[lead]
        if not np.ptp(mv) > 0:
            continue
        for detect in (lambda: processing.xqrs_detect(mv * 1000.0, rate, verbose=False),  # XQRS in µV
                       lambda: processing.gqrs_detect(mv, rate)):  # GQRS's thresholds assume mV
            hr = _rate(np.asarray(detect()), rate)
            if hr is not None:
                return hr
    return None
