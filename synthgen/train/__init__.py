"""Training shards → model bundle: presets, the Ray Train stages (VAE, diffusion) and their driver."""
