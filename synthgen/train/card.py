"""The model card (MODEL_CARD.md) written into every bundle `synthgen train` exports."""

from __future__ import annotations


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
- Epsilon Scaling (Ning et al. 2024), chosen on the same conditions and applied by the pipeline: {config.get('sampling', {}).get('eps_scale', 'none')} (sample score per setting: {config.get('sampling', {}).get('scores', {})})

## Reproduce
```
{command}
```

## Intended use and limits
Synthetic ECGs for data augmentation, method research and teaching; not for diagnosis. Trained on
{counts.get('train', 'an unknown number of')} training records; docs/benchmarks.md says how close its output
is to real ECGs.
"""
