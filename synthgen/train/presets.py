"""Training configuration as plain dataclasses, with named presets.

`small` trains end to end on a 2-core CPU within an hour on PTB-XL-sized data; `paper` follows the paper's
sizes for GPUs; `tiny` is a smoke test of a setup (minutes, useless model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from synthgen.model.schedulers import EpsScale


@dataclass
class StageConfig:
    """Optimisation settings for one stage (VAE or diffusion)."""

    epochs: int
    batch_size: int
    lr: float
    checkpoint_every: int = 200  # optimiser steps between resumable checkpoints
    weight_decay: float = 0.0


@dataclass
class DistillConfig:
    """Stage 3, Latent Consistency Distillation of a teacher bundle into a 1–4 step student
    (train/distill_stage.py, docs/model.md "Few-step sampling")."""

    stage: StageConfig = field(default_factory=lambda: StageConfig(epochs=60, batch_size=32, lr=5e-5,
                                                                   checkpoint_every=100))
    guidance: float = 2.0            # classifier-free guidance folded into the student (the generate default)
    original_steps: int = 50         # N: teacher DDIM solver grid on T=1000, skipping step k = T // N = 20
    # Epsilon Scaling of the teacher's DDIM steps (EpsScale: factor or factor@t); None: the teacher bundle's
    # setting for "ddim" (1 if none).
    teacher_eps_scale: str | float | None = None
    target_ema_decay: float = 0.95   # the target network θ⁻ = EMA of the student (LCM, consistency models)
    huber_c: float = 0.001           # pseudo-Huber loss constant (diffusers' LCD scripts)
    p_drop_text: float = 0.05        # the student sees missing reports and patient features as the teacher
    p_drop_feature: float = 0.1      # did (never all at once: guidance is folded in)
    sample_check_every: int = 2      # epochs between sample checks, which choose the kept target weights
    sample_check_n: int = 32
    sample_check_steps: tuple[int, ...] = (1, 2, 4)
    # the step counts whose mean sample score chooses the kept weights: 1 and 2 are the ones faster than
    # deepfake-ecg (docs/benchmarks.md); over a 12-epoch run lcm-1 kept improving while lcm-4 got worse, so
    # one checkpoint cannot be best for every step count
    select_steps: tuple[int, ...] = (1, 2)
    # the teacher's own score on the same conditions, recorded in the bundle beside the student's
    teacher_reference: tuple[tuple[str, int], ...] = (("ddpm", 100), ("ddim", 50))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        d = dict(d)
        d["stage"] = StageConfig(**d["stage"])
        d["sample_check_steps"] = tuple(int(s) for s in d["sample_check_steps"])
        d["select_steps"] = tuple(int(s) for s in d.get("select_steps", d["sample_check_steps"]))
        d["teacher_reference"] = tuple((str(a), int(b)) for a, b in d["teacher_reference"])
        return cls(**d)


@dataclass
class DMDConfig:
    """Stage 3 with ``--method dmd``: Distribution Matching Distillation (model/distribution_matching.py) of a
    one-step consistency student against its teacher, DMD2-style (two time-scale updates, no regression loss, the
    GAN term). Settings from the experiments in docs/model.md ("Distribution matching", "DMD2's GAN term")."""

    stage: StageConfig = field(default_factory=lambda: StageConfig(epochs=14, batch_size=32, lr=2e-5,
                                                                   checkpoint_every=50))
    guidance: float = 2.0            # the teacher's classifier-free guidance in the real score (and the student's)
    fake_lr: float = 2e-5            # the fake score network's learning rate
    fake_updates: int = 2            # fake-score updates per student update (DMD2's two time-scale rule)
    warmup_epochs: int = 2           # epochs of fake-score updates alone before the student moves
    t_range: tuple[int, int] = (20, 980)  # timesteps of the distribution-matching gradient (DMD: 0.02T–0.98T)
    # the "lcm" step counts the student is trained at, one drawn per batch; more than one step by DMD2's backward
    # simulation (model/consistency.py, student_sample). (1, 2) from the shipped student, 10 epochs: lcm-1 a little
    # better, lcm-2 much worse (FID 1.54 → 3.68 on the quick test-condition metric; docs/model.md)
    student_steps: tuple[int, ...] = (1,)
    # Epsilon Scaling of the real score (EpsScale; None: the teacher bundle's setting for dpm++sde). Without it
    # the teacher's high-noise bias pulls the student to near-flat ECGs (21 % of them after 100 steps); with the
    # sampler's 1.6@500 the near-flat share still rose (to 2–4 %); scaling from t = 300 kept it at 0–0.8 %
    # (docs/model.md, "Distribution matching").
    real_eps_scale: str | None = "1.6@300"
    p_drop_text: float = 0.05
    p_drop_feature: float = 0.1
    # DMD2's GAN term (model.distribution_matching.Discriminator); 0 = off. Generator weight: DMD2's 3e-3 for a
    # mean-reduced DMD loss is 1.5 for our per-sample sum over 512 latent elements; 16 epochs from the shipped
    # student at 1.5 / 15 / 50 gave lcm-1 FID 2.02 / 1.92 / 2.58 and lcm-2 1.92 / 1.38 / 2.17 (docs/model.md,
    # "DMD2's GAN term"). The classifier's weight in the fake network's loss is DMD2's 1e-2; its head has its own
    # learning rate (Adam: the weight does not change its steps) so it learns in the few hundred steps of a CPU run
    gan_weight: float = 15.0
    gan_d_weight: float = 1e-2
    gan_head_lr: float = 1e-3
    sample_check_every: int = 1
    sample_check_n: int = 64
    # progress only. The sample score (heart rate and near-flat share) does not see what DMD improves — variety:
    # in the preset run the best-scoring epoch (5) had FID 4.21 on the test conditions, worse than the starting
    # student's 3.89, and the final one 2.77 (docs/model.md)
    sample_check_steps: tuple[int, ...] = (1, 2)
    # the "lcm" step counts whose mean FID on the validation split (every val condition, the shipped evaluate
    # encoder's features) chooses the kept epoch, at each sample check; () keeps the final weights. The runs'
    # last epochs differ by more than FID's noise (docs/model.md, "Choosing the kept epoch by validation FID")
    fid_steps: tuple[int, ...] = (1, 2)
    fid_n: int = 1000  # at most this many validation conditions and ECGs in it (PTB-XL's subset has 242)
    # an EMA of the student's weights (train.diffusion_stage.EMA, per student update) is what gets checked and
    # kept, as for GAN generators (Karras et al. 2018); None: the raw weights. Without it the validation FID of
    # consecutive epochs jumped by up to 0.6 (docs/model.md, "Choosing the kept epoch by validation FID")
    ema_decay: float | None = 0.99
    teacher_reference: tuple[tuple[str, int], ...] = (("dpm++sde", 20),)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DMDConfig":
        d = dict(d)
        d["stage"] = StageConfig(**d["stage"])
        d["t_range"] = tuple(int(t) for t in d["t_range"])
        d["student_steps"] = tuple(int(s) for s in d.get("student_steps", (1,)))
        d["sample_check_steps"] = tuple(int(s) for s in d["sample_check_steps"])
        d["fid_steps"] = tuple(int(s) for s in d.get("fid_steps", ()))  # older bundles: the final weights,
        d.setdefault("ema_decay", None)  # of the student itself
        d["teacher_reference"] = tuple((str(a), int(b)) for a, b in d["teacher_reference"])
        return cls(**d)


@dataclass
class RegressConfig:
    """Stage 3 with ``--method regress``: a narrower student (the U-Net at ``base_channels``) trained from scratch
    to reproduce the bundle's student where it samples — at every point of its 1- and 2-step trajectories from
    fresh noise, its consistency output as the target (MSE in latent space): Luhman & Luhman's knowledge
    distillation of an iterative sampler into a fast one (2021), here of a few-step student into a cheaper one.
    At base 32 (591 k parameters against 2.09 M) a 12-minute regression cost the one-step sample FID 2.17 → 2.34
    on the quick stand-in and ran the U-Net 2.8× faster (docs/model.md, "A narrower student")."""

    stage: StageConfig = field(default_factory=lambda: StageConfig(epochs=6, batch_size=64, lr=1e-3,
                                                                   checkpoint_every=500))
    base_channels: int = 32          # half the small preset's U-Net (64): about a third of its FLOPs
    norm_groups: int = 8             # GroupNorm groups: must divide base_channels
    copies: int = 16                 # noise draws per training condition (PTB-XL subset: 1,490 → 47,680 points)
    steps: tuple[int, ...] = (1, 2)  # the "lcm" step counts whose trajectory points are regressed
    p_drop_text: float = 0.05        # condition dropout in the pool, as the student saw it (DMDConfig)
    p_drop_feature: float = 0.1
    val_n: int = 256                 # validation conditions (one noise draw each) the kept epoch is chosen on
    sample_check_every: int = 2
    sample_check_n: int = 32
    sample_check_steps: tuple[int, ...] = (1, 2)
    teacher_reference: tuple[tuple[str, int], ...] = (("dpm++sde", 20),)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RegressConfig":
        d = dict(d)
        d["stage"] = StageConfig(**d["stage"])
        for key in ("steps", "sample_check_steps"):
            d[key] = tuple(int(s) for s in d[key])
        d["teacher_reference"] = tuple((str(a), int(b)) for a, b in d["teacher_reference"])
        return cls(**d)


@dataclass
class TinyDecoderConfig:
    """Stage 4, `synthgen train tiny-decoder`: a narrower copy of the VAE decoder (``VAEConfig.base_channels``
    ``base_channels``), trained to reproduce the VAE decoder's output (L1, mV) on latents the sampler meets —
    posterior samples of training ECGs and, when the bundle has one, the student's 1- and 2-step samples of their
    conditions — a TAESD-like distilled decoder (Bohan O., "Tiny AutoEncoder for Stable Diffusion", 2023). At
    base 12 (a quarter of the FLOPs of base 24) 10 minutes of training matched the VAE decoder to 0.016 mV RMS
    on student samples at 2.8× its speed (docs/model.md, "Tiny decoder")."""

    stage: StageConfig = field(default_factory=lambda: StageConfig(epochs=30, batch_size=64, lr=2e-3,
                                                                   checkpoint_every=500))
    base_channels: int = 12          # half the small preset's VAE (24): a quarter of its decoder's FLOPs
    norm_groups: int = 6             # GroupNorm groups: must divide base_channels
    posterior_copies: int = 3        # posterior samples z ~ q(z|x) per training ECG in the latent pool
    student_copies: int = 3          # student samples per training condition in the pool (none without a student)
    val_n: int = 256                 # validation ECGs (posterior means) the kept epoch is chosen on

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TinyDecoderConfig":
        return cls(**{**d, "stage": StageConfig(**d["stage"])})


@dataclass
class TrainConfig:
    preset: str
    model_size: str = "small"                                 # "small" or "paper" model configs
    vae_model: dict[str, Any] = field(default_factory=dict)   # VAEConfig field overrides
    # UNetConfig field overrides (cond_dim comes from the embedder)
    unet_model: dict[str, Any] = field(default_factory=dict)
    vae: StageConfig = field(default_factory=lambda: StageConfig(epochs=40, batch_size=64, lr=1e-3))
    diffusion: StageConfig = field(default_factory=lambda: StageConfig(epochs=150, batch_size=64, lr=5e-4))
    kl_weight: float = 1e-3          # final λ of the monotonic KL annealing (KL per latent dimension)
    kl_anneal_epochs: int = 5        # λ rises linearly from 0 over these epochs
    ema_decay: float = 0.999
    p_uncond: float = 0.1            # drop every condition (classifier-free guidance)
    p_drop_text: float = 0.05        # drop the report alone
    p_drop_feature: float = 0.1      # drop each of age / sex / hr alone (teaches "missing")
    # "epsilon" or "v_prediction" (Salimans & Ho 2022; the shipped model's, and what few-step students need).
    prediction_type: str = "epsilon"
    # ᾱ_T = 0 and trailing sampling steps (Lin et al. 2024; needs v_prediction): see model/schedulers.py.
    zero_terminal_snr: bool = False
    num_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    latent_scale_samples: int = 4096  # records used to fit the latent scale
    # Checkpoint choice by samples (see diffusion_stage): every N epochs, N validation conditions, samplers.
    sample_check_every: int = 5
    sample_check_n: int = 32
    # the default sampler and the ODE one (the shipped weights were chosen on ddpm-100 and dpm++-20: its card)
    sample_check_samplers: tuple[tuple[str, int], ...] = (("dpm++sde", 20), ("dpm++", 20))
    sample_check_guidance: float = 2.0
    # Epsilon Scaling settings (model.schedulers.EpsScale: factor, or factor@t for the steps at t >= t only) tried
    # per sampler on the same conditions once the weights are chosen; the best is saved in the bundle
    # (config.json: sampling.eps_scale) and applied by the pipeline.
    eps_scale_grid: tuple[str, ...] = ("1", "1.05", "1.1", "1.15", "1.2", "1.25", "1.3", "1.35", "1.4",
                                       "1.4@500", "1.5@500", "1.6@500", "1.7@500")
    eps_scale_samplers: tuple[tuple[str, int], ...] = (("ddpm", 100), ("dpm++", 20), ("ddim", 50), ("dpm++sde", 20))
    distill: DistillConfig = field(default_factory=DistillConfig)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    regress: RegressConfig = field(default_factory=RegressConfig)
    tiny_decoder: TinyDecoderConfig = field(default_factory=TinyDecoderConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def noise(self) -> dict[str, Any]:
        """The noise schedule as the bundle records it (``config.json: noise``); samplers rebuild it from this."""
        return {"T": self.num_timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "prediction_type": self.prediction_type, "zero_terminal_snr": self.zero_terminal_snr}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["vae"] = StageConfig(**d["vae"])
        d["diffusion"] = StageConfig(**d["diffusion"])
        for key in ("sample_check_samplers", "eps_scale_samplers"):
            d[key] = tuple((str(a), int(b)) for a, b in d[key])
        d["eps_scale_grid"] = tuple(str(EpsScale.parse(f)) for f in d["eps_scale_grid"])
        d["distill"] = DistillConfig.from_dict(d["distill"])
        d["dmd"] = DMDConfig.from_dict(d["dmd"]) if "dmd" in d else DMDConfig()
        d["regress"] = RegressConfig.from_dict(d["regress"]) if "regress" in d else RegressConfig()
        d["tiny_decoder"] = (TinyDecoderConfig.from_dict(d["tiny_decoder"]) if "tiny_decoder" in d
                             else TinyDecoderConfig())
        return cls(**d)


def _small() -> TrainConfig:
    # A slimmer VAE than VAEConfig's default: ~100 ECG/s training on 2 cores (the default runs at ~40).
    # The shipped model's settings. kl_weight stays 1e-3: at 1e-4 no latent channel collapsed and R² rose
    # 0.67 -> 0.71, but samples were near-flat ~60 % of the time at every check up to epoch 95. v-prediction
    # on a zero-terminal-SNR schedule, then Epsilon Scaling chosen per sampler (docs/model.md, "What we
    # measured").
    return TrainConfig(preset="small", vae_model={"base_channels": 24, "n_res_blocks": 1},
                       vae=StageConfig(epochs=25, batch_size=32, lr=2e-3),
                       diffusion=StageConfig(epochs=80, batch_size=32, lr=5e-4),
                       prediction_type="v_prediction", zero_terminal_snr=True)


def _paper() -> TrainConfig:
    return TrainConfig(
        preset="paper",
        model_size="paper",
        vae=StageConfig(epochs=100, batch_size=512, lr=5e-4, checkpoint_every=1000),
        diffusion=StageConfig(epochs=300, batch_size=512, lr=5e-4, checkpoint_every=1000),
        kl_anneal_epochs=30,
        ema_decay=0.9999,
        distill=DistillConfig(stage=StageConfig(epochs=30, batch_size=256, lr=2e-5, checkpoint_every=500)),
        # half the paper VAE's width (64), a quarter of its decoder's FLOPs, as the small preset's 12 of 24
        tiny_decoder=TinyDecoderConfig(base_channels=32, norm_groups=16),
        regress=RegressConfig(stage=StageConfig(epochs=6, batch_size=256, lr=1e-3, checkpoint_every=1000),
                              norm_groups=16),
    )


def _tiny() -> TrainConfig:
    return TrainConfig(
        preset="tiny",
        vae_model={"base_channels": 8, "channel_mult": (1, 1, 1, 1), "n_res_blocks": 1, "norm_groups": 4},
        unet_model={"base_channels": 16, "channel_mult": (1, 1), "attention_levels": (1,), "heads": 2,
                    "token_dim": 32, "norm_groups": 4},
        vae=StageConfig(epochs=1, batch_size=32, lr=1e-3, checkpoint_every=5),
        diffusion=StageConfig(epochs=1, batch_size=32, lr=5e-4, checkpoint_every=5),
        kl_anneal_epochs=1,
        ema_decay=0.9,
        latent_scale_samples=256,
        sample_check_every=1,
        sample_check_n=4,
        sample_check_samplers=(("ddpm", 4), ("dpm++", 3)),
        eps_scale_grid=("1", "1.2@500"),
        eps_scale_samplers=(("ddpm", 4), ("dpm++", 3)),
        distill=DistillConfig(stage=StageConfig(epochs=1, batch_size=32, lr=1e-4, checkpoint_every=5),
                              target_ema_decay=0.9, sample_check_every=1, sample_check_n=4,
                              teacher_reference=(("ddpm", 4),)),
        dmd=DMDConfig(stage=StageConfig(epochs=2, batch_size=32, lr=1e-4, checkpoint_every=5), warmup_epochs=0,
                      sample_check_n=4, teacher_reference=(("ddpm", 4),), student_steps=(1, 2)),
        regress=RegressConfig(stage=StageConfig(epochs=1, batch_size=32, lr=1e-3, checkpoint_every=50),
                              base_channels=8, norm_groups=4, copies=1, val_n=16, sample_check_every=1,
                              sample_check_n=4, teacher_reference=(("ddpm", 4),)),
        tiny_decoder=TinyDecoderConfig(stage=StageConfig(epochs=1, batch_size=32, lr=2e-3, checkpoint_every=5),
                                       base_channels=4, norm_groups=2, posterior_copies=1, student_copies=2,
                                       val_n=16),
    )


PRESETS = {"small": _small, "paper": _paper, "tiny": _tiny}


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset by name, with top-level fields replaced (e.g. ``seed=1``)."""
    if name not in PRESETS:
        from synthgen.errors import InputError

        raise InputError(f"--preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name](), **overrides)
