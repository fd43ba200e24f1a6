"""Diffusion schedulers by name, all on the training noise schedule (T=1000, linear betas, ε or v prediction).

diffusers provides the maths (well tested); this module only pins the settings so that training and every
sampler agree. diffusers is imported lazily: it costs ~3.5 s, which the CLI should not pay for `--help`.
"""

from __future__ import annotations

from typing import Any

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++", "dpm++sde")
# Few-step samplers of a distilled student (a bundle from `synthgen train distill`; model/consistency.py).
STUDENT_SAMPLERS: tuple[str, ...] = ("lcm",)


PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")


def make_scheduler(name: str, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                   beta_end: float = 0.012, prediction_type: str = "epsilon",
                   zero_terminal_snr: bool = False, original_inference_steps: int = 50) -> Any:
    """A fresh diffusers scheduler (they are stateful: one per sampling run).

    "ddpm": ancestral sampling, the paper's sampler (use 1000 steps); "ddim": deterministic (eta=0);
    "dpm++": DPM-Solver++ (2nd order multistep), good in 20-30 steps; "dpm++sde": its stochastic form,
    SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", section 5), which injects fresh noise each step as
    ddpm does: at 20 steps it keeps more of ddpm's diversity than the ODE samplers (recall 0.37 against ddpm-100's
    0.51 and dpm++'s 0.33 on the test conditions, docs/benchmarks.md). No sample clipping: latents are
    not bounded to [-1, 1]. ``prediction_type`` is what the network outputs: "epsilon" (the noise) or
    "v_prediction" (v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x₀, Salimans & Ho 2022), diffusers' names.

    ``zero_terminal_snr`` rescales the betas so that ᾱ_T = 0 and spaces the sampling steps "trailing" (Lin et
    al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"): with ᾱ_T > 0 training leaves a
    trace of x₀ in x_T that sampling from pure noise cannot supply. It needs v-prediction (ε says nothing
    about x₀ at ᾱ = 0); raises ValueError otherwise.

    "lcm": the multistep consistency sampler of a distilled student (Luo et al. 2023), whose timesteps are
    1–4 of the ``original_inference_steps`` the student was distilled on; x₀ through the c_skip/c_out
    boundary parameterisation (timestep scaling 10, diffusers' default and what training uses).
    """
    import diffusers

    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ValueError("zero_terminal_snr needs prediction_type 'v_prediction'")
    common = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                  beta_schedule="linear", prediction_type=prediction_type)
    if zero_terminal_snr:
        common.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    if name == "ddpm":
        return diffusers.DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    if name == "ddim":
        # set_alpha_to_one: the last step lands on the clean x0 estimate, like ddpm and dpm++ do. (Stable
        # Diffusion's False stops at alpha_bar_0, leaving noise of std sqrt(1 - alpha_bar_0) ~ 0.03.)
        return diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    if name == "dpm++":
        return diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    if name == "dpm++sde":
        return diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="sde-dpmsolver++", solver_order=2)
    if name == "lcm":
        return diffusers.LCMScheduler(**common, clip_sample=False, set_alpha_to_one=True,
                                      original_inference_steps=original_inference_steps)
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS + STUDENT_SAMPLERS)}")


def epsilon_scaling(model_output: Any, sample: Any, alpha_bar: Any, factor: float, prediction_type: str) -> Any:
    """Epsilon Scaling (Ning et al., "Elucidating the Exposure Bias in Diffusion Models", ICLR 2024): divide
    the predicted noise by ``factor`` (≥ 1) before the scheduler step. A denoiser trained on exact x_t removes
    slightly too much noise from its own, drifted samples, and they come out under-dispersed — here, near-flat
    ECGs (docs/model.md). For v-prediction the v implied by the scaled ε and the x₀ it implies is returned.
    ``model_output`` and ``sample`` (B, C, L); ``alpha_bar`` ᾱ_t (scalar tensor). Unchanged at ᾱ_t < 1e-6
    (zero terminal SNR: x_T is pure noise and ε̂ = x_T exactly)."""
    if factor == 1.0 or alpha_bar < 1e-6:
        return model_output
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return model_output / factor
    eps = alpha * model_output + sigma * sample  # v = α·ε − σ·x₀ and x_t = α·x₀ + σ·ε
    return eps / (factor * alpha) - sigma * sample / alpha
