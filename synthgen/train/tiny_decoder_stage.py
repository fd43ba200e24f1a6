"""Stage 4, `synthgen train tiny-decoder`: a narrower VAE decoder, distilled from the bundle's own, for fast
decoding (``ECGPipeline(decoder="tiny")``, ``synthgen generate --decoder tiny``).

With a one-step student the VAE decoder costs more than the U-Net (4.05 against 3.2 ms per ECG on one core,
docs/benchmarks.md, "End to end"), and 78 % of it is convolutions whose cost grows with the square of the
width. The tiny decoder is the same architecture (``model.vae.Decoder``) at ``TinyDecoderConfig.base_channels``
and learns to reproduce the VAE decoder's ECG (L1 in mV) from the same latent — like TAESD for Stable
Diffusion, a decoder distilled for speed, not a new autoencoder: the latent space, the U-Net and the student
are untouched. The latents are those the sampler decodes: posterior samples z ~ q(z|x) of the training ECGs
and, when the bundle has a student, its 1- and 2-step samples (alternately) for the same ECGs' conditions. Each
worker draws its latent pool when it starts, with the VAE decoder's outputs as targets, and an epoch is one pass
over it; a resumed run draws a new pool of the same kind (Ray Data need not hand a worker the same rows in the
same order twice), so resuming continues the same training, not the same sequence of batches. Memory: 48 KB of
targets per pool latent (0.44 GB for the shipped run's 8,940). Kept weights: the lowest L1 on the first
``val_n`` validation ECGs a worker is handed (posterior means). The export is the teacher bundle +
``tiny_decoder.safetensors``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthgen.cluster import data_context, gpu_budget, ray_session
from synthgen.conditions.embedders import get_embedder
from synthgen.conditions.patient import PatientStats
from synthgen.ecg import N_SAMPLES
from synthgen.errors import InputError
from synthgen.io.bundles import read_card
from synthgen.io.paths import check_writable, join, resolve
from synthgen.io.shards import SUMMARY, read_shards, read_summary, signals
from synthgen.model.bundle import load_bundle, replace_card_section, save_bundle, without_default_sampling
from synthgen.model.consistency import student_sample
from synthgen.model.schedulers import make_scheduler
from synthgen.model.unet import UNet1D, UNetConfig
from synthgen.model.vae import VAE, Decoder, VAEConfig
from synthgen.pipeline import scheduler_kwargs
from synthgen.train.datasets import iter_numpy
from synthgen.train.distill_stage import _conditions, _worker_embedder
from synthgen.train.loop import fit, mean_over_workers, optimizer_step, seed_worker, shuffle_seed, unwrap
from synthgen.train.presets import TinyDecoderConfig, TrainConfig, get_preset
from synthgen.train.run import CONDITION_COLUMNS, _final_state, _trainer, fill_embedding_cache

OUT_BUNDLE = "with-tiny-decoder"  # the exported bundle's folder under --out
METHOD = "decoder distillation: the VAE decoder's output from the same latent, L1 (TAESD-like)"
CARD_SECTION = "## Tiny decoder"


def tiny_decoder_config(vae: dict[str, Any], cfg: TinyDecoderConfig) -> VAEConfig:
    """The tiny decoder's architecture: the bundle's VAE config at ``cfg.base_channels`` and ``cfg.norm_groups``."""
    return VAEConfig(**{**vae, "base_channels": cfg.base_channels, "norm_groups": cfg.norm_groups})


def _student_latents(config: dict[str, Any], batch: dict, copies: int, generator: torch.Generator,
                     device: torch.device, embedder: Any) -> list[torch.Tensor]:
    """``copies`` student samples (alternately 1 and 2 steps) of a batch's conditions, in the VAE's latent scale."""
    student = config["student_net"]
    scheduler = make_scheduler("lcm", **config["noise_kwargs"],
                               original_inference_steps=config["student"]["original_inference_steps"])
    cond = _conditions(batch, embedder, device, None)
    shape = (len(batch["prompt"]), student.cfg.in_channels, config["latent_length"])
    return [student_sample(student, scheduler, 1 + k % 2, torch.randn(shape, generator=generator).to(device), cond,
                           config["noise_kwargs"]["prediction_type"], generator=generator) / config["latent_scale"]
            for k in range(copies)]


def tiny_decoder_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: draw the latent pool from this worker's shard, then fit the tiny decoder to it."""
    import ray.train
    import ray.train.torch

    tc = TrainConfig.from_dict(config["train"])
    cfg: TinyDecoderConfig = tc.tiny_decoder
    torch.manual_seed(tc.seed)
    device = ray.train.torch.get_device()
    vae = VAE(VAEConfig(**config["vae_model"]))
    vae.load_state_dict(config["vae_state"])
    vae = vae.to(device).eval().requires_grad_(False)
    tiny = Decoder(tiny_decoder_config(config["vae_model"], cfg))
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=cfg.stage.lr, weight_decay=cfg.stage.weight_decay)
    tiny = ray.train.torch.prepare_model(tiny)
    seed_worker(tc.seed)
    generator = torch.Generator().manual_seed(tc.seed + ray.train.get_context().get_world_rank())
    embedder = None
    if config.get("student_state") is not None:
        student = UNet1D(UNetConfig(**config["student_model"]))
        student.load_state_dict(config["student_state"])
        config = {**config, "student_net": student.to(device).eval().requires_grad_(False),
                  "latent_length": N_SAMPLES // 2 ** (len(vae.cfg.channel_mult) - 1),
                  "noise_kwargs": scheduler_kwargs(config["noise"])}
        embedder = _worker_embedder(config)

    @torch.no_grad()
    def pool(split: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, VAE-decoded targets): posterior samples (+ student samples) for training, else the first
        ``cfg.val_n`` posterior means."""
        latents = []
        for batch in iter_numpy(ray.train.get_dataset_shard(split), 64, shuffle=False):
            mu, logvar = vae.encode(torch.tensor(batch["signal"]).to(device))
            if not train:
                latents.append(mu)
                if sum(len(z) for z in latents) >= cfg.val_n:
                    break
                continue
            std = (0.5 * logvar).exp()
            latents += [mu + std * torch.randn(mu.shape, generator=generator).to(device)
                        for _ in range(cfg.posterior_copies)]
            if embedder is not None:
                latents += _student_latents(config, batch, cfg.student_copies, generator, device, embedder)
        z = torch.cat(latents)[:None if train else cfg.val_n]
        return z, torch.cat([vae.decode(z[i:i + 256]) for i in range(0, len(z), 256)])

    started = time.time()
    train_z, train_y = pool("train", True)
    val_z, val_y = pool("val", False)
    print(f"[tiny-decoder] latent pool: {len(train_z)} training latents, {len(val_z)} validation, "
          f"{time.time() - started:.0f} s", flush=True)

    def batches(epoch: int) -> Iterator[dict]:
        order = torch.randperm(len(train_z), generator=torch.Generator().manual_seed(shuffle_seed(tc.seed, epoch)))
        for i in range(0, len(order) - cfg.stage.batch_size + 1, cfg.stage.batch_size):
            idx = order[i:i + cfg.stage.batch_size]
            yield {"z": train_z[idx], "y": train_y[idx]}

    def train_step(batch: dict, epoch: int) -> float:
        for group in optimizer.param_groups:  # cosine decay over the epochs
            group["lr"] = cfg.stage.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.stage.epochs))
        return optimizer_step(F.l1_loss(tiny(batch["z"]), batch["y"]), tiny, optimizer)

    @torch.no_grad()
    def validate(epoch: int) -> dict[str, float]:
        net = unwrap(tiny).eval()
        error = sum(float((net(val_z[i:i + 256]) - val_y[i:i + 256]).abs().mean()) * len(val_z[i:i + 256])
                    for i in range(0, len(val_z), 256))
        net.train()
        val = mean_over_workers(error, len(val_z))
        return {"val_l1_mv": val, "select": val}

    fit(name="tiny-decoder", stage=cfg.stage, stateful={"model": unwrap(tiny), "optimizer": optimizer},
        best_source=unwrap(tiny), batches=batches, train_step=train_step, validate=validate)


@torch.no_grad()
def fidelity(vae: VAE, tiny: Decoder, ecgs: np.ndarray) -> dict[str, float]:
    """How closely ``tiny`` reproduces the VAE decoder on the posterior means of ``ecgs`` (N, 12, 1024) mV:
    mean absolute and RMS error (mV), the RMS of the VAE decoder's output, and the largest error."""
    mu, _ = vae.encode(torch.tensor(ecgs))
    ref, ours = vae.decode(mu), tiny(mu)
    err = ours - ref
    return {"n": len(ecgs), "mae_mv": float(err.abs().mean()), "rms_error_mv": float(err.pow(2).mean().sqrt()),
            "signal_rms_mv": float(ref.pow(2).mean().sqrt()), "max_abs_error_mv": float(err.abs().max())}


def train_tiny_decoder(data: str, out: str, *, teacher: str | None = None, preset: str = "small", workers: int = 1,
                       gpu: bool | None = None, cache: str | None = None, seed: int = 0,
                       storage_options: dict | None = None, epochs: int | None = None,
                       batch_size: int | None = None, command: str = "") -> str:
    """Distil the VAE decoder of ``teacher`` (a bundle URL; None: the shipped model) into a tiny decoder on the
    training shards at ``data``; write the teacher bundle plus it to ``out``/with-tiny-decoder and return that
    URL. ``epochs``/``batch_size`` override the preset's (``TinyDecoderConfig.stage``).

    Resumable like the other stages (``out``/checkpoints/tiny-decoder); a finished run is not repeated.
    InputError for shards without a summary, non-positive overrides, too few training ECGs for one batch per
    worker or no validation ECG for each, a preset whose tiny decoder is not narrower than the VAE's, an ``out``
    holding a tiny decoder of another teacher, or an unwritable ``out``."""
    dataset_info = read_summary(data, storage_options)
    if dataset_info is None:
        raise InputError(f"--data {data}: no {SUMMARY} there; expected the output of `synthgen prepare`")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--workers", workers)):
        if value is not None and value < 1:
            raise InputError(f"{name} {value}: expected a positive integer")
    tc = get_preset(preset, seed=seed)
    stage = replace(tc.tiny_decoder.stage, **{k: v for k, v in (("epochs", epochs), ("batch_size", batch_size))
                                              if v is not None})
    tc = replace(tc, tiny_decoder=replace(tc.tiny_decoder, stage=stage))
    cfg = tc.tiny_decoder
    bundle = load_bundle(teacher, storage_options)
    splits = dataset_info.get("splits", {})
    copies = cfg.posterior_copies + (cfg.student_copies if bundle.student is not None else 0)
    if splits.get("train", 0) * copies < cfg.stage.batch_size * workers or splits.get("val", 0) < workers:
        raise InputError(f"--data {data}: {splits.get('train', 0)} training and {splits.get('val', 0)} validation "
                         f"ECGs; expected at least one batch ({cfg.stage.batch_size} latents, {copies} per ECG) "
                         f"and one validation ECG per worker ({workers}): lower --batch-size or --workers")
    if cfg.base_channels >= bundle.vae.cfg.base_channels:
        raise InputError(f"preset {preset!r}: tiny decoder base width {cfg.base_channels} is not narrower than the "
                         f"VAE decoder's ({bundle.vae.cfg.base_channels}) of {bundle.url}")
    fs_out, out_path = resolve(out, storage_options)
    url = join(out, OUT_BUNDLE)
    if fs_out.exists(f"{out_path}/{OUT_BUNDLE}/config.json"):
        made_from = load_bundle(url, storage_options).config.get("tiny_decoder", {}).get("teacher", {})
        if made_from.get("model_hash") != bundle.model_hash:
            raise InputError(f"--out {out}: {url} holds a tiny decoder of teacher {made_from.get('model_hash')}, "
                             f"not of {bundle.model_hash} (--teacher {teacher or 'shipped'}); use another --out")
        print(f"[tiny-decoder] already trained: {url} (delete it to train again)", flush=True)
        return url
    check_writable(out, storage_options)  # before Ray starts
    started = time.time()
    config = {"train": tc.to_dict(), "vae_model": bundle.config["vae"], "vae_state": bundle.vae.state_dict(),
              "latent_scale": bundle.config["latent_scale"], "noise": bundle.config["noise"],
              "student": bundle.config.get("student"), "storage_options": storage_options}
    with ray_session(worker_output=True) as ray, data_context(enable_progress_bars=False):
        from synthgen.train.datasets import split_datasets

        if bundle.student is not None:  # the student's samples need its prompt embeddings
            emb = get_embedder(bundle.config["embedder"]["name"], cache=cache, storage_options=storage_options)
            conditions_table = read_shards(data, columns=CONDITION_COLUMNS, storage_options=storage_options)
            config.update(student_state=bundle.student.state_dict(), student_model=asdict(bundle.student.cfg),
                          embedder=emb.name, cache=fill_embedding_cache(conditions_table, emb, out, storage_options,
                                                                        "tiny-decoder"))
        gpu = gpu_budget(ray, gpu) > 0
        datasets = split_datasets(data, ("train", "val"), PatientStats.from_dict(bundle.config["patient_stats"]),
                                  storage_options)
        state = _final_state(_trainer(tiny_decoder_worker, config, "tiny-decoder", out, workers, gpu, datasets,
                                      storage_options).fit())
    seconds = round(time.time() - started, 1)
    arch = tiny_decoder_config(bundle.config["vae"], cfg)
    tiny = Decoder(arch)
    tiny.load_state_dict(state["best"])
    tiny.eval()
    val = signals(read_shards(data, split="val", columns=["signal"], storage_options=storage_options))
    progress = state["progress"]
    info = {"model": asdict(arch), "method": METHOD, "teacher": {"model_hash": bundle.model_hash,
                                                                 "url": teacher or "shipped"},
            "fidelity_val": fidelity(bundle.vae, tiny, val[:cfg.val_n]),
            "training": {"preset": tc.preset, "config": asdict(cfg), "data": data, "dataset": dataset_info,
                         "steps": progress["global_step"], "resumed_at_steps": progress["resumed_at"],
                         "best_epoch": progress["best_epoch"] + 1, "best_val_l1_mv": progress["best_val"],
                         "ranks": progress["ranks"], "workers": workers, "gpu": gpu, "torch": torch.__version__,
                         "seconds": seconds}}
    # a new decoder has not passed the gates the teacher bundle's default sampling was set on
    new_config, teacher_card = without_default_sampling(bundle.saved_config(), read_card(bundle.url, storage_options))
    new_config["tiny_decoder"] = info
    card = _card(teacher_card, info,
                 command or f"synthgen train tiny-decoder --data {data} --out {out} --preset {preset}")
    save_bundle(url, bundle.vae, bundle.unet, new_config, card, storage_options=storage_options,
                student=bundle.student, tiny_decoder=tiny)
    fid = info["fidelity_val"]
    print(f"[tiny-decoder] done: kept epoch {progress['best_epoch'] + 1}, validation error {fid['rms_error_mv']:.4f} "
          f"mV RMS (signal {fid['signal_rms_mv']:.3f} mV), {seconds:.0f} s → {url}", flush=True)
    return url


def _card(teacher_card: str, info: dict[str, Any], command: str) -> str:
    """The teacher's model card with a section on the tiny decoder (replacing the teacher's own, if it has one)."""
    fid, arch = info["fidelity_val"], info["model"]
    return replace_card_section(
        teacher_card, CARD_SECTION,
        f"`tiny_decoder.safetensors`: the VAE decoder at base width {arch['base_channels']} (the VAE's: see "
        f"`vae`), distilled from it on the latents the sampler decodes (`{command}`). Use it with "
        "`synthgen generate --decoder tiny` (ECGPipeline(decoder=\"tiny\")): faster decoding, the same latents. "
        f"On {fid['n']} validation ECGs' posterior means it differs from the VAE decoder by "
        f"{fid['rms_error_mv']:.4f} mV RMS (signal {fid['signal_rms_mv']:.3f} mV RMS; largest error "
        f"{fid['max_abs_error_mv']:.2f} mV). Outputs record the decoder in their `decoder` column.")
