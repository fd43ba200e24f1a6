"""ECGPipeline on a tiny random bundle: shapes, seeding, batch independence, guidance, samplers, embedders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.model.bundle import load_bundle
from synthgen.model.schedulers import SAMPLERS, EpsScale
from synthgen.pipeline import ECGPipeline
from test_bundle import save_tiny_bundle
from test_model import single_thread  # noqa: F401 (autouse fixture)

CONDITIONS = [Condition(("sinus rhythm",), age=60, sex="M", hr=70),
              Condition(("atrial fibrillation", "left axis deviation"), sex="F"),
              Condition(("sinus bradycardia",), hr=45)]


class HashEmbedder:
    """Deterministic stand-in for a text embedder: unit vectors seeded by a hash of the text."""

    name = "test-hash"
    dim = 16

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(self.dim)
                for t in texts]
        x = np.asarray(rows, np.float32).reshape(len(texts), self.dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> ECGPipeline:
    url = str(tmp_path_factory.mktemp("bundle"))
    save_tiny_bundle(url)
    return ECGPipeline(load_bundle(url), embedder=HashEmbedder())


def test_shape_and_determinism(pipe: ECGPipeline) -> None:
    a = pipe(CONDITIONS, seeds=[1, 2, 3], steps=4)
    assert a.shape == (3, 12, 1024) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, pipe(CONDITIONS, seeds=[1, 2, 3], steps=4))
    assert not np.allclose(a[0], pipe(CONDITIONS[:1], seeds=[4], steps=4)[0])  # the seed matters
    assert pipe([], seeds=[]).shape == (0, 12, 1024)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sample_independent_of_batch_mates(pipe: ECGPipeline, sampler: str) -> None:
    batched = pipe(CONDITIONS, seeds=[1, 2, 3], sampler=sampler, steps=4)
    alone = pipe(CONDITIONS[1:2], seeds=[2], sampler=sampler, steps=4)
    reordered = pipe([CONDITIONS[2], CONDITIONS[1]], seeds=[3, 2], sampler=sampler, steps=4)
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-5)
    np.testing.assert_allclose(reordered[1], batched[1], atol=1e-5)


def test_half_precision_runs_the_networks_under_autocast(pipe: ECGPipeline) -> None:
    """bf16 (the CPU-capable half precision) gives the fp32 ECGs to bf16's ~3 significant digits, not the same
    bits; fp16 needs CUDA and an unknown name is refused, both as one-line InputErrors."""
    full = pipe(CONDITIONS, seeds=[1, 2, 3], steps=4)
    half = ECGPipeline(pipe.bundle, embedder=pipe.embedder, precision="bf16")(CONDITIONS, seeds=[1, 2, 3], steps=4)
    assert half.dtype == np.float32 and not np.array_equal(half, full)
    assert np.abs(half - full).max() < 0.05 * np.abs(full).max()
    for bad in ("fp16", "int8"):
        with pytest.raises(InputError, match="precision"):
            ECGPipeline(pipe.bundle, embedder=pipe.embedder, precision=bad)


def test_guidance_and_conditions_matter(pipe: ECGPipeline) -> None:
    seeds = [7, 7]
    g1, g3 = (pipe(CONDITIONS[:2], seeds=seeds, steps=4, guidance=g) for g in (1.0, 3.0))
    assert not np.allclose(g1, g3)
    assert not np.allclose(g1[0], g1[1])  # same seed, different conditions


def test_bad_inputs(pipe: ECGPipeline, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        pipe(CONDITIONS[:1], seeds=[0], sampler="euler")
    with pytest.raises(ValueError, match="2 conditions but 1 seeds"):
        pipe(CONDITIONS[:2], seeds=[0])
    with pytest.raises(InputError, match="report"):
        pipe([Condition(())], seeds=[0])
    with pytest.raises(InputError, match="does not match the model"):
        ECGPipeline(pipe.bundle, embedder=type("Other", (HashEmbedder,), {"name": "other"})())


def test_real_local_embedder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """from_bundle builds the embedder the bundle names (here the offline MiniLM, 384-d)."""
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))
    url = str(tmp_path / "bundle")
    save_tiny_bundle(url, embedder_name="local", dim=384)
    pipe = ECGPipeline.from_bundle(url)
    assert pipe.embedder.name == "local" and pipe.embedder.dim == 384
    out = pipe(CONDITIONS, seeds=[1, 2, 3], steps=2)
    assert out.shape == (3, 12, 1024) and np.isfinite(out).all()


def test_pipeline_applies_the_bundles_eps_scale(tmp_path: Path) -> None:
    """The factor saved in config.json's ``sampling`` is applied per sampler; an explicit one overrides it."""
    save_tiny_bundle(str(tmp_path / "m"), sampling={"eps_scale": {"ddim": 1.3}})
    pipe = ECGPipeline(load_bundle(str(tmp_path / "m")), embedder=HashEmbedder())
    cond, seeds = [Condition(("sinus rhythm",), 50, "F", 70)], [0]
    bundle_default = pipe(cond, seeds, sampler="ddim", steps=4)
    assert np.array_equal(bundle_default, pipe(cond, seeds, sampler="ddim", steps=4, eps_scale=1.3))
    assert not np.array_equal(bundle_default, pipe(cond, seeds, sampler="ddim", steps=4, eps_scale=1.0))
    assert np.array_equal(pipe(cond, seeds, sampler="dpm++", steps=4),  # no factor saved for dpm++
                          pipe(cond, seeds, sampler="dpm++", steps=4, eps_scale=1.0))


def test_generated_limb_leads_obey_einthoven_and_goldberger(tmp_path: Path) -> None:
    """An untrained decoder's six limb leads are unrelated traces; the pipeline returns the nearest lawful set."""
    save_tiny_bundle(str(tmp_path / "m"))
    pipe = ECGPipeline(load_bundle(str(tmp_path / "m")), embedder=HashEmbedder())
    ecg = pipe([Condition(("sinus rhythm",), 50, "F", 70)] * 2, [0, 1], sampler="ddim", steps=2)
    i, ii = ecg[:, 0], ecg[:, 1]
    np.testing.assert_allclose(ecg[:, 2:6], np.stack([ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2], 1), atol=1e-5)


def test_pipeline_applies_epsilon_scaling_only_from_its_timestep(tmp_path: Path) -> None:
    """"1.3@T" scales ε̂ at the steps with t ≥ T only: from 0 it is plain 1.3, from above the last timestep it
    is no scaling, and between the two it is neither; a bundle may store the interval form."""
    save_tiny_bundle(str(tmp_path / "m"), sampling={"eps_scale": {"ddpm": "1.3@500"}})
    pipe = ECGPipeline(load_bundle(str(tmp_path / "m")), embedder=HashEmbedder())
    cond, seeds = [Condition(("sinus rhythm",), 50, "F", 70)], [0]

    def run(eps_scale=None):
        return pipe(cond, seeds, sampler="ddpm", steps=6, eps_scale=eps_scale)

    assert np.array_equal(run("1.3@0"), run(1.3))
    assert np.array_equal(run("1.3@1000"), run(1.0))
    between = run()
    assert np.array_equal(between, run(EpsScale(1.3, 500)))
    assert not np.array_equal(between, run(1.3)) and not np.array_equal(between, run(1.0))
