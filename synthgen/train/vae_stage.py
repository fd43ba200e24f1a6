"""Stage 1, one Ray Train worker: the VAE, MSE + λ·KL with monotonic KL annealing (DiffuSETS, eq. 7).

Both terms are means per element (MSE per signal sample, KL per latent dimension), so λ does not depend on
the signal length or latent size; with a summed KL the penalty dwarfs an ECG's ~0.06 mV² variance and the
posterior collapses to the mean ECG.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from synthgen.model.vae import VAE, VAEConfig, kl_divergence
from synthgen.train.datasets import iter_numpy
from synthgen.train.loop import fit, mean_over_workers, seed_worker, shuffle_seed, unwrap
from synthgen.train.presets import TrainConfig


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per latent dimension, averaged over the batch."""
    return kl_divergence(mu, logvar) / mu[0].numel()


def kl_weight(tc: TrainConfig, epoch: int) -> float:
    """λ rises linearly from 0 to `kl_weight` over `kl_anneal_epochs` epochs, then stays (monotonic annealing)."""
    return tc.kl_weight * min(1.0, epoch / max(tc.kl_anneal_epochs, 1))


def vae_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    tc = TrainConfig.from_dict(config["train"])
    torch.manual_seed(tc.seed)
    model = VAE(VAEConfig(**config["vae_model"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.vae.lr, weight_decay=tc.vae.weight_decay)
    model = ray.train.torch.prepare_model(model)
    seed_worker(tc.seed)
    device = ray.train.torch.get_device()
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def train_step(batch: dict, epoch: int) -> float:
        x = torch.tensor(batch["signal"]).to(device)
        recon, mu, logvar = model(x)
        loss = F.mse_loss(recon, x) + kl_weight(tc, epoch) * kl_per_dim(mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    @torch.no_grad()
    def validate(epoch: int) -> dict[str, float]:
        """Reconstruction MSE from the posterior mean plus the full-weight KL: comparable across epochs."""
        net, total, count = unwrap(model).eval(), 0.0, 0
        for batch in iter_numpy(val_shard, tc.vae.batch_size, shuffle=False):
            x = torch.tensor(batch["signal"]).to(device)
            mu, logvar = net.encode(x)
            loss = F.mse_loss(net.decode(mu), x) + tc.kl_weight * kl_per_dim(mu, logvar)
            total, count = total + float(loss) * len(x), count + len(x)
        net.train()
        val = mean_over_workers(total, count)
        return {"val_loss": val, "select": val}

    fit(
        name="vae", stage=tc.vae,
        stateful={"model": unwrap(model), "optimizer": optimizer},
        best_source=unwrap(model),
        batches=lambda epoch: iter_numpy(train_shard, tc.vae.batch_size, shuffle=True,
                                          seed=shuffle_seed(tc.seed, epoch)),
        train_step=train_step, validate=validate,
    )
