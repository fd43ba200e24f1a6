"""`synthgen generate` end to end on the session's Ray cluster, with a stand-in sampler (fast, deterministic).

The stand-in is pickled by value (Ray workers cannot import this test module) and can kill its actor once
(os._exit, keyed by a marker file) to prove Ray restarts it and every sample is still written exactly once.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.generate.plan import Plan, sample_seed
from synthgen.generate.run import generate
from synthgen.io.shards import signals as table_signals

MANIFEST = ("report,age,sex,hr,label,n\n"
            "atrial fibrillation | left axis deviation,70,M,,af,7\n"
            "sinus rhythm | ventricular premature complexes,55,F,80,pvc,5\n"
            "sinus rhythm,,,,,0\n"
            "sinus bradycardia,40,male,50,,3\n")
TOTAL = 15


@dataclass(frozen=True)
class StandInSampler:
    """Signals from each sample's seed only (as ECGPipeline promises); optional slowness and one crash."""

    delay_s: float = 0.0
    crash_marker: str | None = None

    def __call__(self, conditions: list[Condition], seeds: list[int], sampler: str = "ddim", steps: int = 50,
                 guidance: float = 2.0) -> np.ndarray:
        if self.crash_marker and not os.path.exists(self.crash_marker):
            Path(self.crash_marker).touch()
            os._exit(1)  # a killed actor: Ray must restart it and retry the shard
        time.sleep(self.delay_s)
        return np.stack([np.random.default_rng(s).standard_normal((12, 1024)).astype(np.float32) * 0.1
                         + (c.hr or 60) / 100 for c, s in zip(conditions, seeds)])


@dataclass(frozen=True)
class StandInFactory:
    sampler: StandInSampler = StandInSampler()

    def model_hash(self, model: str | None, storage_options: dict | None) -> str:
        return "stand-in"

    def __call__(self, model, storage_options, *, device: str, threads: int | None) -> StandInSampler:
        return self.sampler


@pytest.fixture(scope="module")
def ray_cluster(ray_local):
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_local


@pytest.fixture
def manifest(tmp_path) -> str:
    path = tmp_path / "manifest.csv"
    path.write_text(MANIFEST)
    return str(path)


def read_rows(out: str, storage_options: dict | None = None) -> pd.DataFrame:
    """The output as another pipeline reads it: plain pandas on the shards folder."""
    return pd.read_parquet(f"{out}/shards", storage_options=storage_options)


def assert_exactly_once(df: pd.DataFrame) -> None:
    pairs = Counter(zip(df.spec_id, df.sample_index))
    expected = {(0, i) for i in range(7)} | {(1, i) for i in range(5)} | {(3, i) for i in range(3)}
    assert set(pairs) == expected and set(pairs.values()) == {1}


def test_plan_is_deterministic_and_covers_every_sample_once():
    plan = Plan((7, 5, 0, 3), seed=1, shard_size=4)
    assert plan.n_shards == 4 and plan.shard_sizes() == [4, 4, 4, 3]
    got = [(int(s), int(i), int(x)) for k in range(plan.n_shards)
           for s, i, x in zip(*(getattr(plan.shard(k), f) for f in ("spec_ids", "indices", "seeds")))]
    expected = [(0, i) for i in range(7)] + [(1, i) for i in range(5)] + [(3, i) for i in range(3)]
    assert [(s, i) for s, i, _ in got] == expected
    assert all(x == sample_seed(1, s, i) for s, i, x in got) and len({x for *_, x in got}) == 15
    assert 0 <= min(x for *_, x in got) and max(x for *_, x in got) < 2**63
    # a sample's seed does not depend on the sharding
    assert sample_seed(1, 3, 2) == int(Plan((7, 5, 0, 3), 1, 100).shard(0).seeds[-1])


def test_bad_input_writes_nothing(tmp_path, manifest):
    bad = tmp_path / "bad.csv"
    bad.write_text("report,age\nx,500\n,20\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"row 1: age='500'.*\n.*row 2: report"):
        generate(str(bad), str(out), 4, sampler_factory=StandInFactory())
    with pytest.raises(InputError, match="--sampler"):
        generate(manifest, str(out), sampler="euler", sampler_factory=StandInFactory())
    assert not out.exists()


def test_generate_local_resume_and_rerun(ray_cluster, tmp_path, manifest):
    import wfdb

    out = str(tmp_path / "out")
    kw = dict(seed=3, shard_size=4, batch_size=3, output_format="both", wfdb_fs=500, progress=False,
              sampler_factory=StandInFactory())
    summary = generate(manifest, out, **kw)
    assert summary["shards_written"] == 4 and summary["samples_written"] == TOTAL
    df = read_rows(out)
    assert_exactly_once(df)
    assert table_signals(pq.read_table(f"{out}/shards/part-00000.parquet")).shape == (4, 12, 1024)
    row = df[(df.spec_id == 1) & (df.sample_index == 2)].iloc[0]
    assert list(row.reports) == ["sinus rhythm", "ventricular premature complexes"] and row.sex == "F"
    assert row.seed == sample_seed(3, 1, 2) and row.model_hash == "stand-in" and row.fs == pytest.approx(102.4)
    expected = np.random.default_rng(row.seed).standard_normal((12, 1024)).astype(np.float32) * 0.1 + 0.8
    np.testing.assert_allclose(np.stack(row.signal), expected, rtol=1e-6)
    rec = wfdb.rdrecord(f"{out}/{row.wfdb_record}")
    assert rec.fs == 500 and rec.p_signal.shape == (5000, 12) and rec.sig_name[0] == "I"
    assert "label: pvc" in rec.comments and "model_hash: stand-in" in rec.comments
    assert (Path(out) / "_SUCCESS.json").exists() and (Path(out) / "plan.json").exists()

    # a finished run: the rerun writes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")}
    again = generate(manifest, out, **kw)
    assert again["shards_written"] == 0 and {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")} == mtimes

    # a crashed run (two shards and the summary missing): only those two are written
    for name in ("part-00001.parquet", "part-00003.parquet"):
        (Path(out) / "shards" / name).unlink()
    (Path(out) / "_SUCCESS.json").unlink()
    resumed = generate(manifest, out, **kw)
    assert resumed["shards_written"] == 2 and resumed["shards_already_done"] == 2
    assert_exactly_once(read_rows(out))
    assert {p: p.stat().st_mtime_ns for p in (Path(out) / "shards").glob("part-0000[02].parquet")} == \
        {p: mtimes[p] for p in (Path(out) / "shards").glob("part-0000[02].parquet")}

    # same inputs and seed into a new folder: identical samples
    other = str(tmp_path / "other")
    generate(manifest, other, **{**kw, "output_format": "parquet", "wfdb_fs": None, "shard_size": 5})
    a, b = (read_rows(o).sort_values(["spec_id", "sample_index"]) for o in (out, other))
    np.testing.assert_array_equal(np.stack(a.signal.map(np.stack)), np.stack(b.signal.map(np.stack)))

    with pytest.raises(InputError, match="different parameters.*seed"):
        generate(manifest, out, **{**kw, "seed": 4})


def test_killed_actor_still_writes_every_sample_once(ray_cluster, tmp_path, manifest):
    marker = tmp_path / "crashed"
    out = str(tmp_path / "out")
    summary = generate(manifest, out, shard_size=2, actors=2, progress=False,
                       sampler_factory=StandInFactory(StandInSampler(crash_marker=str(marker))))
    assert marker.exists() and summary["n_shards"] == 8
    assert_exactly_once(read_rows(out))
    assert sorted(p.name for p in (Path(out) / "shards").iterdir()) == [f"part-{k:05d}.parquet" for k in range(8)]


def test_s3_output_survives_a_server_restart(ray_cluster, s3_server, manifest):
    """Stop SeaweedFS mid-run: the run completes after retries or fails cleanly; a rerun then completes,
    every sample exactly once, readable with plain pandas from s3://."""
    import threading

    import s3fs

    out, opts = f"s3://{s3_server.BUCKET}/run-restart", s3_server.storage_options
    client = s3fs.S3FileSystem(skip_instance_cache=True, **opts)

    def restart_after_first_shard() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not client.glob(f"{out[5:]}/shards/part-*.parquet", refresh=True):
            time.sleep(0.2)
        s3_server.stop()
        time.sleep(1)
        s3_server.start()

    kw = dict(shard_size=2, batch_size=1, storage_options=opts, progress=False,
              sampler_factory=StandInFactory(StandInSampler(delay_s=0.3)))
    restarter = threading.Thread(target=restart_after_first_shard)
    restarter.start()
    try:
        first = generate(manifest, out, **kw)
    except Exception as e:  # failing cleanly is allowed: the error says what broke, the rerun completes
        first = {"error": repr(e)}
    restarter.join()
    second = generate(manifest, out, **kw)
    assert "error" in first or first["samples_written"] == TOTAL
    assert second["total_samples"] == TOTAL
    df = read_rows(out, opts)
    assert_exactly_once(df)
    assert np.stack(df.signal.iloc[0]).shape == (12, 1024)
    assert client.exists(f"{out[5:]}/_SUCCESS.json") and client.exists(f"{out[5:]}/plan.json")


def test_real_tiny_bundle_parquet_and_wfdb(ray_cluster, tmp_path, capsys):
    """The production path (PipelineFactory → ECGPipeline) on a tiny random bundle."""
    import wfdb
    from test_bundle import save_tiny_bundle

    model_hash = save_tiny_bundle(str(tmp_path / "bundle"), embedder_name="local", dim=384)
    manifest = tmp_path / "m.csv"
    manifest.write_text("report,age,sex,hr\natrial fibrillation,70,M,\n"
                        "sinus rhythm | ventricular premature complexes,,F,80\n")
    out = tmp_path / "out"
    summary = generate(str(manifest), str(out), 3, model=str(tmp_path / "bundle"), steps=2, shard_size=2,
                       output_format="both")
    assert summary["params"]["model_hash"] == model_hash and summary["samples_written"] == 3
    assert "generated 3 ECGs" in capsys.readouterr().out
    df = read_rows(str(out))
    assert sorted(zip(df.spec_id, df.sample_index)) == [(0, 0), (0, 1), (1, 0)]
    assert np.isfinite(np.stack(df.signal.map(np.stack))).all()
    rec = wfdb.rdrecord(str(out / df.wfdb_record.iloc[0]))
    assert rec.p_signal.shape == (1024, 12) and rec.fs == pytest.approx(102.4)


def test_ray_job_entry_point_takes_the_cli_arguments(tmp_path):
    """`ray job submit -- python jobs/generate.py …` runs the CLI: bad input exits 2 before Ray starts."""
    import subprocess

    bad = tmp_path / "bad.csv"
    bad.write_text("report,sex\nx,Q\n")
    script = Path(__file__).resolve().parents[1] / "jobs" / "generate.py"
    proc = subprocess.run([sys.executable, str(script), "--manifest", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "row 1: sex='Q'" in proc.stderr and not (tmp_path / "o").exists()


def test_wfdb_only_run_commits_by_records_file(ray_cluster, tmp_path, manifest):
    out = tmp_path / "out"
    kw = dict(shard_size=8, output_format="wfdb", progress=False, sampler_factory=StandInFactory())
    generate(manifest, str(out), **kw)
    names = [line for f in sorted(out.glob("wfdb/part-*/RECORDS")) for line in f.read_text().split()]
    assert len(names) == TOTAL == len(set(names)) and not (out / "shards").exists()
    assert generate(manifest, str(out), **kw)["shards_written"] == 0
