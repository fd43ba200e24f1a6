"""A 1-D convolutional VAE that compresses a 12-lead ECG (12, 1024) in mV into a (4, 128) latent.

The diffusion model runs in this latent space (8x shorter, 3x fewer channels), which is what makes
sampling affordable. The building blocks here (ResBlock, Downsample, Upsample) are shared with the U-Net.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synthgen.ecg import N_LEADS


class ResBlock(nn.Module):
    """(GroupNorm -> SiLU -> Conv) twice around a residual path; ``emb_dim`` adds a per-channel embedding
    (the U-Net's timestep) between the two convolutions."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, emb_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve the length with a strided convolution (learned, unlike pooling)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the length: nearest-neighbour then a convolution (avoids transposed-conv checkerboards)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass
class VAEConfig:
    """VAE size. ``len(channel_mult) - 1`` stride-2 downsamplings: 3 gives 1024 -> 128."""

    in_channels: int = N_LEADS
    latent_channels: int = 4
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    n_res_blocks: int = 2
    norm_groups: int = 8

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)  # JSON round-trips give lists

    @classmethod
    def paper(cls) -> VAEConfig:
        """A wider, deeper preset for GPU training (same latent shape)."""
        return cls(base_channels=64, channel_mult=(1, 2, 4, 4), n_res_blocks=2, norm_groups=32)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv1d(cfg.in_channels, chs[0], 3, padding=1)
        layers: list[nn.Module] = []
        prev = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(cfg.n_res_blocks):
                layers.append(ResBlock(prev, ch, cfg.norm_groups))
                prev = ch
            if i < len(chs) - 1:
                layers.append(Downsample(ch))
        layers += [ResBlock(prev, prev, cfg.norm_groups), nn.GroupNorm(cfg.norm_groups, prev), nn.SiLU(),
                   nn.Conv1d(prev, 2 * cfg.latent_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv_in(x))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mult]
        prev = chs[-1]
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_channels, prev, 3, padding=1),
                                   ResBlock(prev, prev, cfg.norm_groups)]
        for i in reversed(range(len(chs))):
            for _ in range(cfg.n_res_blocks):
                layers.append(ResBlock(prev, chs[i], cfg.norm_groups))
                prev = chs[i]
            if i > 0:
                layers.append(Upsample(prev))
        layers += [nn.GroupNorm(cfg.norm_groups, prev), nn.SiLU(), nn.Conv1d(prev, cfg.in_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class VAE(nn.Module):
    """x (B, 12, 1024) in mV  <->  z (B, 4, 128)."""

    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or VAEConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, latent_channels, L / 8)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, differentiable in mu and logvar."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over latent elements, averaged over the batch (paper eq. 8)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
