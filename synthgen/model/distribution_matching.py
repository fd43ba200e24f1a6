"""Distribution Matching Distillation maths (Yin et al. 2024, "One-step Diffusion with Distribution Matching
Distillation", CVPR; Yin et al. 2024b, "Improved Distribution Matching Distillation for Fast Image
Synthesis" = DMD2, NeurIPS): the objective `synthgen train distill --method dmd` refines a one-step student with.

A consistency student (model/consistency.py) learns the teacher's probability-flow ODE, and is as good as that
ODE: here the guided ODE loses variety (recall 0.27–0.32 on the test conditions against the stochastic
sampler's 0.71, docs/benchmarks.md). DMD instead matches the *distribution* of the one-step samples x = G(z)
to the teacher's: it lowers KL(p_G ‖ p_teacher), whose gradient at a noised sample x_t (any t) is the
difference of two scores — the teacher's ("real", with classifier-free guidance) and that of a second
diffusion network, the "fake" score, trained all along on the student's own samples. In x̂₀ terms:

    ∇_x KL ∝ w · (x̂₀_fake(x_t, t) − x̂₀_real(x_t, t)),    w = 1 / mean|x − x̂₀_real|  (per sample)

(DMD eq. 7 and its normalisation, section 3.3). The student takes a step against it through the surrogate
loss ½‖x − sg(x − ∇)‖², whose gradient in x is exactly ∇. DMD2 drops DMD's regression loss and keeps the fake
score current with several fake updates per student update (the two time-scale update rule), as here.

DMD2's GAN term (section 4.3) adds what the teacher's score cannot give — the real data: a small classifier
(``Discriminator``) on the fake score network's bottleneck features tells noised real latents from noised
student samples (the fake network and the classifier learn it with the fake score's diffusion loss), and the
student also minimises the non-saturating generator loss softplus(−D) of its own noised samples.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from synthgen.model.unet import UNet1D


def dmd_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """The normalised distribution-matching gradient for one-step samples ``x`` (B, C, L), given the real and
    fake scores' x̂₀ at a noised copy of ``x``: w · (x̂₀_fake − x̂₀_real), w = 1 / mean|x − x̂₀_real| per sample
    (floored at 1e-4). Zero where the two scores agree, i.e. where p_G already matches the teacher."""
    weight = 1.0 / (x - x0_real).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True).clamp_min(1e-4)
    return (x0_fake - x0_real) * weight


def dmd_loss(x: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """½‖x − sg(x − gradient)‖² summed per sample, averaged over the batch: its gradient in each sample is
    ``gradient`` / B, so the optimiser moves the student's samples against the KL gradient."""
    target = (x - gradient).detach()
    return 0.5 * torch.nn.functional.mse_loss(x, target, reduction="sum") / len(x)


class Discriminator(nn.Module):
    """DMD2's classifier head: (B, C, L) bottleneck features of the fake score network (``fake.mid``'s output,
    kept by a forward hook on each call of ``fake`` with gradients enabled — the calls it classifies; the
    no-grad score evaluations are skipped) -> (B,) logits, real > 0. A strided convolution and a mean over time,
    so it sees the whole 10 s at the bottleneck's resolution."""

    def __init__(self, fake: UNet1D):
        super().__init__()
        cfg = fake.cfg
        ch = cfg.base_channels * cfg.channel_mult[-1]
        self.head = nn.Sequential(nn.GroupNorm(cfg.norm_groups, ch), nn.SiLU(),
                                  nn.Conv1d(ch, ch, 4, stride=2, padding=1), nn.GroupNorm(cfg.norm_groups, ch),
                                  nn.SiLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(ch, 1))
        self._features: torch.Tensor | None = None
        self.hook = fake.mid.register_forward_hook(self._keep)  # .remove() detaches it from ``fake``

    def _keep(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self._features = out

    def forward(self) -> torch.Tensor:
        """The logits of the features of ``fake``'s last call, which it consumes. RuntimeError without one."""
        if self._features is None:
            raise RuntimeError("Discriminator: no call of the fake network since the last classification")
        features, self._features = self._features, None
        return self.head(features).squeeze(1)


def discriminator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """softplus(D(fake)) + softplus(−D(real)), batch means: the classifier's logistic loss (2 ln 2 at chance)."""
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating GAN loss softplus(−D(fake)) (Goodfellow et al. 2014), batch mean."""
    return F.softplus(-logits_fake).mean()
