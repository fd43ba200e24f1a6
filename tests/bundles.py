"""Tiny real model bundles for tests: random weights and tiny widths, saved by the production `save_bundle`,
so tests sample through the real ECGPipeline in milliseconds instead of through a stand-in."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, NamedTuple

import torch

from synthgen.model.bundle import save_bundle
from synthgen.model.unet import UNet1D
from synthgen.model.vae import VAE
from test_model import TINY_VAE, tiny_unet_config


class TinyBundle(NamedTuple):
    url: str
    model_hash: str


def save_tiny_bundle(url: str, embedder_name: str = "test-hash", dim: int = 16, **config_extra: Any) -> str:
    """A random bundle (output conv not zero, so conditions matter); returns the model hash. ``config_extra``
    adds config.json keys (e.g. ``sampling``)."""
    torch.manual_seed(0)
    vae, unet = VAE(TINY_VAE), UNet1D(tiny_unet_config(dim))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)
    config = {"vae": asdict(TINY_VAE), "unet": asdict(unet.cfg), "latent_scale": 0.5,
              "embedder": {"name": embedder_name, "dim": dim},
              "patient_stats": {"age_mean": 60.0, "age_std": 15.0, "hr_mean": 75.0, "hr_std": 15.0},
              "noise": {"T": 1000, "beta_start": 0.00085, "beta_end": 0.012},
              "data_fingerprint": "test", "training": {"note": "random weights"}, **config_extra}
    return save_bundle(url, vae, unet, config, "# Tiny test model\n")
