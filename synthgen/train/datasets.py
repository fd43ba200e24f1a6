"""Training shards as Ray Datasets: read Parquet, keep one split, turn rows into model inputs.

Ray Train hands each worker its own streaming shard of these datasets (`ray.train.get_dataset_shard`), so
the same code feeds one CPU worker here and many GPU workers on a cluster without loading the data twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from synthgen.conditions.patient import PatientStats
from synthgen.conditions.prompts import ordered_prompt
from synthgen.conditions.spec import Condition
from synthgen.io.paths import resolve
from synthgen.io.shards import list_parts, signals

TRAIN_COLUMNS = ["split", "signal", "reports", "age", "sex", "hr"]


def _to_inputs(table: pa.Table, split: str, stats: dict[str, float]) -> dict[str, np.ndarray]:
    """One split's rows → signal (N,12,1024), ordered prompt, normalised patient values and present flags."""
    table = table.filter(pa.compute.equal(table["split"], split))
    conditions = [
        Condition(tuple(r["reports"]), r["age"], r["sex"], r["hr"])
        for r in table.select(["reports", "age", "sex", "hr"]).to_pylist()
    ]
    patient, present = PatientStats.from_dict(stats).encode(conditions)
    return {
        "signal": signals(table),
        "prompt": np.array([ordered_prompt(c.reports) for c in conditions], dtype=object),
        "patient": patient,
        "present": present,
    }


MATERIALIZE_BELOW_BYTES = 2 * 1024**3


def split_datasets(data: str, splits: tuple[str, ...], stats: PatientStats,
                   storage_options: dict | None = None) -> dict[str, Any]:
    """Ray Datasets of the model inputs of each of ``splits``, from one read of the shards.

    Shards smaller than 2 GiB are read once and materialised in the object store, then each split's inputs
    too (each epoch then costs milliseconds, not a re-read); larger ones stream from storage every epoch.
    """
    import ray.data

    fs, _ = resolve(data, storage_options)
    parts = list_parts(data, storage_options)
    rows = ray.data.read_parquet(parts, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)), columns=TRAIN_COLUMNS)
    small = sum(fs.size(p) for p in parts) < MATERIALIZE_BELOW_BYTES
    if small:
        rows = rows.materialize()
    out = {}
    for split in splits:
        ds = rows.map_batches(_to_inputs, batch_format="pyarrow", fn_kwargs={"split": split, "stats": stats.to_dict()})
        out[split] = ds.materialize() if small else ds
    return out


SHUFFLE_BUFFER_ROWS = 2048  # ~100 MB of 12x1024 float32 signals


def iter_numpy(shard: Any, batch_size: int, *, shuffle: bool, seed: int | None = None):
    """Batches of numpy arrays from a worker's dataset shard; a shuffle buffer when training.

    The shards are stored in ecg_id order, so a buffer of a few batches would train on near-sorted data;
    2,048 rows shuffle a PTB-XL-sized split fully and bound memory on larger ones.
    """
    return shard.iter_batches(
        batch_size=batch_size, batch_format="numpy",
        local_shuffle_buffer_size=max(SHUFFLE_BUFFER_ROWS, 4 * batch_size) if shuffle else None,
        local_shuffle_seed=seed,
    )
