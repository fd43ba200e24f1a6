"""MIMIC-IV-ECG (PhysioNet layout): record_list.csv, machine_measurements.csv, files/pNNNN/pN…/sN…/N….

Records are 500 Hz, 5000 samples, leads I, II, III, aVR, aVF, aVL, V1–V6 (aVF before aVL: leads are
matched by name downstream). Reports are the machine's report_0… lines in order (non-empty);
``report_text`` joins them with " | ". Heart rate comes from ``rr_interval`` (ms) when valid. Age and
sex come from MIMIC-IV's hosp/patients.csv when given: age = anchor_age + (ECG year − anchor_year);
without it every record is rejected for ``no_age`` (age and sex are training conditions). Splits: a
stable hash of subject_id.
"""

from __future__ import annotations

import re

import pandas as pd

from synthgen.data.labels import labels_from_text
from synthgen.data.record import RecordTask
from synthgen.data.sources.common import age, number, open_src, read_table, require, sex, text
from synthgen.data.splits import split_for_patient
from synthgen.io.paths import StorageOptions, join, resolve
from synthgen.io.shards import REPORT_SEP

EXPECTED = "MIMIC-IV-ECG in PhysioNet's layout: record_list.csv, machine_measurements.csv, files/"
_REPORT = re.compile(r"^report_(\d+)$")


def tasks(src: str, patients: str | None = None, storage_options: StorageOptions = None) -> list[RecordTask]:
    """One task per row of record_list.csv. Raises InputError if ``src`` is not a MIMIC-IV-ECG folder."""
    fs, root = open_src(src, EXPECTED, storage_options)
    require(fs, root, src, "MIMIC-IV-ECG", "record_list.csv", "machine_measurements.csv", "files")
    records = read_table(fs, join(root, "record_list.csv"), "MIMIC-IV-ECG record list",
                         {"subject_id", "study_id", "ecg_time", "path"})
    measurements = read_table(fs, join(root, "machine_measurements.csv"), "MIMIC-IV-ECG machine measurements",
                              {"study_id", "rr_interval"})
    report_cols = sorted((c for c in measurements.columns if _REPORT.match(c)), key=lambda c: int(c[7:]))
    df = records.merge(measurements[["study_id", "rr_interval", *report_cols]], on="study_id", how="left")
    if patients:
        pfs, ppath = resolve(patients, storage_options)
        table = read_table(pfs, ppath, "MIMIC-IV patients table", {"subject_id", "gender", "anchor_age",
                                                                    "anchor_year"})
        df = df.merge(table[["subject_id", "gender", "anchor_age", "anchor_year"]], on="subject_id", how="left")
    base = src.rstrip("/")
    return [_task(row, base, report_cols) for row in df.to_dict("records")]


def _task(row: dict, base: str, report_cols: list[str]) -> RecordTask:
    reports = tuple(r for r in (text(row[c]) for c in report_cols) if r)
    ecg_year = pd.to_datetime(row["ecg_time"], errors="coerce").year
    anchor_age, anchor_year = number(row.get("anchor_age")), number(row.get("anchor_year"))
    years = None if anchor_age is None or anchor_year is None or pd.isna(ecg_year) else \
        anchor_age + (ecg_year - anchor_year)
    study = number(row["study_id"])
    path = text(row["path"])
    subject = text(row["subject_id"])
    return RecordTask(
        ecg_id=f"{int(study):08d}" if study is not None else path, source="mimic-iv-ecg",
        path=join(base, path) if path else base, patient_id=subject, split=split_for_patient(subject),
        reports=reports, report_text=REPORT_SEP.join(reports), age=age(years), sex=sex(row.get("gender")),
        rr_ms=number(row["rr_interval"]), labels=labels_from_text(reports),
        problem=None if path else ("missing_record", "record_list.csv row has no path"),
    )
