"""Outputs of `synthgen generate` (schema generated-v3, docs/schema-outputs.md): the Parquet shard schema, the
layout of an output folder (shard names, commit markers), its WFDB records and the reader every command uses.

The signal is stored as nested fixed-size lists (12 × 1024 float32), so plain pandas/pyarrow readers get the
shape without Ray's tensor extension type — the same layout as the training shards (``synthgen.io.shards``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import fsspec
import numpy as np
import pyarrow as pa

from synthgen.ecg import FS, LEADS, N_LEADS, N_SAMPLES
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join, read_parquet, resolve, write_bytes_atomic
from synthgen.io.shards import REPORT_SEP, signal_array, to_parquet_bytes
from synthgen.io.wfdb import WfdbRecord, write_records

if TYPE_CHECKING:  # the rows' inputs; io sits below conditions/ and data/, so only their types are named here
    from synthgen.conditions.spec import Condition
    from synthgen.data.plausibility import Plausibility

_PART = re.compile(r"part-(\d+)")
SCHEMA_VERSION = "generated-v3"  # v2: attempt, plausible, implausible_reasons, measured_hr; v3: decoder
TEXT_COLUMNS = ("label", "condition_source", "condition_citation")  # manifest free text, copied to every row

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("ecg_id", pa.string(), nullable=False),
        pa.field("signal", pa.list_(pa.list_(pa.float32(), N_SAMPLES), N_LEADS), nullable=False),
        pa.field("reports", pa.list_(pa.string()), nullable=False),
        pa.field("report_text", pa.string(), nullable=False),
        pa.field("age", pa.float64()),
        pa.field("sex", pa.string()),
        pa.field("hr", pa.float64()),
        pa.field("label", pa.string()),
        pa.field("condition_source", pa.string()),
        pa.field("condition_citation", pa.string()),
        pa.field("spec_id", pa.int64(), nullable=False),
        pa.field("sample_index", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("plausible", pa.bool_(), nullable=False),
        pa.field("implausible_reasons", pa.list_(pa.string()), nullable=False),
        pa.field("measured_hr", pa.float64()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("model_hash", pa.string(), nullable=False),
        pa.field("sampler", pa.string(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("guidance", pa.float64(), nullable=False),
        pa.field("decoder", pa.string(), nullable=False),
        pa.field("synthgen_version", pa.string(), nullable=False),
        pa.field("fs", pa.float64(), nullable=False),
        pa.field("wfdb_record", pa.string()),
    ],
    metadata={"synthgen.schema": SCHEMA_VERSION, "synthgen.leads": ",".join(LEADS)},
)


@dataclass(frozen=True)
class Provenance:
    """Per-run facts stamped on every row and WFDB header."""

    run_id: str
    model_hash: str
    sampler: str
    steps: int
    guidance: float
    synthgen_version: str
    decoder: str = "vae"  # the latent decoder (ECGPipeline's ``decoder``): "vae" or "tiny"


def shard_name(shard: int) -> str:
    """Name of output shard ``shard`` (its Parquet file and WFDB folder), the same on every rerun."""
    return f"part-{shard:05d}"


def commit_marker(shard: int, output_format: str) -> str:
    """The file whose presence means the shard is complete (written last): its Parquet file, or for
    WFDB-only runs the record folder's RECORDS list."""
    name = shard_name(shard)
    return f"wfdb/{name}/RECORDS" if output_format == "wfdb" else f"shards/{name}.parquet"


def committed_shards(fs: fsspec.AbstractFileSystem, root: str, output_format: str) -> set[int]:
    """Shards already complete under ``root`` (one listing, bypassing s3fs's listing cache)."""
    fs.invalidate_cache()
    pattern = join(root, commit_marker(0, output_format).replace(shard_name(0), "part-*"))
    return {int(m[1]) for p in fs.glob(pattern) if (m := _PART.search(p))}


def record_name(spec_id: int, index: int) -> str:
    """WFDB-safe, unique per (spec, sample) and stable across reruns; also the row's ``ecg_id``."""
    return f"s{spec_id:06d}_{index:06d}"


def shard_table(signals: np.ndarray, conditions: list[Condition], text_fields: list[dict[str, str | None]],
                spec_ids: np.ndarray, indices: np.ndarray, seeds: np.ndarray, prov: Provenance,
                wfdb_dir: str | None, attempts: np.ndarray, verdicts: list[Plausibility]) -> pa.Table:
    """One shard's rows. ``text_fields``: per row, the manifest's free-text columns (label, condition_source,
    condition_citation; a missing key is null). ``seeds`` are the seeds used (the ``attempts``-th of each
    sample's stream), ``verdicts`` the plausibility checks; ``wfdb_dir`` is the records' folder relative to
    the output root, or None."""
    n = len(conditions)
    if signals.shape != (n, N_LEADS, N_SAMPLES):
        raise ValueError(f"sampler returned {signals.shape}, expected ({n}, {N_LEADS}, {N_SAMPLES})")
    names = [record_name(int(s), int(i)) for s, i in zip(spec_ids, indices)]
    columns = {
        "ecg_id": names,
        "signal": signal_array(signals),
        "reports": [list(c.reports) for c in conditions],
        "report_text": [REPORT_SEP.join(c.reports) for c in conditions],
        "age": [c.age for c in conditions],
        "sex": [c.sex for c in conditions],
        "hr": [c.hr for c in conditions],
        **{k: [t.get(k) for t in text_fields] for k in TEXT_COLUMNS},
        "spec_id": spec_ids, "sample_index": indices, "seed": seeds, "attempt": attempts,
        "plausible": [v.ok for v in verdicts], "implausible_reasons": [list(v.reasons) for v in verdicts],
        "measured_hr": [v.measured_hr for v in verdicts],
        "run_id": [prov.run_id] * n, "model_hash": [prov.model_hash] * n, "sampler": [prov.sampler] * n,
        "steps": [prov.steps] * n, "guidance": [prov.guidance] * n, "decoder": [prov.decoder] * n,
        "synthgen_version": [prov.synthgen_version] * n, "fs": [FS] * n,
        "wfdb_record": [f"{wfdb_dir}/{name}" for name in names] if wfdb_dir else [None] * n,
    }
    return pa.Table.from_pydict(columns, schema=OUTPUT_SCHEMA)


def resample(signals: np.ndarray, fs_out: float) -> np.ndarray:
    """Polyphase resampling of (…, N_SAMPLES) at 102.4 Hz to ``fs_out`` over the same 10 s."""
    from scipy.signal import resample_poly

    n_out = round(fs_out * N_SAMPLES / FS)
    g = math.gcd(n_out, N_SAMPLES)
    return resample_poly(signals, n_out // g, N_SAMPLES // g, axis=-1)


def write_wfdb_records(fs: fsspec.AbstractFileSystem, out_dir: str, table: pa.Table, signals: np.ndarray,
                       wfdb_fs: float | None) -> None:
    """Write one .hea/.dat record per row into ``out_dir`` (local or object store), then its RECORDS list.

    Conditions and provenance go in the header comments (``key: value``, escaped to one ASCII line by
    ``synthgen.io.wfdb``; the Parquet row keeps the exact text). Each record is read back and compared with
    the signal before it is committed (``synthgen.io.wfdb.write_records``).
    """
    fs_out = float(wfdb_fs) if wfdb_fs else FS
    sig = resample(signals, fs_out) if wfdb_fs else signals
    rows = table.drop_columns(["signal"]).to_pylist()
    records = (WfdbRecord(row["ecg_id"], x, fs_out,
                          {k: REPORT_SEP.join(v) if k == "reports" else v for k, v in row.items()
                           if k not in ("report_text", "ecg_id", "wfdb_record", "fs") and v is not None})
               for row, x in zip(rows, sig))
    # RECORDS (the WFDB database index) goes last: in WFDB-only runs it is the shard's commit marker
    write_records(fs, out_dir, records)


def write_parts(columns: pa.Table, x: np.ndarray, out: str, rows_per_part: int,
                storage_options: StorageOptions = None) -> int:
    """Rows of ``columns`` with ECGs ``x`` (N, 12, 1024) as their ``signal`` → ``<out>/shards/part-NNNNN.parquet``
    of ``rows_per_part`` rows (at least one part), the layout ``read_generated`` reads (e.g. `evaluate`'s peer
    sets); returns the row count."""
    fs, root = resolve(out, storage_options)
    for part, start in enumerate(range(0, max(len(x), 1), rows_per_part)):
        chunk = x[start:start + rows_per_part]
        table = columns.slice(start, len(chunk)).append_column("signal", signal_array(chunk))
        write_bytes_atomic(fs, join(root, "shards", f"{shard_name(part)}.parquet"), to_parquet_bytes(table))
    return len(x)


READ_COLUMNS = ("ecg_id", "signal", "reports", "hr", "label")  # what every reader of generated ECGs needs


def read_generated(url: str, storage_options: StorageOptions = None,
                   columns: tuple[str, ...] = READ_COLUMNS) -> pa.Table:
    """All rows of a `synthgen generate` output (``<url>/shards/part-*.parquet``), ``columns`` of them; a column
    missing from a part raises pyarrow's ArrowInvalid."""
    fs, root = resolve(url, storage_options)
    parts = sorted(fs.glob(join(root, "shards", "part-*.parquet")))
    if not parts:
        raise InputError(f"{url}: no generated shards (shards/part-*.parquet); is it a `synthgen generate` output?")
    return pa.concat_tables([read_parquet(fs, path, list(columns)) for path in parts])
