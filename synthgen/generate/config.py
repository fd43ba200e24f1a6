"""One `synthgen generate` run's settings: a frozen dataclass that goes from the CLI (or a YAML ``--config``)
through the run to every sampler actor, and from which the run's identity and provenance are derived."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from synthgen import __version__
from synthgen.errors import InputError
from synthgen.io.generated import SCHEMA_VERSION, Provenance
from synthgen.io.paths import StorageOptions
from synthgen.model.schedulers import DEFAULT_GUIDANCE, SAMPLERS, STUDENT_SAMPLERS, default_steps, resolve_sampling

FORMATS = ("parquet", "wfdb", "both")
PRECISIONS = ("fp32", "fp16", "bf16")  # synthgen.pipeline.PRECISIONS (not imported here: torch)
DECODERS = ("vae", "tiny")  # synthgen.model.bundle.DECODERS (likewise)


MAX_AUTO_SHARD, MIN_AUTO_SHARD, AUTO_SHARDS = 256, 16, 16


def auto_shard_size(total: int) -> int:
    """Default ECGs per shard: ``total`` / 16, within 16–256. A shard is the unit of work of one actor, so a
    small run needs several for every actor to work (32 ECGs: 2 shards of 16, one per actor of a 2-core
    machine; 4,000: 16 of 250), while a big one keeps shards of 256 (40,000: 157 shards), each one Parquet file
    of ~12 MB. A function of the total only, so a rerun resolves it to the same plan."""
    return max(MIN_AUTO_SHARD, min(MAX_AUTO_SHARD, -(-total // AUTO_SHARDS)))


@dataclass(frozen=True)
class GenerateConfig:
    """Fields = the options of `synthgen generate` (``output_format`` is ``--format``), with its defaults;
    docs/generate.md says what each one does."""

    manifest: str
    out: str
    n: int | None = None
    model: str | None = None  # None: the shipped model
    # None: the model's default sampling (model.bundle.default_sampling), filled in by ``with_defaults`` once
    # the bundle is read; steps None with a sampler given: that sampler's (schedulers.DEFAULT_STEPS)
    sampler: str | None = None
    steps: int | None = None
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    batch_size: int = 128  # one-thread CPU actors: 2.38 → 2.17 ms per student ECG against 32 (docs/benchmarks.md)
    actors: int | None = None
    shard_size: int | None = None  # None: ``auto_shard_size`` of the run's total
    output_format: str = "parquet"
    wfdb_fs: float | None = None
    storage_options: StorageOptions = None
    gpu: bool | None = None
    precision: str = "fp32"  # "fp16"/"bf16": the networks under autocast (ECGPipeline), for GPU actors
    decoder: str | None = None  # "vae" or "tiny" (ECGPipeline's ``decoder``); None: see ``with_defaults``
    progress: bool = True
    replace_implausible: int = 0

    def __post_init__(self) -> None:
        if self.sampler is not None:
            object.__setattr__(self, "steps", default_steps(self.sampler, self.steps))

    def with_defaults(self, default: dict[str, Any]) -> GenerateConfig:
        """This config with sampler, steps and decoder resolved against a bundle's ``default_sampling``
        (``default``; ``schedulers.resolve_sampling``)."""
        sampler, steps, decoder = resolve_sampling(default, self.sampler, self.steps, self.decoder)
        return replace(self, sampler=sampler, steps=steps, decoder=decoder)

    def check(self) -> None:
        """Every out-of-range setting at once, as one InputError naming the options."""
        problems = [msg for bad, msg in (
            (self.n is not None and self.n < 0, f"--n={self.n}: expected a non-negative integer"),
            (self.sampler not in (None, *SAMPLERS, *STUDENT_SAMPLERS),
             f"--sampler={self.sampler!r}: expected one of {', '.join(SAMPLERS + STUDENT_SAMPLERS)}"),
            (self.steps is not None and self.steps < 1, f"--steps={self.steps}: expected a positive integer"),
            (not math.isfinite(self.guidance) or self.guidance < 0,
             f"--guidance={self.guidance}: expected a number >= 0"),
            (self.seed < 0, f"--seed={self.seed}: expected a non-negative integer"),
            (self.batch_size < 1, f"--batch-size={self.batch_size}: expected a positive integer"),
            (self.actors is not None and self.actors < 1, f"--actors={self.actors}: expected a positive integer"),
            (self.shard_size is not None and self.shard_size < 1,
             f"--shard-size={self.shard_size}: expected a positive integer"),
            (self.output_format not in FORMATS,
             f"--format={self.output_format!r}: expected one of {', '.join(FORMATS)}"),
            (self.precision not in PRECISIONS,
             f"--precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}"),
            (self.precision == "fp16" and self.gpu is not True, "--precision=fp16: needs --gpu (CPUs: fp32 or bf16)"),
            (self.decoder not in (None, *DECODERS),
             f"--decoder={self.decoder!r}: expected one of {', '.join(DECODERS)}"),
            (self.wfdb_fs is not None and not 0 < self.wfdb_fs <= 10_000,
             f"--wfdb-fs={self.wfdb_fs}: expected a rate in Hz, 0-10000"),
        ) if bad]
        if problems:
            raise InputError("; ".join(problems))
        if self.replace_implausible < 0:
            raise InputError(f"--replace-implausible={self.replace_implausible}: expected an integer >= 0")

    def shard_size_for(self, total: int) -> int:
        """``shard_size``, or when None ``auto_shard_size(total)``."""
        return self.shard_size or auto_shard_size(total)

    def plan_params(self, manifest_sha256: str, counts_sha256: str, total: int, model_hash: str) -> dict:
        """The ``params`` of ``_plan.json``: everything that decides which ECGs the run writes (its ``run_id`` is
        their hash), so a rerun with other values is refused instead of mixing two runs in one folder."""
        return {
            "manifest_sha256": manifest_sha256, "counts_sha256": counts_sha256, "total": total,
            "seed": self.seed, "model_hash": model_hash, "sampler": self.sampler,
            "steps": self.steps, "guidance": float(self.guidance), "shard_size": self.shard_size_for(total),
            "output_format": self.output_format, "wfdb_fs": self.wfdb_fs, "synthgen_version": __version__,
            "schema": SCHEMA_VERSION, "replace_implausible": self.replace_implausible,
            # outputs before the pipeline projected the limb leads differ: a plan without this key is refused
            "limb_leads": "einthoven-goldberger",
            # only when not the default, so plans written before the option existed still match
            **({"precision": self.precision} if self.precision != "fp32" else {}),
            **({"decoder": self.decoder} if self.decoder != "vae" else {}),
        }

    def provenance(self, run_id: str, model_hash: str) -> Provenance:
        """The facts stamped on every output row and WFDB header."""
        return Provenance(run_id, model_hash, self.sampler, self.steps, float(self.guidance), __version__,
                          self.decoder)
