"""PhysioNet/Computing in Cardiology Challenge 2020/2021 data: WFDB records labelled in their own headers.

Layout: any folder tree of ``NAME.hea`` + ``NAME.mat`` (MATLAB v4 signal files, which wfdb reads natively),
searched recursively, e.g. the challenge's ``training/georgia/g1/E00001.hea``. Each header carries the
record's labels as comments: ``#Age: 74`` (may be ``NaN``), ``#Sex: Male``/``Female`` and
``#Dx: 164889003,59118001`` (SNOMED CT codes). There is no other metadata table.

- ``ecg_id`` and ``patient_id``: the record name (``E00001``). The challenge names records uniquely across its
  databases; a second record with the same name elsewhere in the tree is rejected as ``duplicate_record``.
- Splits: the challenge gives no patient ids, so each record is its own patient and its split is the
  sha256 hash of its name (``split_for_patient``): deterministic, independent of the folder layout, but
  patient-disjoint only as far as each patient has one record.
- Reports: each ``#Dx`` code's English statement from ``synthgen/assets/snomed_ct/dx_statements.csv``
  (PTB-XL's SCP description where the finding is the same, so prompts use the training vocabulary), in the
  header's order with duplicates dropped (three Ningbo codes no challenge table names add no statement, but
  still make the record abnormal), rhythm statements first — the order PTB-XL's reports are given in
  (``ptbxl.report_order``), so that a rhythm such as AF is never cut off the end of a prompt. A record whose
  only code is sinus rhythm is a normal ECG and reads ``sinus rhythm``, ``normal ECG``, as PTB-XL's NORM + SR
  records do.
- ``report_text``: the ``#Dx`` codes as written. Labels: ``labels_from_snomed``.
- Rejected on the driver: ``duplicate_record``, ``unreadable_record`` (header not readable as text),
  ``no_dx`` (no ``#Dx`` code with a statement) and ``unknown_dx`` (a code outside the table). The signal
  checks (10 s, leads, units, heart rate) are ``record.process``'s, as for every source.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from synthgen.data.labels import labels_from_snomed
from synthgen.data.record import RecordTask
from synthgen.data.sources.common import age, open_src, record_names, sex
from synthgen.data.splits import split_for_patient
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join

SOURCE = "physionet-challenge"
EXPECTED = "PhysioNet/CinC Challenge records: NAME.hea + NAME.mat with #Age, #Sex and #Dx header comments"
STATEMENTS_TABLE = "dx_statements.csv"
NORMAL_ECG = "normal ECG"  # PTB-XL's NORM description


@dataclass(frozen=True)
class Statement:
    """One row of dx_statements.csv: the English statement of a SNOMED CT code ("" for the few codes the
    challenge's data uses but its tables do not name), and whether it is a rhythm statement."""

    text: str
    rhythm: bool


@functools.cache
def dx_statements() -> dict[str, Statement]:
    """SNOMED CT code → statement, from the table shipped in synthgen/assets/snomed_ct/ (source in its README)."""
    path = importlib.resources.files("synthgen").joinpath("assets", "snomed_ct", STATEMENTS_TABLE)
    with path.open(encoding="utf-8", newline="") as f:
        return {row["snomed_ct_code"]: Statement(row["statement"], row["rhythm"] == "1") for row in csv.DictReader(f)}


def reports(codes: Iterable[str], normal: bool) -> tuple[str, ...]:
    """Ordered English reports for SNOMED CT ``codes`` (all in the table): rhythm statements, then ``normal ECG``
    when the record is ``normal``, then the other statements in the given order; repeats and unnamed codes
    dropped."""
    statements = [s for s in (dx_statements()[c] for c in codes) if s.text]
    rhythm = [s.text for s in statements if s.rhythm]
    return tuple(dict.fromkeys(rhythm + ([NORMAL_ECG] if normal else []) + [s.text for s in statements
                                                                               if not s.rhythm]))


def header_comments(text: str) -> dict[str, str]:
    """The challenge's ``#Key: value`` header comments (Age, Sex, Dx, Rx, Hx, Sx) with lower-case keys; the first
    of a repeated key wins. The WFDB record and signal lines are not parsed here (wfdb reads them)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") and ":" in line:
            key, value = line[1:].split(":", 1)
            out.setdefault(key.strip().lower(), value.strip())
    return out


def tasks(src: str, storage_options: StorageOptions = None) -> list[RecordTask]:
    """One task per ``.hea`` under ``src``. Raises InputError if ``src`` is missing or holds no header."""
    fs, root = open_src(src, EXPECTED, storage_options)
    names = sorted(record_names(fs, root))
    if not names:
        raise InputError(f"--src {src}: no WFDB records (*.hea) found (expected {EXPECTED})")
    headers = fs.cat([join(root, n + ".hea") for n in names], on_error="return")  # concurrent on object stores
    base = src.rstrip("/")
    out, seen = [], {}
    for name in names:
        record = posixpath.basename(name)
        header = headers.get(join(root, name + ".hea"))
        duplicate = seen.setdefault(record, name)
        out.append(_task(record, join(base, name), header,
                         ("duplicate_record", f"{name}: the name {record!r} is also {duplicate}")
                         if duplicate != name else None))
    return out


def _task(record: str, path: str, header: bytes | Exception | None, problem: tuple[str, str] | None
          ) -> RecordTask:
    if not isinstance(header, bytes):
        fields: dict[str, str] = {}
        problem = problem or ("unreadable_record", f"{path}.hea: {header!r}")
    else:
        fields = header_comments(header.decode("utf-8", errors="replace"))
    dx = fields.get("dx", "")
    codes = [c.strip() for c in dx.split(",") if c.strip()]
    unknown = [c for c in codes if c not in dx_statements()]
    if not codes:
        problem = problem or ("no_dx", f"{path}.hea has no #Dx SNOMED CT codes")
    elif unknown:
        problem = problem or ("unknown_dx", f"#Dx SNOMED CT code(s) {', '.join(unknown)} not in the challenge's "
                                            f"mapping tables (synthgen/assets/snomed_ct/{STATEMENTS_TABLE})")
    labels = labels_from_snomed(codes)
    statements = () if problem else reports(codes, normal=not labels["abnormal"])
    if not statements:
        problem = problem or ("no_dx", f"#Dx {dx}: none of its codes has an English statement")
    return RecordTask(
        ecg_id=record, source=SOURCE, path=path, patient_id=record, split=split_for_patient(record),
        reports=statements, report_text=dx,
        age=age(fields.get("age")), sex=sex(fields.get("sex")), labels=labels, problem=problem,
    )
