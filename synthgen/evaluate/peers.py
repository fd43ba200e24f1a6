"""Peers: other generators run on the same conditions as a `synthgen generate` output, scored the same way.

* ``ecgsyn``: an ECGSYN-like simulator (McSharry et al. 2003, simplified) driven by the requested HR. Own
  implementation, not neurokit2 (which pins pandas < 3). Each beat is a sum of Gaussian waves (P, Q, R, S, T)
  placed around the R peak on an RR series with respiratory sinus arrhythmia and jitter; every wave has a 3-D
  heart dipole, and the 12 leads are projections of that dipole (frontal hexaxial angles for the limb leads,
  horizontal-plane angles for V1–V6), so Einthoven's laws hold exactly.
* ``deepfake-ecg``: Pulse2Pulse (Thambawita et al. 2021) from the `deepfake-ecg` wheel, whose weights ship
  inside it: unconditional, 8 leads (I, II, V1–V6) for 10 s at 500 Hz.

Both know nothing of reports: they are the floor a conditional model must beat on CLIP scores, and
physiology/HR references otherwise. A peer is a function ``(hr, seed) → (12, 1024) float32 mV``.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version
from importlib.resources import files
from typing import Any, Callable, Union

import numpy as np
import pyarrow as pa
from scipy.signal import resample_poly

from synthgen import __version__
from synthgen.data.preprocess import resample_1024
from synthgen.ecg import FS, LEADS, N_LEADS, N_SAMPLES, derive_limb_leads
from synthgen.errors import InputError
from synthgen.io.generated import read_generated, write_parts
from synthgen.io.paths import StorageOptions

PeerFn = Callable[[float, int], np.ndarray]  # (requested HR in bpm, seed) → (12, 1024) float32 mV
PEERS = ("ecgsyn", "deepfake-ecg")
ROWS_PER_PART = 4096  # peer sets are written in parts of this many ECGs (~200 MB of float32 each)

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
    return derive_limb_leads(sig).astype(np.float32)


class DeepfakeECG:
    """deepfake-ecg's Pulse2Pulse generator, loaded once; ``peer(hr, seed)`` → (12, 1024) float32 mV.

    Does what the package's own ``generate()`` does (uniform(−1, 1) noise of shape (1, 8, 5000), output × 6000
    truncated to integer µV, leads I, II, V1–V6 at 500 Hz) without its file writing and global RNG: the noise
    comes from a ``torch.Generator`` seeded per ECG. Then µV → mV, 5000 → 1024 samples (as `prepare`
    resamples), III/aVR/aVL/aVF derived from I and II. Unconditional: ``hr`` is ignored.
    """

    name = "deepfake-ecg"
    SOURCE_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    SOURCE_SAMPLES = 5000  # 10 s at 500 Hz

    def __init__(self, device: str = "cpu") -> None:
        import torch

        try:
            from deepfakeecg import Generator
        except ImportError as e:
            raise InputError("the deepfake-ecg peer needs the `deepfake-ecg` package (pip install deepfake-ecg)") \
                from e
        self.version = version("deepfake-ecg")
        self.device = torch.device(device)
        with warnings.catch_warnings():  # its __init__ calls the deprecated nn.init.kaiming_normal
            warnings.simplefilter("ignore")
            model = Generator()
        weights = files("deepfakeecg") / "checkpoints" / "g_stat.pt"
        with weights.open("rb") as f:
            model.load_state_dict(torch.load(f, map_location="cpu", weights_only=True)["stat_dict"])
        self.model = model.to(self.device).eval()
        self._rows = [LEADS.index(lead) for lead in self.SOURCE_LEADS]

    def noise(self, seeds: list[int]):
        """The generator's input for each seed, (len(seeds), 8, 5000) uniform(−1, 1), a torch.Generator each."""
        import torch

        return torch.cat([torch.empty(1, len(self.SOURCE_LEADS), self.SOURCE_SAMPLES).uniform_(
            -1, 1, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    def raw_batch(self, seeds: list[int]) -> np.ndarray:
        """(len(seeds), 8, 5000) float64: the integer µV (I, II, V1–V6 at 500 Hz) its ``generate()`` writes, in
        one forward pass (batching changes outputs by ~1e-5, so ``raw`` runs one seed per pass)."""
        import torch

        with torch.inference_mode():
            out = self.model(self.noise(seeds).to(self.device)).cpu().double().numpy()
        return np.trunc(out * 6000)

    def raw(self, seed: int) -> np.ndarray:
        """(8, 5000) float64 µV for one seed (``raw_batch`` of one)."""
        return self.raw_batch([seed])[0]

    def _twelve_leads(self, raw: np.ndarray) -> np.ndarray:
        sig = np.zeros((N_LEADS, N_SAMPLES), np.float32)
        sig[self._rows] = resample_1024(raw / 1000.0)
        return derive_limb_leads(sig)

    def batch(self, seeds: list[int]) -> np.ndarray:
        """(len(seeds), 12, 1024) float32 mV in one forward pass: the batched path a throughput benchmark times."""
        return np.stack([self._twelve_leads(r) for r in self.raw_batch(seeds)])

    def __call__(self, hr: float, seed: int) -> np.ndarray:
        return self._twelve_leads(self.raw(seed))


def get_peer(name: str) -> tuple[PeerFn, dict[str, Any]]:
    """A peer by name (one of ``PEERS``) and where it comes from: {peer, package, version, source}."""
    if name == "ecgsyn":
        return simulate_ecg, {"peer": name, "package": "synthgen", "version": __version__,
                              "source": "synthgen.evaluate.peers.simulate_ecg (ECGSYN-like, driven by requested HR)"}
    if name == "deepfake-ecg":
        model = DeepfakeECG()
        return model, {"peer": name, "package": "deepfake-ecg", "version": model.version,
                       "source": "deepfakeecg Pulse2Pulse, checkpoints/g_stat.pt (unconditional)"}
    raise InputError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")


def peer_signals(hrs: list, peer: PeerFn, *, seed: int = 0, default_hr: float = 75.0) -> np.ndarray:
    """(len(hrs), 12, 1024) float32: ECG i from ``peer(hrs[i] or default_hr, seed · 1000003 + i)``."""
    if not hrs:
        return np.zeros((0, N_LEADS, N_SAMPLES), np.float32)
    return np.stack([peer(default_hr if h is None or not np.isfinite(h) else h, seed * 1_000_003 + i)
                     for i, h in enumerate(hrs)])


def write_peer_set(table: pa.Table, sig: np.ndarray, out: str, storage_options: StorageOptions = None) -> int:
    """``table``'s ecg_id, reports, hr, label with ``sig`` as signal → ``<out>/shards/part-*.parquet``, in the
    layout `evaluate` and `plot` read; returns the row count."""
    return write_parts(table.select(["ecg_id", "reports", "hr", "label"]), sig, out, ROWS_PER_PART, storage_options)


def peer_like(generated: str, out: str, *, peer: Union[str, PeerFn] = "ecgsyn", seed: int = 0,
              default_hr: float = 75.0, storage_options: StorageOptions = None) -> int:
    """One ``peer`` ECG (a name from ``PEERS`` or a function) per row of a `synthgen generate` output, at its
    requested HR (``default_hr`` where none), into ``<out>/shards/part-*.parquet`` with the same columns
    `evaluate` reads; returns the row count."""
    fn = get_peer(peer)[0] if isinstance(peer, str) else peer
    table = read_generated(generated, storage_options)
    sig = peer_signals(table.column("hr").to_pylist(), fn, seed=seed, default_hr=default_hr)
    return write_peer_set(table, sig, out, storage_options)


def simulate_like(generated: str, out: str, *, seed: int = 0, default_hr: float = 75.0,
                  storage_options: StorageOptions = None) -> int:
    """`peer_like` with the ECGSYN-like simulator."""
    return peer_like(generated, out, peer=simulate_ecg, seed=seed, default_hr=default_hr,
                     storage_options=storage_options)
