"""The shard plan: which (spec, sample index, seed) goes in which output shard.

Everything here is a pure function of (per-spec counts, run seed, shard size), so a retried or resumed shard
holds exactly the same samples with the same seeds under the same name — the basis of exactly-once output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SEED_BITS = 63  # fits a signed int64 Parquet column and numpy/torch generators


def sample_seed(run_seed: int, spec_id: int, index: int) -> int:
    """Seed of one sample: a hash of (run seed, spec id, sample index), independent of sharding and batching."""
    digest = hashlib.blake2b(f"{run_seed}:{spec_id}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)


def retry_seed(seed: int, attempt: int) -> int:
    """Seed of the ``attempt``-th replacement (1, 2, …) of an implausible sample: the next seed of that sample's
    own stream, so a replaced sample is as reproducible as the first draw (attempt 0 is ``seed`` itself)."""
    if attempt == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:retry:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)


@dataclass(frozen=True)
class ShardSamples:
    """The samples of one shard, in order: parallel arrays of spec ids, per-spec sample indices and seeds."""

    shard: int
    spec_ids: np.ndarray
    indices: np.ndarray
    seeds: np.ndarray


@dataclass(frozen=True)
class Plan:
    """Samples laid out spec by spec (spec 0's samples first), cut into shards of ``shard_size``."""

    counts: tuple[int, ...]
    seed: int
    shard_size: int

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def n_shards(self) -> int:
        return -(-self.total // self.shard_size)

    def shard(self, shard: int) -> ShardSamples:
        """Compute one shard's samples from the counts alone (O(shard size), no global sample list)."""
        if not 0 <= shard < self.n_shards:
            raise IndexError(f"shard {shard} outside 0..{self.n_shards - 1}")
        starts = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])
        flat = np.arange(shard * self.shard_size, min((shard + 1) * self.shard_size, self.total), dtype=np.int64)
        spec_ids = np.searchsorted(starts, flat, side="right") - 1
        indices = flat - starts[spec_ids]
        seeds = np.array([sample_seed(self.seed, int(s), int(i)) for s, i in zip(spec_ids, indices)], dtype=np.int64)
        return ShardSamples(shard, spec_ids, indices, seeds)

    def shard_sizes(self) -> list[int]:
        return [min(self.shard_size, self.total - k * self.shard_size) for k in range(self.n_shards)]
