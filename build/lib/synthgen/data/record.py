"""One record's work, as a pure function (task → row or reject) so Ray can run it anywhere, in any order.

Sources (``sources/*.py``) turn their metadata into ``RecordTask``s on the driver; ``process`` reads
the WFDB record, checks it and returns either a shard row or a reject. The first failing check wins:
source problem (e.g. ``no_metadata``) → ``no_age`` → ``no_sex`` → ``missing_record`` →
``unreadable_record`` → ``unknown_leads`` → ``unknown_units`` → ``too_short`` → ``nan_lead`` → ``no_hr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import wfdb

from synthgen.data.heart_rate import hr_from_rr, hr_from_signal
from synthgen.data.preprocess import Rejected, clean, resample_1024


@dataclass(frozen=True)
class RecordTask:
    """Everything known about one record before its signal is read."""

    ecg_id: str
    source: str
    path: str  # WFDB record path without extension (local path or URL)
    patient_id: str
    split: str
    reports: tuple[str, ...] = ()
    report_text: str = ""
    age: float | None = None
    sex: str | None = None
    rr_ms: float | None = None  # the source's own RR interval, if it has one
    scp_codes: tuple[str, ...] = ()
    labels: dict[str, bool] = field(default_factory=dict)
    problem: tuple[str, str] | None = None  # (reason, detail) already known on the driver


def _read(path: str) -> wfdb.Record:
    try:
        return wfdb.rdrecord(path)
    except FileNotFoundError as e:
        raise Rejected("missing_record", str(e)) from None
    except Exception as e:  # wfdb raises many types for broken headers / truncated .dat files
        raise Rejected("unreadable_record", f"{type(e).__name__}: {e}") from None


def _row(task: RecordTask) -> dict:
    if task.problem is not None:
        raise Rejected(*task.problem)
    if task.age is None:
        raise Rejected("no_age", "age missing or not a number")
    if task.sex not in ("M", "F"):
        raise Rejected("no_sex", f"sex {task.sex!r} (expected M or F)")
    rec = _read(task.path)
    if rec.p_signal is None or not rec.sig_name:
        raise Rejected("unreadable_record", "no physical signal")
    sig = clean(rec.p_signal, rec.sig_name, rec.units, float(rec.fs))
    hr, hr_source = hr_from_rr(task.rr_ms), "rr"
    if hr is None:
        hr, hr_source = hr_from_signal(sig, float(rec.fs)), "qrs"
    if hr is None:
        raise Rejected("no_hr", "no valid RR interval in the metadata and no QRS detection on I, II, V2, V5")
    signal = resample_1024(sig)
    if not np.isfinite(signal).all():
        raise Rejected("nan_lead", "non-finite samples after preprocessing")
    return {
        "ecg_id": task.ecg_id, "source": task.source, "patient_id": task.patient_id, "split": task.split,
        "signal": signal, "reports": list(task.reports), "report_text": task.report_text,
        "age": task.age, "sex": task.sex, "hr": float(hr), "hr_source": hr_source,
        "af": task.labels["af"], "pvc": task.labels["pvc"], "abnormal": task.labels["abnormal"],
        "scp_codes": list(task.scp_codes), "fs_source": float(rec.fs),
    }


def process(task: RecordTask) -> tuple[dict | None, dict | None]:
    """(row, None) for a usable record, (None, reject) otherwise; never raises for bad data."""
    try:
        return _row(task), None
    except Rejected as e:
        return None, {"ecg_id": task.ecg_id, "source": task.source, "path": task.path,
                      "reason": e.reason, "detail": e.detail}
