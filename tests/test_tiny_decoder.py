"""The tiny decoder (issue 11's speed): a real tiny `synthgen train tiny-decoder` run on PTB-XL (local Ray), the
bundle it writes, `generate --decoder tiny` and the refusals."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.io.shards import read_shards, signals
from synthgen.model.bundle import load_bundle
from synthgen.model.vae import Decoder
from synthgen.pipeline import ECGPipeline
from synthgen.train.presets import get_preset
from synthgen.train.tiny_decoder_stage import OUT_BUNDLE, tiny_decoder_config
from test_distill import SYNTHGEN, tiny_teacher
from test_model import single_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def trained(ptbxl_shards, ray_local, tmp_path_factory) -> tuple[Path, Path]:
    """(teacher, OUT) of one tiny-preset run from a tiny teacher bundle with a student (the CLI, local Ray)."""
    root = tmp_path_factory.mktemp("tiny-decoder")
    teacher, out = root / "teacher", root / "run"
    tiny_teacher(str(teacher), "local", 384, student=True)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    args = [*SYNTHGEN, "train", "tiny-decoder", "--data", str(ptbxl_shards), "--out", str(out), "--teacher",
            str(teacher), "--preset", "tiny"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == str(out / OUT_BUNDLE)
    assert "[tiny-decoder] latent pool:" in run.stdout and "[tiny-decoder] done" in run.stdout
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already trained" in again.stdout
    return teacher, out


def test_tiny_decoder_learns_the_vae_decoder_and_the_bundle_keeps_the_rest(trained, ptbxl_shards):
    """The bundle = the teacher (VAE, U-Net, student unchanged) + a tiny decoder closer to the VAE decoder than
    the same network untrained, with its architecture, fidelity and training recorded, and a card section."""
    teacher, out = trained
    start, bundle = load_bundle(str(teacher)), load_bundle(str(out / OUT_BUNDLE))
    for a, b in ((start.vae, bundle.vae), (start.unet, bundle.unet), (start.student, bundle.student)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert bundle.config["student"] == start.config["student"]
    info = bundle.config["tiny_decoder"]
    cfg = get_preset("tiny").tiny_decoder
    assert info["model"]["base_channels"] == cfg.base_channels and info["training"]["steps"] > 0
    assert info["teacher"]["model_hash"] == start.model_hash
    assert set(info["fidelity_val"]) == {"n", "mae_mv", "rms_error_mv", "signal_rms_mv", "max_abs_error_mv"}
    assert "## Tiny decoder" in (out / OUT_BUNDLE / "MODEL_CARD.md").read_text()

    x = torch.tensor(signals(read_shards(str(ptbxl_shards), split="val", columns=["signal"]))[:32])
    with torch.no_grad():
        mu, _ = bundle.vae.encode(x)
        ref = bundle.vae.decode(mu)
        torch.manual_seed(0)
        untrained = Decoder(tiny_decoder_config(bundle.config["vae"], cfg)).eval()
        assert (bundle.tiny_decoder(mu) - ref).abs().mean() < 0.9 * (untrained(mu) - ref).abs().mean()


def test_generate_with_the_tiny_decoder_records_it(trained, ray_local, tmp_path: Path):
    """`generate --decoder tiny`: every row says so, the plan records it, and a row's ECG is what the pipeline
    makes alone with the tiny decoder (not the VAE's). A copy of the bundle whose default sampling is set to
    the student's two steps with the tiny decoder samples that way without being told, and says so."""
    import shutil

    from synthgen.model.bundle import set_default_sampling

    from synthgen.conditions.embedders import get_embedder
    from synthgen.generate.run import generate

    url = str(trained[1] / OUT_BUNDLE)
    manifest = tmp_path / "m.csv"
    manifest.write_text("report,age,sex,hr,n\nsinus rhythm,60,F,70,3\n")
    out = tmp_path / "out"
    generate(str(manifest), str(out), model=url, sampler="lcm", steps=1, decoder="tiny", progress=False)
    df = pd.read_parquet(out / "shards")
    assert len(df) == 3 and set(df.decoder) == {"tiny"} and set(df.sampler) == {"lcm"}
    assert '"decoder": "tiny"' in (out / "_plan.json").read_text()
    row = df.sort_values("sample_index").iloc[0]
    pipe = ECGPipeline(load_bundle(url), get_embedder("local"))
    cond = [Condition(("sinus rhythm",), 60, "F", 70)]
    alone = {d: pipe(cond, [int(row.seed)], sampler="lcm", steps=1, decoder=d)[0] for d in ("tiny", "vae")}
    np.testing.assert_allclose(np.stack(row.signal).astype(np.float32), alone["tiny"], atol=1e-5)
    assert np.abs(alone["tiny"] - alone["vae"]).max() > 1e-4

    copy = str(tmp_path / "with-default")
    shutil.copytree(url, copy)
    new_hash = set_default_sampling(copy, "lcm", 2, "tiny", "a test")
    generate(str(manifest), str(tmp_path / "out2"), model=copy, progress=False)
    df = pd.read_parquet(tmp_path / "out2" / "shards")
    assert set(zip(df.sampler, df.steps, df.decoder, df.model_hash)) == {("lcm", 2, "tiny", new_hash)}
    row = df.sort_values("sample_index").iloc[0]
    np.testing.assert_allclose(np.stack(row.signal).astype(np.float32),
                               pipe(cond, [int(row.seed)], sampler="lcm", steps=2, decoder="tiny")[0], atol=1e-5)


def test_a_tiny_decoder_that_does_not_fit_the_vae_is_refused_at_load(tmp_path: Path):
    """A tiny decoder whose latent channels differ from the VAE's is a one-line InputError naming the key, not a
    shape error inside a generate actor."""
    from dataclasses import asdict

    from synthgen.model.bundle import save_bundle
    from synthgen.model.unet import UNet1D
    from synthgen.model.vae import VAE, VAEConfig
    from test_model import TINY_VAE, tiny_unet_config

    odd = VAEConfig(**{**asdict(TINY_VAE), "base_channels": 4, "norm_groups": 2, "latent_channels": 2})
    config = {"vae": asdict(TINY_VAE), "unet": asdict(tiny_unet_config(16)), "latent_scale": 0.5,
              "embedder": {"name": "test-hash", "dim": 16},
              "patient_stats": {"age_mean": 60.0, "age_std": 15.0, "hr_mean": 75.0, "hr_std": 15.0},
              "noise": {"T": 1000, "beta_start": 0.00085, "beta_end": 0.012}, "tiny_decoder": {"model": asdict(odd)}}
    save_bundle(str(tmp_path), VAE(TINY_VAE), UNet1D(tiny_unet_config(16)), config, "# t\n", tiny_decoder=Decoder(odd))
    with pytest.raises(InputError, match="'tiny_decoder.model' must have the VAE's in_channels, latent_channels"):
        load_bundle(str(tmp_path))


def test_a_bundle_without_a_tiny_decoder_or_an_unknown_decoder_is_refused(tiny_bundle, tmp_path: Path):
    from synthgen.generate.run import generate

    manifest = tmp_path / "m.csv"
    manifest.write_text("report\nsinus rhythm\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="--decoder tiny: model bundle .* has no tiny decoder; make one with "
                                         "`synthgen train tiny-decoder`"):
        generate(str(manifest), str(out), model=tiny_bundle.url, steps=2, decoder="tiny", progress=False)
    with pytest.raises(InputError, match="--decoder='big': expected one of vae, tiny"):
        generate(str(manifest), str(out), model=tiny_bundle.url, steps=2, decoder="big", progress=False)
    assert not out.exists()
    pipe = ECGPipeline(load_bundle(tiny_bundle.url))
    with pytest.raises(InputError, match="has no tiny decoder"):
        pipe([Condition(("sinus rhythm",))], [0], steps=2, decoder="tiny")


def test_refusals_before_ray_starts(trained, ptbxl_shards, tiny_bundle, tmp_path: Path):
    """An --out holding another teacher's tiny decoder, more batch than data, and a preset whose tiny decoder
    is not narrower than the teacher's VAE decoder are one-line errors, and nothing is written."""
    from synthgen.train.tiny_decoder_stage import train_tiny_decoder

    teacher, out = trained
    with pytest.raises(InputError, match=r"holds a tiny decoder of teacher .* use another --out"):
        train_tiny_decoder(str(ptbxl_shards), str(out), teacher=tiny_bundle.url, preset="tiny")
    fresh = tmp_path / "run"
    with pytest.raises(InputError, match=r"expected at least one batch .* lower --batch-size or --workers"):
        train_tiny_decoder(str(ptbxl_shards), str(fresh), teacher=str(teacher), preset="tiny", batch_size=10**6)
    with pytest.raises(InputError, match=r"tiny decoder base width 12 is not narrower than the VAE decoder's \(8\)"):
        train_tiny_decoder(str(ptbxl_shards), str(fresh), teacher=str(teacher), preset="small")
    assert not fresh.exists()
