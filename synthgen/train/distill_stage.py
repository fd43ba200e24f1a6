"""Stage 3, `synthgen train distill`: Latent Consistency Distillation (Luo et al. 2023) of a teacher bundle
into a student that samples in 1–4 U-Net calls with classifier-free guidance folded in.

Per training step (one Ray Train worker's batch): a real training latent z₀ (frozen VAE, as in stage 2) is
noised to a grid timestep t_n = n·k − 1 (k = T/N, N = ``original_steps``); the frozen teacher takes one
guided DDIM step with its Epsilon Scaling to t_n − k (``model.consistency.teacher_ddim_step``); the target
network θ⁻ (an EMA of the student) maps that point to x₀ and the student, from x_{t_n}, must land on the same
x₀: pseudo-Huber(f_θ(x_{t_n}, t_n), f_θ⁻(x̂_{t_n−k}, t_n − k)), with f the c_skip/c_out parameterisation that
makes f the identity at t = 0. The student starts as a copy of the teacher's U-Net (same size, v-prediction).
Checkpoints are chosen, as in stage 2, by the ``sample_score`` of ECGs the target network makes for fixed
validation conditions: scored at 1, 2 and 4 steps, chosen on the mean over ``DistillConfig.select_steps`` (1
and 2); the export is a bundle = teacher + ``student.safetensors``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from synthgen.cluster import data_context, gpu_budget, ray_session
from synthgen.conditions.embedders import get_embedder
from synthgen.conditions.patient import PatientStats
from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.io.bundles import read_card
from synthgen.io.paths import check_writable, join, resolve
from synthgen.io.shards import SUMMARY, read_shards, read_summary
from synthgen.model.bundle import Bundle, load_bundle, save_bundle
from synthgen.model.consistency import (MAX_STUDENT_STEPS, consistency_output, pseudo_huber, solver_timesteps,
                                        teacher_ddim_step)
from synthgen.model.schedulers import EpsScale, make_scheduler
from synthgen.model.unet import UNet1D, UNetConfig
from synthgen.model.vae import VAE, VAEConfig
from synthgen.pipeline import ECGPipeline
from synthgen.train.datasets import iter_numpy
from synthgen.train.diffusion_stage import EMA, check_metrics, drop_conditions, score_samplers
from synthgen.train.loop import fit, mean_over_workers, optimizer_step, seed_worker, shuffle_seed, unwrap
from synthgen.train.presets import DistillConfig, TrainConfig, get_preset
from synthgen.train.run import CONDITION_COLUMNS, _final_state, _trainer, check_conditions, fill_embedding_cache

DISTILLED = "distilled"  # the exported bundle's folder under --out
SAMPLER = "lcm"
TIMESTEP_SCALING = 10.0  # diffusers' LCMScheduler default, used by training and sampling alike


def distill_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    tc = TrainConfig.from_dict(config["train"])
    dc: DistillConfig = tc.distill
    torch.manual_seed(tc.seed)
    device = ray.train.torch.get_device()
    vae = VAE(VAEConfig(**config["vae_model"]))
    vae.load_state_dict(config["vae_state"])
    vae = vae.to(device).eval().requires_grad_(False)
    teacher = UNet1D(UNetConfig(**config["unet_model"]))
    teacher.load_state_dict(config["unet_state"])
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    target = EMA(student, dc.target_ema_decay)
    optimizer = torch.optim.AdamW(student.parameters(), lr=dc.stage.lr, weight_decay=dc.stage.weight_decay)
    student = ray.train.torch.prepare_model(student)
    seed_worker(tc.seed)
    target.model.to(device)
    scale = float(config["latent_scale"])
    embedder = get_embedder(config["embedder"], cache=config["cache"], storage_options=config["storage_options"])
    # one pipeline: the teacher's guided prediction for the solver, the target network for the sample checks
    pipeline = ECGPipeline(
        Bundle(vae, teacher, {"embedder": {"name": embedder.name, "dim": embedder.dim},
                              "patient_stats": config["patient_stats"], "latent_scale": scale,
                              "noise": config["noise"], "student": config["student"]},
               "training", "", student=target.model),
        embedder=embedder, device=device)
    prediction_type = pipeline.noise["prediction_type"]
    scheduler = make_scheduler(SAMPLER, **pipeline.noise, original_inference_steps=dc.original_steps)
    alphas = scheduler.alphas_cumprod.to(device)
    grid = solver_timesteps(pipeline.noise["num_train_timesteps"], dc.original_steps).to(device)
    k = pipeline.noise["num_train_timesteps"] // dc.original_steps
    dropout = replace(tc, p_uncond=0.0, p_drop_text=dc.p_drop_text, p_drop_feature=dc.p_drop_feature)
    eps_scale = EpsScale.parse(config["student"]["teacher"]["eps_scale"])
    check_conditions = [Condition(**c) for c in config["check_conditions"]]
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def inputs(batch: dict, generator: torch.Generator | None, drop: bool):
        """x_{t_n} for a random grid timestep of each training latent, t_n, t_n − k (≥ 0), and conditions."""
        x = torch.tensor(batch["signal"]).to(device)
        mu, logvar = vae.encode(x)
        z0 = (mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator).to(device)) * scale
        text = torch.from_numpy(embedder.embed(list(batch["prompt"]))).to(device)
        patient, present = torch.tensor(batch["patient"]).to(device), torch.tensor(batch["present"])
        text_present = torch.ones(len(x), dtype=torch.bool)
        if drop:
            text_present, present = drop_conditions(text_present, present, dropout)
        t = grid[torch.randint(0, len(grid), (len(x),), generator=generator).to(device)]
        a = alphas[t][:, None, None]
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=generator).to(device)
        return x_t, t, (t - k).clamp_min(0), (text, text_present.to(device), patient, present.to(device))

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
        found = score_samplers(pipeline, check_conditions, [(SAMPLER, s) for s in dc.sample_check_steps],
                               dc.guidance)
        return {**metrics, **check_metrics(found, [f"{SAMPLER}-{s}" for s in dc.select_steps])}

    fit(
        name="distill", stage=dc.stage,
        stateful={"model": unwrap(student), "target": target, "optimizer": optimizer},
        best_source=target.model,
        batches=lambda epoch: iter_numpy(train_shard, dc.stage.batch_size, shuffle=True,
                                          seed=shuffle_seed(tc.seed, epoch)),
        train_step=train_step, validate=validate,
    )


def _card(teacher_card: str, student: dict[str, Any], command: str) -> str:
    """The teacher's model card with a section on the student appended."""
    t, teacher, g = student["training"], student["teacher"], student["guidance"]

    def shown(scores: dict[str, dict[str, float]]) -> str:
        return ", ".join(f"{k} {v['score']:.2f}" for k, v in scores.items())

    lines = [
        "## Stage 3: few-step student (Latent Consistency Distillation, Luo et al. 2023)",
        f"- Teacher: `{teacher['model_hash']}`; its solver: DDIM, skipping step k = {teacher['k']} "
        f"(N = {student['original_inference_steps']}), guidance {g:g} and Epsilon Scaling "
        f"{EpsScale.parse(teacher['eps_scale'])} folded in",
        "- Student: the teacher's U-Net architecture, initialised from it (v-prediction, c_skip/c_out boundary), "
        f"target network EMA {t['config']['target_ema_decay']}; sample with "
        f"`--sampler lcm --steps 1…{student['max_steps']} --guidance {g:g}`",
        f"- Epochs: {t['config']['stage']['epochs']}, steps: {t['steps']} (batch {t['config']['stage']['batch_size']}),"
        f" wall time: {t['seconds']} s" + (f" (the last run only; resumed at steps {t['resumed_at_steps']})"
                                           if t["resumed_at_steps"] else "") +
        f"; kept the target weights of epoch {t['best_epoch']} (mean sample score over "
        f"{', '.join(str(s) for s in t['config']['select_steps'])} steps {t['best_sample_score']:.3f})",
        f"- Sample score on {t['check_n']} validation conditions (HR MAE in bpm + 100 × share near-flat or "
        f"HR-unmeasurable; lower is better): student {shown(student['scores'])}; teacher "
        f"{shown(student['teacher_scores'])}",
        "", "```", command, "```", "",
    ]
    return teacher_card.rstrip() + "\n\n" + "\n".join(lines)


def distill(data: str, out: str, *, teacher: str | None = None, preset: str = "small", workers: int = 1,
            gpu: bool | None = None, cache: str | None = None, seed: int = 0, storage_options: dict | None = None,
            epochs: int | None = None, batch_size: int | None = None, command: str = "") -> str:
    """Distil ``teacher`` (a bundle URL; None: the shipped model) on the training shards at ``data`` into
    ``out``/distilled (teacher + student bundle); returns its URL. ``epochs``/``batch_size`` override the
    preset's (``DistillConfig.stage``).

    Resumable like the other stages: rerunning the same command continues from ``out``/checkpoints/distill,
    and a finished run is not repeated. InputError for shards without a summary, a teacher that is not
    v-prediction (ε says nothing about x₀ at the 1-step start ᾱ_T = 0) or an unwritable ``out``.
    """
    dataset_info = read_summary(data, storage_options)
    if dataset_info is None:
        raise InputError(f"--data {data}: no {SUMMARY} there; expected the output of `synthgen prepare`")
    if (epochs is not None and epochs < 1) or (batch_size is not None and batch_size < 1):
        raise InputError(f"--epochs {epochs} / --batch-size {batch_size}: expected positive integers")
    tc = get_preset(preset, seed=seed)
    stage = replace(tc.distill.stage, **{k: v for k, v in (("epochs", epochs), ("batch_size", batch_size))
                                         if v is not None})
    tc = replace(tc, distill=replace(tc.distill, stage=stage))
    dc = tc.distill
    bundle = load_bundle(teacher, storage_options)
    noise = bundle.config["noise"]
    if noise.get("prediction_type", "epsilon") != "v_prediction":
        raise InputError(f"--teacher {bundle.url}: config.json noise.prediction_type is "
                         f"{noise.get('prediction_type', 'epsilon')!r}; distillation needs a 'v_prediction' teacher")
    fs_out, out_path = resolve(out, storage_options)
    url = join(out, DISTILLED)
    if fs_out.exists(f"{out_path}/{DISTILLED}/config.json"):
        print(f"[distill] already distilled: {url} (delete it to distil again)", flush=True)
        return url
    check_writable(out, storage_options)  # before Ray starts
    emb = get_embedder(bundle.config["embedder"]["name"], cache=cache, storage_options=storage_options)
    stats = PatientStats.from_dict(bundle.config["patient_stats"])  # the teacher's normalisation, not the data's
    eps_scale = dc.teacher_eps_scale
    if eps_scale is None:
        eps_scale = bundle.config.get("sampling", {}).get("eps_scale", {}).get("ddim", 1.0)
    eps_scale = str(EpsScale.parse(eps_scale))
    student_info: dict[str, Any] = {
        "method": "latent consistency distillation (Luo et al. 2023)", "sampler": SAMPLER,
        "guidance": float(dc.guidance), "original_inference_steps": dc.original_steps,
        "max_steps": MAX_STUDENT_STEPS, "timestep_scaling": TIMESTEP_SCALING,
        "teacher": {"model_hash": bundle.model_hash, "url": teacher or "shipped", "solver": "ddim",
                    "k": noise["T"] // dc.original_steps, "eps_scale": eps_scale},
    }
    started = time.time()
    conditions_table = read_shards(data, columns=CONDITION_COLUMNS, storage_options=storage_options)
    checks = check_conditions(conditions_table, dc.sample_check_n)
    # the workers print the epoch lines, which are the progress: no Ray Data bars
    with ray_session(worker_output=True) as ray, data_context(enable_progress_bars=False):
        from synthgen.train.datasets import split_datasets

        gpu = gpu_budget(ray, gpu) > 0
        datasets = split_datasets(data, ("train", "val"), stats, storage_options)
        config = {"train": tc.to_dict(), "vae_model": bundle.config["vae"], "vae_state": bundle.vae.state_dict(),
                  "unet_model": bundle.config["unet"], "unet_state": bundle.unet.state_dict(),
                  "latent_scale": bundle.config["latent_scale"], "noise": noise, "student": student_info,
                  "embedder": emb.name, "storage_options": storage_options,
                  "cache": fill_embedding_cache(conditions_table, emb, out, storage_options, "distill"),
                  "patient_stats": bundle.config["patient_stats"], "check_conditions": checks}
        trainer = _trainer(distill_worker, config, "distill", out, workers, gpu, datasets, storage_options)
        state = _final_state(trainer.fit())
    seconds = round(time.time() - started, 1)
    student = UNet1D(bundle.unet.cfg)
    student.load_state_dict(state["best"])
    student.eval()
    pipeline = ECGPipeline(Bundle(bundle.vae, bundle.unet, {**bundle.config, "student": student_info},
                                  bundle.model_hash, bundle.url, student=student), embedder=emb)
    conditions = [Condition(**c) for c in checks]
    progress = state["progress"]
    student_info.update(
        scores=score_samplers(pipeline, conditions, [(SAMPLER, s) for s in dc.sample_check_steps], dc.guidance),
        teacher_scores=score_samplers(pipeline, conditions, list(dc.teacher_reference), dc.guidance),
        training={"preset": tc.preset, "config": asdict(dc), "data": data, "dataset": dataset_info,
                  "steps": progress["global_step"], "resumed_at_steps": progress["resumed_at"],
                  "best_epoch": progress["best_epoch"] + 1, "best_sample_score": progress["best_val"],
                  "check_n": len(conditions), "ranks": progress["ranks"], "workers": workers, "gpu": gpu,
                  "torch": torch.__version__, "seconds": seconds})
    config = {k: v for k, v in bundle.config.items() if k not in ("files", "synthgen_version")}
    config["student"] = student_info
    card = _card(read_card(bundle.url, storage_options), student_info,
                 command or f"synthgen train distill --data {data} --out {out} --preset {preset}")
    save_bundle(url, bundle.vae, bundle.unet, config, card, storage_options=storage_options, student=student)
    scores = ", ".join(f"{k} {v['score']:.2f}" for k, v in {**student_info["scores"],
                                                             **student_info["teacher_scores"]}.items())
    print(f"[distill] done: kept epoch {progress['best_epoch'] + 1}, sample scores {scores}, {seconds:.0f} s → {url}",
          flush=True)
    return url
