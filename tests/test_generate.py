"""`synthgen generate` end to end on the session's Ray cluster, through the production path only: the tiny
real bundle (random weights) in ECGPipeline with the offline MiniLM embedder, few sampling steps.

Faults are real too: a sampler actor's process is SIGKILLed mid-run, and the S3 server is restarted mid-run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bundles import TinyBundle
from synthgen.conditions.spec import Condition
from synthgen.ecg import LEADS
from synthgen.errors import InputError
from synthgen.generate.plan import Plan, sample_seed
from synthgen.generate.run import generate
from synthgen.io.generated import resample
from synthgen.io.shards import signals as table_signals

MANIFEST = ("report,age,sex,hr,label,n\n"
            "atrial fibrillation | left axis deviation,70,M,,af,7\n"
            "sinus rhythm | ventricular premature complexes,55,F,80,pvc,5\n"
            "sinus rhythm,,,,,0\n"
            "sinus bradycardia,40,male,50,,3\n")
TOTAL = 15
# Steps per sample for the fault tests: one-sample shards then take ~0.2 s each on an idle core, so
# after the first commit there are seconds of work left in flight for the fault to hit.
SLOW_STEPS = 100


@pytest.fixture
def manifest(tmp_path) -> str:
    path = tmp_path / "manifest.csv"
    path.write_text(MANIFEST)
    return str(path)


@pytest.fixture
def model_kw(tiny_bundle: TinyBundle) -> dict:
    """The tiny real model, two steps of the default sampler: the production path, fast."""
    return dict(model=tiny_bundle.url, steps=2, progress=False)


def read_rows(out: str, storage_options: dict | None = None) -> pd.DataFrame:
    """The output as another pipeline reads it: plain pandas on the shards folder."""
    return pd.read_parquet(f"{out}/shards", storage_options=storage_options)


def stacked(df: pd.DataFrame) -> np.ndarray:
    return np.stack(df.sort_values(["spec_id", "sample_index"]).signal.map(np.stack))


def assert_exactly_once(df: pd.DataFrame) -> None:
    pairs = Counter(zip(df.spec_id, df.sample_index))
    expected = {(0, i) for i in range(7)} | {(1, i) for i in range(5)} | {(3, i) for i in range(3)}
    assert set(pairs) == expected and set(pairs.values()) == {1}


def wait_for(ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, "timed out waiting for the run to commit a shard"
        time.sleep(0.1)


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


def test_default_shard_size_gives_a_small_run_a_shard_per_actor():
    from synthgen.generate.config import GenerateConfig, auto_shard_size

    assert [auto_shard_size(n) for n in (1, 32, 255, 4000, 40000)] == [16, 16, 16, 250, 256]
    assert GenerateConfig("m.csv", "out").shard_size_for(32) == 16  # README's 32 ECGs: 2 shards
    assert GenerateConfig("m.csv", "out", shard_size=5).shard_size_for(32) == 5
    assert GenerateConfig("m.csv", "out").plan_params("a", "b", 32, "h")["shard_size"] == 16


def test_sampling_defaults_to_the_models_package_and_steps_to_the_samplers_own():
    from synthgen.generate.config import GenerateConfig
    from synthgen.model.bundle import default_sampling

    shipped = {"sampling": {"default": {"sampler": "lcm", "steps": 2, "decoder": "tiny", "reason": "gates"}}}
    assert default_sampling(shipped) == {"sampler": "lcm", "steps": 2, "decoder": "tiny"}
    assert default_sampling({}) == {"sampler": "dpm++sde", "steps": 20, "decoder": "vae"}  # no default: the teacher's
    unset = GenerateConfig("m.csv", "out")
    assert (unset.sampler, unset.steps, unset.decoder) == (None, None, None)  # until the bundle is read
    resolved = [(c.sampler, c.steps, c.decoder) for c in (
        unset.with_defaults(default_sampling(shipped)), unset.with_defaults(default_sampling({})),
        replace(unset, steps=1).with_defaults(default_sampling(shipped)),  # only what was given overrides
        replace(unset, decoder="vae").with_defaults(default_sampling(shipped)),
        # a sampler given: its own steps and the VAE's decoder, not the package's
        GenerateConfig("m.csv", "out", sampler="lcm").with_defaults(default_sampling(shipped)),
        GenerateConfig("m.csv", "out", sampler="ddpm").with_defaults(default_sampling(shipped)))]
    assert resolved == [("lcm", 2, "tiny"), ("dpm++sde", 20, "vae"), ("lcm", 1, "tiny"), ("lcm", 2, "vae"),
                        ("lcm", 1, "vae"), ("ddpm", 100, "vae")]
    assert [GenerateConfig("m.csv", "out", sampler=s).steps for s in ("dpm++sde", "ddpm", "ddim", "lcm")] == \
        [20, 100, 50, 1]
    assert GenerateConfig("m.csv", "out", sampler="ddpm", steps=1000).steps == 1000
    params = unset.with_defaults(default_sampling(shipped)).plan_params("a", "b", 32, "h")
    assert (params["sampler"], params["steps"], params["decoder"], params["limb_leads"]) == \
        ("lcm", 2, "tiny", "einthoven-goldberger")
    assert "decoder" not in unset.with_defaults(default_sampling({})).plan_params("a", "b", 32, "h")
    assert GenerateConfig("m.csv", "out", sampler="lcm").provenance("r", "h").steps == 1
    with pytest.raises(InputError, match="--sampler='x'"):
        GenerateConfig("m.csv", "out", sampler="x").check()


def test_a_plan_of_other_outputs_is_refused_with_what_differs(tmp_path):
    """A run planned before the limb-lead projection, with the old default sampling (dpm++sde-20, VAE decoder),
    is not resumed by today's (the shipped student's): the error lists each difference and says how to resume
    it."""
    import fsspec

    from synthgen.generate.config import GenerateConfig
    from synthgen.generate.run import _claim_out

    today = {"sampler": "lcm", "steps": 2, "decoder": "tiny"}  # the shipped bundle's default sampling
    plan = {"params": GenerateConfig("m.csv", "out").with_defaults(today).plan_params("a", "b", 32, "h")}
    old = {**{k: v for k, v in plan["params"].items() if k not in ("limb_leads", "decoder")}, "sampler": "dpm++sde",
           "steps": 20}
    with pytest.raises(InputError, match=r"decoder None -> 'tiny', limb_leads None -> 'einthoven-goldberger', "
                                         r"sampler 'dpm\+\+sde' -> 'lcm', steps 20 -> 2\).*pass that run's "
                                         r"--sampler, --steps and --decoder"):
        _claim_out(fsspec.filesystem("file"), str(tmp_path), plan, old)
    assert not (tmp_path / "_plan.json").exists()


def test_precision_is_checked_and_recorded_only_when_not_fp32():
    from synthgen.generate.config import GenerateConfig

    with pytest.raises(InputError, match="--precision=fp16: needs --gpu"):
        GenerateConfig("m.csv", "out", precision="fp16").check()
    with pytest.raises(InputError, match="--precision='int8'"):
        GenerateConfig("m.csv", "out", precision="int8").check()
    GenerateConfig("m.csv", "out", precision="fp16", gpu=True).check()
    assert "precision" not in GenerateConfig("m.csv", "out").plan_params("a", "b", 32, "h")  # old plans match
    assert GenerateConfig("m.csv", "out", precision="bf16").plan_params("a", "b", 32, "h")["precision"] == "bf16"


def test_bad_input_writes_nothing(tmp_path, manifest, model_kw):
    bad = tmp_path / "bad.csv"
    bad.write_text("report,age\nx,500\n,20\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"row 1: age='500'.*\n.*row 2: report"):
        generate(str(bad), str(out), 4, **model_kw)
    with pytest.raises(InputError, match="--sampler"):
        generate(manifest, str(out), sampler="euler", **model_kw)
    with pytest.raises(InputError, match="missing config.json"):  # the model is checked before any write
        generate(manifest, str(out), **{**model_kw, "model": str(tmp_path / "no-model")})
    assert not out.exists()


def test_generate_local_resume_and_rerun(ray_local, tiny_bundle, tmp_path, manifest, model_kw):
    import wfdb

    from synthgen.pipeline import ECGPipeline

    out = str(tmp_path / "out")
    kw = dict(seed=3, shard_size=4, batch_size=3, output_format="both", wfdb_fs=500, **model_kw)
    summary = generate(manifest, out, **kw)
    assert summary["shards_written"] == 4 and summary["samples_written"] == TOTAL
    df = read_rows(out)
    assert_exactly_once(df)
    assert table_signals(pq.read_table(f"{out}/shards/part-00000.parquet")).shape == (4, 12, 1024)
    row = df[(df.spec_id == 1) & (df.sample_index == 2)].iloc[0]
    assert list(row.reports) == ["sinus rhythm", "ventricular premature complexes"] and row.sex == "F"
    assert row.seed == sample_seed(3, 1, 2) and row.model_hash == tiny_bundle.model_hash
    assert row.fs == pytest.approx(102.4)
    # the actor's sample is what the pipeline makes for that condition and seed (batch-mates aside)
    alone = ECGPipeline.from_bundle(tiny_bundle.url)([Condition(tuple(row.reports), 55, "F", 80)], [int(row.seed)],
                                                     steps=2)
    np.testing.assert_allclose(np.stack(row.signal), alone[0], rtol=1e-4, atol=1e-5)
    assert np.isfinite(stacked(df)).all()
    rec = wfdb.rdrecord(f"{out}/{row.wfdb_record}")
    assert rec.fs == 500 and rec.p_signal.shape == (5000, 12) and rec.sig_name == list(LEADS)
    assert rec.units == ["mV"] * 12
    assert "label: pvc" in rec.comments and f"model_hash: {tiny_bundle.model_hash}" in rec.comments
    # the record's values are the Parquet signal resampled to 500 Hz, within half an ADC step
    expected = resample(np.stack(row.signal)[None], 500.0)[0]
    assert (np.abs(rec.p_signal.T - expected) * np.asarray(rec.adc_gain)[:, None]).max() <= 0.501
    assert (Path(out) / "_SUCCESS.json").exists() and (Path(out) / "_plan.json").exists()

    # a finished run: the rerun writes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")}
    again = generate(manifest, out, **kw)
    assert again["shards_written"] == 0 and {p: p.stat().st_mtime_ns for p in Path(out).rglob("*")} == mtimes

    # a crashed run (two shards and the summary missing): only those two are written, identical to before
    lost = {name: pq.read_table(Path(out) / "shards" / name) for name in ("part-00001.parquet", "part-00003.parquet")}
    for name in lost:
        (Path(out) / "shards" / name).unlink()
    (Path(out) / "_SUCCESS.json").unlink()
    resumed = generate(manifest, out, **kw)
    assert resumed["shards_written"] == 2 and resumed["shards_already_done"] == 2
    assert_exactly_once(read_rows(out))
    for name, table in lost.items():
        np.testing.assert_array_equal(table_signals(pq.read_table(Path(out) / "shards" / name)), table_signals(table))
    assert {p: p.stat().st_mtime_ns for p in (Path(out) / "shards").glob("part-0000[02].parquet")} == \
        {p: mtimes[p] for p in (Path(out) / "shards").glob("part-0000[02].parquet")}

    # same inputs and seed into a new folder with other shards and batches: the same samples
    other = str(tmp_path / "other")
    generate(manifest, other, **{**kw, "output_format": "parquet", "wfdb_fs": None, "shard_size": 5, "batch_size": 2})
    np.testing.assert_allclose(stacked(read_rows(other)), stacked(read_rows(out)), rtol=1e-4, atol=1e-5)
    assert len(pd.read_parquet(other)) == TOTAL  # a Parquet-only run's root reads as its rows (_plan/_SUCCESS skipped)

    with pytest.raises(InputError, match="different parameters.*seed"):
        generate(manifest, out, **{**kw, "seed": 4})
    # the same command without --shard-size resumes with the run's own shard size (4), not today's default
    assert generate(manifest, out, **{**kw, "shard_size": None})["shards_written"] == 0


def test_prompts_are_embedded_once_on_the_driver(tiny_bundle, tmp_path, manifest, model_kw):
    """The driver embeds each unique prompt of the manifest once; an actor samples from that table and loads no
    text model, with the same ECGs as the pipeline embedding the prompts itself."""
    from synthgen.conditions.embedders import PrecomputedEmbedder, get_embedder
    from synthgen.conditions.prompts import ordered_prompt
    from synthgen.generate.actor import ShardSampler
    from synthgen.generate.config import GenerateConfig
    from synthgen.generate.manifest import read_manifest
    from synthgen.generate.run import embed_prompts
    from synthgen.model.bundle import load_bundle
    from synthgen.pipeline import ECGPipeline

    config = GenerateConfig(manifest, str(tmp_path / "out"), **model_kw)
    specs = read_manifest(manifest)
    table = embed_prompts(load_bundle(tiny_bundle.url), specs, config)
    assert isinstance(table, PrecomputedEmbedder) and table.name == "local"
    assert set(table.vectors) == {ordered_prompt(s.condition.reports) for s in specs} and len(table.vectors) == 4
    np.testing.assert_allclose(table.embed([ordered_prompt(("sinus rhythm",))]),
                               get_embedder("local").embed([ordered_prompt(("sinus rhythm",))]), atol=1e-6)
    with pytest.raises(KeyError, match="not embedded in advance"):
        table.embed(["The report of the ECG is that something else."])

    plan = Plan((2, 1, 0, 1), 0, 4)
    actor = ShardSampler(config=config, plan=plan, specs=specs, prov=config.provenance("r", tiny_bundle.model_hash),
                         device="cpu", threads=1, embedder=table)
    assert actor.pipeline.embedder is table  # no MiniLM in the actor
    samples = plan.shard(0)
    conds = [specs[i].condition for i in samples.spec_ids]
    own = ECGPipeline.from_bundle(tiny_bundle.url)(conds, [int(s) for s in samples.seeds], steps=2)
    np.testing.assert_allclose(actor._sample(conds, samples.seeds), own, rtol=1e-4, atol=1e-5)


def test_killed_actor_still_writes_every_sample_once(ray_local, tiny_bundle, tmp_path, manifest):
    """SIGKILL the sampler actors' processes mid-run (an actor dying, as on OOM): Ray restarts them, their
    shards are retried, and every sample is still written exactly once.

    The shards still missing are counted after the kill (so the kill certainly left work to redo), and Ray's
    task records must show a sampler task that ran again (attempt ≥ 1) and finished: a retried shard."""
    from ray.util.state import list_actors, list_tasks

    out = tmp_path / "out"
    shards = out / "shards"
    address = ray_local.get_runtime_context().gcs_address  # our cluster, when other Ray instances run here
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(generate, manifest, str(out), model=tiny_bundle.url, steps=SLOW_STEPS, shard_size=1,
                          actors=2, progress=False)
        wait_for(lambda: run.done() or any(shards.glob("part-*.parquet")))
        # Ray Data's actors are "MapWorker(MapBatches(ShardSampler))", unnamed (no handle to get): kill the
        # process.
        alive = list_actors(address=address, filters=[("state", "=", "ALIVE")])
        victims = [a for a in alive if "ShardSampler" in a.class_name and a.pid]
        for actor in victims:
            os.kill(actor.pid, signal.SIGKILL)
        committed_after_kill = len(list(shards.glob("part-*.parquet")))
        summary = run.result(timeout=600)
    assert victims and committed_after_kill < summary["n_shards"] == TOTAL, "the kill must land mid-run"
    retried = [t for a in victims for t in list_tasks(address=address, filters=[("actor_id", "=", a.actor_id)])
               if t.attempt_number > 0 and t.state == "FINISHED"]
    assert retried, "no sampler task was retried after the kill"
    assert_exactly_once(read_rows(str(out)))
    assert sorted(p.name for p in shards.iterdir() if not p.name.startswith(".")) == \
        [f"part-{k:05d}.parquet" for k in range(TOTAL)]


OUTAGE_S = 20  # longer than the S3 client's own retries of a refused connection (botocore: <= 15 s of backoff)


def test_s3_output_survives_a_server_restart(ray_local, tiny_bundle, s3_server, manifest):
    """SeaweedFS is down for OUTAGE_S mid-run: the run must still complete, every sample exactly once, readable
    with plain pandas from s3://. Only synthgen's own retries (sampler.with_retries) span that long: without
    them the first storage call of the outage fails the run."""
    import s3fs

    out, opts = f"s3://{s3_server.BUCKET}/run-restart", s3_server.storage_options
    client = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    committed = lambda: len(client.glob(f"{out[5:]}/shards/part-*.parquet", refresh=True))  # noqa: E731
    at_restart: list[int] = []

    def outage_after_first_shard() -> None:
        wait_for(lambda: committed() > 0)
        s3_server.stop()
        time.sleep(OUTAGE_S)
        s3_server.start()
        at_restart.append(committed())

    kw = dict(model=tiny_bundle.url, steps=SLOW_STEPS, shard_size=1, batch_size=1, storage_options=opts,
              progress=False)
    restarter = threading.Thread(target=outage_after_first_shard)
    restarter.start()
    try:
        first = generate(manifest, out, **kw)
    finally:
        restarter.join()
    assert at_restart and at_restart[0] < TOTAL, "the outage must land mid-run"
    assert first["samples_written"] == TOTAL == first["total_samples"]
    second = generate(manifest, out, **kw)
    assert second["total_samples"] == TOTAL and second["shards_written"] == 0
    df = read_rows(out, opts)
    assert_exactly_once(df)
    assert np.stack(df.signal.iloc[0]).shape == (12, 1024)
    assert client.exists(f"{out[5:]}/_SUCCESS.json") and client.exists(f"{out[5:]}/_plan.json")


def test_wfdb_only_run_commits_by_records_file(ray_local, tmp_path, manifest, model_kw, capsys):
    import wfdb

    out = tmp_path / "out"
    kw = dict(shard_size=8, output_format="wfdb", **model_kw)
    summary = generate(manifest, str(out), **{**kw, "progress": True})
    assert summary["samples_written"] == TOTAL and f"generated {TOTAL} ECGs" in capsys.readouterr().out
    names = [line for f in sorted(out.glob("wfdb/part-*/RECORDS")) for line in f.read_text().split()]
    assert len(names) == TOTAL == len(set(names)) and not (out / "shards").exists()
    rec = wfdb.rdrecord(str(out / "wfdb" / "part-00000" / names[0]))
    assert rec.p_signal.shape == (1024, 12) and rec.fs == pytest.approx(102.4) and rec.sig_name == list(LEADS)
    assert np.isfinite(rec.p_signal).all()
    assert generate(manifest, str(out), **kw)["shards_written"] == 0


def test_ray_job_entry_point_takes_the_cli_arguments(tmp_path):
    """`ray job submit -- python jobs/generate.py …` runs the CLI: bad input exits 2 before Ray starts."""
    import subprocess

    bad = tmp_path / "bad.csv"
    bad.write_text("report,sex\nx,Q\n")
    script = Path(__file__).resolve().parents[1] / "jobs" / "generate.py"
    proc = subprocess.run([sys.executable, str(script), "--manifest", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "row 1: sex='Q'" in proc.stderr and not (tmp_path / "o").exists()


def test_implausible_samples_are_flagged_and_redrawn_from_their_own_seed_stream(ray_local, tiny_bundle, tmp_path,
                                                                               manifest, model_kw):
    """Every row carries the plausibility verdict; with --replace-implausible an implausible sample is redrawn
    from the next seeds of its own stream, so the same command always writes the same samples."""
    from synthgen.data.plausibility import check
    from synthgen.generate.plan import retry_seed
    from synthgen.pipeline import ECGPipeline

    out = str(tmp_path / "out")
    summary = generate(manifest, out, seed=3, shard_size=8, replace_implausible=2, **model_kw)
    df = read_rows(out)
    assert_exactly_once(df)
    # the tiny random-weight model makes implausible ECGs, so samples were redrawn
    assert summary["replaced"] == int((df.attempt > 0).sum()) > 0
    assert summary["implausible_written"] == int((~df.plausible).sum())
    for row in df.itertuples():
        assert row.seed == retry_seed(sample_seed(3, row.spec_id, row.sample_index), row.attempt)
        assert row.attempt == 0 or row.attempt == 2 or row.plausible  # redrawn until plausible or out of tries
        verdict = check(np.stack(row.signal), None if np.isnan(row.hr) else row.hr)
        assert tuple(row.implausible_reasons) == verdict.reasons and row.plausible == verdict.ok
    row = df[df.attempt > 0].iloc[0]
    cond = Condition(tuple(row.reports), None if np.isnan(row.age) else row.age, row.sex,
                     None if np.isnan(row.hr) else row.hr)
    alone = ECGPipeline.from_bundle(tiny_bundle.url)([cond], [int(row.seed)], steps=2)
    np.testing.assert_allclose(np.stack(row.signal), alone[0], rtol=1e-4, atol=1e-5)
    # without replacement the same samples keep their first seeds and are only flagged
    plain = read_rows(str(tmp_path / "plain")) if generate(manifest, str(tmp_path / "plain"), seed=3,
                                                           shard_size=8, **model_kw) else None
    assert (plain.attempt == 0).all() and set(plain.seed) == {sample_seed(3, s, i) for s, i in
                                                              zip(plain.spec_id, plain.sample_index)}
