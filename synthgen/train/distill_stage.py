"""Stage 3, `synthgen train distill`: a student that samples in 1–4 U-Net calls with classifier-free guidance
folded in, by one of two published methods (``--method``):

``lcd`` — Latent Consistency Distillation (Luo et al. 2023), from the teacher alone. Per training step (one
Ray Train worker's batch): a real training latent z₀ (frozen VAE, as in stage 2) is noised to a grid timestep
t_n = n·k − 1 (k = T/N, N = ``original_steps``); the frozen teacher takes one guided DDIM step with its
Epsilon Scaling to t_n − k (``model.consistency.teacher_ddim_step``); the target network θ⁻ (an EMA of the
student) maps that point to x₀ and the student, from x_{t_n}, must land on the same x₀:
pseudo-Huber(f_θ(x_{t_n}, t_n), f_θ⁻(x̂_{t_n−k}, t_n − k)), with f the c_skip/c_out parameterisation that
makes f the identity at t = 0. The student starts as a copy of the teacher's U-Net (same size, v-prediction).

``dmd`` — Distribution Matching Distillation (Yin et al. 2024, with DMD2's two time-scale updates;
``model.distribution_matching``), which refines the one-step student of an ``lcd`` bundle: a consistency
student is only as good as the teacher's guided ODE, which loses variety; DMD matches the distribution of its
one-step samples to the teacher's instead. Per step: ``fake_updates`` updates of a "fake" score network (a
copy of the teacher) on the student's own samples, then one student update along the difference of the fake
score and the teacher's guided, Epsilon-Scaled score at a noised copy of its samples. With DMD2's GAN term
(``DMDConfig.gan_weight`` > 0) a classifier on the fake network's bottleneck learns, in the fake updates, to
tell noised real training latents from noised student samples, and the student also minimises softplus(−D).

``regress`` — a narrower student (the U-Net at ``RegressConfig.base_channels``, from scratch) regressed onto
the bundle's student wherever the "lcm" sampler calls it: at every point of its 1- and 2-step trajectories from
fresh noise (``model.consistency.trajectory_points``), its consistency output is the target, MSE in latent space —
Luhman & Luhman's knowledge distillation of an iterative sampler (2021), here of a few-step student into a
cheaper one, for CPU speed. Each worker draws its pool of points when it starts (like the tiny decoder's), an
epoch is one pass over it; ``dmd`` can refine the result like any student.

Kept weights: ``lcd`` chooses, as in stage 2, by the ``sample_score`` of ECGs its target network makes for fixed
validation conditions (the mean over ``DistillConfig.select_steps``); ``dmd`` by the mean FID of the student's
ECGs for every validation condition against the validation ECGs (``DMDConfig.fid_steps``; the sample score does
not see the variety DMD improves), or its final weights without ``fid_steps``; ``regress`` the lowest MSE on
validation conditions' points. The export is a bundle = teacher + ``student.safetensors``.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import torch

from synthgen.cluster import data_context, gpu_budget, ray_session
from synthgen.conditions.embedders import get_embedder
from synthgen.conditions.patient import PatientStats
from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.evaluate.encoder import Encoder, load_encoder
from synthgen.evaluate.metrics import fid
from synthgen.io.bundles import read_card
from synthgen.io.paths import check_writable, join, resolve
from synthgen.io.shards import SUMMARY, read_shards, read_summary, signals
from synthgen.model.bundle import Bundle, load_bundle, save_bundle, shipped_bundle_url, without_default_sampling
from synthgen.model.consistency import (MAX_STUDENT_STEPS, consistency_output, pseudo_huber, student_sample,
                                        scaled_x0_and_eps, solver_timesteps, teacher_ddim_step,
                                        trajectory_points, x0_and_eps)
from synthgen.model.distribution_matching import (Discriminator, discriminator_loss, dmd_gradient, dmd_loss,
                                                  generator_loss)
from synthgen.model.schedulers import EpsScale, make_scheduler
from synthgen.model.unet import UNet1D, UNetConfig
from synthgen.model.vae import VAE, VAEConfig
from synthgen.pipeline import ECGPipeline
from synthgen.train.datasets import iter_numpy
from synthgen.train.diffusion_stage import EMA, check_metrics, drop_conditions, score_samplers
from synthgen.train.loop import fit, frozen, mean_over_workers, optimizer_step, seed_worker, shuffle_seed, unwrap
from synthgen.train.presets import DistillConfig, DMDConfig, RegressConfig, TrainConfig, get_preset
from synthgen.train.run import CONDITION_COLUMNS, _final_state, _trainer, check_conditions, fill_embedding_cache

DISTILLED = "distilled"  # the exported bundle's folder under --out
SAMPLER = "lcm"
METHODS = {"lcd": "latent consistency distillation (Luo et al. 2023)",
           "dmd": "distribution matching distillation (Yin et al. 2024; DMD2's two time-scale updates)",
           "regress": "regression onto the student's sampling trajectories, into a narrower U-Net (knowledge "
                      "distillation, Luhman & Luhman 2021)"}
CONFIG_FIELD = {"lcd": "distill", "dmd": "dmd", "regress": "regress"}  # the method's settings in TrainConfig
TIMESTEP_SCALING = 10.0  # diffusers' LCMScheduler default, used by training and sampling alike


def _frozen_models(config: dict[str, Any], device: torch.device) -> tuple[VAE, UNet1D]:
    """The teacher bundle's VAE and U-Net on ``device``, frozen."""
    vae = VAE(VAEConfig(**config["vae_model"]))
    vae.load_state_dict(config["vae_state"])
    teacher = UNet1D(UNetConfig(**config["unet_model"]))
    teacher.load_state_dict(config["unet_state"])
    return vae.to(device).eval().requires_grad_(False), teacher.to(device).eval().requires_grad_(False)


def _pipeline(config: dict[str, Any], vae: VAE, teacher: UNet1D, student: UNet1D, embedder: Any,
              device: torch.device) -> ECGPipeline:
    """One pipeline: the teacher's guided prediction for the training targets, ``student`` for the sample checks."""
    return ECGPipeline(
        Bundle(vae, teacher, {"embedder": {"name": embedder.name, "dim": embedder.dim},
                              "patient_stats": config["patient_stats"], "latent_scale": config["latent_scale"],
                              "noise": config["noise"], "student": config["student"]},
               "training", "", student=student),
        embedder=embedder, device=device)


def _conditions(batch: dict, embedder: Any, device: torch.device, dropout: TrainConfig | None
                ) -> tuple[torch.Tensor, ...]:
    """A batch's U-Net condition inputs (text, text_present, patient, present), with condition dropout unless
    ``dropout`` is None (validation)."""
    text = torch.from_numpy(embedder.embed(list(batch["prompt"]))).to(device)
    patient, present = torch.tensor(batch["patient"]).to(device), torch.tensor(batch["present"])
    text_present = torch.ones(len(text), dtype=torch.bool)
    if dropout is not None:
        text_present, present = drop_conditions(text_present, present, dropout)
    return text, text_present.to(device), patient, present.to(device)


def _sample_checks(pipeline: ECGPipeline, config: dict[str, Any], cfg: DistillConfig | DMDConfig | RegressConfig
                   ) -> dict[str, float]:
    """Sample scores of the student at ``cfg.sample_check_steps``; for lcd also ``select`` (the mean over its
    ``select_steps``), which chooses the kept weights. dmd chooses by its validation FID (``_fid_checks``),
    regress by its validation loss."""
    found = score_samplers(pipeline, [Condition(**c) for c in config["check_conditions"]],
                           [(SAMPLER, s) for s in cfg.sample_check_steps], float(config["student"]["guidance"]))
    if not isinstance(cfg, DistillConfig):
        return {k: v for k, v in check_metrics(found).items() if k != "select"}
    return check_metrics(found, [f"{SAMPLER}-{s}" for s in cfg.select_steps])


def _fid_reference(data: str, conditions: Any, n: int, storage_options: dict | None) -> dict[str, Any]:
    """What the workers need for dmd's validation FID (``DMDConfig.fid_steps``): up to ``n`` validation
    conditions of ``conditions`` (the shards' condition columns; spread over the heart-rate range), the shipped
    evaluate encoder's URL and its features (N, d) of the first ``n`` validation ECGs. InputError for fewer than
    5 validation ECGs (FID needs a covariance)."""
    real = read_shards(data, "val", ["signal"], storage_options)
    if real.num_rows < 5:
        raise InputError(f"--data {data}: {real.num_rows} validation ECGs; dmd's validation FID needs at least 5 "
                         "(or a preset with fid_steps=())")
    url = shipped_bundle_url("encoder")
    return {"conditions": check_conditions(conditions, n), "encoder": url,
            "features": load_encoder(url).features(signals(real.slice(0, n)))}


def _fid_checks(pipeline: ECGPipeline, config: dict[str, Any], cfg: DMDConfig, encoder: Encoder
                ) -> dict[str, float]:
    """``lcm<k>_fid`` for k in ``cfg.fid_steps``: FID of the student's k-step ECGs (seeds 0…n−1, the VAE decoder)
    for every validation condition against the validation ECGs, in ``encoder``'s features (what `synthgen
    evaluate --split val` measures); ``select``, their mean, chooses the kept weights."""
    reference = config["fid"]
    conditions = [Condition(**c) for c in reference["conditions"]]
    seeds, guidance = list(range(len(conditions))), float(config["student"]["guidance"])
    fids = {f"{SAMPLER}{k}_fid": fid(reference["features"], encoder.features(
        pipeline(conditions, seeds, sampler=SAMPLER, steps=k, guidance=guidance))) for k in cfg.fid_steps}
    return {**fids, "select": sum(fids.values()) / len(fids)}


def _worker_embedder(config: dict[str, Any]) -> Any:
    return get_embedder(config["embedder"], cache=config["cache"], storage_options=config["storage_options"])


def distill_worker(config: dict[str, Any]) -> None:
    """``--method lcd`` on one Ray Train worker."""
    import ray.train
    import ray.train.torch

    tc = TrainConfig.from_dict(config["train"])
    dc: DistillConfig = tc.distill
    torch.manual_seed(tc.seed)
    device = ray.train.torch.get_device()
    vae, teacher = _frozen_models(config, device)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    target = EMA(student, dc.target_ema_decay)
    optimizer = torch.optim.AdamW(student.parameters(), lr=dc.stage.lr, weight_decay=dc.stage.weight_decay)
    student = ray.train.torch.prepare_model(student)
    seed_worker(tc.seed)
    target.model.to(device)
    scale = float(config["latent_scale"])
    embedder = _worker_embedder(config)
    pipeline = _pipeline(config, vae, teacher, target.model, embedder, device)
    prediction_type = pipeline.noise["prediction_type"]
    scheduler = make_scheduler(SAMPLER, **pipeline.noise, original_inference_steps=dc.original_steps)
    alphas = scheduler.alphas_cumprod.to(device)
    grid = solver_timesteps(pipeline.noise["num_train_timesteps"], dc.original_steps).to(device)
    k = pipeline.noise["num_train_timesteps"] // dc.original_steps
    dropout = replace(tc, p_uncond=0.0, p_drop_text=dc.p_drop_text, p_drop_feature=dc.p_drop_feature)
    eps_scale = EpsScale.parse(config["student"]["teacher"]["eps_scale"])
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def inputs(batch: dict, generator: torch.Generator | None, drop: bool):
        """x_{t_n} for a random grid timestep of each training latent, t_n, t_n − k (≥ 0), and conditions."""
        x = torch.tensor(batch["signal"]).to(device)
        mu, logvar = vae.encode(x)
        z0 = (mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator).to(device)) * scale
        cond = _conditions(batch, embedder, device, dropout if drop else None)
        t = grid[torch.randint(0, len(grid), (len(x),), generator=generator).to(device)]
        a = alphas[t][:, None, None]
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=generator).to(device)
        return x_t, t, (t - k).clamp_min(0), cond

    @torch.no_grad()
    def consistency_target(x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, cond: tuple) -> torch.Tensor:
        """f_θ⁻ at the teacher's DDIM step from t_n to t_n − k; below t = 0 the step lands on ᾱ = 1 (x̂₀), as
        the "ddim" sampler's last step does, and f there is the identity (c_skip(0) = 1)."""
        out = pipeline.predict_noise(x_t, t, cond, dc.guidance)
        a_prev = torch.where(t - k >= 0, alphas[t_prev], torch.ones_like(alphas[t_prev]))
        x_prev = teacher_ddim_step(out, x_t, alphas[t][:, None, None], a_prev[:, None, None], prediction_type,
                                   eps_scale.factors(t).to(device))
        return consistency_output(scheduler, target.model(x_prev, t_prev, *cond), x_prev, t_prev, prediction_type)

    def train_step(batch: dict, epoch: int) -> float:
        with torch.no_grad():
            x_t, t, t_prev, cond = inputs(batch, None, drop=True)
            wanted = consistency_target(x_t, t, t_prev, cond)
        pred = consistency_output(scheduler, student(x_t, t, *cond), x_t, t, prediction_type)
        return optimizer_step(pseudo_huber(pred, wanted, dc.huber_c), student, optimizer, target)

    @torch.no_grad()
    def validate(epoch: int) -> dict[str, float]:
        """Consistency loss of the target network on the validation split (fixed noise and timesteps, no
        condition dropout) and, on sample-check epochs, the sample score of its 1/2/4-step ECGs."""
        generator, total, count = torch.Generator().manual_seed(1234), 0.0, 0
        for batch in iter_numpy(val_shard, dc.stage.batch_size, shuffle=False):
            x_t, t, t_prev, cond = inputs(batch, generator, drop=False)
            pred = consistency_output(scheduler, target.model(x_t, t, *cond), x_t, t, prediction_type)
            total += float(pseudo_huber(pred, consistency_target(x_t, t, t_prev, cond), dc.huber_c)) * len(t)
            count += len(t)
        metrics = {"val_loss": mean_over_workers(total, count)}
        if (epoch + 1) % dc.sample_check_every and epoch + 1 != dc.stage.epochs:
            return metrics
        return {**metrics, **_sample_checks(pipeline, config, dc)}

    fit(
        name="distill", stage=dc.stage,
        stateful={"model": unwrap(student), "target": target, "optimizer": optimizer},
        best_source=target.model,
        batches=lambda epoch: iter_numpy(train_shard, dc.stage.batch_size, shuffle=True,
                                          seed=shuffle_seed(tc.seed, epoch)),
        train_step=train_step, validate=validate,
    )


def dmd_worker(config: dict[str, Any]) -> None:
    """``--method dmd`` on one Ray Train worker: the student starts from the teacher bundle's one-step student,
    the fake score network from the teacher's U-Net. An epoch is one pass over the training split's conditions
    (their ECGs only as the GAN term's real data); the epoch line's train loss is the fake score's loss in the
    warm-up epochs (diffusion loss, + ``gan_d_weight`` × the classifier's), then the student's (the surrogate
    ½‖∇‖² per sample, + ``gan_weight`` × the generator loss), and with the GAN term it also shows the epoch's
    mean classifier and generator losses over all workers (gan_d, gan_g). Both fake updates of a step see the
    same real batch (DMD2 draws one per update)."""
    import ray.train
    import ray.train.torch

    tc = TrainConfig.from_dict(config["train"])
    dc: DMDConfig = tc.dmd
    torch.manual_seed(tc.seed)
    device = ray.train.torch.get_device()
    vae, teacher = _frozen_models(config, device)
    student = UNet1D(UNetConfig(**config["student_model"]))  # the teacher's architecture, or narrower (regress)
    student.load_state_dict(config["student_state"])
    student = student.to(device).train().requires_grad_(True)
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    classifier = Discriminator(fake).to(device).train() if dc.gan_weight > 0 else None
    # β₁ = 0 as in DMD2: the two networks chase each other, and momentum lags the moving target
    optimizer = torch.optim.AdamW(student.parameters(), lr=dc.stage.lr, betas=(0.0, 0.999),
                                  weight_decay=dc.stage.weight_decay)
    fake_optimizer = torch.optim.AdamW(
        [{"params": fake.parameters()},
         *([{"params": classifier.parameters(), "lr": dc.gan_head_lr}] if classifier is not None else [])],
        lr=dc.fake_lr, betas=(0.0, 0.999), weight_decay=0.0)
    student, fake = ray.train.torch.prepare_model(student), ray.train.torch.prepare_model(fake)
    if classifier is not None:  # its gradients averaged over workers like the fake network's
        classifier = ray.train.torch.prepare_model(classifier)
    ema = EMA(unwrap(student), dc.ema_decay) if dc.ema_decay is not None else None
    checked = ema.model if ema is not None else unwrap(student)  # the weights the checks see and the run keeps
    seed_worker(tc.seed)
    embedder = _worker_embedder(config)
    pipeline = _pipeline(config, vae, teacher, checked, embedder, device)
    encoder = load_encoder(config["fid"]["encoder"]) if dc.fid_steps else None
    prediction_type = pipeline.noise["prediction_type"]
    scheduler = make_scheduler(SAMPLER, **pipeline.noise,
                               original_inference_steps=config["student"]["original_inference_steps"])
    alphas = scheduler.alphas_cumprod.to(device)
    n_timesteps = pipeline.noise["num_train_timesteps"]
    real_eps = EpsScale.parse(config["student"]["teacher"]["real_eps_scale"])
    dropout = replace(tc, p_uncond=0.0, p_drop_text=dc.p_drop_text, p_drop_feature=dc.p_drop_feature)
    train_shard = ray.train.get_dataset_shard("train")

    scale = float(config["latent_scale"])
    gan_losses = {"d": [], "g": []}  # this epoch's, for the epoch line

    def noised_at(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, ε): ``x`` noised to timestep ``t`` (B,) by the forward process."""
        a, eps = alphas[t][:, None, None], torch.randn(x.shape).to(device)
        return a.sqrt() * x + (1 - a).sqrt() * eps, eps

    def noised(x: torch.Tensor, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, ε) for a uniform timestep in [low, high) per sample."""
        t = torch.randint(low, high, (len(x),)).to(device)
        x_t, eps = noised_at(x, t)
        return x_t, t, eps

    @torch.no_grad()
    def real_latents(batch: dict) -> torch.Tensor:
        """Posterior samples of the batch's ECGs, scaled as the U-Net sees them (the GAN term's real data)."""
        return vae.reparameterize(*vae.encode(torch.tensor(batch["signal"]).to(device))) * scale

    def sample(cond: tuple) -> torch.Tensor:
        """The student's sample at a step count drawn from ``dc.student_steps``, differentiable in its last step."""
        # one step count draws nothing: the random stream (and a seeded run) stays that of the one-step recipe
        steps = (dc.student_steps[0] if len(dc.student_steps) == 1
                 else dc.student_steps[int(torch.randint(len(dc.student_steps), ()))])
        z = torch.randn(pipeline.latent_shape(len(cond[0]))).to(device)
        return student_sample(student, scheduler, steps, z, cond, prediction_type)

    def fake_step(cond: tuple, real: torch.Tensor | None) -> float:
        """One diffusion-loss update of the fake score on fresh samples of the student; with the GAN term, in the
        same call, the classifier's update on those samples and the ``real`` latents, noised alike."""
        with torch.no_grad():
            x = sample(cond)
        x_t, t, eps = noised(x, 0, n_timesteps)
        a = alphas[t][:, None, None]
        v = a.sqrt() * eps - (1 - a).sqrt() * x  # distill() accepts v-prediction teachers only
        if classifier is None:
            return optimizer_step(torch.nn.functional.mse_loss(fake(x_t, t, *cond), v), fake, fake_optimizer)
        both = fake(torch.cat([x_t, noised_at(real, t)[0]]), t.repeat(2), *(torch.cat([c, c]) for c in cond))
        logits = classifier()
        d_loss = discriminator_loss(logits[:len(x)], logits[len(x):])
        gan_losses["d"].append(d_loss.item())
        loss = torch.nn.functional.mse_loss(both[:len(x)], v) + dc.gan_d_weight * d_loss
        return optimizer_step(loss, fake, fake_optimizer)

    def gan_generator_loss(x: torch.Tensor, cond: tuple) -> torch.Tensor:
        """softplus(−D) of the student's samples, noised; gradients reach the student only."""
        net, judge = unwrap(fake), unwrap(classifier)  # not through DDP: nothing of theirs is updated here
        with frozen(net, judge):
            x_t, t, _ = noised(x, 0, n_timesteps)
            net(x_t, t, *cond)
            loss = generator_loss(judge())
        gan_losses["g"].append(loss.item())
        return loss

    def train_step(batch: dict, epoch: int) -> float:
        cond = _conditions(batch, embedder, device, dropout)
        real = real_latents(batch) if classifier is not None else None
        warming_up = epoch < dc.warmup_epochs
        for _ in range(1 if warming_up else dc.fake_updates):
            fake_loss = fake_step(cond, real)
        if warming_up:
            return fake_loss
        x = sample(cond)
        with torch.no_grad():
            x_t, t, _ = noised(x, dc.t_range[0], dc.t_range[1] + 1)
            a = alphas[t][:, None, None]
            x0_real, _ = scaled_x0_and_eps(pipeline.predict_noise(x_t, t, cond, dc.guidance), x_t, a,
                                           prediction_type, real_eps.factors(t).to(device))
            x0_fake, _ = x0_and_eps(fake(x_t, t, *cond).float(), x_t, a, prediction_type)
            gradient = dmd_gradient(x, x0_real, x0_fake)
        loss = dmd_loss(x, gradient)
        if classifier is not None:
            loss = loss + dc.gan_weight * gan_generator_loss(x, cond)
        loss = optimizer_step(loss, student, optimizer)
        if ema is not None:
            ema.update(unwrap(student))
        return loss

    @torch.no_grad()
    def validate(epoch: int) -> dict[str, float]:
        """The sample checks and validation FIDs (every ``sample_check_every`` epochs) and, with the GAN term, the
        epoch's mean classifier and generator losses (gan_d at 2 ln 2 ≈ 1.386 = the classifier at chance)."""
        losses = {f"gan_{k}": mean_over_workers(sum(v), len(v)) for k, v in gan_losses.items() if v}
        for v in gan_losses.values():
            v.clear()
        checked.eval()
        try:
            if (epoch + 1) % dc.sample_check_every and epoch + 1 != dc.stage.epochs:
                return losses
            found = {**losses, **_sample_checks(pipeline, config, dc)}
            return found if encoder is None else {**found, **_fid_checks(pipeline, config, dc, encoder)}
        finally:
            if ema is None:
                checked.train()

    fit(
        name="distill", stage=dc.stage,
        stateful={"model": unwrap(student), "fake": unwrap(fake), "optimizer": optimizer,
                  "fake_optimizer": fake_optimizer,
                  **({"discriminator": unwrap(classifier)} if classifier is not None else {}),
                  **({"ema": ema} if ema is not None else {})},
        best_source=checked,
        batches=lambda epoch: iter_numpy(train_shard, dc.stage.batch_size, shuffle=True,
                                          seed=shuffle_seed(tc.seed, epoch)),
        train_step=train_step, validate=validate,
    )


def regress_worker(config: dict[str, Any]) -> None:
    """``--method regress`` on one Ray Train worker: draw the pool of trajectory points of the bundle's student
    for this worker's training conditions (and ``val_n`` validation ones), then fit the narrow student to it."""
    import ray.train
    import ray.train.torch

    tc = TrainConfig.from_dict(config["train"])
    rc: RegressConfig = tc.regress
    torch.manual_seed(tc.seed)
    device = ray.train.torch.get_device()
    vae, teacher = _frozen_models(config, device)
    source = UNet1D(UNetConfig(**config["student_model"]))
    source.load_state_dict(config["student_state"])
    source = source.to(device).eval().requires_grad_(False)
    student = UNet1D(UNetConfig(**config["regress_model"]))
    optimizer = torch.optim.AdamW(student.parameters(), lr=rc.stage.lr, weight_decay=rc.stage.weight_decay)
    student = ray.train.torch.prepare_model(student)
    seed_worker(tc.seed)
    generator = torch.Generator().manual_seed(tc.seed + ray.train.get_context().get_world_rank())
    embedder = _worker_embedder(config)
    pipeline = _pipeline(config, vae, teacher, unwrap(student), embedder, device)
    prediction_type = pipeline.noise["prediction_type"]
    scheduler = make_scheduler(SAMPLER, **pipeline.noise,
                               original_inference_steps=config["student"]["original_inference_steps"])
    dropout = replace(tc, p_uncond=0.0, p_drop_text=rc.p_drop_text, p_drop_feature=rc.p_drop_feature)

    def pool(split: str, train: bool) -> dict[str, torch.Tensor]:
        """Trajectory points of the source student: ``rc.copies`` noise draws per training condition (each with
        its own condition dropout), one per validation condition for the first ``rc.val_n``. Keys: x, t, target,
        and the condition tensors' index ``c`` into ``cond`` (stored once per draw, not per point)."""
        points, conds, n = [], [], 0
        for batch in iter_numpy(ray.train.get_dataset_shard(split), 64, shuffle=False):
            for _ in range(rc.copies if train else 1):  # each draw its own condition dropout
                cond = _conditions(batch, embedder, device, dropout if train else None)
                size = len(cond[0])
                z = torch.randn(pipeline.latent_shape(size), generator=generator).to(device)
                points += [(x, t, target, torch.arange(n, n + size)) for x, t, target in
                           trajectory_points(source, scheduler, rc.steps, z, cond, prediction_type, generator)]
                conds.append(cond)
                n += size
            if not train and n >= rc.val_n:
                break
        x, t, target, index = (torch.cat(column) for column in zip(*points))
        keep = slice(None) if train else index < rc.val_n
        return {"x": x[keep], "t": t[keep], "target": target[keep], "c": index[keep],
                "cond": tuple(torch.cat(c) for c in zip(*conds))}

    started = time.time()
    train_pool, val_pool = pool("train", True), pool("val", False)
    print(f"[distill] trajectory pool: {len(train_pool['x'])} training points, {len(val_pool['x'])} validation, "
          f"{time.time() - started:.0f} s", flush=True)

    def loss_on(net: torch.nn.Module, data: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        x, t = data["x"][idx], data["t"][idx]
        cond = tuple(c[data["c"][idx]] for c in data["cond"])
        pred = consistency_output(scheduler, net(x, t, *cond), x, t, prediction_type)
        return torch.nn.functional.mse_loss(pred, data["target"][idx])

    def batches(epoch: int) -> Iterator[dict]:
        size = rc.stage.batch_size
        order = torch.randperm(len(train_pool["x"]),
                               generator=torch.Generator().manual_seed(shuffle_seed(tc.seed, epoch)))
        for i in range(0, len(order) - size + 1, size):
            yield {"idx": order[i:i + size]}

    def train_step(batch: dict, epoch: int) -> float:
        for group in optimizer.param_groups:  # cosine decay over the epochs
            group["lr"] = rc.stage.lr * 0.5 * (1 + math.cos(math.pi * epoch / rc.stage.epochs))
        return optimizer_step(loss_on(student, train_pool, batch["idx"]), student, optimizer)

    @torch.no_grad()
    def validate(epoch: int) -> dict[str, float]:
        net = unwrap(student).eval()
        try:
            total = sum(float(loss_on(net, val_pool, idx)) * len(idx)
                        for idx in torch.arange(len(val_pool["x"])).split(256))
            val = mean_over_workers(total, len(val_pool["x"]))
            metrics = {"val_mse": val, "select": val}
            if (epoch + 1) % rc.sample_check_every and epoch + 1 != rc.stage.epochs:
                return metrics
            return {**metrics, **_sample_checks(pipeline, config, rc)}
        finally:
            net.train()

    fit(name="distill", stage=rc.stage, stateful={"model": unwrap(student), "optimizer": optimizer},
        best_source=unwrap(student), batches=batches, train_step=train_step, validate=validate)


def _card(teacher_card: str, student: dict[str, Any], command: str) -> str:
    """The teacher bundle's model card with a section on the student appended."""
    t, teacher, g = student["training"], student["teacher"], student["guidance"]
    cfg = t["config"]

    def shown(scores: dict[str, dict[str, float]]) -> str:
        return ", ".join(f"{k} {v['score']:.2f}" for k, v in scores.items())

    if student["method"] == METHODS["dmd"]:
        start = student["initialised_from"]
        head = [
            "## Stage 3, refined: one-step student by Distribution Matching Distillation (Yin et al. 2024, DMD2)",
            f"- Teacher: `{teacher['model_hash']}`; real score: its guided prediction (guidance {g:g}) with Epsilon "
            f"Scaling {EpsScale.parse(teacher['real_eps_scale'])}, at t in {list(cfg['t_range'])}",
            f"- Student: initialised from the bundle's student (U-Net base width {student['model']['base_channels']}), "
            f"made by {start['method']}; fake score: a copy of "
            f"the teacher's U-Net trained on the student's samples, {cfg['fake_updates']} updates per student "
            f"update after {cfg['warmup_epochs']} warm-up epoch(s); sample with `--sampler lcm --steps 1` (or 2) "
            f"`--guidance {g:g}`; only one-step sampling is trained, and 4 steps give near-flat ECGs",
        ]
        if cfg.get("gan_weight", 0) > 0:
            head.append(f"- GAN term (DMD2): a classifier on the fake score's bottleneck tells noised training "
                        f"latents from noised student samples (weight {cfg['gan_d_weight']:g} in the fake score's "
                        f"loss, head lr {cfg['gan_head_lr']:g}); the student adds {cfg['gan_weight']:g} × "
                        "softplus(−D) of its samples")
        weights = (f"the student's EMA (decay {cfg['ema_decay']:g})" if cfg.get("ema_decay") is not None
                   else "the student")
        kept = (f"kept the final weights of {weights}" if "best_val_fid" not in t else
                f"kept the weights of {weights} with the lowest mean validation FID over "
                f"{', '.join(str(k) for k in cfg['fid_steps'])} steps ({t['best_val_fid']:.3f})")
    elif student["method"] == METHODS["regress"]:
        start, width = student["initialised_from"], student["model"]["base_channels"]
        head = [
            "## Stage 3, narrowed: a cheaper student regressed onto the bundle's (knowledge distillation, Luhman & "
            "Luhman 2021)",
            f"- Teacher: `{teacher['model_hash']}`; source: its student (made by {start['method']}), guidance {g:g} "
            "folded in",
            f"- Student: the U-Net at base width {width}, from scratch, trained on the source's consistency outputs "
            f"at every point of its {', '.join(str(k) for k in cfg['steps'])}-step trajectories ({cfg['copies']} "
            f"noise draws per training condition; MSE in latent space); sample with `--sampler lcm --steps 1` (or "
            f"2) `--guidance {g:g}`",
        ]
        kept = f"kept the weights with the lowest validation MSE ({t['best_val_mse']:.5f})"
    else:
        head = [
            "## Stage 3: few-step student (Latent Consistency Distillation, Luo et al. 2023)",
            f"- Teacher: `{teacher['model_hash']}`; its solver: DDIM, skipping step k = {teacher['k']} "
            f"(N = {student['original_inference_steps']}), guidance {g:g} and Epsilon Scaling "
            f"{EpsScale.parse(teacher['eps_scale'])} folded in",
            "- Student: the teacher's U-Net architecture, initialised from it (v-prediction, c_skip/c_out "
            f"boundary), target network EMA {cfg['target_ema_decay']}; sample with "
            f"`--sampler lcm --steps 1…{student['max_steps']} --guidance {g:g}`",
        ]
        kept = "kept the target weights"
    lines = [
        *head,
        f"- Epochs: {cfg['stage']['epochs']}, steps: {t['steps']} (batch {cfg['stage']['batch_size']}),"
        f" wall time: {t['seconds']} s" + (f" (the last run only; resumed at steps {t['resumed_at_steps']})"
                                           if t["resumed_at_steps"] else "") +
        "; " + (f"{kept} (epoch {t['best_epoch']})" if "select_steps" not in cfg else
                f"{kept} of epoch {t['best_epoch']} (mean sample score over "
                f"{', '.join(str(s) for s in cfg['select_steps'])} steps {t['best_sample_score']:.3f})"),
        f"- Sample score on {t['check_n']} validation conditions (HR MAE in bpm + 100 × share near-flat or "
        f"HR-unmeasurable; lower is better): student {shown(student['scores'])}; teacher "
        f"{shown(student['teacher_scores'])}",
        "", "```", command, "```", "",
    ]
    return teacher_card.rstrip() + "\n\n" + "\n".join(lines)


def _student_info(method: str, cfg: DistillConfig | DMDConfig | RegressConfig, bundle: Bundle,
                  teacher: str | None) -> dict[str, Any]:
    """What the bundle records about the student before training (``config.json: student``), its architecture
    (``model``, a UNetConfig) included."""
    noise = bundle.config["noise"]
    start = bundle.config.get("student")
    guidance = float(start["guidance"]) if isinstance(cfg, RegressConfig) else float(cfg.guidance)
    info: dict[str, Any] = {"method": METHODS[method], "sampler": SAMPLER, "guidance": guidance,
                            "max_steps": MAX_STUDENT_STEPS, "timestep_scaling": TIMESTEP_SCALING,
                            "teacher": {"model_hash": bundle.model_hash, "url": teacher or "shipped"}}
    sampling = bundle.config.get("sampling", {}).get("eps_scale", {})
    if isinstance(cfg, DistillConfig):
        eps_scale = cfg.teacher_eps_scale if cfg.teacher_eps_scale is not None else sampling.get("ddim", 1.0)
        info["teacher"].update(solver="ddim", k=noise["T"] // cfg.original_steps,
                               eps_scale=str(EpsScale.parse(eps_scale)))
        info.update(original_inference_steps=cfg.original_steps, model=asdict(bundle.unet.cfg))
        return info
    if isinstance(cfg, DMDConfig):
        real_eps = cfg.real_eps_scale if cfg.real_eps_scale is not None else sampling.get("dpm++sde", 1.0)
        info["teacher"]["real_eps_scale"] = str(EpsScale.parse(real_eps))
        model = asdict(bundle.student.cfg)
    else:
        model = asdict(replace(bundle.student.cfg, base_channels=cfg.base_channels, norm_groups=cfg.norm_groups))
    info.update(original_inference_steps=start["original_inference_steps"], model=model,
                initialised_from={k: start[k] for k in ("method", "teacher", "training", "scores") if k in start})
    return info


def _check_regress(cfg: RegressConfig, bundle: Bundle, preset: str, dataset_info: dict, workers: int,
                   teacher: str | None) -> None:
    """InputError (one line, naming the settings) for regress settings that cannot make a narrower student of
    ``bundle``'s, or shards too small for one batch and one validation condition per worker."""
    width, student = cfg.base_channels, bundle.student.cfg
    heads_fit = all(width * m % student.heads == 0 for m in student.channel_mult)
    if not (0 < width < student.base_channels and width % cfg.norm_groups == 0 and heads_fit):
        raise InputError(f"preset {preset!r}: regress.base_channels {width} must be narrower than the student's "
                         f"{student.base_channels} (--teacher {teacher or 'shipped'}), divisible by "
                         f"regress.norm_groups {cfg.norm_groups}, and times each channel_mult divisible by the "
                         f"{student.heads} attention heads")
    if not (cfg.steps and all(1 <= k <= MAX_STUDENT_STEPS for k in cfg.steps) and cfg.copies >= 1
            and cfg.val_n >= 1):
        raise InputError(f"preset {preset!r}: regress.steps must be in 1..{MAX_STUDENT_STEPS}, regress.copies and "
                         f"regress.val_n >= 1; got {list(cfg.steps)}, {cfg.copies} and {cfg.val_n}")
    splits = dataset_info.get("splits", {})
    if splits.get("train", 0) * cfg.copies < cfg.stage.batch_size * workers or splits.get("val", 0) < workers:
        raise InputError(f"--data: {splits.get('train', 0)} training and {splits.get('val', 0)} validation ECGs; "
                         f"expected at least one batch ({cfg.stage.batch_size} draws, {cfg.copies} per ECG) and one "
                         f"validation ECG per worker ({workers}): lower --batch-size or --workers")


def distill(data: str, out: str, *, teacher: str | None = None, method: str = "lcd", preset: str = "small",
            workers: int = 1, gpu: bool | None = None, cache: str | None = None, seed: int = 0,
            storage_options: dict | None = None, epochs: int | None = None, batch_size: int | None = None,
            command: str = "") -> str:
    """Distil ``teacher`` (a bundle URL; None: the shipped model) on the training shards at ``data`` into
    ``out``/distilled (teacher + student bundle) by ``method`` ("lcd", "dmd" or "regress", see the module
    docstring); returns its URL. ``epochs``/``batch_size`` override the preset's (the method's ``stage``).

    Resumable like the other stages: rerunning the same command continues from ``out``/checkpoints/distill
    (distill-dmd, with the GAN term and the student's EMA distill-dmd-gan, -dmd-ema or -dmd-gan-ema;
    distill-regress), and a finished run is not repeated. The exported bundle has no default sampling (its
    student has not passed the gates the teacher bundle's default was set on).
    InputError for an unknown method, shards without a summary, a teacher that is not v-prediction (ε says
    nothing about x₀ at the 1-step start ᾱ_T = 0), "dmd" or "regress" on a teacher bundle without a student, a
    regress width not narrower than the student's, settings outside their ranges, or an unwritable ``out``.
    """
    if method not in METHODS:
        raise InputError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    dataset_info = read_summary(data, storage_options)
    if dataset_info is None:
        raise InputError(f"--data {data}: no {SUMMARY} there; expected the output of `synthgen prepare`")
    if (epochs is not None and epochs < 1) or (batch_size is not None and batch_size < 1):
        raise InputError(f"--epochs {epochs} / --batch-size {batch_size}: expected positive integers")
    tc = get_preset(preset, seed=seed)
    field_name = CONFIG_FIELD[method]
    cfg = getattr(tc, field_name)
    stage = replace(cfg.stage, **{k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v is not None})
    tc = replace(tc, **{field_name: replace(cfg, stage=stage)})
    cfg = getattr(tc, field_name)
    bundle = load_bundle(teacher, storage_options)
    noise = bundle.config["noise"]
    if noise.get("prediction_type", "epsilon") != "v_prediction":
        raise InputError(f"--teacher {bundle.url}: config.json noise.prediction_type is "
                         f"{noise.get('prediction_type', 'epsilon')!r}; distillation needs a 'v_prediction' teacher")
    if method != "lcd" and bundle.student is None:
        raise InputError(f"--teacher {bundle.url}: no distilled student to start from; --method {method} needs "
                         "one (run `synthgen train distill` first and pass its OUT/distilled)")
    if method == "regress":
        _check_regress(cfg, bundle, preset, dataset_info, workers, teacher)
    if method == "dmd" and not (cfg.fake_updates >= 1 and 0 <= cfg.t_range[0] <= cfg.t_range[1] < noise["T"]
                                and 0 < len(cfg.student_steps) and all(1 <= k <= MAX_STUDENT_STEPS
                                                                        for k in cfg.student_steps + cfg.fid_steps)):
        raise InputError(f"preset {preset!r}: dmd needs fake_updates >= 1, 0 <= t_range[0] <= t_range[1] < "
                         f"{noise['T']} (the teacher's T) and student_steps (at least one) and fid_steps in "
                         f"1..{MAX_STUDENT_STEPS}; got {cfg.fake_updates}, {list(cfg.t_range)}, "
                         f"{list(cfg.student_steps)} and {list(cfg.fid_steps)}")
    if method == "dmd" and not ((cfg.ema_decay is None or 0 < cfg.ema_decay < 1) and cfg.fid_n >= 5):
        raise InputError(f"preset {preset!r}: dmd's ema_decay must be None (off) or in (0, 1) and fid_n >= 5; got "
                         f"{cfg.ema_decay} and {cfg.fid_n}")
    if method == "dmd" and not (cfg.gan_weight == 0 or (cfg.gan_weight > 0 and cfg.gan_d_weight > 0
                                                         and cfg.gan_head_lr > 0)):
        raise InputError(f"preset {preset!r}: dmd's GAN term needs gan_weight 0 (off) or > 0 with gan_d_weight > 0 "
                         f"and gan_head_lr > 0; got {cfg.gan_weight}, {cfg.gan_d_weight} and {cfg.gan_head_lr}")
    fs_out, out_path = resolve(out, storage_options)
    url = join(out, DISTILLED)
    if fs_out.exists(f"{out_path}/{DISTILLED}/config.json"):
        made = load_bundle(url, storage_options).config.get("student", {}).get("method")
        if made != METHODS[method]:
            raise InputError(f"--out {out}: {url} holds a student made by {made!r}, not --method {method}; "
                             "use another --out")
        print(f"[distill] already distilled: {url} (delete it to distil again)", flush=True)
        return url
    check_writable(out, storage_options)  # before Ray starts
    emb = get_embedder(bundle.config["embedder"]["name"], cache=cache, storage_options=storage_options)
    student_info = _student_info(method, cfg, bundle, teacher)
    started = time.time()
    conditions_table = read_shards(data, columns=CONDITION_COLUMNS, storage_options=storage_options)
    checks = check_conditions(conditions_table, cfg.sample_check_n)
    fid_reference = (_fid_reference(data, conditions_table, cfg.fid_n, storage_options)
                     if method == "dmd" and cfg.fid_steps else None)
    # the workers print the epoch lines, which are the progress: no Ray Data bars
    with ray_session(worker_output=True) as ray, data_context(enable_progress_bars=False):
        from synthgen.train.datasets import split_datasets

        gpu = gpu_budget(ray, gpu) > 0
        # the teacher's normalisation, not the data's; dmd needs no validation ECGs (its checks sample)
        datasets = split_datasets(data, ("train",) if method == "dmd" else ("train", "val"),
                                  PatientStats.from_dict(bundle.config["patient_stats"]), storage_options)
        config = {"train": tc.to_dict(), "vae_model": bundle.config["vae"], "vae_state": bundle.vae.state_dict(),
                  "unet_model": bundle.config["unet"], "unet_state": bundle.unet.state_dict(),
                  "latent_scale": bundle.config["latent_scale"], "noise": noise, "student": student_info,
                  "embedder": emb.name, "storage_options": storage_options,
                  "cache": fill_embedding_cache(conditions_table, emb, out, storage_options, "distill"),
                  "patient_stats": bundle.config["patient_stats"], "check_conditions": checks}
        if fid_reference is not None:
            config["fid"] = fid_reference
        if method != "lcd":
            config.update(student_state=bundle.student.state_dict(), student_model=asdict(bundle.student.cfg))
        if method == "regress":
            config["regress_model"] = student_info["model"]
        worker = {"lcd": distill_worker, "dmd": dmd_worker, "regress": regress_worker}[method]
        # one checkpoint folder per method (and for dmd with or without the GAN term, whose checkpoints hold
        # different state): a killed run of one cannot be resumed as another
        folder = "distill" if method == "lcd" else f"distill-{method}"
        folder += "-gan" if method == "dmd" and cfg.gan_weight > 0 else ""
        folder += "-ema" if method == "dmd" and cfg.ema_decay is not None else ""
        trainer = _trainer(worker, config, folder, out, workers, gpu, datasets, storage_options)
        state = _final_state(trainer.fit())
    seconds = round(time.time() - started, 1)
    student = UNet1D(UNetConfig(**student_info["model"]))
    keep_best = method != "dmd" or bool(cfg.fid_steps)  # else dmd's final weights (its EMA's, with one)
    student.load_state_dict(state["best"] if keep_best else state["ema"]["model"] if "ema" in state
                            else state["model"])
    student.eval()
    pipeline = ECGPipeline(Bundle(bundle.vae, bundle.unet, {**bundle.config, "student": student_info},
                                  bundle.model_hash, bundle.url, student=student), embedder=emb)
    conditions = [Condition(**c) for c in checks]
    progress = state["progress"]
    kept_epoch = progress["best_epoch"] + 1 if keep_best else progress["epoch"]
    student_info.update(
        scores=score_samplers(pipeline, conditions, [(SAMPLER, s) for s in cfg.sample_check_steps],
                              student_info["guidance"]),
        teacher_scores=score_samplers(pipeline, conditions, list(cfg.teacher_reference), student_info["guidance"]),
        training={"preset": tc.preset, "config": asdict(cfg), "data": data, "dataset": dataset_info,
                  "steps": progress["global_step"], "resumed_at_steps": progress["resumed_at"],
                  "best_epoch": kept_epoch,
                  **({"best_sample_score": progress["best_val"]} if method == "lcd" else
                     {"best_val_mse": progress["best_val"]} if method == "regress" else
                     {"best_val_fid": progress["best_val"]} if keep_best else {}),
                  "check_n": len(conditions), "ranks": progress["ranks"], "workers": workers, "gpu": gpu,
                  "torch": torch.__version__, "seconds": seconds})
    # a new student has not passed the gates the teacher bundle's default sampling was set on
    config, teacher_card = without_default_sampling(bundle.saved_config(), read_card(bundle.url, storage_options))
    config["student"] = student_info
    card = _card(teacher_card, student_info,
                 command or f"synthgen train distill --data {data} --out {out} --preset {preset} --method {method}")
    save_bundle(url, bundle.vae, bundle.unet, config, card, storage_options=storage_options, student=student,
                tiny_decoder=bundle.tiny_decoder)  # the same VAE latents: the teacher's tiny decoder still fits
    scores = ", ".join(f"{k} {v['score']:.2f}" for k, v in {**student_info["scores"],
                                                             **student_info["teacher_scores"]}.items())
    print(f"[distill] done: kept epoch {kept_epoch}, sample scores {scores}, {seconds:.0f} s → {url}",
          flush=True)
    return url
