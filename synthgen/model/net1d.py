"""Net1D (Hong et al. 2020, "HOLMES"/"CardioLearn"): the 1-D CNN DiffuSETS uses as its ECG encoder.

Written from the idea, not copied: a stem convolution, then stages of bottleneck blocks. Each block is
BN → Swish → 1×1 conv (narrow) → BN → Swish → grouped k-wide conv (the stage's first block strides to
downsample) → BN → Swish → 1×1 conv (widen) → squeeze-excitation, plus a shortcut (max-pool and a 1×1 conv
when shape changes). Global average pooling gives the representation; a linear head maps it into the
joint ECG–text space used for CLIP scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Net1DConfig:
    """Sizes. The defaults (~0.3 M parameters) train on ~1,500 PTB-XL records in minutes on 2 cores."""

    in_channels: int = 12
    stem_channels: int = 32
    stage_channels: tuple[int, ...] = (32, 64, 96, 128)
    blocks_per_stage: tuple[int, ...] = (1, 1, 1, 1)
    kernel_size: int = 9
    stride: int = 2
    bottleneck_ratio: float = 0.5
    group_width: int = 16
    se_ratio: float = 0.25
    embed_dim: int = 128  # joint-space size

    def __post_init__(self) -> None:  # JSON round trips give lists
        self.stage_channels = tuple(self.stage_channels)
        self.blocks_per_stage = tuple(self.blocks_per_stage)

    @property
    def feature_dim(self) -> int:
        return self.stage_channels[-1]


class SqueezeExcite(nn.Module):
    """Channel re-weighting from the block's global average: lets a block emphasise informative leads/filters."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        hidden = max(4, int(channels * ratio))
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean(dim=-1)))))
        return x * s[..., None]


class Block(nn.Module):
    """Pre-activation bottleneck block with a grouped middle convolution and squeeze-excitation."""

    def __init__(self, c_in: int, c_out: int, cfg: Net1DConfig, stride: int) -> None:
        super().__init__()
        mid = max(cfg.group_width, int(c_out * cfg.bottleneck_ratio) // cfg.group_width * cfg.group_width)
        self.bn1, self.conv1 = nn.BatchNorm1d(c_in), nn.Conv1d(c_in, mid, 1)
        self.bn2 = nn.BatchNorm1d(mid)
        self.conv2 = nn.Conv1d(mid, mid, cfg.kernel_size, stride=stride, padding=cfg.kernel_size // 2,
                               groups=mid // cfg.group_width)
        self.bn3, self.conv3 = nn.BatchNorm1d(mid), nn.Conv1d(mid, c_out, 1)
        self.se = SqueezeExcite(c_out, cfg.se_ratio)
        self.pool = nn.MaxPool1d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.proj = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.bn1(x)))
        h = self.conv2(F.silu(self.bn2(h)))
        h = self.se(self.conv3(F.silu(self.bn3(h))))
        return h + self.proj(self.pool(x))[..., :h.shape[-1]]


class Net1D(nn.Module):
    """(B, 12, T) ECG in mV → ``features`` (B, feature_dim) and ``forward`` → joint embedding (B, embed_dim)."""

    def __init__(self, cfg: Net1DConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Conv1d(cfg.in_channels, cfg.stem_channels, cfg.kernel_size, stride=cfg.stride,
                              padding=cfg.kernel_size // 2)
        blocks, c = [], cfg.stem_channels
        for c_out, n in zip(cfg.stage_channels, cfg.blocks_per_stage):
            for i in range(n):
                blocks.append(Block(c, c_out, cfg, cfg.stride if i == 0 else 1))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm1d(c)
        self.head = nn.Linear(c, cfg.embed_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled representation: what FID, precision/recall and memorisation compare."""
        h = F.silu(self.norm(self.blocks(self.stem(x))))
        return h.mean(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TextProjection(nn.Module):
    """MLP from the frozen text embedder's space into the joint space (the paper's text-side projection)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t)


class ClipModel(nn.Module):
    """Net1D + text projection + learned temperature, trained with a symmetric InfoNCE loss."""

    def __init__(self, cfg: Net1DConfig, text_dim: int, text_hidden: int = 256) -> None:
        super().__init__()
        self.ecg = Net1D(cfg)
        self.text = TextProjection(text_dim, text_hidden, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's initial temperature

    def embed_ecg(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.ecg(x), dim=-1)

    def embed_text(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(t), dim=-1)

    def loss(self, x: torch.Tensor, t: torch.Tensor, same_text: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE; rows with the identical prompt all count as positives (PTB-XL repeats
        reports like "sinus rhythm. normal ECG" hundreds of times, and calling them negatives is wrong)."""
        logits = self.logit_scale.exp().clamp(max=100.0) * self.embed_ecg(x) @ self.embed_text(t).T
        target = same_text.float() / same_text.float().sum(dim=1, keepdim=True)
        return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
