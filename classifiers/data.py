"""Labelled ECG sets for one binary task: real splits from prepared shards, synthetic rows from a generate output.

Labels come from the shards (prepare derives them from SCP codes or report text). A synthetic row's class is its
manifest ``label`` (``af`` or ``not_af`` as augment-eval writes them); rows with another or no label are
classified from their reports, so any `synthgen generate` output can be used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthgen.data.labels import labels_from_text
from synthgen.errors import InputError
from synthgen.generate.writers import read_generated
from synthgen.io.paths import StorageOptions
from synthgen.io.shards import read_shards, signals

TASKS = ("af", "pvc", "abnormal")
SPLITS = ("train", "val", "test")


@dataclass
class LabelledSet:
    """ECGs (N, 12, 1024) float32 mV and labels (N,) int64: 1 = the task's label (af, pvc, abnormal), 0 = not."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[int, int]:
        return {c: int(np.sum(self.y == c)) for c in (0, 1)}

    def of_class(self, c: int) -> LabelledSet:
        keep = self.y == c
        return LabelledSet(self.x[keep], self.y[keep])

    def take(self, idx: np.ndarray) -> LabelledSet:
        return LabelledSet(self.x[idx], self.y[idx])

    @staticmethod
    def concat(*sets: LabelledSet) -> LabelledSet:
        return LabelledSet(np.concatenate([s.x for s in sets]), np.concatenate([s.y for s in sets]))


def check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"--task {task!r}: expected one of {', '.join(TASKS)}")


def real_splits(data: str, task: str, storage_options: StorageOptions = None) -> dict[str, LabelledSet]:
    """The train/val/test splits of prepared shards for ``task``; refuses splits that share a patient.

    A record-level split lets a patient's other ECGs leak into the test set; prepare splits by patient, and
    this check keeps shards from elsewhere honest.
    """
    check_task(task)
    table = read_shards(data, columns=["signal", "split", "patient_id", task], storage_options=storage_options)
    split = np.asarray(table.column("split").to_pylist())
    patients = np.asarray(table.column("patient_id").to_pylist(), dtype=object)
    y = np.asarray(table.column(task).fill_null(False).to_pylist(), dtype=np.int64)
    x = signals(table)
    out = {}
    for name in SPLITS:
        keep = split == name
        if not keep.any():
            raise InputError(f"{data}: no {name} split; augment-eval needs train, val and test")
        out[name] = LabelledSet(x[keep], y[keep])
        if len(set(out[name].y.tolist())) < 2:
            raise InputError(f"{data}: the {name} split has only {task}={bool(out[name].y[0])} records; "
                             "both classes are needed")
    shared = {a: b for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
              if set(patients[split == a]) & set(patients[split == b])}
    if shared:
        a, b = next(iter(shared.items()))
        raise InputError(f"{data}: patients appear in both the {a} and {b} splits; augment-eval needs "
                         "patient-disjoint splits (as `synthgen prepare` makes)")
    return out


def synthetic_set(url: str, task: str, storage_options: StorageOptions = None) -> LabelledSet:
    """Every row of a `synthgen generate` output, labelled for ``task``."""
    check_task(task)
    table = read_generated(url, storage_options)
    labels = table.column("label").to_pylist()
    reports = table.column("reports").to_pylist()
    y = np.asarray([1 if lab == task else 0 if lab == f"not_{task}" else int(labels_from_text(rep or [])[task])
                    for lab, rep in zip(labels, reports)], dtype=np.int64)
    return LabelledSet(signals(table), y)
