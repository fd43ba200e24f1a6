"""`synthgen prepare`: a PhysioNet dataset → training shards (Parquet), _rejects.parquet and _dataset.json.

The driver reads the source's metadata into tasks (any bad ``--src`` fails here, before anything is
written), Ray runs the pure per-record function over chunks, and results come back in ecg_id order so
shards are deterministic: ``part-00000.parquet`` … with ``SHARD_ROWS`` rows each. A rerun into the same
place overwrites those names, then removes stale parts of an earlier, larger run, and writes
_dataset.json last, so a reader that trusts _dataset.json never sees a half-written dataset. The two
metadata files start with "_" so that Parquet readers given the folder (pandas, pyarrow, Ray Data) skip
them and read exactly the rows.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

import synthgen
from synthgen.data.record import RecordTask, process
from synthgen.data.sources import mimic_iv_ecg, physionet_challenge, ptbxl, wfdb_folder
from synthgen.data.splits import SPLITS
from synthgen.errors import InputError
from synthgen.io import shards
from synthgen.io.paths import StorageOptions, check_writable, join, resolve, write_bytes_atomic, write_json_atomic

SOURCES = ("ptbxl", "mimic-iv-ecg", "wfdb", "physionet-challenge")
SHARD_ROWS = 1000
MAX_CHUNK = 50  # records per Ray task: small enough to balance 2 cores, large enough to amortise overhead
REJECT_SCHEMA = pa.schema([(name, pa.string()) for name in ("ecg_id", "source", "path", "reason", "detail")])


def prepare(source: str, src: str, out: str, *, metadata: str | None = None, patients: str | None = None,
            workers: int | None = None, storage_options: dict | None = None,
            shard_rows: int = SHARD_ROWS) -> dict:
    """Convert ``src`` (a ``source`` layout) into shards under ``out``; return the _dataset.json summary.

    Raises InputError, writing nothing, if ``src`` (or ``metadata``/``patients``) is missing or not the
    expected layout. Bad records do not stop the run: they are listed in _rejects.parquet.
    ``shard_rows`` exists so tests can exercise several shards on a small input.
    """
    tasks = sorted(_tasks(source, src, metadata, patients, storage_options), key=lambda t: t.ecg_id)
    if not tasks:
        raise InputError(f"--src {src}: the metadata lists no records")
    check_writable(out, storage_options)  # before Ray starts
    fs, root = resolve(out, storage_options)
    if fs.exists(join(root, shards.SUMMARY)):  # an earlier run's summary must not vouch for a half-done rerun
        fs.rm(join(root, shards.SUMMARY))
    writer = _ShardWriter(fs, root)
    rejects: list[dict] = []
    pending: list[pa.Table] = []
    for table, chunk_rejects in _results(tasks, workers, storage_options):
        rejects += chunk_rejects
        pending.append(table)
        while sum(len(t) for t in pending) >= shard_rows:
            whole = pa.concat_tables(pending)
            writer.write(whole.slice(0, shard_rows))
            pending = [whole.slice(shard_rows)]
    rest = pa.concat_tables(pending) if pending else shards.to_table([])
    if len(rest) or not writer.parts:  # an all-rejected run still gets one (empty) part: readers see the schema
        writer.write(rest)
    for stale in sorted(set(shards.list_parts(out, storage_options)) - {join(root, p) for p in writer.parts}):
        fs.rm(stale)
    write_bytes_atomic(fs, join(root, shards.REJECTS),
                       shards.to_parquet_bytes(pa.Table.from_pylist(rejects, REJECT_SCHEMA)))
    counts = writer.counts
    summary = {
        "schema_version": shards.SCHEMA_VERSION, "synthgen_version": synthgen.__version__,
        "source": source, "records_seen": len(tasks), "rows": counts["rows"], "rejected": len(rejects),
        "splits": {s: counts[f"split:{s}"] for s in SPLITS},
        "labels": {name: counts[f"label:{name}"] for name in shards.LABELS},
        "labels_by_split": {s: {name: counts[f"label:{name}:{s}"] for name in shards.LABELS} for s in SPLITS},
        "hr_source": {h: counts[f"hr:{h}"] for h in ("rr", "qrs")},
        "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        "shards": writer.parts, "fingerprint": writer.digest.hexdigest(),
    }
    write_json_atomic(fs, join(root, shards.SUMMARY), summary)
    return summary


def _tasks(source: str, src: str, metadata: str | None, patients: str | None,
           storage_options: StorageOptions) -> list[RecordTask]:
    if source == "ptbxl":
        return ptbxl.tasks(src, storage_options)
    if source == "mimic-iv-ecg":
        return mimic_iv_ecg.tasks(src, patients, storage_options)
    if source == "wfdb":
        return wfdb_folder.tasks(src, metadata, storage_options)
    if source == "physionet-challenge":
        return physionet_challenge.tasks(src, storage_options)
    raise InputError(f"source {source!r}: expected one of {', '.join(SOURCES)}")


class _ShardWriter:
    """Writes numbered shards in order, folding their bytes into the fingerprint and rows into counts."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs, self.root = fs, root
        self.parts: list[str] = []
        self.digest = hashlib.sha256()
        self.counts: Counter[str] = Counter()

    def write(self, table: pa.Table) -> None:
        name = shards.part_name(len(self.parts))
        data = shards.to_parquet_bytes(table)
        write_bytes_atomic(self.fs, join(self.root, name), data)
        self.parts.append(name)
        self.digest.update(name.encode() + b"\0" + data)
        self.counts["rows"] += len(table)
        for key, column in (("split", "split"), ("hr", "hr_source")):
            self.counts.update({f"{key}:{k}": n for k, n in Counter(table[column].to_pylist()).items()})
        for label in shards.LABELS:
            self.counts[f"label:{label}"] += pc.sum(table[label]).as_py() or 0
            for split in SPLITS:
                both = pc.and_(table[label], pc.equal(table["split"], split))
                self.counts[f"label:{label}:{split}"] += pc.sum(both).as_py() or 0


def _process_chunk(chunk: list[RecordTask], storage_options: StorageOptions) -> tuple[pa.Table, list[dict]]:
    """The Ray task: process records one by one (pure), return their rows as one table plus rejects."""
    rows, rejects = [], []
    for task in chunk:
        row, reject = process(task, storage_options)
        if row is not None:
            rows.append(row)
        else:
            rejects.append(reject)
    return shards.to_table(rows), rejects


def _results(tasks: list[RecordTask], workers: int | None,
             storage_options: StorageOptions) -> Iterator[tuple[pa.Table, list[dict]]]:
    """Chunk results in task order, computed in parallel on Ray with a bounded number in flight.

    Reuses a running Ray (``workers`` then caps the chunks in flight); otherwise starts one with
    ``workers`` CPUs and shuts it down afterwards.
    """
    from synthgen.cluster import console, ray_session

    with ray_session(workers) as ray:
        slots = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = max(1, min(MAX_CHUNK, -(-len(tasks) // (4 * slots))))
        chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
        remote = ray.remote(num_cpus=1, max_retries=2)(_process_chunk)
        pending: dict = {}
        done: dict[int, tuple[pa.Table, list[dict]]] = {}
        submitted = yielded = 0
        with tqdm(total=len(tasks), unit="rec", desc="prepare", file=console()) as bar:
            while yielded < len(chunks):
                # bounded: only ~2×slots chunks are ever running or waiting to be written
                while submitted < len(chunks) and len(pending) + len(done) < 2 * slots:
                    pending[remote.remote(chunks[submitted], storage_options)] = submitted
                    submitted += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ready[0])
                done[index] = ray.get(ready[0])
                bar.update(len(chunks[index]))
                while yielded in done:
                    yield done.pop(yielded)
                    yielded += 1
