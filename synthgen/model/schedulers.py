"""Diffusion schedulers by name, all on the training noise schedule (T=1000, linear betas, ε or v prediction).

diffusers provides the maths (well tested); this module only pins the settings so that training and every
sampler agree. diffusers is imported lazily: it costs ~3.5 s, which the CLI should not pay for `--help`.
"""

from __future__ import annotations

from typing import Any

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++")


PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")


def make_scheduler(name: str, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                   beta_end: float = 0.012, prediction_type: str = "epsilon") -> Any:
    """A fresh diffusers scheduler (they are stateful: one per sampling run).

    "ddpm": ancestral sampling, the paper's sampler (use 1000 steps); "ddim": deterministic (eta=0);
    "dpm++": DPM-Solver++ (2nd order multistep), good in 20-30 steps. No sample clipping: latents are
    not bounded to [-1, 1]. ``prediction_type`` is what the network outputs: "epsilon" (the noise) or
    "v_prediction" (v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x₀, Salimans & Ho 2022), diffusers' names.
    """
    import diffusers

    common = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                  beta_schedule="linear", prediction_type=prediction_type)
    if name == "ddpm":
        return diffusers.DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    if name == "ddim":
        # set_alpha_to_one: the last step lands on the clean x0 estimate, like ddpm and dpm++ do. (Stable
        # Diffusion's False stops at alpha_bar_0, leaving noise of std sqrt(1 - alpha_bar_0) ~ 0.03.)
        return diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    if name == "dpm++":
        return diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
