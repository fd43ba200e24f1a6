"""Training shards (schema v1, docs/schema-shards.md): the one place that knows their Parquet layout.

``signal`` is a nested fixed-size list (12 leads × 1024 float32) so plain ``pandas.read_parquet`` and
any Arrow reader see the shape without Ray's tensor extension; ``signals`` flattens it to numpy without
a Python loop over rows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthgen.ecg import N_LEADS, N_SAMPLES
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join, read_json, read_parquet, resolve

SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = b"synthgen.shards.schema_version"
PART_GLOB = "part-*.parquet"
# Beside the parts, named with a leading "_" so that Parquet readers given the folder skip them.
SUMMARY = "_dataset.json"
REJECTS = "_rejects.parquet"
LABELS = ("af", "pvc", "abnormal")  # the boolean label columns (docs/schema-shards.md)
REPORT_SEP = " | "  # joins a record's reports into ``report_text`` (and manifest, WFDB and caption text)

SCHEMA = pa.schema(
    [
        ("ecg_id", pa.string()),
        ("source", pa.string()),
        ("patient_id", pa.string()),
        ("split", pa.string()),
        ("signal", pa.list_(pa.list_(pa.float32(), N_SAMPLES), N_LEADS)),
        ("reports", pa.list_(pa.string())),
        ("report_text", pa.string()),
        ("age", pa.float64()),
        ("sex", pa.string()),
        ("hr", pa.float64()),
        ("hr_source", pa.string()),
        *((label, pa.bool_()) for label in LABELS),
        ("scp_codes", pa.list_(pa.string())),
        ("fs_source", pa.float64()),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)


def part_name(index: int) -> str:
    """Deterministic shard file name, so a rerun overwrites rather than adds."""
    return f"part-{index:05d}.parquet"


def signal_array(x: np.ndarray) -> pa.FixedSizeListArray:
    """ECGs (N, 12, 1024) in mV → the ``signal`` column (12 × 1024 nested fixed-size lists of float32) that
    training shards, generate outputs and peer sets share; ``signals`` is its inverse."""
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, N_SAMPLES), N_LEADS)


def to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with a (12, 1024) float32 ``signal``) → a table in the shard schema."""
    signal = signal_array(np.stack([r["signal"] for r in rows]) if rows else np.zeros((0, N_LEADS, N_SAMPLES)))
    cols = {name: [r[name] for r in rows] for name in SCHEMA.names if name != "signal"}
    arrays = [signal if f.name == "signal" else pa.array(cols[f.name], f.type) for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def to_parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table (a shard keeps its schema-version metadata); same table → same bytes. The one Parquet
    writer of synthgen's ECG tables: a whole file in memory, committed with one atomic write. No dictionary
    encoding: on the float signals it is tried and abandoned, and without it a 256-ECG shard is written in
    0.25 instead of 0.36 ms per ECG and is 5 % smaller (docs/benchmarks.md, "End to end")."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=False)
    return buf.getvalue()


def list_parts(url: str, storage_options: StorageOptions = None) -> list[str]:
    """Shard paths under ``url`` (inside its filesystem), in name order."""
    fs, root = resolve(url, storage_options)
    return sorted(fs.glob(join(root, PART_GLOB)))


def read_summary(url: str, storage_options: StorageOptions = None) -> dict | None:
    """The ``_dataset.json`` summary of the shards under ``url`` (counts, fingerprint), or None if absent."""
    fs, root = resolve(url, storage_options)
    path = join(root, SUMMARY)
    return read_json(fs, path) if fs.exists(path) else None


def read_shards(url: str, split: str | None = None, columns: list[str] | None = None,
                storage_options: StorageOptions = None) -> pa.Table:
    """All rows of the shards under ``url`` (optionally one split, some columns), in ecg_id order."""
    fs, root = resolve(url, storage_options)
    parts = sorted(fs.glob(join(root, PART_GLOB)))
    if not parts:
        raise InputError(f"{url}: no training shards ({PART_GLOB}) found; run `synthgen prepare` first")
    read_cols = None if columns is None else list(dict.fromkeys([*columns, *(["split"] if split else [])]))
    tables = []
    for path in parts:
        t = read_parquet(fs, path, read_cols)
        version = (t.schema.metadata or {}).get(SCHEMA_VERSION_KEY)
        if version != str(SCHEMA_VERSION).encode():
            raise InputError(f"{path}: shard schema version {version!r}, expected {SCHEMA_VERSION}")
        if split is not None:
            t = t.filter(pc.equal(t["split"], split))
        tables.append(t.select(columns) if columns is not None else t)
    return pa.concat_tables(tables)


def signals(table: pa.Table) -> np.ndarray:
    """The ``signal`` column as one float32 array (N, 12, 1024) in mV, canonical lead order."""
    col = table.column("signal").combine_chunks()
    flat = col.flatten().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(col), N_LEADS, N_SAMPLES)
