"""`synthgen train`: the driver. Runs each stage as a Ray Train `TorchTrainer` and exports its result.

Layout under ``out`` (local or s3://):
  checkpoints/{vae,diffusion}/   Ray Train runs (same name + storage path on a rerun = resume)
  vae/                           stage 1 export: vae.safetensors + vae.json (config, latent scale, figures)
  bundle/                        stage 2 export: the model bundle that `synthgen generate` loads
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from synthgen import __version__
from synthgen.cluster import gpu_budget, ray_session
from synthgen.conditions.embedders import CachedEmbedder, get_embedder
from synthgen.conditions.patient import PatientStats
from synthgen.errors import InputError
from synthgen.io.paths import check_writable, join, read_json, resolve, write_bytes_atomic, write_json_atomic
from synthgen.io.shards import SUMMARY, read_shards, read_summary
from synthgen.train.presets import TrainConfig, get_preset

STAGES = ("vae", "diffusion", "all")


def _model_configs(tc: TrainConfig, text_dim: int) -> tuple[dict, dict]:
    from synthgen.model.unet import UNetConfig
    from synthgen.model.vae import VAEConfig

    vae = VAEConfig.paper() if tc.model_size == "paper" else VAEConfig()
    unet = UNetConfig.paper() if tc.model_size == "paper" else UNetConfig()
    vae = replace(vae, **tc.vae_model)
    unet = replace(unet, **{**tc.unet_model, "cond_dim": text_dim})
    return asdict(vae), asdict(unet)


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


def _run_vae(ctx: dict) -> dict:
    from synthgen.model.vae import VAE, VAEConfig
    from synthgen.train.vae_stage import vae_worker

    fs, vae_dir = resolve(join(ctx["out"], "vae"), ctx["storage_options"])
    if fs.exists(f"{vae_dir}/vae.json"):
        print(f"[vae] already trained: {join(ctx['out'], 'vae')} (delete it to retrain)", flush=True)
        return read_json(fs, f"{vae_dir}/vae.json")
    tc: TrainConfig = ctx["tc"]
    started = time.time()
    trainer = _trainer(vae_worker, {"train": tc.to_dict(), "vae_model": ctx["vae_model"]}, "vae",
                       ctx["out"], ctx["workers"], ctx["gpu"], ctx["datasets"], ctx["storage_options"])
    state = _final_state(trainer.fit())
    vae = VAE(VAEConfig(**ctx["vae_model"]))
    vae.load_state_dict(state["best"])
    vae.eval()
    scale = fit_latent_scale(vae, ctx["datasets"]["train"], tc.latent_scale_samples, tc.seed)
    info = {
        "vae_model": ctx["vae_model"], "latent_scale": scale, "best_val_loss": state["progress"]["best_val"],
        "best_epoch": state["progress"]["best_epoch"] + 1, "epochs": tc.vae.epochs,
        "steps": state["progress"]["global_step"], "resumed_at_steps": state["progress"]["resumed_at"],
        "ranks": state["progress"]["ranks"],
        "seconds": round(time.time() - started, 1),
    }
    write_bytes_atomic(fs, f"{vae_dir}/vae.safetensors", _safetensors_bytes(state["best"]))
    write_json_atomic(fs, f"{vae_dir}/vae.json", info)
    print(f"[vae] done: best val {info['best_val_loss']:.5f} at epoch {info['best_epoch']}, "
          f"latent scale {scale:.4f}, {info['seconds']:.0f} s", flush=True)
    return info


def _load_vae_state(ctx: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    fs, vae_dir = resolve(join(ctx["out"], "vae"), ctx["storage_options"])
    with fs.open(f"{vae_dir}/vae.safetensors", "rb") as f:
        return load(f.read())


def _run_diffusion(ctx: dict, vae_info: dict) -> str:
    from synthgen.model.bundle import save_bundle
    from synthgen.model.unet import UNet1D, UNetConfig
    from synthgen.model.vae import VAE, VAEConfig
    from synthgen.conditions.spec import Condition
    from synthgen.model.bundle import Bundle
    from synthgen.pipeline import ECGPipeline
    from synthgen.train.diffusion_stage import choose_eps_scale, diffusion_worker

    tc: TrainConfig = ctx["tc"]
    bundle_url = join(ctx["out"], "bundle")
    cache = _fill_embedding_cache(ctx)
    vae_state = _load_vae_state(ctx)
    started = time.time()
    config = {"train": tc.to_dict(), "vae_model": vae_info["vae_model"], "vae_state": vae_state,
              "latent_scale": vae_info["latent_scale"], "unet_model": ctx["unet_model"],
              "embedder": ctx["embedder"].name, "cache": cache, "storage_options": ctx["storage_options"],
              "patient_stats": ctx["stats"].to_dict(),
              "check_conditions": check_conditions(ctx["data"], tc.sample_check_n, ctx["storage_options"])}
    trainer = _trainer(diffusion_worker, config, "diffusion", ctx["out"], ctx["workers"], ctx["gpu"],
                       ctx["datasets"], ctx["storage_options"])
    state = _final_state(trainer.fit())
    seconds = round(time.time() - started, 1)
    vae = VAE(VAEConfig(**vae_info["vae_model"]))
    vae.load_state_dict(vae_state)
    unet = UNet1D(UNetConfig(**ctx["unet_model"]))
    unet.load_state_dict(state["best"])
    progress = state["progress"]
    training = {
        "preset": tc.preset, "config": tc.to_dict(), "data": ctx["data"], "dataset": ctx["dataset_info"],
        "vae": {k: v for k, v in vae_info.items() if k != "vae_model"},
        "diffusion": {"best_sample_score": progress["best_val"], "best_epoch": progress["best_epoch"] + 1,
                      "epochs": tc.diffusion.epochs, "steps": progress["global_step"],
                      "resumed_at_steps": progress["resumed_at"], "ranks": progress["ranks"], "seconds": seconds},
        "workers": ctx["workers"], "gpu": ctx["gpu"], "torch": torch.__version__,
    }
    bundle_config = {
        "vae": vae_info["vae_model"], "unet": ctx["unet_model"], "latent_scale": vae_info["latent_scale"],
        "embedder": {"name": ctx["embedder"].name, "dim": ctx["embedder"].dim},
        "patient_stats": ctx["stats"].to_dict(),
        "noise": tc.noise(),
        "data_fingerprint": ctx["dataset_info"].get("fingerprint"), "synthgen_version": __version__,
        "training": training,
    }
    pipeline = ECGPipeline(Bundle(vae, unet, bundle_config, "training", ""), embedder=ctx["embedder"])
    bundle_config["sampling"] = choose_eps_scale(pipeline, [Condition(**c) for c in config["check_conditions"]],
                                                 tc.eps_scale_samplers, tc.eps_scale_grid, tc.sample_check_guidance)
    save_bundle(bundle_url, vae, unet, bundle_config, model_card(bundle_config, ctx["command"]),
                storage_options=ctx["storage_options"])
    print(f"[diffusion] done: best sample score {progress['best_val']:.5f} at epoch {progress['best_epoch'] + 1}, "
          f"{seconds:.0f} s → {bundle_url}", flush=True)
    return bundle_url


def check_conditions(data: str, n: int, storage_options: dict | None = None) -> list[dict]:
    """``n`` validation conditions spread evenly over the heart-rate range (as Condition fields), for the
    sample checks that choose the kept diffusion weights."""
    import numpy as np

    table = read_shards(data, split="val", columns=["reports", "age", "sex", "hr"], storage_options=storage_options)
    rows = sorted(table.to_pylist(), key=lambda r: (r["hr"] is None, r["hr"] or 0.0))
    picks = np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int))
    return [{"reports": tuple(rows[i]["reports"]), "age": rows[i]["age"], "sex": rows[i]["sex"],
             "hr": rows[i]["hr"]} for i in picks]


def _fill_embedding_cache(ctx: dict) -> str:
    """Embed every training/validation prompt once on the driver into the run's cache ``OUT/embeddings``, which
    the workers read (on a cluster OUT is shared storage; the driver's local cache is not); returns its URL."""
    from synthgen.conditions.prompts import ordered_prompt

    table = read_shards(ctx["data"], columns=["split", "reports"], storage_options=ctx["storage_options"])
    prompts = sorted({ordered_prompt(r) for r, s in zip(table["reports"].to_pylist(), table["split"].to_pylist())
                      if s in ("train", "val")})
    print(f"[diffusion] embedding {len(prompts)} unique report prompts with {ctx['embedder'].name}", flush=True)
    shared = join(ctx["out"], "embeddings")
    CachedEmbedder(ctx["embedder"], shared, ctx["storage_options"]).embed(prompts)
    return shared


def model_card(config: dict, command: str) -> str:
    """The human-readable card shipped with every bundle: data, steps, time, validation figures."""
    t = config["training"]
    counts = t["dataset"].get("splits", {})
    return f"""# synthgen model card

- Package: synthgen {config['synthgen_version']}, torch {t['torch']}
- Preset: `{t['preset']}`; workers: {t['workers']}, GPU: {t['gpu']}
- Text embedder: `{config['embedder']['name']}` ({config['embedder']['dim']}-d)
- Training data: `{t['data']}` (fingerprint `{config['data_fingerprint']}`); split sizes: {counts}
- Latent scale (fitted on training data): {config['latent_scale']:.5f}
- Patient normalisation: {config['patient_stats']}

## Stage 1: VAE (12×1024 → 4×128)
- Epochs: {t['vae']['epochs']}, steps: {t['vae']['steps']}, wall time: {t['vae']['seconds']} s
- Best validation loss (MSE + λ·KL on the validation split): {t['vae']['best_val_loss']:.5f} at epoch {t['vae']['best_epoch']}

## Stage 2: latent diffusion (DDPM, T={config['noise']['T']}, linear β {config['noise']['beta_start']}…{config['noise']['beta_end']}, {config['noise']['prediction_type']}{', zero terminal SNR' if config['noise'].get('zero_terminal_snr') else ''}, EMA)
- Epochs: {t['diffusion']['epochs']}, steps: {t['diffusion']['steps']}, wall time: {t['diffusion']['seconds']} s
- Kept weights (EMA, with warm-up): epoch {t['diffusion']['best_epoch']}, the lowest sample score {t['diffusion']['best_sample_score']:.3f} (HR MAE in bpm + 100 × share of near-flat or HR-unmeasurable ECGs, {config['training']['config']['sample_check_n']} validation conditions, samplers {config['training']['config']['sample_check_samplers']}, guidance {config['training']['config']['sample_check_guidance']})
- Epsilon Scaling (Ning et al. 2024), chosen on the same conditions and applied by the pipeline: {config.get('sampling', {}).get('eps_scale', 'none')} (sample score per factor: {config.get('sampling', {}).get('scores', {})})

## Reproduce
```
{command}
```

## Intended use and limits
Synthetic ECGs for data augmentation, method research and teaching; not for diagnosis. Trained on
{counts.get('train', 'an unknown number of')} training records; docs/benchmarks.md says how close its output
is to real ECGs.
"""


def train(stage: str, data: str, out: str, *, preset: str = "small", workers: int = 1, gpu: bool | None = None,
          embedder: str = "local", cache: str | None = None, seed: int = 0,
          storage_options: dict | None = None, command: str = "") -> str:
    """Train `stage` ("vae", "diffusion" or "all") on prepared shards; returns the URL of what it exported.

    Rerunning the same command resumes a killed run from its last checkpoint and skips finished stages.
    gpu=None: one GPU per worker if the cluster has or can add GPUs (synthgen.cluster.gpu_budget).
    """
    if stage not in STAGES:
        raise InputError(f"stage: expected one of {STAGES}, got {stage!r}")
    dataset_info = read_summary(data, storage_options)
    if dataset_info is None:
        raise InputError(f"--data {data}: no {SUMMARY} there; expected the output of `synthgen prepare`")
    tc = get_preset(preset, seed=seed)
    fs_out, out_path = resolve(out, storage_options)
    done = join(out, "vae") if stage == "vae" else join(out, "bundle")
    if fs_out.exists(f"{out_path}/{'vae/vae.json' if stage == 'vae' else 'bundle/config.json'}"):
        print(f"[{stage}] already trained: {done} (delete it to retrain)", flush=True)
        return done
    if stage == "diffusion" and not fs_out.exists(f"{out_path}/vae/vae.json"):
        raise InputError(f"--out {out}: no trained VAE at {join(out, 'vae')}; run `synthgen train vae` first")
    check_writable(out, storage_options)  # before Ray starts
    emb = get_embedder(embedder, cache=cache, storage_options=storage_options)
    vae_model, unet_model = _model_configs(tc, emb.dim)
    ages_hrs = read_shards(data, split="train", columns=["age", "hr"], storage_options=storage_options)
    stats = PatientStats.fit(ages_hrs["age"].to_numpy(zero_copy_only=False),
                             ages_hrs["hr"].to_numpy(zero_copy_only=False))
    with ray_session(worker_output=True) as ray:  # the workers print the epoch lines
        from ray.data import DataContext

        from synthgen.train.datasets import split_dataset

        DataContext.get_current().enable_progress_bars = False  # the epoch lines are the progress
        gpu = gpu_budget(ray, gpu) > 0

        datasets = {s: split_dataset(data, s, stats, storage_options) for s in ("train", "val")}
        ctx = {"tc": tc, "out": out, "data": data, "workers": workers, "gpu": gpu, "datasets": datasets,
               "storage_options": storage_options, "vae_model": vae_model, "unet_model": unet_model,
               "embedder": emb, "stats": stats,
               "dataset_info": dataset_info,
               "command": command or f"synthgen train {stage} --data {data} --out {out} --preset {preset}"}
        if stage in ("vae", "all"):
            vae_info = _run_vae(ctx)
            if stage == "vae":
                return join(out, "vae")
        else:
            vae_info = read_json(fs_out, f"{out_path}/vae/vae.json")
        return _run_diffusion(ctx, vae_info)
