"""The noise predictor: a 1-D U-Net on VAE latents (B, 4, 128) that cross-attends to condition tokens.

Heart rate also enters as Fourier features + an MLP added to the timestep embedding, so its magnitude
reaches every residual block (a LayerNorm'd token alone keeps little of it). Conditions become four
tokens — text embedding, age, sex, heart rate — each with a learned null token used when that condition
is missing (or dropped for classifier-free guidance), plus a learned per-token type embedding so the
attention can tell them apart. Cross-attention sits at the attention levels of the
down and up paths and in the bottleneck, as in DiffuSETS (their Fig. 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synthgen.model.vae import Downsample, ResBlock, Upsample

N_TOKENS = 4  # text, age, sex, hr
N_PATIENT = 3  # age, sex, hr: the column order of PatientStats.encode
HR_COLUMN = 2


@dataclass
class UNetConfig:
    """U-Net size. ``len(channel_mult) - 1`` downsamplings; ``attention_levels`` index ``channel_mult``."""

    in_channels: int = 4
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    n_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)
    heads: int = 4
    cond_dim: int = 384  # text embedding size: 384 local MiniLM, 1536 OpenAI
    token_dim: int = 128
    norm_groups: int = 8
    dropout: float = 0.0
    hr_embedding: bool = True  # heart rate also added to the timestep embedding (HeartRateEmbedding)

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)  # JSON round-trips give lists
        self.attention_levels = tuple(self.attention_levels)

    @classmethod
    def paper(cls, cond_dim: int = 1536) -> UNetConfig:
        """DiffuSETS-like size: 7 levels (128 -> 2), wider, attention everywhere but the top."""
        return cls(base_channels=64, channel_mult=(1, 2, 2, 4, 4, 4, 4), n_res_blocks=1,
                   attention_levels=(1, 2, 3, 4, 5, 6), heads=8, cond_dim=cond_dim, token_dim=256,
                   norm_groups=32)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim), as in DDPM / the paper's eq. 10."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention of x (B, L, dim) over a context (B, S, context_dim); self-attention if no context."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, L, C = x.shape
        context = x if context is None else context
        q = self.q(x).view(B, L, self.heads, C // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(B, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.out(h.transpose(1, 2).reshape(B, L, C))


class AttnBlock(nn.Module):
    """Pre-norm transformer layer over the latent sequence: self-attention (global consistency, e.g. equal
    QRS amplitudes), cross-attention to the condition tokens, then an MLP."""

    def __init__(self, ch: int, token_dim: int, heads: int):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(ch), Attention(ch, ch, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(ch), Attention(ch, token_dim, heads)
        self.norm3 = nn.LayerNorm(ch)
        self.mlp = nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, ch))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        h = h + self.self_attn(self.norm1(h))
        h = h + self.cross_attn(self.norm2(h), tokens)
        h = h + self.mlp(self.norm3(h))
        return h.transpose(1, 2)


class Stage(nn.Module):
    """``n`` residual blocks at one resolution, each followed by an AttnBlock if ``attn``."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, temb_dim: int, attn: bool):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, cfg.norm_groups, temb_dim, cfg.dropout)
            for i in range(cfg.n_res_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_ch, cfg.token_dim, cfg.heads) for _ in self.res) if attn else None

    def forward(self, h: torch.Tensor, temb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        for i, res in enumerate(self.res):
            h = res(h, temb)
            if self.attn is not None:
                h = self.attn[i](h, tokens)
        return h


class ConditionTokens(nn.Module):
    """(text, patient values, present flags) -> (B, 4, token_dim) cross-attention tokens.

    Missing conditions use a learned null token, never a zero value, so "unknown" differs from
    "age at the mean"; all-null tokens are the unconditional branch of classifier-free guidance.
    """

    def __init__(self, cond_dim: int, token_dim: int):
        super().__init__()
        self.text = nn.Linear(cond_dim, token_dim)
        # One Linear(1 -> token_dim) per patient feature (age z-score, sex 0/1, hr z-score), batched.
        self.patient_weight = nn.Parameter(torch.randn(N_PATIENT, token_dim) * 0.02)
        self.patient_bias = nn.Parameter(torch.zeros(N_PATIENT, token_dim))
        self.null = nn.Parameter(torch.randn(N_TOKENS, token_dim) * 0.02)
        self.type_embedding = nn.Parameter(torch.randn(N_TOKENS, token_dim) * 0.02)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, text: torch.Tensor, text_present: torch.Tensor, patient: torch.Tensor,
                patient_present: torch.Tensor) -> torch.Tensor:
        patient_tokens = patient[:, :, None] * self.patient_weight + self.patient_bias
        tokens = torch.cat([self.text(text)[:, None], patient_tokens], dim=1)
        present = torch.cat([text_present[:, None], patient_present], dim=1).bool()
        tokens = torch.where(present[:, :, None], tokens, self.null.to(tokens.dtype))
        return self.norm(tokens + self.type_embedding)


class HeartRateEmbedding(nn.Module):
    """z-scored heart rate (B,) -> (B, dim): sin/cos at fixed log-spaced frequencies, then an MLP.

    Fourier features let a small MLP express a sharp, monotone response across 40–180 bpm (Tancik et al.,
    NeurIPS 2020); a missing rate uses a learned null vector, like the missing tokens.
    """

    def __init__(self, dim: int, n_freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.logspace(-1.0, 1.0, n_freqs), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, hr: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        args = hr.float()[:, None] * self.freqs[None]
        emb = self.mlp(torch.cat([torch.sin(args), torch.cos(args)], dim=-1))
        return torch.where(present[:, None].bool(), emb, self.null.to(emb.dtype))


class UNet1D(nn.Module):
    """eps_theta(z_t, t, conditions): predicts the noise added to a latent at timestep t."""

    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or UNetConfig()
        chs = [cfg.base_channels * m for m in cfg.channel_mult]
        temb_dim = 4 * cfg.base_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.base_channels, temb_dim), nn.SiLU(),
                                        nn.Linear(temb_dim, temb_dim))
        self.hr_embed = HeartRateEmbedding(temb_dim) if cfg.hr_embedding else None
        self.tokens = ConditionTokens(cfg.cond_dim, cfg.token_dim)
        self.conv_in = nn.Conv1d(cfg.in_channels, chs[0], 3, padding=1)

        last = len(chs) - 1
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = chs[0]
        for i, ch in enumerate(chs):
            self.down.append(Stage(prev, ch, cfg, temb_dim, attn=i in cfg.attention_levels))
            self.downsample.append(Downsample(ch) if i < last else nn.Identity())
            prev = ch
        self.mid = Stage(prev, prev, cfg, temb_dim, attn=True)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chs))):  # input: previous output concatenated with the level's skip
            self.up.append(Stage(prev + chs[i], chs[i], cfg, temb_dim, attn=i in cfg.attention_levels))
            self.upsample.append(Upsample(chs[i]) if i > 0 else nn.Identity())
            prev = chs[i]
        self.norm_out = nn.GroupNorm(cfg.norm_groups, prev)
        self.conv_out = nn.Conv1d(prev, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # starts as eps = 0: a stable start for the residual stack
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_present: torch.Tensor,
                patient: torch.Tensor, patient_present: torch.Tensor) -> torch.Tensor:
        """z_t (B,4,128), t (B,) long, text (B,cond_dim), text_present (B,) bool, patient (B,3) [age z, sex
        M=1/F=0, hr z], patient_present (B,3) bool -> eps (B,4,128)."""
        tokens = self.tokens(text, text_present, patient, patient_present)
        temb = self.time_embed(timestep_embedding(t, self.cfg.base_channels))
        if self.hr_embed is not None:
            temb = temb + self.hr_embed(patient[:, HR_COLUMN], patient_present[:, HR_COLUMN])
        h = self.conv_in(z_t)
        skips = []
        for stage, down in zip(self.down, self.downsample):
            h = stage(h, temb, tokens)
            skips.append(h)
            h = down(h)
        h = self.mid(h, temb, tokens)
        for stage, up in zip(self.up, self.upsample):
            h = up(stage(torch.cat([h, skips.pop()], dim=1), temb, tokens))
        return self.conv_out(F.silu(self.norm_out(h)))
