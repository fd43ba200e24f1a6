"""What every source needs on the driver: open its folder, check its layout, read its tables."""

from __future__ import annotations

import fsspec
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
    """A CSV (optionally .gz) or Parquet table, with ``columns`` checked; ``what`` names it in errors."""
    try:
        if path.endswith(".parquet"):
            df = read_parquet(fs, path).to_pandas()
        else:
            with fs.open(path, "rb") as f:
                df = pd.read_csv(f, compression="gzip" if path.endswith(".gz") else None, low_memory=False)
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except Exception as e:  # pandas/pyarrow raise many types for unparsable files
        raise InputError(f"{what} {path}: cannot read it as a table ({type(e).__name__}: {e})") from None
    missing = columns - set(df.columns)
    if missing:
        raise InputError(f"{what} {path}: missing column(s) {sorted(missing)}, has {list(df.columns)}")
    return df


def record_names(fs: fsspec.AbstractFileSystem, root: str) -> set[str]:
    """WFDB record names (``.hea`` paths relative to ``root``, without extension) under ``root``, recursively."""
    if not fs.isdir(root):
        return set()
    return {p[len(root) + 1:-4] for p in fs.find(root) if p.endswith(".hea")}


def text(value: object) -> str:
    """A table cell as stripped text; missing (NaN/None) → ""."""
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()


def number(value: object) -> float | None:
    """A table cell as float; missing or unparsable → None."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if pd.isna(out) else out


def age(value: object) -> float | None:
    """Years, capped at ``MAX_AGE`` (PTB-XL's 300 becomes 90); None if missing or negative."""
    years = number(value)
    return None if years is None or years < 0 else min(years, MAX_AGE)


def sex(value: object) -> str | None:
    """"M"/"F" from M/F/male/female (any case); None otherwise (numeric codes are each source's job)."""
    return {"m": "M", "male": "M", "f": "F", "female": "F"}.get(text(value).lower())
