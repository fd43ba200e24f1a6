"""A classical peer: an ECGSYN-like simulator (McSharry et al. 2003, simplified) driven by the requested HR.

Own implementation, not neurokit2 (which pins pandas < 3). Each beat is a sum of Gaussian waves (P, Q, R, S,
T) placed around the R peak on an RR series with respiratory sinus arrhythmia and jitter; every wave has a
3-D heart dipole, and the 12 leads are projections of that dipole (frontal hexaxial angles for the limb
leads, horizontal-plane angles for V1–V6), so Einthoven's laws hold exactly. It knows nothing of reports:
it is the floor a conditional model must beat on CLIP scores, and a physiology/HR reference otherwise.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.signal import resample_poly

from synthgen.ecg import FS, N_LEADS, N_SAMPLES
from synthgen.io.paths import StorageOptions, join, resolve, write_bytes_atomic

UPSAMPLE = 5  # synthesise at 512 Hz (10 ms waves would alias at 102.4 Hz), then decimate
# wave: (offset from R in s, width in s, dipole (x: left, y: feet, z: anterior) in mV)
WAVES = {
    "P": (-0.20, 0.025, (0.10, 0.12, 0.03)),
    "Q": (-0.03, 0.010, (-0.08, -0.05, 0.10)),
    "R": (0.00, 0.012, (0.90, 1.00, -0.40)),
    "S": (0.03, 0.012, (-0.20, -0.15, 0.35)),
    "T": (0.30, 0.050, (0.20, 0.25, 0.10)),  # offset scaled by sqrt(RR) (QT shortens with rate)
}
PRECORDIAL_DEG = (120.0, 95.0, 70.0, 45.0, 20.0, 0.0)  # V1..V6 in the horizontal plane, from the left


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A small random rotation: individual variation of the heart's axis."""
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def simulate_ecg(hr: float, seed: int, *, n: int = N_SAMPLES, fs: float = FS) -> np.ndarray:
    """(12, n) float32 mV ECG at ``fs`` Hz with mean rate ``hr`` bpm; the seed sets axis, amplitudes, noise."""
    rng = np.random.default_rng(seed)
    fs_hi, n_hi = fs * UPSAMPLE, n * UPSAMPLE
    t = np.arange(n_hi) / fs_hi
    rr_mean = 60.0 / hr
    peaks, at = [], rng.uniform(0.1, 0.3) * rr_mean - rr_mean
    while at < t[-1] + rr_mean:
        rr = rr_mean * (1 + 0.03 * np.sin(2 * np.pi * 0.25 * at) + 0.01 * rng.standard_normal())
        at += rr
        peaks.append((at, rr))
    rot, gain = _rotation(rng, 20.0), rng.uniform(0.7, 1.3)
    dipole = np.zeros((3, n_hi))
    for r_at, rr in peaks:
        for name, (offset, width, vec) in WAVES.items():
            centre = r_at + (offset * np.sqrt(rr) if name == "T" else offset)
            dipole += np.outer(rot @ np.asarray(vec), np.exp(-0.5 * ((t - centre) / width) ** 2))
    dipole *= gain
    x, y, z = dipole
    lead_i, lead_ii = x, 0.5 * x + np.sqrt(3) / 2 * y  # hexaxial 0° and 60°
    wander = 0.05 * np.sin(2 * np.pi * rng.uniform(0.15, 0.3) * t + rng.uniform(0, 2 * np.pi))
    lead_i, lead_ii = lead_i + wander, lead_ii + 0.8 * wander
    limb = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    chest = [x * np.cos(np.deg2rad(d)) + z * np.sin(np.deg2rad(d)) for d in PRECORDIAL_DEG]
    sig = resample_poly(np.stack(limb + chest), 1, UPSAMPLE, axis=1)
    sig += 0.01 * rng.standard_normal(sig.shape)
    # limb leads III, aVR, aVL, aVF rebuilt from the noisy I and II: keeps Einthoven exact
    sig[2], sig[3], sig[4], sig[5] = sig[1] - sig[0], -(sig[0] + sig[1]) / 2, sig[0] - sig[1] / 2, sig[1] - sig[0] / 2
    return sig.astype(np.float32)


def simulate_like(generated: str, out: str, *, seed: int = 0, default_hr: float = 75.0,
                  storage_options: StorageOptions = None) -> int:
    """Simulate one ECG per row of a `synthgen generate` output (its requested HR, ``default_hr`` where none)
    into ``<out>/shards/part-00000.parquet`` with the same columns `evaluate` reads; returns the row count."""
    from synthgen.evaluate.run import read_generated

    table = read_generated(generated, storage_options)
    hrs = [h if h is not None else default_hr for h in table.column("hr").to_pylist()]
    sig = np.stack([simulate_ecg(h, seed * 1_000_003 + i) for i, h in enumerate(hrs)]) if hrs else \
        np.zeros((0, N_LEADS, N_SAMPLES), np.float32)
    signal = pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1), pa.float32()), N_SAMPLES), N_LEADS)
    peer = table.select(["ecg_id", "reports", "hr", "label"]).append_column("signal", signal)
    fs, root = resolve(out, storage_options)
    buf = pa.BufferOutputStream()
    pq.write_table(peer, buf, compression="zstd")
    write_bytes_atomic(fs, join(root, "shards", "part-00000.parquet"), buf.getvalue().to_pybytes())
    return peer.num_rows
