"""Labelled ECG sets for one binary task: real splits from prepared shards, synthetic rows from a generate output.

Labels come from the shards (prepare derives them from SCP codes or report text). A synthetic row's class is its
manifest ``label`` (``af`` or ``not_af`` as augment-eval writes them); rows with another or no label are
classified from their reports, so any `synthgen generate` output can be used. Only synthetic ECGs that passed
generate's plausibility check (its ``plausible`` column) are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from synthgen.data.labels import labels_from_text
from synthgen.errors import InputError
from synthgen.io.generated import READ_COLUMNS, read_generated
from synthgen.io.paths import StorageOptions
from synthgen.io.shards import LABELS, read_shards, signals

TASKS = LABELS  # one binary classification task per label column of the shards
SPLITS = ("train", "val", "test")


@dataclass
class LabelledSet:
    """ECGs (N, 12, 1024) float32 mV and labels (N,) int64: 1 = the task's label (af, pvc, abnormal), 0 = not;
    ``patients`` (N,) patient ids where known (real ECGs: the bootstrap resamples test patients, not ECGs)."""

    x: np.ndarray
    y: np.ndarray
    patients: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[int, int]:
        return {c: int(np.sum(self.y == c)) for c in (0, 1)}

    def of_class(self, c: int) -> LabelledSet:
        return self.take(np.flatnonzero(self.y == c))

    def take(self, idx: np.ndarray) -> LabelledSet:
        return LabelledSet(self.x[idx], self.y[idx], None if self.patients is None else self.patients[idx])

    @staticmethod
    def concat(*sets: LabelledSet) -> LabelledSet:
        """Rows of all ``sets``; patient ids only if every set has them."""
        patients = (None if any(s.patients is None for s in sets) else np.concatenate([s.patients for s in sets]))
        return LabelledSet(np.concatenate([s.x for s in sets]), np.concatenate([s.y for s in sets]), patients)


def check_task(task: str) -> None:
    if task not in TASKS:
        raise InputError(f"--task {task!r}: expected one of {', '.join(TASKS)}")


def real_task_splits(data: str, tasks: list[str],
                     storage_options: StorageOptions = None) -> dict[str, dict[str, LabelledSet]]:
    """The train/val/test splits of prepared shards for each of ``tasks``, read once (the tasks share the ECG
    arrays); refuses splits that share a patient, and splits with one class only.

    A record-level split lets a patient's other ECGs leak into the test set; prepare splits by patient, and
    this check keeps shards from elsewhere honest.
    """
    for task in tasks:
        check_task(task)
    table = read_shards(data, columns=["signal", "split", "patient_id", *tasks], storage_options=storage_options)
    split = np.asarray(table.column("split").to_pylist())
    patients = np.asarray(table.column("patient_id").to_pylist(), dtype=object)
    leak = next(((a, b) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
                 if set(patients[split == a]) & set(patients[split == b])), None)
    if leak:
        raise InputError(f"{data}: patients appear in both the {leak[0]} and {leak[1]} splits; augment-eval needs "
                         "patient-disjoint splits (as `synthgen prepare` makes)")
    x, keep = signals(table), {}
    for name in SPLITS:
        keep[name] = split == name
        if not keep[name].any():
            raise InputError(f"{data}: no {name} split; augment-eval needs train, val and test")
    xs = {name: x[k] for name, k in keep.items()}
    out: dict[str, dict[str, LabelledSet]] = {}
    for task in tasks:
        y = np.asarray(table.column(task).fill_null(False).to_pylist(), dtype=np.int64)
        out[task] = {name: LabelledSet(xs[name], y[k], patients[k]) for name, k in keep.items()}
        for name, part in out[task].items():
            if len(set(part.y.tolist())) < 2:
                raise InputError(f"{data}: the {name} split has only {task}={bool(part.y[0])} records; "
                                 "both classes are needed")
    return out


def real_splits(data: str, task: str, storage_options: StorageOptions = None) -> dict[str, LabelledSet]:
    """`real_task_splits` for one task."""
    return real_task_splits(data, [task], storage_options)[task]


def external_sets(url: str, tasks: list[str], storage_options: StorageOptions = None) -> dict[str, LabelledSet]:
    """Every row of prepared shards from another source (all splits: none of it trains or selects a model),
    labelled for each of ``tasks``; scored by every trained classifier beside the test split."""
    for task in tasks:
        check_task(task)
    table = read_shards(url, columns=["signal", "patient_id", *tasks], storage_options=storage_options)
    if table.num_rows == 0:
        raise InputError(f"--external {url}: no rows in the shards")
    x = signals(table)
    patients = np.asarray(table.column("patient_id").to_pylist(), dtype=object)
    return {task: LabelledSet(x, np.asarray(table.column(task).fill_null(False).to_pylist(), dtype=np.int64),
                              patients) for task in tasks}


def synthetic_set(url: str, task: str,
                  storage_options: StorageOptions = None) -> tuple[LabelledSet, dict[str, dict[str, int]]]:
    """The rows of a `synthgen generate` output that passed its plausibility check, labelled for ``task``, and
    per class (``"0"``, ``"1"``) how many were generated, dropped as implausible and kept."""
    check_task(task)
    try:
        table = read_generated(url, storage_options, columns=(*READ_COLUMNS, "plausible"))
    except pa.ArrowInvalid:
        raise InputError(f"{url}: no 'plausible' column (written before generate checked plausibility); "
                         "generate the synthetic set again") from None
    labels = table.column("label").to_pylist()
    reports = table.column("reports").to_pylist()
    y = np.asarray([1 if lab == task else 0 if lab == f"not_{task}" else int(labels_from_text(rep or [])[task])
                    for lab, rep in zip(labels, reports)], dtype=np.int64)
    ok = np.asarray(table.column("plausible").to_pylist(), dtype=bool)
    counts = {str(c): {"generated": int(np.sum(y == c)), "dropped": int(np.sum((y == c) & ~ok)),
                       "kept": int(np.sum((y == c) & ok))} for c in (0, 1)}
    return LabelledSet(signals(table)[ok], y[ok]), counts
