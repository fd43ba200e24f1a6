"""Is this a plausible 12-lead ECG? One per-ECG check, with named reasons, shared by every stage.

`generate` flags (and optionally replaces) implausible samples, `evaluate` reports each reason's share beside
real data and the peers, and `train` picks checkpoints partly by the near-flat share and HR error of samples.
Thresholds are set from real data: on the PTB-XL subset (1,987 records, their own heart rate as the request)
99.95 % pass; the one failure is a rate measured at 102.4 Hz more than 20 bpm from the one `prepare` measured at
the source rate. The test asserts >= 99 % on the test split.

Reasons (an ECG may have several):
- ``nan``: a non-finite value.
- ``near_flat``: median lead peak-to-peak below 0.25 mV (real PTB-XL: none; 1st percentile 0.69 mV) — the
  flat-trace failure of an undertrained diffusion model.
- ``amplitude``: a lead's peak-to-peak above 15 mV (the PTB-XL subset's largest is 14.9 mV; 99.9th
  percentile 13.6 mV).
- ``clipped``: a lead that sits at an extreme away from its baseline for >= 5 % of its samples, as a
  saturated recorder does.
- ``hr_unmeasurable``: no lead gives >= 3 beats at a plausible rate (synthgen.data.heart_rate).
- ``hr_mismatch``: measured rate differs from the requested one by more than 20 bpm and 20 % (only when a rate
  was requested).
- ``einthoven``: RMS of III − (II − I) above 0.05 mV (limb leads that no heart could make; recorders derive
  III from I and II, so real data sits near 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthgen.data.heart_rate import hr_from_signal
from synthgen.ecg import FS, LEADS

REASONS: tuple[str, ...] = ("nan", "near_flat", "amplitude", "clipped", "hr_unmeasurable", "hr_mismatch",
                            "einthoven")
FLAT_MV = 0.25
MAX_PTP_MV = 15.0
CLIP_FRACTION = 0.05
CLIP_TOL_MV = 1e-3
HR_TOL_BPM, HR_TOL_FRACTION = 20.0, 0.20
EINTHOVEN_MV = 0.05
_I, _II, _III = (LEADS.index(n) for n in ("I", "II", "III"))


@dataclass(frozen=True)
class Plausibility:
    """The verdict on one ECG: its failed checks (empty when plausible) and the heart rate measured."""

    reasons: tuple[str, ...]
    measured_hr: float | None

    @property
    def ok(self) -> bool:
        return not self.reasons


def check(signal: np.ndarray, requested_hr: float | None = None, fs: float = FS) -> Plausibility:
    """Check one (12, n) canonical-order ECG in mV at ``fs`` Hz; ``requested_hr`` (bpm) enables hr_mismatch."""
    x = np.asarray(signal, dtype=np.float64)
    if not np.isfinite(x).all():
        return Plausibility(("nan",), None)
    reasons = []
    ptp = np.ptp(x, axis=1)
    if np.median(ptp) < FLAT_MV:
        reasons.append("near_flat")
    if ptp.max() > MAX_PTP_MV:
        reasons.append("amplitude")
    if _clipped(x, ptp).any():
        reasons.append("clipped")
    hr = hr_from_signal(x, fs)
    if hr is None:
        reasons.append("hr_unmeasurable")
    elif requested_hr is not None and np.isfinite(requested_hr):
        err = abs(hr - float(requested_hr))
        if err > HR_TOL_BPM and err > HR_TOL_FRACTION * float(requested_hr):
            reasons.append("hr_mismatch")
    if np.sqrt(np.mean((x[_III] - (x[_II] - x[_I])) ** 2)) > EINTHOVEN_MV:
        reasons.append("einthoven")
    return Plausibility(tuple(reasons), hr)


def _clipped(x: np.ndarray, ptp: np.ndarray) -> np.ndarray:
    """(12,) bool: the lead sits at an extreme for >= CLIP_FRACTION of its samples, and that extreme is away
    from its baseline (a clean trace's baseline is often its own minimum, which is not saturation)."""
    baseline = np.median(x, axis=1)
    hi, lo = x.max(axis=1), x.min(axis=1)
    at_hi = (x >= hi[:, None] - CLIP_TOL_MV).mean(axis=1) >= CLIP_FRACTION
    at_lo = (x <= lo[:, None] + CLIP_TOL_MV).mean(axis=1) >= CLIP_FRACTION
    away = 0.25 * ptp
    return (ptp > CLIP_TOL_MV) & ((at_hi & (hi - baseline > away)) | (at_lo & (baseline - lo > away)))


def check_many(signals: np.ndarray, requested_hr: np.ndarray | None = None,
               fs: float = FS) -> list[Plausibility]:
    """`check` for each ECG of a (B, 12, n) batch; ``requested_hr`` (B,) with NaN where none was requested."""
    hrs = [None] * len(signals) if requested_hr is None else [None if h != h else float(h) for h in requested_hr]
    return [check(x, h, fs) for x, h in zip(signals, hrs)]


def reason_shares(verdicts: list[Plausibility]) -> dict[str, float]:
    """Share of ECGs failing each reason, plus ``implausible`` (any reason); 0.0 for an empty list."""
    n = max(len(verdicts), 1)
    shares = {r: sum(r in v.reasons for v in verdicts) / n for r in REASONS}
    shares["implausible"] = sum(not v.ok for v in verdicts) / n
    return shares
