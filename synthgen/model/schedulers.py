"""Diffusion schedulers by name, all on the training noise schedule (T=1000, linear betas, ε or v prediction).

diffusers provides the maths (well tested); this module only pins the settings so that training and every
sampler agree. diffusers is imported lazily: it costs ~3.5 s, which the CLI should not pay for `--help`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++", "dpm++sde")
# Few-step samplers of a distilled student (a bundle from `synthgen train distill`; model/consistency.py).
STUDENT_SAMPLERS: tuple[str, ...] = ("lcm",)
# The teacher's sampler: what `generate` and the pipeline use unless told when a bundle has no default sampling
# of its own (model.bundle.default_sampling; the shipped bundle's is its student), and each sampler's default
# step count (the one its Epsilon Scaling was tuned at). dpm++sde-20 with its tuned setting leads the teacher's
# test-condition figures — FID, recall, HR error, CLIP, no near-flat ECG — at a fifth of ddpm-100's steps
# (docs/benchmarks.md).
DEFAULT_SAMPLER = "dpm++sde"
DEFAULT_GUIDANCE = 2.0  # `generate`'s and the pipeline's classifier-free guidance unless told
DEFAULT_STEPS: dict[str, int] = {"ddpm": 100, "ddim": 50, "dpm++": 20, "dpm++sde": 20, "lcm": 1}


PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")


def make_scheduler(name: str, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                   beta_end: float = 0.012, prediction_type: str = "epsilon",
                   zero_terminal_snr: bool = False, original_inference_steps: int = 50) -> Any:
    """A fresh diffusers scheduler (they are stateful: one per sampling run).

    "ddpm": ancestral sampling, the paper's sampler (use 1000 steps); "ddim": deterministic (eta=0);
    "dpm++": DPM-Solver++ (2nd order multistep), good in 20-30 steps; "dpm++sde": its stochastic form,
    SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", section 5), which injects fresh noise each step as
    ddpm does: at 20 steps, with its Epsilon Scaling, the shipped model's best sampler (recall 0.71 against
    ddpm-100's 0.53 and dpm++'s 0.32 on the test conditions, docs/benchmarks.md) and the default. No sample
    clipping: latents are not bounded to [-1, 1]. ``prediction_type`` is what the network outputs: "epsilon"
    (the noise) or "v_prediction" (v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x₀, Salimans & Ho 2022), diffusers' names.

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


@dataclass(frozen=True)
class EpsScale:
    """An Epsilon Scaling setting: ε̂ ÷ ``factor`` at the steps whose timestep t ≥ ``from_t`` (0: every step).

    Written "1.6@500" (factor 1.6 from t = 500 up) or "1.3" (every step): the form bundles
    (``config.json: sampling.eps_scale``), the tuning script and the model card use. The interval exists because
    the flat-line mode is decided at high noise — denoising real latents noised to t₀ = 300 gives no near-flat
    ECGs, from t₀ ≥ 500 it does (docs/model.md) — while scaling at low noise only inflates amplitudes and HR
    error; Ning et al. 2024 also vary the factor with t. ValueError for a malformed string."""

    factor: float = 1.0
    from_t: int = 0

    @classmethod
    def parse(cls, value: str | float | EpsScale) -> EpsScale:
        if isinstance(value, EpsScale):
            return value
        try:
            factor, at, from_t = str(value).partition("@")
            out = cls(float(factor), int(from_t) if at else 0)
        except ValueError:
            raise ValueError(f"Epsilon Scaling {value!r}: expected FACTOR or FACTOR@T, e.g. 1.3 or 1.6@500") from None
        if not (math.isfinite(out.factor) and out.factor > 0) or out.from_t < 0:
            raise ValueError(f"Epsilon Scaling {value!r}: expected a finite factor > 0 and T >= 0")
        return out

    def __str__(self) -> str:
        factor = format(self.factor, ".15g")  # 1.6 -> "1.6", 1.0 -> "1": distinct factors, distinct strings
        return f"{factor}@{self.from_t}" if self.from_t else factor

    def at(self, t: int) -> float:
        """The factor at timestep ``t``."""
        return self.factor if t >= self.from_t else 1.0

    def factors(self, t: Any) -> Any:
        """The factor at each of a batch of timesteps: (B,) tensor ``t`` -> (B, 1, 1) float tensor."""
        import torch

        return torch.where(t >= self.from_t, self.factor, 1.0).to(torch.float32)[:, None, None]


def resolve_sampling(default: dict[str, Any], sampler: str | None, steps: int | None, decoder: str | None
                     ) -> tuple[str, int | None, str]:
    """(sampler, steps, decoder) with what was left None filled in: all three from ``default`` (a bundle's
    ``model.bundle.default_sampling``) when no sampler was given — a default is a package, measured as one
    (docs/benchmarks.md) — else the sampler's own steps (``default_steps``) and the VAE's decoder."""
    if sampler is None:
        return default["sampler"], default["steps"] if steps is None else steps, decoder or default["decoder"]
    return sampler, default_steps(sampler, steps), decoder or "vae"


def default_steps(sampler: str, steps: int | None) -> int | None:
    """``steps``, or when None the sampler's default (``DEFAULT_STEPS``; None for an unknown sampler, which
    its caller reports)."""
    return DEFAULT_STEPS.get(sampler) if steps is None else steps
