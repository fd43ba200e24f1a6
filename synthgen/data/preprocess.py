"""Turn a record's 12-lead signal in mV (``synthgen.io.wfdb.read_wfdb``: leads by name, units decoded) into
the shared layout (DiffuSETS): 10 s, 1024 samples, no missing samples.

A problem a user can only fix in the data raises ``Rejected`` with a reason code (docs/schema-shards.md).
"""

from __future__ import annotations

import numpy as np
from scipy.signal import resample_poly

from synthgen.ecg import DURATION_S, LEADS, N_SAMPLES

MAX_NAN_FRACTION = 0.05  # up to 5 % missing samples per lead are interpolated; more rejects the record


class Rejected(Exception):
    """One record cannot be used; ``reason`` is a short code (docs/schema-shards.md), ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def fill_missing(signal: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaN samples per lead; a lead that is all or mostly NaN rejects the record."""
    out = signal.copy()
    for i, lead in enumerate(out):
        bad = np.isnan(lead)
        if not bad.any():
            continue
        if bad.mean() > MAX_NAN_FRACTION:
            raise Rejected("nan_lead", f"lead {LEADS[i]}: {bad.mean():.0%} of samples missing")
        x = np.arange(lead.size)
        lead[bad] = np.interp(x[bad], x[~bad], lead[~bad])
    return out


def ten_seconds(signal: np.ndarray, fs: float) -> np.ndarray:
    """First 10 s of (12, n) at ``fs`` Hz; a shorter record is rejected (the model only knows 10 s)."""
    need = int(round(DURATION_S * fs))
    if signal.shape[1] < need:
        raise Rejected("too_short", f"{signal.shape[1]} samples at {fs:g} Hz, need {need} (10 s)")
    return signal[:, :need]


def resample_1024(signal: np.ndarray) -> np.ndarray:
    """(12, n) covering 10 s → (12, 1024) float32 (polyphase, anti-aliased)."""
    return resample_poly(signal, N_SAMPLES, signal.shape[1], axis=1).astype(np.float32)


def clean(signal: np.ndarray, fs: float) -> np.ndarray:
    """(12, n) mV in canonical lead order → (12, 10·fs) mV at the source rate, NaN-free. Raises ``Rejected``."""
    return fill_missing(ten_seconds(signal, fs))
