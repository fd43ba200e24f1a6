"""ECGPipeline: conditions + seeds -> 12-lead ECGs in mV. It only composes parts (diffusers style):
embedder and patient encoding -> U-Net + scheduler loop with classifier-free guidance -> VAE decoder -> the
limb leads projected onto Einthoven's and Goldberger's laws (``ecg.project_limb_leads``).
With ``sampler="lcm"`` the bundle's distilled student replaces the U-Net: 1–4 steps, guidance folded in
(one network call per step; model/consistency.py). With ``decoder="tiny"`` the bundle's tiny decoder (a
narrower decoder distilled from the VAE's, train/tiny_decoder_stage.py) replaces the VAE decoder.

Reproducibility: every sample draws its initial latent and its ancestral noise from its own CPU
``torch.Generator(seed)``, so a sample depends only on its condition and seed, not on its batch-mates,
and the noise is the same on every device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from synthgen.conditions.embedders import Embedder, get_embedder
from synthgen.conditions.patient import PatientStats, embed_reports
from synthgen.conditions.spec import Condition
from synthgen.ecg import N_SAMPLES, project_limb_leads
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions
from synthgen.model.bundle import Bundle, check_decoder, default_sampling, load_bundle
from synthgen.model.consistency import check_student_sampler
from synthgen.model.schedulers import (DEFAULT_GUIDANCE, STUDENT_SAMPLERS, EpsScale, epsilon_scaling, make_scheduler,
                                       resolve_sampling)


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def scheduler_kwargs(noise: dict[str, Any]) -> dict[str, Any]:
    """A bundle's ``config.json: noise`` as scheduler arguments (``schedulers.make_scheduler``); older bundles
    have no prediction_type (epsilon) and no zero_terminal_snr (ᾱ_T > 0)."""
    return dict(num_train_timesteps=noise["T"], beta_start=noise["beta_start"], beta_end=noise["beta_end"],
                prediction_type=noise.get("prediction_type", "epsilon"),
                zero_terminal_snr=noise.get("zero_terminal_snr", False))


class ECGPipeline:
    """A loaded bundle plus its text embedder: call it with conditions and seeds to get ECGs.

    ``precision``: "fp32", or "fp16"/"bf16" to run the U-Net and the VAE decoder under ``torch.autocast``
    (weights stay fp32; normalisation and softmax stay fp32 where autocast keeps them; guidance, the scheduler
    arithmetic and the returned ECGs are fp32) — for GPUs' half-precision units (speed-up not yet measured
    here). "fp16" needs CUDA; "bf16" also runs on CPU, slowly without AVX-512 BF16. InputError for an unknown
    name or fp16 on CPU."""

    def __init__(self, bundle: Bundle, embedder: Embedder | None = None, device: str | torch.device = "cpu",
                 precision: str = "fp32"):
        expected = bundle.config["embedder"]
        self.embedder = embedder or get_embedder(expected["name"])
        if (self.embedder.name, self.embedder.dim) != (expected["name"], expected["dim"]):
            raise InputError(f"embedder {self.embedder.name!r} (dim {self.embedder.dim}) does not match the "
                             f"model, which was trained with {expected['name']!r} (dim {expected['dim']})")
        self.bundle = bundle
        self.device = torch.device(device)
        if precision not in PRECISIONS or (precision == "fp16" and self.device.type != "cuda"):
            raise InputError(f"precision {precision!r} on {self.device.type}: expected fp32, bf16, or fp16 on cuda")
        self.precision = precision
        self.vae, self.unet = bundle.vae.eval().to(self.device), bundle.unet.eval().to(self.device)
        self.student = None if bundle.student is None else bundle.student.eval().to(self.device)
        self.tiny_decoder = None if bundle.tiny_decoder is None else bundle.tiny_decoder.eval().to(self.device)
        self.patient_stats = PatientStats.from_dict(bundle.config["patient_stats"])
        self.latent_scale = float(bundle.config["latent_scale"])
        self.noise = scheduler_kwargs(bundle.config["noise"])  # sample on the schedule the model was trained with
        # Epsilon Scaling per sampler, chosen on validation conditions at training (older bundles: none)
        self.eps_scale: dict[str, EpsScale] = {
            name: EpsScale.parse(v) for name, v in bundle.config.get("sampling", {}).get("eps_scale", {}).items()}

    @classmethod
    def from_bundle(cls, url: str | None = None, storage_options: StorageOptions = None,
                    device: str | torch.device = "cpu", precision: str = "fp32") -> ECGPipeline:
        """Pipeline for the bundle at ``url`` (None: the shipped model) with the embedder it names."""
        return cls(load_bundle(url, storage_options), device=device, precision=precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The network calls' precision context (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def latent_shape(self, n: int) -> tuple[int, int, int]:
        """(n, latent channels, latent length) of the U-Net's input: 1024 samples over the VAE's downsamplings."""
        return n, self.unet.cfg.in_channels, N_SAMPLES // 2 ** (len(self.vae.cfg.channel_mult) - 1)

    def encode_conditions(self, conditions: Sequence[Condition]) -> tuple[torch.Tensor, ...]:
        """U-Net condition inputs: (text, text_present, patient, patient_present)."""
        try:
            text = embed_reports(conditions, self.embedder)
        except ValueError as err:  # e.g. a condition without any report
            raise InputError(str(err)) from None
        patient, present = self.patient_stats.encode(conditions)
        cond = (torch.from_numpy(text), torch.ones(len(conditions), dtype=torch.bool),
                torch.from_numpy(patient), torch.from_numpy(present))
        return tuple(c.to(self.device) for c in cond)

    def predict_noise(self, z: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, ...],
                      guidance: float) -> torch.Tensor:
        """Classifier-free guidance: out_uncond + g * (out_cond - out_uncond), both in one doubled batch; the
        output is the noise or v, as the bundle's ``prediction_type`` says (guidance is linear in either)."""
        timesteps = t.expand(len(z))
        if guidance == 1.0:
            return self.unet(z, timesteps, *cond).float()
        text, text_present, patient, present = cond
        eps = self.unet(torch.cat([z, z]), torch.cat([timesteps, timesteps]), torch.cat([text, text]),
                        torch.cat([text_present, torch.zeros_like(text_present)]), torch.cat([patient, patient]),
                        torch.cat([present, torch.zeros_like(present)])).float()  # guidance in fp32 under autocast
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)

    def decoder(self, name: str) -> torch.nn.Module:
        """The latent decoder called ``name`` ("vae" or "tiny"); InputError for another name, or "tiny" on a
        bundle without one."""
        check_decoder(self.bundle, name)
        return self.vae.decoder if name == "vae" else self.tiny_decoder

    @torch.inference_mode()
    def __call__(self, conditions: Sequence[Condition], seeds: Sequence[int], sampler: str | None = None,
                 steps: int | None = None, guidance: float = DEFAULT_GUIDANCE,
                 eps_scale: float | str | EpsScale | None = None, decoder: str | None = None) -> np.ndarray:
        """float32 (B, 12, 1024) ECGs in mV, limb leads lawful. ``sampler`` None: the bundle's default sampling
        (``model.bundle.default_sampling``: sampler, steps and decoder, each unless given); ``steps`` None with a
        sampler: its default (``schedulers.DEFAULT_STEPS``); ``sampler="ddpm", steps=1000`` is the paper's.
        ``eps_scale``: Epsilon Scaling (``model.schedulers.EpsScale``: a factor, or "1.6@500" for the steps at
        t ≥ 500 only); None takes the bundle's for this sampler (none: 1). ``sampler="lcm"``: the distilled
        student, 1–4 steps, at the guidance it was distilled with (InputError otherwise, or when the bundle has
        none). ``decoder``: "vae", or "tiny" for the bundle's tiny decoder (``decoder``; None: "vae" when a
        sampler is given)."""
        if len(conditions) != len(seeds):
            raise ValueError(f"{len(conditions)} conditions but {len(seeds)} seeds")
        sampler, steps, decoder = resolve_sampling(default_sampling(self.bundle.config), sampler, steps, decoder)
        decode = self.decoder(decoder)
        steps = steps or 0  # an unknown sampler: make_scheduler says so
        check_student_sampler(self.bundle.config, sampler, steps, guidance, self.bundle.url)
        if not conditions:
            return np.zeros((0, self.vae.cfg.in_channels, N_SAMPLES), np.float32)
        student = sampler in STUDENT_SAMPLERS
        scheduler = make_scheduler(sampler, **self.noise, **(
            {"original_inference_steps": self.bundle.config["student"]["original_inference_steps"]} if student
            else {}))
        scheduler.set_timesteps(steps, device=self.device)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        z = torch.cat([torch.randn(self.latent_shape(1), generator=g) for g in generators]).to(self.device)
        z = z * scheduler.init_noise_sigma
        cond = self.encode_conditions(conditions)
        scaling = self.eps_scale.get(sampler, EpsScale()) if eps_scale is None else EpsScale.parse(eps_scale)
        for t in scheduler.timesteps:
            with self.autocast():
                if student:  # guidance is folded into the student: one call on the conditional batch
                    out = self.student(z, t.expand(len(z)), *cond)
                else:
                    out = self.predict_noise(scheduler.scale_model_input(z, t), t, cond, guidance)
            out = out.float()
            if not student:
                out = epsilon_scaling(out, z, scheduler.alphas_cumprod[int(t)], scaling.at(int(t)),
                                      self.noise["prediction_type"])
            z = scheduler.step(out, t, z, generator=generators).prev_sample
        with self.autocast():
            ecg = decode(z / self.latent_scale)
        return project_limb_leads(ecg.float().cpu().numpy())
