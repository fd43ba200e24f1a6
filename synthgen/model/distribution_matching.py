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
"""

from __future__ import annotations

import torch


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
