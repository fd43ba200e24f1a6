"""`synthgen train`: the driver. Runs each stage as a Ray Train `TorchTrainer` and exports its result.

Layout under ``out`` (local or s3://):
  checkpoints/{vae,diffusion}/   Ray Train runs (same name + storage path on a rerun = resume)
  vae/                           stage 1 export: vae.safetensors + vae.json (config, latent scale, figures)
  bundle/                        stage 2 export: the model bundle that `synthgen generate` loads
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from synthgen import __version__
from synthgen.cluster import data_context, gpu_budget, ray_session
from synthgen.conditions.embedders import CachedEmbedder, Embedder, get_embedder
from synthgen.conditions.patient import PatientStats
from synthgen.errors import InputError
from synthgen.io.paths import (StorageOptions, check_writable, join, read_json, resolve, write_bytes_atomic,
                               write_json_atomic)
from synthgen.io.shards import SUMMARY, read_shards, read_summary
from synthgen.train.card import model_card
from synthgen.train.presets import TrainConfig, get_preset

STAGES = ("vae", "diffusion", "all")
CONDITION_COLUMNS = ["split", "reports", "age", "sex", "hr"]  # what the driver reads of the shards, once


@dataclass(frozen=True)
class TrainRunConfig:
    """One `synthgen train STAGE` run's settings, from the CLI (or a YAML ``--config``) to the stages; the
    fields are its options (``command``: the command line recorded in the model card)."""

    stage: str
    data: str
    out: str
    preset: str = "small"
    workers: int = 1
    gpu: bool | None = None  # None: GPUs if the cluster has or can add some (synthgen.cluster.gpu_budget)
    embedder: str = "local"
    cache: str | None = None
    seed: int = 0
    storage_options: StorageOptions = None
    command: str = ""


@dataclass(frozen=True)
class StageInputs:
    """What both stages use, prepared once by the driver from one read of the shards."""

    hparams: TrainConfig
    gpu: bool
    datasets: dict[str, Any]  # split → Ray Dataset of model inputs (train, val)
    conditions: pa.Table      # CONDITION_COLUMNS of every record
    vae_model: dict
    unet_model: dict
    embedder: Embedder
    stats: PatientStats
    dataset_info: dict
    command: str


def _model_configs(hparams: TrainConfig, text_dim: int) -> tuple[dict, dict]:
    from synthgen.model.unet import UNetConfig
    from synthgen.model.vae import VAEConfig

    vae = VAEConfig.paper() if hparams.model_size == "paper" else VAEConfig()
    unet = UNetConfig.paper() if hparams.model_size == "paper" else UNetConfig()
    vae = replace(vae, **hparams.vae_model)
    unet = replace(unet, **{**hparams.unet_model, "cond_dim": text_dim})
    return asdict(vae), asdict(unet)


def _split(table: pa.Table, *splits: str) -> pa.Table:
    return table.filter(pc.is_in(table["split"], pa.array(splits)))


def _trainer(fn, config: dict, name: str, out: str, workers: int, gpu: bool, datasets: dict,
             storage_options: dict | None):
    import pyarrow.fs as pafs
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, path = resolve(join(out, "checkpoints"), storage_options)
    fs.makedirs(path, exist_ok=True)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    run_config = RunConfig(
        name=name,
        storage_path=os.path.abspath(path) if local else path,
        storage_filesystem=None if local else pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
    )
    # A CPU worker gets its share of the cores (Ray sizes its torch thread pool from this).
    per_worker = None if gpu else {"CPU": max(1, (os.cpu_count() or 1) // workers)}
    return TorchTrainer(fn, train_loop_config=config, datasets=datasets, run_config=run_config,
                        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                                     resources_per_worker=per_worker))


def _final_state(result) -> dict[str, Any]:
    from synthgen.train.loop import STATE_FILE

    with result.checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


@torch.no_grad()
def fit_latent_scale(vae, dataset, n: int, seed: int = 0) -> float:
    """1 / std of VAE posterior samples over (up to) n training records: unit-variance latents for diffusion."""
    from synthgen.train.datasets import iter_numpy

    generator, chunks, seen = torch.Generator().manual_seed(seed), [], 0
    for batch in iter_numpy(dataset, 256, shuffle=False):
        mu, logvar = vae.encode(torch.tensor(batch["signal"]))
        chunks.append(mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator))
        seen += len(mu)
        if seen >= n:
            break
    return float(1.0 / torch.cat(chunks).std())


def _run_vae(run: TrainRunConfig, inputs: StageInputs) -> dict:
    from synthgen.model.vae import VAE, VAEConfig
    from synthgen.train.vae_stage import vae_worker

    fs, vae_dir = resolve(join(run.out, "vae"), run.storage_options)
    if fs.exists(f"{vae_dir}/vae.json"):
        print(f"[vae] already trained: {join(run.out, 'vae')} (delete it to retrain)", flush=True)
        return read_json(fs, f"{vae_dir}/vae.json")
    hparams = inputs.hparams
    started = time.time()
    trainer = _trainer(vae_worker, {"train": hparams.to_dict(), "vae_model": inputs.vae_model}, "vae",
                       run.out, run.workers, inputs.gpu, inputs.datasets, run.storage_options)
    state = _final_state(trainer.fit())
    vae = VAE(VAEConfig(**inputs.vae_model))
    vae.load_state_dict(state["best"])
    vae.eval()
    scale = fit_latent_scale(vae, inputs.datasets["train"], hparams.latent_scale_samples, hparams.seed)
    info = {
        "vae_model": inputs.vae_model, "latent_scale": scale, "best_val_loss": state["progress"]["best_val"],
        "best_epoch": state["progress"]["best_epoch"] + 1, "epochs": hparams.vae.epochs,
        "steps": state["progress"]["global_step"], "resumed_at_steps": state["progress"]["resumed_at"],
        "ranks": state["progress"]["ranks"],
        "seconds": round(time.time() - started, 1),
    }
    write_bytes_atomic(fs, f"{vae_dir}/vae.safetensors", _safetensors_bytes(state["best"]))
    write_json_atomic(fs, f"{vae_dir}/vae.json", info)
    print(f"[vae] done: best val {info['best_val_loss']:.5f} at epoch {info['best_epoch']}, "
          f"latent scale {scale:.4f}, {info['seconds']:.0f} s", flush=True)
    return info


def _load_vae_state(run: TrainRunConfig) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    fs, vae_dir = resolve(join(run.out, "vae"), run.storage_options)
    with fs.open(f"{vae_dir}/vae.safetensors", "rb") as f:
        return load(f.read())


def _run_diffusion(run: TrainRunConfig, inputs: StageInputs, vae_info: dict) -> str:
    from synthgen.model.bundle import save_bundle
    from synthgen.model.unet import UNet1D, UNetConfig
    from synthgen.model.vae import VAE, VAEConfig
    from synthgen.conditions.spec import Condition
    from synthgen.model.bundle import Bundle
    from synthgen.pipeline import ECGPipeline
    from synthgen.train.diffusion_stage import choose_eps_scale, diffusion_worker

    hparams = inputs.hparams
    bundle_url = join(run.out, "bundle")
    cache = fill_embedding_cache(inputs.conditions, inputs.embedder, run.out, run.storage_options)
    vae_state = _load_vae_state(run)
    started = time.time()
    config = {"train": hparams.to_dict(), "vae_model": vae_info["vae_model"], "vae_state": vae_state,
              "latent_scale": vae_info["latent_scale"], "unet_model": inputs.unet_model,
              "embedder": inputs.embedder.name, "cache": cache, "storage_options": run.storage_options,
              "patient_stats": inputs.stats.to_dict(),
              "check_conditions": check_conditions(inputs.conditions, hparams.sample_check_n)}
    trainer = _trainer(diffusion_worker, config, "diffusion", run.out, run.workers, inputs.gpu, inputs.datasets,
                       run.storage_options)
    state = _final_state(trainer.fit())
    seconds = round(time.time() - started, 1)
    vae = VAE(VAEConfig(**vae_info["vae_model"]))
    vae.load_state_dict(vae_state)
    unet = UNet1D(UNetConfig(**inputs.unet_model))
    unet.load_state_dict(state["best"])
    progress = state["progress"]
    training = {
        "preset": hparams.preset, "config": hparams.to_dict(), "data": run.data, "dataset": inputs.dataset_info,
        "vae": {k: v for k, v in vae_info.items() if k != "vae_model"},
        "diffusion": {"best_sample_score": progress["best_val"], "best_epoch": progress["best_epoch"] + 1,
                      "epochs": hparams.diffusion.epochs, "steps": progress["global_step"],
                      "resumed_at_steps": progress["resumed_at"], "ranks": progress["ranks"], "seconds": seconds},
        "workers": run.workers, "gpu": inputs.gpu, "torch": torch.__version__,
    }
    bundle_config = {
        "vae": vae_info["vae_model"], "unet": inputs.unet_model, "latent_scale": vae_info["latent_scale"],
        "embedder": {"name": inputs.embedder.name, "dim": inputs.embedder.dim},
        "patient_stats": inputs.stats.to_dict(),
        "noise": hparams.noise(),
        "data_fingerprint": inputs.dataset_info.get("fingerprint"), "synthgen_version": __version__,
        "training": training,
    }
    pipeline = ECGPipeline(Bundle(vae, unet, bundle_config, "training", ""), embedder=inputs.embedder)
    bundle_config["sampling"] = choose_eps_scale(pipeline, [Condition(**c) for c in config["check_conditions"]],
                                                 hparams.eps_scale_samplers, hparams.eps_scale_grid,
                                                 hparams.sample_check_guidance)
    save_bundle(bundle_url, vae, unet, bundle_config, model_card(bundle_config, inputs.command),
                storage_options=run.storage_options)
    print(f"[diffusion] done: best sample score {progress['best_val']:.5f} at epoch {progress['best_epoch'] + 1}, "
          f"{seconds:.0f} s → {bundle_url}", flush=True)
    return bundle_url


def check_conditions(conditions: pa.Table, n: int) -> list[dict]:
    """``n`` validation conditions (rows of ``conditions`` in the val split) spread evenly over the heart-rate
    range (as Condition fields), for the sample checks that choose the kept diffusion weights."""
    import numpy as np

    table = _split(conditions, "val").select(["reports", "age", "sex", "hr"])
    rows = sorted(table.to_pylist(), key=lambda r: (r["hr"] is None, r["hr"] or 0.0))
    picks = np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int))
    return [{"reports": tuple(rows[i]["reports"]), "age": rows[i]["age"], "sex": rows[i]["sex"],
             "hr": rows[i]["hr"]} for i in picks]


def fill_embedding_cache(conditions: pa.Table, embedder: Embedder, out: str, storage_options: StorageOptions = None,
                         stage: str = "diffusion") -> str:
    """Embed every training/validation prompt (``conditions``: split and reports of the records) once on the
    driver into the run's cache ``OUT/embeddings``, which the workers read (on a cluster OUT is shared storage;
    the driver's local cache is not); returns its URL. ``stage`` prefixes the progress line."""
    from synthgen.conditions.prompts import ordered_prompt

    prompts = sorted({ordered_prompt(r) for r in _split(conditions, "train", "val")["reports"].to_pylist()})
    print(f"[{stage}] embedding {len(prompts)} unique report prompts with {embedder.name}", flush=True)
    shared = join(out, "embeddings")
    CachedEmbedder(embedder, shared, storage_options).embed(prompts)
    return shared


def train(stage: str, data: str, out: str, **settings: Any) -> str:
    """`run_train` for library callers: ``settings`` are the other fields of TrainRunConfig."""
    return run_train(TrainRunConfig(stage, data, out, **settings))


def run_train(run: TrainRunConfig) -> str:
    """Train ``run.stage`` ("vae", "diffusion" or "all") on prepared shards; returns the URL of what it exported.

    Rerunning the same command resumes a killed run from its last checkpoint and skips finished stages. The
    shards are read once: their condition columns on the driver (patient statistics, the validation conditions
    of the sample checks, the prompts to embed), their signals once by Ray Data for both splits.
    """
    stage, data, out, storage_options = run.stage, run.data, run.out, run.storage_options
    if stage not in STAGES:
        raise InputError(f"stage: expected one of {STAGES}, got {stage!r}")
    dataset_info = read_summary(data, storage_options)
    if dataset_info is None:
        raise InputError(f"--data {data}: no {SUMMARY} there; expected the output of `synthgen prepare`")
    hparams = get_preset(run.preset, seed=run.seed)
    fs_out, out_path = resolve(out, storage_options)
    done = join(out, "vae") if stage == "vae" else join(out, "bundle")
    if fs_out.exists(f"{out_path}/{'vae/vae.json' if stage == 'vae' else 'bundle/config.json'}"):
        print(f"[{stage}] already trained: {done} (delete it to retrain)", flush=True)
        return done
    if stage == "diffusion" and not fs_out.exists(f"{out_path}/vae/vae.json"):
        raise InputError(f"--out {out}: no trained VAE at {join(out, 'vae')}; run `synthgen train vae` first")
    check_writable(out, storage_options)  # before Ray starts
    embedder = get_embedder(run.embedder, cache=run.cache, storage_options=storage_options)
    vae_model, unet_model = _model_configs(hparams, embedder.dim)
    conditions = read_shards(data, columns=CONDITION_COLUMNS, storage_options=storage_options)
    train_rows = _split(conditions, "train")
    stats = PatientStats.fit(train_rows["age"].to_numpy(zero_copy_only=False),
                             train_rows["hr"].to_numpy(zero_copy_only=False))
    # the workers print the epoch lines, which are the progress: no Ray Data bars
    with ray_session(worker_output=True) as ray, data_context(enable_progress_bars=False):
        from synthgen.train.datasets import split_datasets

        inputs = StageInputs(
            hparams=hparams, gpu=gpu_budget(ray, run.gpu) > 0,
            datasets=split_datasets(data, ("train", "val"), stats, storage_options), conditions=conditions,
            vae_model=vae_model, unet_model=unet_model, embedder=embedder, stats=stats, dataset_info=dataset_info,
            command=run.command or f"synthgen train {stage} --data {data} --out {out} --preset {run.preset}")
        if stage in ("vae", "all"):
            vae_info = _run_vae(run, inputs)
            if stage == "vae":
                return join(out, "vae")
        else:
            vae_info = read_json(fs_out, f"{out_path}/vae/vae.json")
        return _run_diffusion(run, inputs, vae_info)
