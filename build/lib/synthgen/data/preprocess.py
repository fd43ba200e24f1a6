"""Turn a raw WFDB signal into the shared layout (DiffuSETS): 12 canonical leads, 10 s, 1024 samples, mV.

Leads are picked by NAME (case-insensitive), never by position: MIMIC-IV-ECG writes aVF before aVL.
A problem a user can only fix in the data raises ``Rejected`` with a reason from ``REASONS``.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import resample_poly

from synthgen.ecg import DURATION_S, LEADS, N_SAMPLES

MAX_NAN_FRACTION = 0.05  # up to 5 % missing samples per lead are interpolated; more rejects the record
_UNIT_SCALE = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


class Rejected(Exception):
    """One record cannot be used; ``reason`` is a short code (docs/schema-shards.md), ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def canonical_leads(signal: np.ndarray, names: list[str]) -> np.ndarray:
    """(n, k) samples with lead ``names`` → (12, n) in ``LEADS`` order, chosen by name."""
    index = {name.strip().lower(): i for i, name in enumerate(names)}
    missing = [lead for lead in LEADS if lead.lower() not in index]
    if missing:
        raise Rejected("unknown_leads", f"leads {names} lack {missing}")
    return np.stack([signal[:, index[lead.lower()]] for lead in LEADS])


def to_millivolts(signal: np.ndarray, units: list[str]) -> np.ndarray:
    """Scale each lead (rows) to mV from its WFDB unit string."""
    scale = []
    for unit in units:
        key = (unit or "").strip().lower()
        if key not in _UNIT_SCALE:
            raise Rejected("unknown_units", f"unit {unit!r} (expected mV, uV or V)")
        scale.append(_UNIT_SCALE[key])
    return signal * np.asarray(scale)[:, None]


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


def clean(signal: np.ndarray, names: list[str], units: list[str], fs: float) -> np.ndarray:
    """Raw (n, k) WFDB physical signal → (12, 10·fs) mV at the source rate, NaN-free. Raises ``Rejected``."""
    leads = canonical_leads(signal, names)
    unit_by_lead = dict(zip((n.strip().lower() for n in names), units))
    mv = to_millivolts(leads, [unit_by_lead[lead.lower()] for lead in LEADS])
    return fill_missing(ten_seconds(mv, fs))
