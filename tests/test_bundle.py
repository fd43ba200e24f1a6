"""Model bundles: save/load round trip, integrity checks, the shipped-bundle lookup."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from synthgen.errors import InputError
from synthgen.model import bundle as bundle_mod
from synthgen.model.bundle import load_bundle, save_bundle
from synthgen.model.unet import UNet1D
from synthgen.model.vae import VAE
from test_model import TINY_VAE, single_thread, tiny_unet_config  # noqa: F401 (autouse fixture)


def save_tiny_bundle(url: str, embedder_name: str = "test-hash", dim: int = 16) -> str:
    """A random bundle (output conv not zero, so conditions matter); returns the model hash."""
    torch.manual_seed(0)
    vae, unet = VAE(TINY_VAE), UNet1D(tiny_unet_config(dim))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
    config = {"vae": asdict(TINY_VAE), "unet": asdict(unet.cfg), "latent_scale": 0.5,
              "embedder": {"name": embedder_name, "dim": dim},
              "patient_stats": {"age_mean": 60.0, "age_std": 15.0, "hr_mean": 75.0, "hr_std": 15.0},
              "noise": {"T": 1000, "beta_start": 0.00085, "beta_end": 0.012},
              "data_fingerprint": "test", "training": {"note": "random weights"}}
    return save_bundle(url, vae, unet, config, "# Tiny test model\n")


def outputs(b: bundle_mod.Bundle) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 128, generator=g)
    with torch.no_grad():
        eps = b.unet(z, torch.tensor([10, 500]), torch.randn(2, 16, generator=g), torch.ones(2, dtype=torch.bool),
                     torch.randn(2, 3, generator=g), torch.ones(2, 3, dtype=torch.bool))
        return eps, b.vae.decode(z)


def test_roundtrip(tmp_path: Path) -> None:
    h = save_tiny_bundle(str(tmp_path / "m"))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "MODEL_CARD.md", "config.json", "unet.safetensors", "vae.safetensors"]
    a, b = load_bundle(str(tmp_path / "m")), load_bundle(str(tmp_path / "m"))
    assert a.model_hash == b.model_hash == h
    assert not a.unet.training and not a.vae.training
    assert a.config["synthgen_version"] and set(a.config["files"]) == {"vae.safetensors", "unet.safetensors"}
    for x, y in zip(outputs(a), outputs(b)):
        assert torch.equal(x, y)
    # saving the same weights again gives the same hash (deterministic serialisation)
    assert save_tiny_bundle(str(tmp_path / "again")) == h


def test_object_storage_url() -> None:
    url = "memory://bundles/tiny"
    h = save_tiny_bundle(url)
    assert load_bundle(url).model_hash == h


def test_altered_weights_are_refused(tmp_path: Path) -> None:
    save_tiny_bundle(str(tmp_path))
    f = tmp_path / "unet.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match="unet.safetensors has sha256 .* expected"):
        load_bundle(str(tmp_path))


@pytest.mark.parametrize("name", ["vae.safetensors", "config.json"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    save_tiny_bundle(str(tmp_path))
    (tmp_path / name).unlink()
    with pytest.raises(InputError, match=f"missing {name}"):
        load_bundle(str(tmp_path))


def test_embedder_dim_must_match_unet(tmp_path: Path) -> None:
    save_tiny_bundle(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["embedder"]["dim"] = 384
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="cond_dim 16 != embedder.dim 384"):
        load_bundle(str(tmp_path))


def test_shipped_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_mod.importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(InputError, match="no shipped model is installed"):
        load_bundle()
    h = save_tiny_bundle(str(tmp_path / "assets" / "model"))
    assert load_bundle().model_hash == h
