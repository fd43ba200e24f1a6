"""Evaluation metrics on feature sets and signals (numpy/torch only, no Ray, no I/O).

Distances are always computed in row chunks against the full other set, so 40,000 × 40,000 comparisons
need a few hundred MB, never the full distance matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from scipy import linalg

from synthgen.data.plausibility import Plausibility, check
from synthgen.ecg import FS, LEADS
from synthgen.io.shards import LABELS

CHUNK = 1024  # rows per distance block: 1024 × 40,000 float32 = 160 MB


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, d): lower means closer."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise as in the reference FID code
        eps = np.eye(len(mu_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * np.real(covmean))
    return float(max(value, 0.0))


def _blocks(x: torch.Tensor, y: torch.Tensor, chunk: int):
    """Yield (start, squared-distance block) for row chunks of x against all of y."""
    y_sq = (y * y).sum(1)
    for i in range(0, len(x), chunk):
        xc = x[i:i + chunk]
        d = (xc * xc).sum(1, keepdim=True) + y_sq[None, :] - 2.0 * xc @ y.T
        yield i, d.clamp_min_(0.0)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, np.float32))


def knn_radii(x: np.ndarray, k: int = 3, chunk: int = CHUNK) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (self excluded): the radius of its manifold ball."""
    xt = _t(x)
    if len(xt) <= k:
        raise ValueError(f"need more than k={k} points, got {len(xt)}")
    out = torch.empty(len(xt))
    for i, d in _blocks(xt, xt, chunk):
        out[i:i + len(d)] = d.topk(k + 1, dim=1, largest=False).values[:, k]  # index 0 is the point itself
    return out.sqrt().numpy()


def nearest_distance(x: np.ndarray, ref: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Distance from each row of x to its nearest row of ref."""
    xt, rt = _t(x), _t(ref)
    out = torch.empty(len(xt))
    for i, d in _blocks(xt, rt, chunk):
        out[i:i + len(d)] = d.min(dim=1).values
    return out.sqrt().numpy()


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> float:
    """Share of points inside at least one ball (centre, radius)."""
    pt, ct, r2 = _t(points), _t(centres), torch.as_tensor(radii, dtype=torch.float32) ** 2
    inside = 0
    for _, d in _blocks(pt, ct, chunk):
        inside += int((d <= r2[None, :]).any(dim=1).sum())
    return inside / len(pt)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = CHUNK) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019): precision = share of generated points inside the
    real manifold (union of k-NN balls), recall = share of real points inside the generated manifold; F1."""
    p = _coverage(fake, real, knn_radii(real, k, chunk), chunk)
    r = _coverage(real, fake, knn_radii(fake, k, chunk), chunk)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r > 0 else 0.0}


def pr_by_label(real: np.ndarray, real_masks: dict[str, np.ndarray], fake: np.ndarray,
                fake_masks: dict[str, np.ndarray], k: int = 3) -> dict[str, dict[str, float | int]]:
    """Precision/recall/F1 within each label (the paper's Fig. 2E): generated rows of a label against real rows
    of the same label. NaN where either side has k or fewer rows (no k-th neighbour)."""
    out: dict[str, dict[str, float | int]] = {}
    for name, fm in fake_masks.items():
        rm = real_masks[name]
        pr = (precision_recall(real[rm], fake[fm], k) if fm.sum() > k and rm.sum() > k
              else {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")})
        out[name] = {**pr, "n": int(fm.sum())}
    return out


def check_plausibility(x: np.ndarray, requested_hr: np.ndarray | None = None, fs: float = FS,
                       workers: int = 1) -> list[Plausibility]:
    """The plausibility check (synthgen.data.plausibility) of each ECG (N, 12, T), which also measures its heart
    rate; ``requested_hr`` (N,) with NaN where none was asked.

    ``workers > 1`` spreads ECGs over processes (tens of ms each, so 40,000 take minutes); they start by
    forkserver, never by forking a parent that may hold torch's thread pool or a Ray connection.
    """
    sigs = list(np.asarray(x, np.float32))
    hrs = [None] * len(sigs) if requested_hr is None else [None if h != h else float(h) for h in requested_hr]
    if workers > 1 and len(sigs) > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            return list(pool.map(check, sigs, hrs, [fs] * len(sigs), chunksize=16))
    return [check(s, h, fs) for s, h in zip(sigs, hrs)]


def measure_hr(x: np.ndarray, fs: float = FS, workers: int = 1) -> np.ndarray:
    """Heart rate (bpm) measured on each ECG (N, 12, T) by the project's QRS detection; NaN where none."""
    return measured_rates(check_plausibility(x, None, fs, workers))


def measured_rates(verdicts: Sequence[Plausibility]) -> np.ndarray:
    """The heart rates the plausibility checks measured, NaN where none."""
    return np.array([np.nan if v.measured_hr is None else v.measured_hr for v in verdicts], np.float64)


def hr_error(requested: np.ndarray, measured: np.ndarray) -> dict[str, float | int]:
    """MAE between requested and measured HR over the rows where both exist, and the unmeasured share."""
    requested, measured = np.asarray(requested, np.float64), np.asarray(measured, np.float64)
    asked = np.isfinite(requested)
    both = asked & np.isfinite(measured)
    return {"mae": float(np.abs(requested[both] - measured[both]).mean()) if both.any() else float("nan"),
            "n_requested": int(asked.sum()), "n_measured": int(both.sum()),
            "unmeasured_share": float(1 - both.sum() / asked.sum()) if asked.any() else float("nan")}


def clip_scores(ecg_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Per-row cosine between an ECG's and its report's joint-space embeddings."""
    a = ecg_emb / np.linalg.norm(ecg_emb, axis=1, keepdims=True).clip(1e-12)
    b = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True).clip(1e-12)
    return np.sum(a * b, axis=1)


def grouped_mean(values: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, dict[str, float | int]]:
    """Mean of ``values`` over each boolean mask (groups with no row give NaN)."""
    return {name: {"mean": float(values[m].mean()) if m.any() else float("nan"), "n": int(m.sum())}
            for name, m in groups.items()}


def einthoven(x: np.ndarray) -> dict[str, float]:
    """Limb-lead consistency in mV: |III − (II − I)| and |aVR + aVL + aVF| (both 0 for a real 12-lead
    recording, up to noise and filtering), averaged over samples and ECGs, plus lead II's mean |amplitude|
    as their scale."""
    i, ii, iii, avr, avl, avf = (x[:, LEADS.index(n)].astype(np.float64) for n in LEADS[:6])
    return {"iii_residual_mv": float(np.abs(iii - (ii - i)).mean()),
            "augmented_sum_mv": float(np.abs(avr + avl + avf).mean()),
            "lead_ii_mean_abs_mv": float(np.abs(ii).mean())}


def memorisation(train: np.ndarray, generated: np.ndarray, heldout: np.ndarray,
                 quantile: float = 0.05) -> dict[str, float]:
    """Nearest-training-ECG distances of generated vs held-out real ECGs (encoder features).

    A model that copies its training set puts generated ECGs closer to training ECGs than unseen real ones
    are: ``close_share`` is the share of generated ECGs nearer than the held-out ``quantile`` (≈ quantile
    when there is no copying, → 1 for copies).
    """
    d_gen, d_held = nearest_distance(generated, train), nearest_distance(heldout, train)
    threshold = float(np.quantile(d_held, quantile))
    return {"generated_median": float(np.median(d_gen)), "heldout_median": float(np.median(d_held)),
            "ratio": float(np.median(d_gen) / max(np.median(d_held), 1e-12)),
            "threshold": threshold, "quantile": quantile, "close_share": float(np.mean(d_gen < threshold))}


def label_masks(reports: Sequence[Sequence[str]], labels: Callable[[Sequence[str]], dict[str, bool]],
                statements: Sequence[str]) -> dict[str, np.ndarray]:
    """Boolean masks: af / pvc / abnormal / normal from ``labels(reports)``, and one per report statement."""
    rows = [labels(r or []) for r in reports]
    return masks_from_flags({name: np.array([row[name] for row in rows], bool) for name in LABELS},
                            reports, statements)


def masks_from_flags(flags: dict[str, np.ndarray], reports: Sequence[Sequence[str] | None],
                     statements: Sequence[str]) -> dict[str, np.ndarray]:
    """af / pvc / abnormal ``flags`` plus normal (= not abnormal) and one mask per report statement."""
    return {**flags, "normal": ~flags["abnormal"],
            **{s: np.array([s in (r or []) for r in reports], bool) for s in statements}}
