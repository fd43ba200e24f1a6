"""What every source needs on the driver: open its folder, check its layout, read its tables."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd

from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join, read_parquet, resolve

MAX_AGE = 90.0  # PTB-XL codes ages >= 90 as 300; every source's ages are capped at 90 alike


def open_src(src: str, expected: str, storage_options: StorageOptions = None) -> tuple[fsspec.AbstractFileSystem,
                                                                                       str]:
    """(fs, root) of an existing folder ``src``; ``expected`` describes the layout for the error message."""
    fs, root = resolve(src, storage_options)
    if not fs.isdir(root):
        raise InputError(f"--src {src}: no such folder (expected {expected})")
    return fs, root.rstrip("/")


def require(fs: fsspec.AbstractFileSystem, root: str, src: str, expected: str, *names: str) -> None:
    """Raise if any of ``names`` (files or folders under ``root``) is absent."""
    missing = [n for n in names if not fs.exists(join(root, n))]
    if missing:
        raise InputError(f"--src {src}: not a {expected} folder, missing {', '.join(missing)}")


def read_table(fs: fsspec.AbstractFileSystem, path: str, what: str, columns: set[str]) -> pd.DataFrame:
    """A CSV (optionally .gz) or Parquet table as TEXT, with ``columns`` checked; ``what`` names it in errors.

    No cell is type-guessed: a record name ``00017`` stays ``00017`` (as a number it would be 17), an
    empty cell is "". Parquet's scalar cells become text too (``text``), so every source parses numbers
    itself (``number``) and one rule holds for both formats. Rows whose cells are all empty are dropped; the
    index keeps each row's 0-based position in the file, for messages.
    """
    list_cols: set[str] = set()  # Parquet list<…> cells (e.g. reports) stay lists
    try:
        if path.endswith(".parquet"):
            df = read_parquet(fs, path).to_pandas()
            for col in df.columns:
                if df[col].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
                    list_cols.add(col)
                else:
                    df[col] = df[col].map(text)
        else:
            with fs.open(path, "rb") as f:
                df = pd.read_csv(f, compression="gzip" if path.endswith(".gz") else None, dtype=str,
                                 keep_default_na=False)
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except Exception as e:  # pandas/pyarrow raise many types for unparsable files
        raise InputError(f"{what} {path}: cannot read it as a table ({type(e).__name__}: {e})") from None
    missing = columns - set(df.columns)
    if missing:
        raise InputError(f"{what} {path}: missing column(s) {sorted(missing)}, has {list(df.columns)}")
    blank = np.ones(len(df), dtype=bool)
    for col in df.columns:
        empty = df[col].map(lambda v: v is None or len(v) == 0) if col in list_cols else df[col].str.strip() == ""
        blank &= empty.to_numpy(dtype=bool)
    return df[~blank]


def record_names(fs: fsspec.AbstractFileSystem, root: str) -> set[str]:
    """WFDB record names (``.hea`` paths relative to ``root``, without extension) under ``root``, recursively."""
    if not fs.isdir(root):
        return set()
    return {p[len(root) + 1:-4] for p in fs.find(root) if p.endswith(".hea")}


def text(value: object) -> str:
    """A table cell as stripped text; missing (NaN/None) → ""; an integral float as an integer (a Parquet
    id column with a null is float: 17.0 → "17")."""
    if value is None or (isinstance(value, (float, np.floating)) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def number(value: object) -> float | None:
    """A table cell as a finite float; missing, unparsable, NaN or infinite → None."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def age(value: object) -> float | None:
    """Years, capped at ``MAX_AGE`` (PTB-XL's 300 becomes 90); None if missing or negative."""
    years = number(value)
    return None if years is None or years < 0 else min(years, MAX_AGE)


def sex(value: object) -> str | None:
    """"M"/"F" from M/F/male/female (any case); None otherwise (numeric codes are each source's job)."""
    return {"m": "M", "male": "M", "f": "F", "female": "F"}.get(text(value).lower())
