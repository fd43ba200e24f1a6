"""The latent diffusion model: a VAE (12x1024 ECG <-> 4x128 latent), a cross-attention U-Net noise
predictor, diffusers schedulers pinned to the training noise schedule, and the on-disk bundle format.

Each module is importable on its own (no heavy imports here): ``synthgen.model.vae``, ``.unet``,
``.schedulers``, ``.bundle``. See docs/model.md.
"""
