"""Condition manifests: read, validate every row before any sampling, and spread a total count over rows.

A manifest (CSV or Parquet, local or s3://) has one row per condition spec. Columns (see docs/generate.md):
``report`` (several reports separated by " | ") *or* ``report_1`` … ``report_k``; ``age``, ``sex``, ``hr``
(blank = unknown); optional ``label``, ``condition_source`` and ``condition_citation`` (free text copied to
every output row); optional ``n`` (samples for this row) *or* ``weight``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd

from synthgen.conditions.describe import Description, describe
from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.io.generated import TEXT_COLUMNS
from synthgen.io.paths import StorageOptions, read_parquet, resolve, write_bytes_atomic
from synthgen.io.shards import LABELS, REPORT_SEP, read_shards

KNOWN_COLUMNS = ("report", "age", "sex", "hr", *TEXT_COLUMNS, "n", "weight")
RANGES = {"age": (0, 120, "years"), "hr": (20, 300, "bpm")}
_REPORT_K = re.compile(r"^report_(\d+)$")
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


@dataclass(frozen=True)
class Spec:
    """One validated manifest row; ``spec_id`` is its 0-based position, which seeds and provenance use.
    ``condition_source``/``condition_citation``: where the reports came from (`synthgen manifest describe`)."""

    spec_id: int
    condition: Condition
    label: str | None = None
    n: int | None = None
    weight: float | None = None
    condition_source: str | None = None
    condition_citation: str | None = None

    def text_fields(self) -> dict[str, str | None]:
        """The TEXT_COLUMNS of this row, which every output row of the spec carries."""
        return {"label": self.label, "condition_source": self.condition_source,
                "condition_citation": self.condition_citation}


def _cell(value: object) -> str:
    """A manifest cell as stripped text; None/NaN (Parquet nulls, pandas NA) are blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


def _number(text: str, lo: float, hi: float) -> float:
    value = float(text)
    if not (lo <= value <= hi):
        raise ValueError
    return value


def _count(text: str) -> int | None:
    """A non-negative integer ("3" or Parquet's 3.0), else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value >= 0 and value.is_integer() else None


def _read_table(url: str, storage_options: StorageOptions) -> pd.DataFrame:
    fs, path = resolve(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"manifest {url}: file not found")
    try:
        if path.endswith(".parquet"):
            return read_parquet(fs, path).to_pandas()
        with fs.open(path, "rb") as f:
            return pd.read_csv(f, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as e:  # pandas parser / pyarrow errors both derive from these
        raise InputError(f"manifest {url}: cannot read it as {'Parquet' if path.endswith('.parquet') else 'CSV'} "
                         f"({e})") from e


def _report_columns(df: pd.DataFrame, url: str) -> list[str]:
    numbered = sorted((c for c in df.columns if _REPORT_K.match(str(c))), key=lambda c: int(_REPORT_K.match(c)[1]))
    unknown = [c for c in df.columns if c not in KNOWN_COLUMNS and c not in numbered]
    problems = []
    if unknown:
        problems.append(f"unknown column(s) {unknown} (expected report or report_1..report_k, age, sex, hr, "
                        "label, condition_source, condition_citation, n, weight)")
    if "report" in df.columns and numbered:
        problems.append("has both 'report' and report_1.. columns: use one form")
    if "report" not in df.columns and not numbered:
        problems.append("no report column: expected 'report' (reports separated by ' | ') or report_1..report_k")
    if "n" in df.columns and "weight" in df.columns:
        problems.append("has both 'n' and 'weight' columns: use one")
    if problems:
        raise InputError(f"manifest {url}: " + "; ".join(problems))
    return numbered or ["report"]


def _reports(row: pd.Series, columns: list[str]) -> tuple[str, ...]:
    value = row[columns[0]] if columns == ["report"] else None
    if value is not None and not isinstance(value, str) and hasattr(value, "__len__"):  # Parquet list<str>
        parts = [_cell(v) for v in value]
    elif columns == ["report"]:
        parts = _cell(value).split(REPORT_SEP.strip())
    else:
        parts = [_cell(row[c]) for c in columns]
    return tuple(p.strip() for p in parts if p.strip())


def _parse_row(i: int, row: pd.Series, report_cols: list[str], errors: list[str]) -> Spec:
    """Parse one row, appending one message per bad field to ``errors`` (row numbers are 1-based)."""
    def bad(field: str, value: str, expected: str) -> None:
        errors.append(f"row {i + 1}: {field}={value!r}: expected {expected}")

    reports = _reports(row, report_cols)
    if not reports:
        bad(report_cols[0], "", "at least one non-empty report")
    fields: dict[str, float | str | int | None] = {}
    for name, (lo, hi, unit) in RANGES.items():
        text = _cell(row.get(name))
        try:
            fields[name] = _number(text, lo, hi) if text else None
        except ValueError:
            bad(name, text, f"a number from {lo} to {hi} ({unit}) or blank")
    sex = _cell(row.get("sex"))
    if sex and sex.lower() not in _SEX:
        bad("sex", sex, "M, F, male, female or blank")
    n_text, w_text = _cell(row.get("n")), _cell(row.get("weight"))
    n = weight = None
    if "n" in row.index:
        n = _count(n_text)
        if n is None:
            bad("n", n_text, "a non-negative integer")
    if "weight" in row.index:
        try:
            weight = _number(w_text, 0, math.inf)
        except ValueError:
            bad("weight", w_text, "a non-negative number")
    return Spec(spec_id=i, condition=Condition(reports=reports, age=fields.get("age"),
                                               sex=_SEX.get(sex.lower()) if sex else None, hr=fields.get("hr")),
                label=_cell(row.get("label")) or None, n=n, weight=weight,
                condition_source=" ".join(_cell(row.get("condition_source")).split()) or None,
                condition_citation=" ".join(_cell(row.get("condition_citation")).split()) or None)


def read_manifest(url: str, storage_options: StorageOptions = None) -> list[Spec]:
    """Validate every row at once: all bad rows are listed in one InputError, so nothing is sampled or written."""
    return parse_manifest(_read_table(url, storage_options), url)


def parse_manifest(df: pd.DataFrame, url: str) -> list[Spec]:
    """The specs of a manifest table already in memory; ``url`` names it in errors."""
    if df.empty:
        raise InputError(f"manifest {url}: no rows")
    report_cols = _report_columns(df, url)
    errors: list[str] = []
    specs = [_parse_row(i, row, report_cols, errors) for i, (_, row) in enumerate(df.iterrows())]
    if errors:
        raise InputError(f"manifest {url}: {len(errors)} bad value(s):\n  " + "\n  ".join(errors))
    return specs


def largest_remainder(weights: list[float], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights``; ties go to the earlier row, so the split is deterministic."""
    s = sum(weights)
    quotas = [w * total / s for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda j: (-(quotas[j] - counts[j]), j))
    for j in order[: total - sum(counts)]:
        counts[j] += 1
    return counts


def sample_counts(specs: list[Spec], n: int | None) -> list[int]:
    """Samples per spec: without ``--n`` the ``n`` column as is (no column: 1 per row); with ``--n``, the total
    spread by n/weight, or evenly."""
    if n is None:
        return [1 if s.n is None else s.n for s in specs]
    if n < 0:
        raise InputError(f"--n={n}: expected a non-negative integer")
    weights = [float(s.n if s.n is not None else s.weight if s.weight is not None else 1.0) for s in specs]
    if sum(weights) <= 0:
        raise InputError("manifest: every row has n/weight 0, so --n cannot be spread over the rows")
    return largest_remainder(weights, n)


def specs_fingerprint(specs: list[Spec]) -> str:
    """sha256 of the validated conditions (not the file bytes): a reformatted but equal manifest resumes a run.
    Provenance columns count only when present, so manifests without them keep their fingerprint."""
    rows = [[asdict(s.condition), s.label] + ([s.condition_source, s.condition_citation]
                                              if s.condition_source or s.condition_citation else [])
            for s in specs]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def class_conditions(data: str, label: str | None, *, negative: bool = False, split: str = "train",
                     storage_options: StorageOptions = None) -> pd.DataFrame:
    """Manifest rows (report, age, sex, hr, label, n=1) of the real ``split`` records with ``label`` (af|pvc|
    abnormal) true, or with it false when ``negative`` (labelled ``not_<label>``), in ecg_id order.
    ``label=None`` takes every record of the split, unlabelled (e.g. the test split's conditions, to evaluate).

    Generating from real conditions of a class keeps its age/sex/HR/report combinations realistic.
    """
    if label is not None and label not in LABELS:
        raise InputError(f"--label={label!r}: expected one of {', '.join(LABELS)}")
    columns = ["reports", "age", "sex", "hr", *([label] if label else [])]
    df = read_shards(data, split, columns, storage_options=storage_options).to_pandas()
    if label is not None:
        df = df[df[label].fillna(False).astype(bool) != negative]
    if df.empty:
        raise InputError(f"{data}: no {split} records" + (f" with {label}={not negative}" if label else ""))
    return pd.DataFrame({
        "report": [REPORT_SEP.join(r) for r in df["reports"]],
        "age": df["age"].to_numpy(), "sex": df["sex"].to_numpy(), "hr": df["hr"].round(1).to_numpy(),
        "label": "" if label is None else f"not_{label}" if negative else label, "n": 1,
    })


def write_manifest(manifest: pd.DataFrame, out: str, storage_options: StorageOptions = None) -> None:
    """A manifest table as CSV, or Parquet when ``out`` ends in .parquet; written atomically."""
    fs, path = resolve(out, storage_options)
    data_bytes = (manifest.to_parquet(index=False) if path.endswith(".parquet")
                  else manifest.to_csv(index=False).encode())
    write_bytes_atomic(fs, path, data_bytes)


def describe_manifest(descriptions: Sequence[Description], *, age: float | None = None, sex: str | None = None,
                      hr: float | None = None, n: int = 10) -> pd.DataFrame:
    """One manifest row per described condition: its findings as report_1..report_k (most important first), the
    patient info given, HR = ``hr``, else the condition's typical HR, else blank (unknown), label = the
    condition, and the provenance columns."""
    k = max(len(d.findings) for d in descriptions)
    rows = [{**{f"report_{j + 1}": (d.findings[j] if j < len(d.findings) else "") for j in range(k)},
             "age": age, "sex": sex, "hr": hr if hr is not None else d.typical_hr, "label": d.condition, "n": n,
             "condition_source": d.source, "condition_citation": d.citation} for d in descriptions]
    return pd.DataFrame(rows, columns=[*(f"report_{j + 1}" for j in range(k)), "age", "sex", "hr", "label", "n",
                                       "condition_source", "condition_citation"])


def build_describe_manifest(conditions: Sequence[str], out: str, *, source: str = "curated",
                            model: str | None = None, age: float | None = None, sex: str | None = None,
                            hr: float | None = None, n: int = 10, cache: str | None = None,
                            storage_options: StorageOptions = None, **service_kwargs) -> list[Description]:
    """Stage 1 of the paper's two-stage flow for rare conditions: describe each condition as ECG findings
    (``conditions.describe``: the curated table or an OpenAI chat model) and write them as a manifest that a
    person can read and edit before `synthgen generate` (stage 2). The options are checked and every
    condition described before anything is written. Returns the descriptions."""
    problems = [f"--{name}={value:g}: expected a number from {lo} to {hi} ({unit})"
                for name, value in (("age", age), ("hr", hr)) if value is not None
                for lo, hi, unit in [RANGES[name]] if not lo <= value <= hi]
    if sex is not None and sex.strip().lower() not in _SEX:
        problems.append(f"--sex={sex!r}: expected M, F, male or female")
    if n < 0:
        problems.append(f"--n={n}: expected a non-negative integer")
    if problems:
        raise InputError("; ".join(problems))
    descriptions = describe(conditions, source, model=model, cache=cache, storage_options=storage_options,
                            **service_kwargs)
    manifest = describe_manifest(descriptions, age=age, sex=_SEX[sex.strip().lower()] if sex else None, hr=hr, n=n)
    parse_manifest(manifest, out)  # what `generate` will accept: fail here rather than after the user's edits
    write_manifest(manifest, out, storage_options)
    return descriptions


def build_minority_manifest(data: str, label: str, out: str, split: str = "train",
                            storage_options: StorageOptions = None) -> int:
    """Write a manifest of the conditions of real ``label`` (af|pvc|abnormal) records, one row each, as the
    paper augments. Returns the number of rows written."""
    manifest = class_conditions(data, label, split=split, storage_options=storage_options)
    write_manifest(manifest, out, storage_options)
    return len(manifest)
