"""PTB-XL (PhysioNet layout): ptbxl_database.csv + scp_statements.csv + records500/ and/or records100/.

The 500 Hz record is used when present, else the 100 Hz one. Reports are the English descriptions of
the record's SCP statements (scp_statements.csv) in the order of a machine report: rhythm statements first
(``rhythm == 1``; PTB-XL gives them likelihood 0, so a likelihood sort alone would put "atrial fibrillation"
last, the opposite of DiffuSETS' ordered prompts), then the others by likelihood (descending; ties keep
the record's order); the original (mostly German) free text is kept as ``report_text``. Splits follow
PTB-XL's patient-disjoint ``strat_fold``: 1–8 train, 9 val, 10 test.
"""

from __future__ import annotations

import ast

from synthgen.data.labels import labels_from_scp
from synthgen.data.record import RecordTask
from synthgen.data.sources.common import age, number, open_src, read_table, record_names, require, text
from synthgen.data.splits import split_for_fold
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join

EXPECTED = "PTB-XL in PhysioNet's layout: ptbxl_database.csv, scp_statements.csv, records100/ or records500/"
_COLUMNS = {"ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold", "filename_lr",
            "filename_hr"}
_SEX = {0: "M", 1: "F"}  # PTB-XL's coding (a float 0.0/1.0 finds the same key)


def tasks(src: str, storage_options: StorageOptions = None) -> list[RecordTask]:
    """One task per row of ptbxl_database.csv. Raises InputError if ``src`` is not a PTB-XL folder."""
    fs, root = open_src(src, EXPECTED, storage_options)
    require(fs, root, src, "PTB-XL", "ptbxl_database.csv", "scp_statements.csv")
    if not (fs.isdir(join(root, "records100")) or fs.isdir(join(root, "records500"))):
        raise InputError(f"--src {src}: not a PTB-XL folder, missing records100/ and records500/")
    db = read_table(fs, join(root, "ptbxl_database.csv"), "PTB-XL database", _COLUMNS)
    scp = read_table(fs, join(root, "scp_statements.csv"), "PTB-XL SCP statements",
                     {"Unnamed: 0", "description", "diagnostic", "rhythm"}).set_index("Unnamed: 0")
    descriptions = scp["description"].to_dict()
    diagnostic = {code for code, flag in scp["diagnostic"].items() if number(flag) == 1}
    rhythm = {code for code, flag in scp["rhythm"].items() if number(flag) == 1}
    have_500 = {f"records500/{n}" for n in record_names(fs, join(root, "records500"))}
    base = src.rstrip("/")
    return [_task(i, row, base, have_500, descriptions, diagnostic, rhythm)
            for i, row in zip(db.index, db.to_dict("records"))]


def report_order(likelihood: dict[str, float], rhythm: set[str]) -> list[str]:
    """SCP codes in report order: rhythm statements first, then by likelihood (descending); stable."""
    return sorted(likelihood, key=lambda c: (c not in rhythm, -float(likelihood[c])))


def _task(i: int, row: dict, base: str, have_500: set[str], descriptions: dict[str, str],
          diagnostic: set[str], rhythm: set[str]) -> RecordTask:
    """The task of row ``i`` (0-based) of ptbxl_database.csv; a bad cell becomes a ``bad_metadata`` reject."""
    number_id = number(row["ecg_id"])
    problem = None
    if number_id is not None and number_id.is_integer() and number_id >= 0:
        ecg_id = f"{int(number_id):05d}"
    else:
        ecg_id = text(row["ecg_id"]) or f"(row {i + 1})"
        problem = ("bad_metadata", f"row {i + 1}: ecg_id {text(row['ecg_id'])!r} (expected a whole number)")
    hr_name, lr_name = text(row["filename_hr"]), text(row["filename_lr"])
    name = hr_name if hr_name in have_500 else lr_name
    try:
        likelihood = ast.literal_eval(text(row["scp_codes"]) or "{}")
        if not isinstance(likelihood, dict):
            raise ValueError("expected a dict of SCP code → likelihood")
        codes = [str(c) for c in report_order(likelihood, rhythm)]
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        codes, problem = [], problem or ("bad_metadata", f"scp_codes {row['scp_codes']!r}: {e}")
    fold = number(row["strat_fold"])
    if fold is None or not 1 <= fold <= 10:
        problem = problem or ("bad_metadata", f"strat_fold {row['strat_fold']!r} (expected 1–10)")
    if not name:
        problem = problem or ("missing_record", "filename_hr and filename_lr are empty")
    reports = tuple(descriptions[c] for c in codes if c in descriptions)
    patient, sex_code = number(row["patient_id"]), number(row["sex"])
    return RecordTask(
        ecg_id=ecg_id, source="ptbxl", path=join(base, name) if name else base,
        patient_id=str(int(patient)) if patient is not None else f"ecg{ecg_id}",
        split=split_for_fold(int(fold)) if problem is None else "",
        reports=reports, report_text=text(row["report"]), age=age(row["age"]),
        sex=_SEX.get(sex_code),
        scp_codes=tuple(codes),
        labels=labels_from_scp(codes, [c for c in codes if c in diagnostic]),
        problem=problem,
    )
