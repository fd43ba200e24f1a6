"""Stage 2, one Ray Train worker: the conditional latent denoiser (DDPM, ε-prediction, T=1000).

Latents come from the frozen stage-1 VAE on the fly (a fresh posterior sample each epoch, scaled by the
fitted latent scale); report embeddings come from the shared embedding cache, filled by the driver.
Conditions are dropped at random — all of them (classifier-free guidance), the report alone, or each
patient feature alone (so a manifest row may leave age, sex or HR blank).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from synthgen.conditions.embedders import get_embedder
from synthgen.model.schedulers import make_scheduler
from synthgen.model.unet import UNet1D, UNetConfig
from synthgen.model.vae import VAE, VAEConfig
from synthgen.train.datasets import iter_numpy
from synthgen.train.loop import fit, mean_over_workers, unwrap
from synthgen.train.presets import TrainConfig


class EMA:
    """Exponential moving average of a model's weights: what gets validated and shipped."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model, self.decay = copy.deepcopy(model).eval().requires_grad_(False), decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def drop_conditions(text_present: torch.Tensor, present: torch.Tensor, tc: TrainConfig,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition dropout: per sample, drop everything, or the report alone, or each patient feature alone."""
    n = len(text_present)
    drop_all = torch.rand(n, generator=generator) < tc.p_uncond
    drop_text = drop_all | (torch.rand(n, generator=generator) < tc.p_drop_text)
    drop_feat = drop_all[:, None] | (torch.rand(present.shape, generator=generator) < tc.p_drop_feature)
    return text_present & ~drop_text, present & ~drop_feat


def diffusion_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    tc = TrainConfig.from_dict(config["train"])
    torch.manual_seed(tc.seed)
    device = ray.train.torch.get_device()
    vae = VAE(VAEConfig(**config["vae_model"]))
    vae.load_state_dict(config["vae_state"])
    vae = vae.to(device).eval().requires_grad_(False)
    scale = float(config["latent_scale"])
    embedder = get_embedder(config["embedder"], cache=config["cache"], storage_options=config["storage_options"])
    scheduler = make_scheduler("ddpm", tc.num_timesteps, tc.beta_start, tc.beta_end)
    alphas = scheduler.alphas_cumprod.to(device)

    unet = UNet1D(UNetConfig(**config["unet_model"]))
    ema = EMA(unet, tc.ema_decay)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=tc.diffusion.lr, weight_decay=tc.diffusion.weight_decay)
    unet = ray.train.torch.prepare_model(unet)
    ema.model.to(device)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def inputs(batch: dict, generator: torch.Generator | None):
        x = torch.tensor(batch["signal"]).to(device)
        mu, logvar = vae.encode(x)
        eps_z = torch.randn(mu.shape, generator=generator).to(device)
        z0 = (mu + torch.exp(0.5 * logvar) * eps_z) * scale
        text = torch.from_numpy(embedder.embed(list(batch["prompt"]))).to(device)
        patient = torch.tensor(batch["patient"]).to(device)
        present = torch.tensor(batch["present"]).to(device)
        t = torch.randint(0, tc.num_timesteps, (len(x),), generator=generator).to(device)
        noise = torch.randn(z0.shape, generator=generator).to(device)
        a = alphas[t][:, None, None]
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        return z_t, t, text, patient, present, noise

    def train_step(batch: dict, epoch: int) -> float:
        with torch.no_grad():
            z_t, t, text, patient, present, noise = inputs(batch, None)
            text_present, present = drop_conditions(torch.ones(len(t), dtype=torch.bool), present.cpu(), tc)
        eps = unet(z_t, t, text, text_present.to(device), patient, present.to(device))
        loss = F.mse_loss(eps, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.update(unwrap(unet))
        return float(loss)

    @torch.no_grad()
    def validate() -> float:
        """ε-MSE of the EMA weights on the validation split, with fixed noise and timesteps every epoch."""
        generator, total, count = torch.Generator().manual_seed(1234), 0.0, 0
        for batch in iter_numpy(val_shard, tc.diffusion.batch_size, shuffle=False):
            z_t, t, text, patient, present, noise = inputs(batch, generator)
            eps = ema.model(z_t, t, text, torch.ones(len(t), dtype=torch.bool, device=device), patient, present)
            total, count = total + float(F.mse_loss(eps, noise)) * len(t), count + len(t)
        return mean_over_workers(total, count)

    fit(
        name="diffusion", stage=tc.diffusion,
        stateful={"model": unwrap(unet), "ema": ema, "optimizer": optimizer},
        best_source=ema.model,
        batches=lambda epoch: iter_numpy(train_shard, tc.diffusion.batch_size, shuffle=True, seed=tc.seed + epoch),
        train_step=train_step, validate=validate,
    )
