"""One record's work, as a pure function (task → row or reject) so Ray can run it anywhere, in any order.

Sources (``sources/*.py``) turn their metadata into ``RecordTask``s on the driver; ``process`` reads
the WFDB record (``synthgen.io.wfdb.read_wfdb``: leads by name, units from the header), checks it and
returns either a shard row or a reject. The first failing check wins: source problem (e.g.
``no_metadata``) → ``no_age`` → ``no_sex`` → ``missing_record`` → ``unreadable_record`` →
``duplicate_lead`` / ``unknown_leads`` → ``unknown_units`` → ``implausible_amplitude`` → ``too_short`` →
``nan_lead`` → ``no_hr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synthgen.data.heart_rate import hr_from_rr, hr_from_signal
from synthgen.data.preprocess import Rejected, clean, resample_1024
from synthgen.io.paths import StorageOptions
from synthgen.io.wfdb import WfdbRecordError, read_wfdb


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


def _row(task: RecordTask, storage_options: StorageOptions) -> dict:
    if task.problem is not None:
        raise Rejected(*task.problem)
    if task.age is None:
        raise Rejected("no_age", "age missing or not a number")
    if task.sex not in ("M", "F"):
        raise Rejected("no_sex", f"sex {task.sex!r} (expected M or F)")
    try:
        ecg = read_wfdb(task.path, storage_options)
    except WfdbRecordError as e:
        raise Rejected(e.reason, e.detail) from None
    sig = clean(ecg.signal, ecg.fs)
    hr, hr_source = hr_from_rr(task.rr_ms), "rr"
    if hr is None:
        hr, hr_source = hr_from_signal(sig, ecg.fs), "qrs"
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
        "scp_codes": list(task.scp_codes), "fs_source": ecg.fs,
    }


def process(task: RecordTask, storage_options: StorageOptions = None) -> tuple[dict | None, dict | None]:
    """(row, None) for a usable record, (None, reject) otherwise; never raises for bad data.

    ``storage_options`` reach the record's files when ``task.path`` is an object-store URL."""
    try:
        return _row(task, storage_options), None
    except Rejected as e:
        return None, {"ecg_id": task.ecg_id, "source": task.source, "path": task.path,
                      "reason": e.reason, "detail": e.detail}
