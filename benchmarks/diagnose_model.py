"""Diagnose a model bundle against real validation data: the figures behind docs/model.md's "what can go wrong".

    python benchmarks/diagnose_model.py --data shards [--model runs/x/bundle] [--n 256]

Prints, on the validation split:
- VAE: KL per latent channel (nats per dimension; a channel near 0 has collapsed: the decoder ignores it),
  reconstruction R² overall and per lead (the ceiling every generated ECG inherits), latent RMS after scaling;
- U-Net: ‖ε̂‖/‖ε‖ and ε-MSE per timestep band, conditional, on real latents (≈ 1 is right; a shrunk ε̂ at
  high t is amplified ~1/sqrt(ᾱ_t) times in the x₀ estimate);
- the latent RMS that DDPM-100 and DPM-Solver++-20 end with (guidance 1 and the default), beside real latents.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from synthgen.conditions.patient import PatientStats
from synthgen.conditions.spec import Condition
from synthgen.ecg import LEADS
from synthgen.io.shards import read_shards, signals
from synthgen.pipeline import ECGPipeline


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    pipe = ECGPipeline.from_bundle(args.model)
    table = read_shards(args.data, split="val").slice(0, args.n)
    x = torch.from_numpy(signals(table))
    conds = [Condition(tuple(r["reports"]), r["age"], r["sex"], r["hr"])
             for r in table.select(["reports", "age", "sex", "hr"]).to_pylist()]

    mu, logvar = pipe.vae.encode(x)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    print("VAE KL per latent channel (nats/dim):", np.round(kl.mean((0, 2)).numpy(), 4).tolist())
    recon = pipe.vae.decode(mu)
    resid = ((recon - x) ** 2).sum((0, 2)) / ((x - x.mean(2, keepdim=True)) ** 2).sum((0, 2))
    r2 = 1 - ((recon - x) ** 2).sum() / ((x - x.mean(2, keepdim=True)) ** 2).sum()
    print(f"VAE reconstruction R² (posterior mean, val): {float(r2):.3f}; per lead:",
          {lead: round(1 - float(v), 3) for lead, v in zip(LEADS, resid)})
    z0 = mu * pipe.latent_scale
    print(f"real latents (scaled): RMS {float(z0.pow(2).mean().sqrt()):.3f}, per channel",
          np.round(z0.pow(2).mean((0, 2)).sqrt().numpy(), 3).tolist())

    from synthgen.model.schedulers import make_scheduler

    alphas = make_scheduler("ddpm", **pipe.noise).alphas_cumprod
    cond = pipe.encode_conditions(conds)
    for lo, hi in ((0, 250), (250, 500), (500, 750), (750, 1000)):
        t = torch.randint(lo, hi, (len(z0),))
        noise = torch.randn_like(z0)
        a = alphas[t][:, None, None]
        eps = pipe.unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, *cond)
        print(f"t in [{lo},{hi}): |eps_hat|/|eps| {float(eps.norm() / noise.norm()):.3f}  "
              f"eps-MSE {float(((eps - noise) ** 2).mean()):.4f}")

    k = min(32, len(conds))
    for sampler, steps in (("ddpm", 100), ("dpm++", 20)):
        for guidance in (1.0, 2.0):
            ecg = pipe(conds[:k], list(range(k)), sampler=sampler, steps=steps, guidance=guidance)
            z = pipe.vae.encode(torch.from_numpy(ecg))[0] * pipe.latent_scale
            ptp = np.median(np.ptp(ecg, axis=2), axis=1)
            print(f"{sampler}-{steps} g={guidance}: decoded-then-encoded latent RMS {float(z.pow(2).mean().sqrt()):.3f}"
                  f"; near-flat {int((ptp < 0.25).sum())}/{k}")
    stats: PatientStats = pipe.patient_stats
    print("patient stats:", stats)


if __name__ == "__main__":
    main()
