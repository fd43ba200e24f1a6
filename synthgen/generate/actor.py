"""The Ray actor of `synthgen generate`: the Ray Data callable class that turns one shard id into committed
output files.

One instance per actor, built from a small payload (the run's GenerateConfig, the shard plan, the manifest's
specs, their prompt vectors embedded once on the driver, the provenance): it loads the model once in
``__init__`` and, per shard, samples in mini-batches, writes the shard's WFDB records (optional) and then its
Parquet file — the Parquet file is the commit marker, written atomically under a deterministic name, so a
retried shard can only ever replace itself.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np

from synthgen.cluster import device_label
from synthgen.conditions.embedders import Embedder, PrecomputedEmbedder
from synthgen.conditions.spec import Condition
from synthgen.data.plausibility import Plausibility, check_many
from synthgen.errors import StorageError, outside_failure, transient
from synthgen.generate.config import GenerateConfig
from synthgen.generate.manifest import Spec
from synthgen.generate.plan import Plan, retry_seed
from synthgen.io.generated import Provenance, commit_marker, shard_name, shard_table, write_wfdb_records
from synthgen.io.paths import StorageOptions, join, resolve, write_bytes_atomic
from synthgen.io.shards import to_parquet_bytes

if TYPE_CHECKING:
    from synthgen.pipeline import ECGPipeline


T = TypeVar("T")


def load_pipeline(model: str | None, storage_options: StorageOptions, *, device: str, threads: int | None,
                  embedder: Embedder, precision: str = "fp32") -> ECGPipeline:
    """The bundle at ``model`` (None = shipped) in an ECGPipeline, once per actor; ``threads`` caps torch.
    ``embedder``: the driver's precomputed prompt vectors, so the actor loads no text model."""
    import torch

    from synthgen.model.bundle import load_bundle
    from synthgen.pipeline import ECGPipeline

    if threads:
        torch.set_num_threads(threads)
    return ECGPipeline(load_bundle(model, storage_options=storage_options), embedder=embedder, device=device,
                       precision=precision)


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

    def __init__(self, *, config: GenerateConfig, plan: Plan, specs: list[Spec], prov: Provenance, device: str,
                 threads: int | None, embedder: PrecomputedEmbedder) -> None:
        self.pipeline = load_pipeline(config.model, config.storage_options, device=device, threads=threads,
                                      embedder=embedder, precision=config.precision)
        self.device = device_label(device)  # reported per shard: what ran where
        self.config, self.plan, self.specs, self.prov = config, plan, specs, prov
        self.fs, self.root = resolve(config.out, config.storage_options)

    def _sample(self, conds: list[Condition], seeds: np.ndarray) -> np.ndarray:
        cfg, size = self.config, self.config.batch_size
        return np.concatenate([
            self.pipeline(conds[i:i + size], [int(s) for s in seeds[i:i + size]], sampler=cfg.sampler,
                          steps=cfg.steps, guidance=float(cfg.guidance), decoder=cfg.decoder)
            for i in range(0, len(conds), size)
        ])

    def sample_plausible(self, conds: list[Condition], seeds: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Plausibility]]:
        """Sample, check each ECG, and redraw implausible ones from the next seeds of their own streams, up to
        ``config.replace_implausible`` times. Returns (signals, seeds used, attempt per sample, verdicts); a sample
        still implausible after the last attempt is kept, flagged."""
        requested = np.array([np.nan if c.hr is None else float(c.hr) for c in conds])
        signals = self._sample(conds, seeds)
        used, attempts = seeds.copy(), np.zeros(len(conds), np.int32)
        verdicts = check_many(signals, requested)
        for attempt in range(1, self.config.replace_implausible + 1):
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
            raise StorageError(f"--out {self.config.out}: {line}") from e
        return {key: np.array([r[key] for r in rows]) for key in rows[0]}

    def _shard(self, k: int) -> dict[str, float | int | bool | str]:
        name, output_format = shard_name(k), self.config.output_format
        marker = join(self.root, commit_marker(k, output_format))
        samples = self.plan.shard(k)
        if with_retries(lambda: self.fs.exists(marker)):  # a retried task whose shard is committed: no work
            return dict(shard=k, samples=len(samples.seeds), written=False, sample_s=0.0, write_s=0.0,
                        implausible=0, replaced=0, host=os.uname().nodename, device=self.device)
        specs = [self.specs[s] for s in samples.spec_ids]
        conds = [s.condition for s in specs]
        t0 = time.perf_counter()
        signals, seeds, attempts, verdicts = self.sample_plausible(conds, samples.seeds)
        t1 = time.perf_counter()
        wfdb_rel = f"wfdb/{name}" if output_format in ("wfdb", "both") else None
        table = shard_table(signals, conds, [s.text_fields() for s in specs], samples.spec_ids,
                            samples.indices, seeds, self.prov, wfdb_rel, attempts, verdicts)
        if wfdb_rel:
            with_retries(lambda: write_wfdb_records(self.fs, join(self.root, wfdb_rel), table, signals,
                                                    self.config.wfdb_fs))
        if output_format != "wfdb":
            data = to_parquet_bytes(table)
            with_retries(lambda: write_bytes_atomic(self.fs, marker, data))
        return dict(shard=k, samples=len(conds), written=True, sample_s=t1 - t0,
                    write_s=time.perf_counter() - t1, implausible=sum(not v.ok for v in verdicts),
                    replaced=int((attempts > 0).sum()), host=os.uname().nodename, device=self.device)
