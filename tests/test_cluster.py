"""Cluster paths on this CPU machine: the one GPU rule of train / generate / augment-eval, GPUs that join the
cluster only after the job asked for them (logical GPUs on a real Ray node, torch on the CPU), and the training
prompts' embeddings that every worker reads from the run folder instead of re-embedding them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from synthgen.cluster import MAX_GPUS_ENV, gpu_budget
from synthgen.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_gpu_rule_counts_gpus_the_autoscaler_can_add(ray_local, monkeypatch) -> None:
    assert ray_local.cluster_resources().get("GPU", 0) == 0  # the session's Ray: CPUs only
    monkeypatch.delenv(MAX_GPUS_ENV, raising=False)
    assert gpu_budget(ray_local, None) == 0  # unset: CPU, no error
    assert gpu_budget(ray_local, False) == 0
    with pytest.raises(InputError, match=f"no GPUs and {MAX_GPUS_ENV} is not set"):
        gpu_budget(ray_local, True)  # would wait forever: nothing can bring a GPU
    monkeypatch.setenv(MAX_GPUS_ENV, "3")  # the autoscaler can add 3: plan with them, none alive yet
    assert gpu_budget(ray_local, None) == 3 and gpu_budget(ray_local, True) == 3
    assert gpu_budget(ray_local, False) == 0
    monkeypatch.setenv(MAX_GPUS_ENV, "eight")
    with pytest.raises(InputError, match=f"{MAX_GPUS_ENV}='eight'"):
        gpu_budget(ray_local, None)


def test_training_prompts_are_embedded_once_into_the_run_folder(ptbxl_shards, tmp_path) -> None:
    """The driver fills OUT/embeddings; a worker on any host builds its embedder as diffusion_worker does and
    gets every training/validation prompt from there without embedding one."""
    from synthgen.conditions.embedders import get_embedder
    from synthgen.conditions.prompts import ordered_prompt
    from synthgen.io.shards import read_shards
    from synthgen.train.run import CONDITION_COLUMNS, fill_embedding_cache

    out = tmp_path / "run"
    driver = get_embedder("local")  # the session cache: MiniLM loads only for prompts not embedded yet
    url = fill_embedding_cache(read_shards(str(ptbxl_shards), columns=CONDITION_COLUMNS), driver, str(out))
    assert Path(url) == out / "embeddings"

    worker = get_embedder("local", cache=url)  # as diffusion_worker builds it from its config
    table = read_shards(str(ptbxl_shards), columns=["split", "reports"])
    prompts = [ordered_prompt(r) for r, s in zip(table["reports"].to_pylist(), table["split"].to_pylist())
               if s in ("train", "val")]
    vectors = worker.embed(prompts)
    assert vectors.shape == (len(prompts), 384)
    assert worker.inner._model is None, "the worker loaded the text model: a prompt was missing from the run cache"


def test_generate_and_augment_eval_ask_for_gpus_and_wait_for_them(tiny_bundle, tmp_path) -> None:
    """tests/late_gpus.py in its own process (its own Ray cluster; this session's Ray stays as it is): no GPU
    when each step starts, SYNTHGEN_MAX_GPUS=2; a node with 2 logical GPUs comes once the requests wait."""
    from late_gpus import RAY_DID_NOT_START

    for _ in range(3):  # a loaded host can make the Ray head miss its start deadline: start the script again
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "late_gpus.py"), "--model", tiny_bundle.url,
                                 "--out", str(tmp_path / "out")], env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the script and the Ray processes it started
            stdout, stderr = proc.communicate()
            pytest.fail(f"timed out; stderr tail: {stderr[-3000:]}")
        if proc.returncode != RAY_DID_NOT_START:
            break
    assert proc.returncode == 0, stderr[-4000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    one_gpu = {"CPU": 1.0, "GPU": 1.0}

    # generate: no GPU at start; two sampler actors asked for one GPU each (2 shards, SYNTHGEN_MAX_GPUS=2) and
    # waited; each ran with a GPU Ray gave it, torch on the CPU
    assert report["gpus_before_generate"] == 0
    assert report["generate_requests"] == [one_gpu, one_gpu]
    assert report["generate_devices"] and all(d.startswith("cpu (Ray GPU ") for d in report["generate_devices"])
    # augment-eval: no GPU at start again; its two trials (original, weighted) asked for one GPU each and ran
    # with it
    assert report["gpus_before_augment_eval"] == 0
    assert report["trial_requests"] == [one_gpu] * 2
    assert len(report["trial_devices"]) == 2 and all(d.startswith("cpu (Ray GPU ") for d in report["trial_devices"])
