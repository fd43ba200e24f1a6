"""Any folder of WFDB records (searched recursively) plus a metadata table (CSV or Parquet).

Metadata columns (read as text: a record ``00017`` stays ``00017``): ``record`` (path relative to the
folder, no extension), ``report`` (one report, or several separated by " | ") or ``report_0..report_k``,
``age``, ``sex`` (M/F/male/female), optional ``hr`` (bpm, the source's own measurement: used like an RR
interval when 40–200 bpm) and ``patient_id`` (default: the record name; it decides the hash split). A row
whose record is absent is rejected as ``missing_record`` (so is a row with no record name, named by its row
number); a record with no row as ``no_metadata``; a repeated row as ``duplicate_record``. Rows whose cells
are all empty are skipped.
"""

from __future__ import annotations

import re

from synthgen.data.labels import labels_from_text
from synthgen.data.record import RecordTask
from synthgen.data.sources.common import age, number, open_src, read_table, record_names, sex, text
from synthgen.data.splits import split_for_patient
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join, resolve
from synthgen.io.shards import REPORT_SEP

EXPECTED = "a folder of WFDB records (.hea/.dat)"
_REPORT = re.compile(r"^report_(\d+)$")


def tasks(src: str, metadata: str | None, storage_options: StorageOptions = None) -> list[RecordTask]:
    """One task per metadata row plus one per unlisted record. Raises InputError for a bad src/table."""
    fs, root = open_src(src, EXPECTED, storage_options)
    if not metadata:
        raise InputError("--metadata: required for a WFDB folder (columns record, report, age, sex)")
    found = record_names(fs, root)
    if not found:
        raise InputError(f"--src {src}: no WFDB records (*.hea) found (expected {EXPECTED})")
    mfs, mpath = resolve(metadata, storage_options)
    df = read_table(mfs, mpath, "--metadata", {"record", "age", "sex"})
    report_cols = sorted((c for c in df.columns if _REPORT.match(c)), key=lambda c: int(c[7:]))
    if "report" not in df.columns and not report_cols:
        raise InputError(f"--metadata {metadata}: needs a `report` column or report_0..report_k columns")
    base = src.rstrip("/")
    out, seen = [], set()
    for i, row in zip(df.index, df.to_dict("records")):
        record = text(row["record"]).strip("/")
        problem = None
        if not record:
            record, problem = f"(row {i + 1})", ("missing_record", f"row {i + 1} of {metadata} names no record")
        elif record in seen:
            problem = ("duplicate_record", f"{record!r} appears again in {metadata}")
        elif record not in found:
            problem = ("missing_record", f"no {record}.hea under {src}")
        seen.add(record)
        out.append(_task(row, record, base, report_cols, problem))
    out += [RecordTask(ecg_id=r, source="wfdb", path=join(base, r), patient_id=r, split="",
                       problem=("no_metadata", f"no row for {r!r} in {metadata}"))
            for r in sorted(found - seen)]
    return out


def _task(row: dict, record: str, base: str, report_cols: list[str], problem: tuple[str, str] | None
          ) -> RecordTask:
    if report_cols:
        reports = tuple(r for r in (text(row[c]) for c in report_cols) if r)
    else:
        reports = tuple(r.strip() for r in text(row["report"]).split(REPORT_SEP.strip()) if r.strip())
    patient = text(row.get("patient_id")) or record
    hr = number(row.get("hr"))
    return RecordTask(
        ecg_id=record, source="wfdb", path=join(base, record), patient_id=patient,
        split=split_for_patient(patient), reports=reports,
        report_text=text(row["report"]) if "report" in row else REPORT_SEP.join(reports),
        age=age(row["age"]), sex=sex(row["sex"]), rr_ms=60000.0 / hr if hr else None,
        labels=labels_from_text(reports), problem=problem,
    )
