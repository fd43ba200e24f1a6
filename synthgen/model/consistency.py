"""Latent Consistency Distillation maths (Luo et al. 2023, "Latent Consistency Models"; Song et al. 2023,
"Consistency Models"): the few-step student that `synthgen train distill` trains and the "lcm" sampler uses.

The student f(x_t, t) maps any point of the teacher's probability-flow ODE straight to its clean end x₀:

    f(x, t) = c_skip(t) · x + c_out(t) · x̂₀(x, t),   c_skip(0) = 1, c_out(0) = 0

so f is the identity at the boundary t = 0 whatever the network outputs (the consistency models' boundary
condition). x̂₀ comes from the network's v-prediction (x̂₀ = √ᾱ·x − √(1−ᾱ)·v), which, unlike ε, stays
informative at ᾱ_T = 0. c_skip and c_out are diffusers' ``LCMScheduler.get_scalings_for_boundary_condition_discrete``
(σ_data 0.5, timestep scaling 10): training calls the very scheduler the "lcm" sampler steps with, so the
two cannot disagree. The teacher's ODE is followed by one DDIM step of k = T / N timesteps with classifier-free
guidance and the teacher's Epsilon Scaling folded in (what `ECGPipeline` samples with ``sampler="ddim"``).
"""

from __future__ import annotations

from typing import Any

import torch

from synthgen.errors import InputError
from synthgen.model.schedulers import STUDENT_SAMPLERS

MAX_STUDENT_STEPS = 4  # the student is trained and checked for 1–4 steps


def x0_and_eps(out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂₀, ε̂) implied by a network output at x_t = √ᾱ·x₀ + √(1−ᾱ)·ε. ``alpha_bar`` broadcasts against
    ``x`` (e.g. (B, 1, 1)). For "epsilon" x̂₀ is undefined at ᾱ = 0 (the reason students use v)."""
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return alpha * x - sigma * out, alpha * out + sigma * x
    if prediction_type == "epsilon":
        return (x - sigma * out) / alpha, out
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def scaled_x0_and_eps(out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str,
                      eps_scale: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0_and_eps`` with Epsilon Scaling (``model.schedulers.epsilon_scaling``) per sample: ε̂ ← ε̂ / factor
    and x̂₀ recomputed from it, except where ᾱ_t < 1e-6 (x_T is pure noise there). ``eps_scale``: a factor or
    (B, 1, 1) factors, e.g. ``EpsScale.factors(t)`` for per-sample timesteps."""
    x0, eps = x0_and_eps(out, x, alpha_bar, prediction_type)
    if torch.all(torch.as_tensor(eps_scale) == 1.0):
        return x0, eps
    noise_only = alpha_bar < 1e-6
    scaled = eps / eps_scale
    x0 = torch.where(noise_only, x0, (x - (1 - alpha_bar).sqrt() * scaled) / alpha_bar.clamp_min(1e-6).sqrt())
    return x0, torch.where(noise_only, eps, scaled)


def teacher_ddim_step(out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor,
                      prediction_type: str, eps_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """One deterministic DDIM step (η = 0) from x_t to x_s, per sample: x_s = √ᾱ_s·x̂₀ + √(1−ᾱ_s)·ε̂.

    ``out``: the teacher's (guided) output at x_t; ``alpha_bar``/``alpha_bar_prev`` (B, 1, 1) ᾱ_t and ᾱ_s;
    ``eps_scale`` as in ``scaled_x0_and_eps``. With one scalar t this is diffusers' ``DDIMScheduler.step`` on
    ``epsilon_scaling``'s output, as the pipeline's "ddim" sampler does."""
    x0, eps = scaled_x0_and_eps(out, x, alpha_bar, prediction_type, eps_scale)
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps


def student_sample(student: torch.nn.Module, scheduler: Any, steps: int, z: torch.Tensor,
                   cond: tuple[torch.Tensor, ...], prediction_type: str,
                   generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """The student's ``steps``-step latent from pure noise ``z`` (B, C, L) on the "lcm" sampler's timesteps
    (``scheduler`` is an LCMScheduler; this calls its ``set_timesteps``): equals ``ECGPipeline(...,
    sampler="lcm", steps=steps)`` before decoding, given the same ``generator`` for the re-noising. Only the last
    step is differentiable in the student — DMD2's "backward simulation" (Yin et al. 2024b, section 4.5): a
    multi-step student is trained on the inputs it meets at sampling time, without backpropagating through
    the chain."""
    scheduler.set_timesteps(steps, device=z.device)
    *earlier, last = scheduler.timesteps
    x = z
    with torch.no_grad():
        for t in earlier:
            x = scheduler.step(student(x, t.expand(len(x)), *cond), t, x, generator=generator).prev_sample
    t = last.to(z.device).expand(len(x))
    return consistency_output(scheduler, student(x, t, *cond), x, t, prediction_type)


@torch.no_grad()
def trajectory_points(student: torch.nn.Module, scheduler: Any, step_counts: tuple[int, ...], z: torch.Tensor,
                      cond: tuple[torch.Tensor, ...], prediction_type: str,
                      generator: torch.Generator | list[torch.Generator] | None = None
                      ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every point (x_t (B, C, L), t (B,), f(x_t, t) (B, C, L)) at which the "lcm" sampler calls ``student`` when
    it samples from noise ``z`` in each of ``step_counts`` steps, with f its consistency output there: the
    regression targets for a cheaper student (``train distill --method regress``). The first point, (z, T), is
    shared by every step count and listed once; ``generator`` re-noises between steps as the sampler does."""
    points, first = [], {}  # first: the student's output at (z, t) for a first timestep t already visited
    for steps in step_counts:
        scheduler.set_timesteps(steps, device=z.device)
        x = z
        for i, t in enumerate(scheduler.timesteps):
            tb = t.to(z.device).expand(len(x))
            if i == 0 and int(t) in first:
                out = first[int(t)]
            else:
                out = student(x, tb, *cond)
                points.append((x, tb, consistency_output(scheduler, out, x, tb, prediction_type)))
                if i == 0:
                    first[int(t)] = out
            if i < steps - 1:
                x = scheduler.step(out, t, x, generator=generator).prev_sample
    return points


def consistency_output(scheduler: Any, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                       prediction_type: str) -> torch.Tensor:
    """f(x, t) = c_skip(t)·x + c_out(t)·x̂₀ for a batch with per-sample timesteps ``t`` (B,), using the
    "lcm" scheduler's ᾱ and boundary scalings; equals ``LCMScheduler.step(...).denoised`` for one t."""
    alpha_bar = scheduler.alphas_cumprod.to(x.device)[t][:, None, None]
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t.to(torch.float32))
    x0, _ = x0_and_eps(out, x, alpha_bar, prediction_type)
    return c_skip[:, None, None] * x + c_out[:, None, None] * x0


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """mean(√((a − b)² + c²) − c): L2-like near 0, L1-like beyond c (Song & Dhariwal 2023; the LCM scripts)."""
    return torch.mean(torch.sqrt((a - b) ** 2 + c * c) - c)


def solver_timesteps(num_train_timesteps: int, original_steps: int) -> torch.Tensor:
    """The teacher-solver grid the student is distilled on, t_n = n·k − 1 for n = 1…N, k = T // N (ascending):
    the timesteps diffusers' LCMScheduler picks its 1–4 sampling steps from."""
    k = num_train_timesteps // original_steps
    return torch.arange(1, original_steps + 1) * k - 1


def check_student_sampler(config: dict[str, Any], sampler: str, steps: int, guidance: float, url: str) -> None:
    """InputError (one line) unless a bundle with this ``config`` can sample with ``sampler``: a student
    sampler needs the bundle's distilled student, 1–4 steps, and the guidance scale folded into it."""
    if sampler not in STUDENT_SAMPLERS:
        return
    student = config.get("student")
    if student is None:
        raise InputError(f"--sampler {sampler}: model bundle {url} has no distilled student; "
                         "make one with `synthgen train distill`, or use ddpm, dpm++sde, ddim or dpm++")
    if not 1 <= steps <= MAX_STUDENT_STEPS:
        raise InputError(f"--steps {steps}: the {sampler} student samples in 1 to {MAX_STUDENT_STEPS} steps")
    if float(guidance) != float(student["guidance"]):
        raise InputError(f"--guidance {guidance:g}: the {sampler} student has guidance {student['guidance']:g} "
                         f"folded in; pass --guidance {student['guidance']:g} or use a teacher sampler")
