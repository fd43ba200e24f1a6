"""The Ray Data callable class that turns one shard descriptor into committed output files.

One instance per actor: it loads the model once in ``__init__`` and, per shard, samples in mini-batches,
writes the shard's WFDB records (optional) and then its Parquet file — the Parquet file is the commit marker,
written atomically under a deterministic name, so a retried shard can only ever replace itself.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np

from synthgen.cluster import device_label
from synthgen.conditions.spec import Condition
from synthgen.data.plausibility import Plausibility, check_many
from synthgen.errors import StorageError, outside_failure, transient
from synthgen.generate.plan import Plan, retry_seed, shard_name
from synthgen.generate.writers import (Provenance, commit_marker, parquet_bytes, shard_table,
                                      write_wfdb_records)
from synthgen.io.paths import StorageOptions, join, resolve, write_bytes_atomic

if TYPE_CHECKING:
    from synthgen.pipeline import ECGPipeline


T = TypeVar("T")


def model_hash(model: str | None, storage_options: StorageOptions) -> str:
    """The bundle's hash, read on the driver before anything is written (loading also verifies the weights)."""
    from synthgen.model.bundle import load_bundle

    return load_bundle(model, storage_options=storage_options).model_hash


def load_pipeline(model: str | None, storage_options: StorageOptions, *, device: str,
                  threads: int | None) -> ECGPipeline:
    """The bundle at ``model`` (None = shipped) in an ECGPipeline, once per actor; ``threads`` caps torch."""
    import torch

    from synthgen.model.bundle import load_bundle
    from synthgen.pipeline import ECGPipeline

    if threads:
        torch.set_num_threads(threads)
    return ECGPipeline(load_bundle(model, storage_options=storage_options), device=device)


def with_retries(fn: Callable[[], T], attempts: int = 8, first_delay_s: float = 0.5) -> T:
    """Retry a storage call on a transient failure (``synthgen.errors.transient``: refused connections, timeouts,
    5xx) with exponential backoff, ~64 s of waiting in all on top of the S3 client's own retries, riding out an
    object-store restart. Credential, permission and not-found errors are raised at once."""
    for attempt in range(attempts - 1):
        try:
            return fn()
        except Exception as e:  # botocore's connection errors are not OSErrors
            if not transient(e):
                raise
            time.sleep(first_delay_s * 2**attempt)
    return fn()


class ShardSampler:
    """``map_batches`` UDF: a batch of shard ids in, one summary row per shard out."""

    def __init__(self, *, model: str | None, storage_options: StorageOptions, out: str, plan: Plan,
                 conditions: list[Condition], text_fields: list[dict[str, str | None]], prov: Provenance,
                 sampler: str, steps: int, guidance: float, batch_size: int, output_format: str, wfdb_fs: float | None,
                 device: str, threads: int | None, replace_implausible: int = 0) -> None:
        self.model = load_pipeline(model, storage_options, device=device, threads=threads)
        self.device = device_label(device)  # reported per shard: what ran where
        self.out = out
        self.fs, self.root = resolve(out, storage_options)
        self.plan, self.conditions, self.text_fields, self.prov = plan, conditions, text_fields, prov
        self.sample_kw = dict(sampler=sampler, steps=steps, guidance=guidance)
        self.batch_size, self.output_format, self.wfdb_fs = batch_size, output_format, wfdb_fs
        self.replace_implausible = replace_implausible

    def _sample(self, conds: list[Condition], seeds: np.ndarray) -> np.ndarray:
        return np.concatenate([
            self.model(conds[i:i + self.batch_size], [int(s) for s in seeds[i:i + self.batch_size]], **self.sample_kw)
            for i in range(0, len(conds), self.batch_size)
        ])

    def sample_plausible(self, conds: list[Condition], seeds: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Plausibility]]:
        """Sample, check each ECG, and redraw implausible ones from the next seeds of their own streams, up to
        ``replace_implausible`` times. Returns (signals, seeds used, attempt per sample, verdicts); a sample
        still implausible after the last attempt is kept, flagged."""
        requested = np.array([np.nan if c.hr is None else float(c.hr) for c in conds])
        signals = self._sample(conds, seeds)
        used, attempts = seeds.copy(), np.zeros(len(conds), np.int32)
        verdicts = check_many(signals, requested)
        for attempt in range(1, self.replace_implausible + 1):
            redo = [i for i, v in enumerate(verdicts) if not v.ok]
            if not redo:
                break
            used[redo] = [retry_seed(int(seeds[i]), attempt) for i in redo]
            attempts[redo] = attempt
            signals[redo] = self._sample([conds[i] for i in redo], used[redo])
            for i, v in zip(redo, check_many(signals[redo], requested[redo])):
                verdicts[i] = v
        return signals, used, attempts, verdicts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            rows = [self._shard(int(k)) for k in batch["shard"]]
        except Exception as e:  # described here, where the whole error is: only its text survives Ray's transport
            line = outside_failure(e)
            if line is None:
                raise
            raise StorageError(f"--out {self.out}: {line}") from e
        return {key: np.array([r[key] for r in rows]) for key in rows[0]}

    def _shard(self, k: int) -> dict[str, float | int | bool | str]:
        name = shard_name(k)
        marker = join(self.root, commit_marker(k, self.output_format))
        samples = self.plan.shard(k)
        if with_retries(lambda: self.fs.exists(marker)):  # a retried task whose shard is committed: no work
            return dict(shard=k, samples=len(samples.seeds), written=False, sample_s=0.0, write_s=0.0,
                        implausible=0, replaced=0, host=os.uname().nodename, device=self.device)
        conds = [self.conditions[s] for s in samples.spec_ids]
        t0 = time.perf_counter()
        signals, seeds, attempts, verdicts = self.sample_plausible(conds, samples.seeds)
        t1 = time.perf_counter()
        wfdb_rel = f"wfdb/{name}" if self.output_format in ("wfdb", "both") else None
        table = shard_table(signals, conds, [self.text_fields[s] for s in samples.spec_ids], samples.spec_ids,
                            samples.indices, seeds, self.prov, wfdb_rel, attempts, verdicts)
        if wfdb_rel:
            with_retries(lambda: write_wfdb_records(self.fs, join(self.root, wfdb_rel), table, signals,
                                                    self.wfdb_fs))
        if self.output_format != "wfdb":
            data = parquet_bytes(table)
            with_retries(lambda: write_bytes_atomic(self.fs, marker, data))
        return dict(shard=k, samples=len(conds), written=True, sample_s=t1 - t0,
                    write_s=time.perf_counter() - t1, implausible=sum(not v.ok for v in verdicts),
                    replaced=int((attempts > 0).sum()), host=os.uname().nodename, device=self.device)
