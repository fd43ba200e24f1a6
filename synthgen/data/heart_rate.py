"""Heart rate for each record: the source's own RR interval when valid, else QRS detection on the signal.

QRS detection runs at >= 500 Hz (slower records are upsampled first: XQRS at 100 Hz double-counts
beats on PTB-XL) and XQRS gets µV (on mV it sometimes finds no beat). Lead II first, then I, V5, V2; XQRS,
then GQRS. A detection counts only with >= 3 beats and a plausible rate (25–250 bpm, from the median RR).

Speed: wfdb's XQRS spends ~90 % of its time in ``wfdb.processing.peaks.find_local_peaks``, a Python loop over
every sample (~40 ms per 10 s lead at 512 Hz). ``local_peaks`` returns the same peaks with one sliding-window
maximum (tested equal to wfdb's on real and random signals, ties included), and XQRS uses it while
``hr_from_signal`` runs: the same heart rates, and the whole plausibility check 48 → 4.8 ms per ECG on one core
of the 2-core machine (docs/benchmarks.md, "generate"). That matters because every generated ECG is checked
(synthgen.data.plausibility), and at 1–2 sampling steps the check would otherwise cost more than the sampling.
The filters that are the same for every ECG are designed once (the upsampling FIR, XQRS's filter gains, its
band-pass Butterworth and ``filtfilt``'s initial states), and XQRS's ``normalize`` skips ``np.linalg.norm``'s
argument handling: bit-identical heart rates, and the check ~4.4 → ~3.6 ms per ECG, then 2.90 → 1.88 (medians,
A/B alternated; docs/benchmarks.md, "End to end").
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import numpy as np
import scipy.signal
from scipy.ndimage import maximum_filter1d
from scipy.signal import _signaltools, firwin, resample_poly
from wfdb import processing
from wfdb.processing import basic as wfdb_basic
from wfdb.processing import qrs as wfdb_qrs

from synthgen.ecg import LEADS

RR_MS_RANGE = (300.0, 1500.0)  # 40–200 bpm: a source RR outside it is treated as unmeasured
HR_RANGE = (25.0, 250.0)       # a detected rate outside it is treated as a failed detection
DETECT_FS = 500
_DETECT_LEADS = tuple(LEADS.index(name) for name in ("II", "I", "V5", "V2"))


def hr_from_rr(rr_ms: float | None) -> float | None:
    """60000 / RR (ms) when RR is a valid number in ``RR_MS_RANGE``, else None."""
    if rr_ms is None or not np.isfinite(rr_ms) or not RR_MS_RANGE[0] <= rr_ms <= RR_MS_RANGE[1]:
        return None
    return 60000.0 / float(rr_ms)


def _rate(beats: np.ndarray, fs: float) -> float | None:
    """Median-RR rate of detected beat indices, or None if too few beats or an implausible rate."""
    if len(beats) < 3:
        return None
    hr = 60.0 * fs / float(np.median(np.diff(beats)))
    return hr if HR_RANGE[0] <= hr <= HR_RANGE[1] else None


def local_peaks(sig: np.ndarray, radius: int) -> np.ndarray:
    """``wfdb.processing.peaks.find_local_peaks(sig, radius)``, vectorised: sample i is a candidate when it equals
    the maximum of ``sig[i - radius : i + radius]`` (clipped at the ends, as wfdb's slices are); scanning left to
    right, a candidate is a peak unless it lies within ``radius`` samples after the previous peak — wfdb's loop
    jumps ``radius`` samples after each peak. Empty for a constant signal (wfdb's "flat mountain" case)."""
    sig = np.asarray(sig)
    if np.min(sig) == np.max(sig):
        return np.empty(0)
    window_max = maximum_filter1d(sig.astype(np.float64), size=2 * radius, mode="constant", cval=-np.inf)
    peaks, next_allowed = [], 0
    for i in np.flatnonzero(sig == window_max):  # a few hundred candidates, not every sample
        if i >= next_allowed:
            peaks.append(int(i))
            next_allowed = i + radius
    return np.array(peaks)


@functools.lru_cache(maxsize=16)
def _filter_gain(b: bytes, a: bytes, f_gain: float, fs: float) -> float:
    return wfdb_basic.get_filter_gain(np.frombuffer(b), np.frombuffer(a), f_gain, fs)


def filter_gain(b: np.ndarray, a: np.ndarray, f_gain: float, fs: float) -> float:
    """``wfdb.processing.get_filter_gain`` (a ``freqz`` over 512 frequencies), memoised on the coefficients:
    XQRS asks for the same two gains for every 10 s lead at one rate."""
    return _filter_gain(np.asarray(b, np.float64).tobytes(), np.asarray(a, np.float64).tobytes(), float(f_gain),
                        float(fs))


def normalize(x: np.ndarray) -> np.ndarray:
    """``wfdb.processing.normalize`` (x / ‖x‖₂ of a 1-D vector) without ``np.linalg.norm``'s argument handling,
    which is most of its cost on XQRS's ~70 short segments per lead; the same ``sqrt(dot(x, x))``."""
    return x / np.sqrt(np.dot(x, x))


@functools.lru_cache(maxsize=16)
def _butter(order: int, band: tuple[float, ...], btype: str) -> tuple[np.ndarray, np.ndarray]:
    b, a = scipy.signal.butter(order, list(band), btype)
    b.flags.writeable = a.flags.writeable = False  # shared by every call
    return b, a


def butter(N: int, Wn: object, btype: str = "low", **kwargs: object) -> object:
    """``scipy.signal.butter``, designed once for XQRS's call (``butter(2, [lo, hi], "pass")``: the same 5–20 Hz
    band-pass for every lead at one rate; its zpk → tf conversion is ~15 % of the check's time); any other call
    goes to scipy as it is."""
    if kwargs or np.ndim(Wn) != 1:
        return scipy.signal.butter(N, Wn, btype, **kwargs)
    return _butter(int(N), tuple(float(f) for f in Wn), str(btype))


_ORIGINAL_LFILTER_ZI = _signaltools.lfilter_zi  # scipy's, which _fast_xqrs replaces in its module


@functools.lru_cache(maxsize=16)
def _lfilter_zi(b: bytes, a: bytes) -> np.ndarray:
    zi = _ORIGINAL_LFILTER_ZI(np.frombuffer(b), np.frombuffer(a))
    zi.flags.writeable = False  # shared by every call
    return zi


def lfilter_zi(b: object, a: object) -> np.ndarray:
    """``scipy.signal.lfilter_zi`` memoised on the coefficients for 1-D float64 or integer ones (XQRS's: its
    band-pass and its 0.1 s Ricker wavelet over ``[1]``, whose 50 states make the solve ~10 % of the check, on
    every lead); any other input goes to scipy as it is (float32 stays float32, 2-D is refused)."""
    b, a = np.asarray(b), np.asarray(a)
    if not (b.ndim == a.ndim == 1 and all(d == np.float64 or d.kind in "iu" for d in (b.dtype, a.dtype))):
        return _ORIGINAL_LFILTER_ZI(b, a)
    return _lfilter_zi(b.astype(np.float64).tobytes(), a.astype(np.float64).tobytes())


class _Signal:
    """``scipy.signal`` with the memoised ``butter``: XQRS calls ``signal.butter`` and ``signal.filtfilt`` through
    its module's ``signal``, which this stands in for inside ``_fast_xqrs``."""

    butter = staticmethod(butter)

    def __getattr__(self, name: str) -> object:
        return getattr(scipy.signal, name)


@functools.lru_cache(maxsize=8)
def _upsampling_filter(up: int) -> np.ndarray:
    """The FIR filter ``resample_poly(x, up, 1)`` designs on every call (its defaults: Kaiser β 5, 20·up + 1 taps;
    it casts the taps to x's dtype, and so must its caller)."""
    taps = firwin(20 * up + 1, 1.0 / up, window=("kaiser", 5.0))
    taps.flags.writeable = False  # shared by every call
    return taps


def upsample(x: np.ndarray, up: int) -> np.ndarray:
    """``resample_poly(x, up, 1)`` with its filter designed once (the same output to the last bit)."""
    taps = _upsampling_filter(up)
    if np.issubdtype(x.dtype, np.floating):  # resample_poly casts its own taps to a float x's dtype
        taps = taps.astype(x.dtype)
    return resample_poly(x, up, 1, window=taps)


_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def _fast_xqrs() -> Iterator[None]:
    """XQRS (which looks these up in its module) uses ``local_peaks``, ``filter_gain``, ``normalize`` and the
    memoised ``butter`` inside this block, and scipy's ``filtfilt`` (which looks it up in its module) the memoised
    ``lfilter_zi``: the same detections, a fraction of the Python overhead. One thread at a time (a lock): the
    patches are module attributes, and interleaved blocks would restore each other's."""
    patches = [(wfdb_qrs, {"find_local_peaks": local_peaks, "get_filter_gain": filter_gain, "normalize": normalize,
                           "signal": _Signal()}),
               (_signaltools, {"lfilter_zi": lfilter_zi})]
    with _PATCH_LOCK:
        original = [(module, {name: getattr(module, name) for name in names}) for module, names in patches]
        try:
            for module, names in patches:
                for name, fn in names.items():
                    setattr(module, name, fn)
            yield
        finally:
            for module, names in original:
                for name, fn in names.items():
                    setattr(module, name, fn)


def hr_from_signal(signal: np.ndarray, fs: float) -> float | None:
    """Beats per minute from a (12, n) canonical-order mV signal at ``fs`` Hz, or None if no lead works."""
    up = max(1, int(np.ceil(DETECT_FS / fs)))
    rate = fs * up
    with _fast_xqrs():
        for lead in _DETECT_LEADS:
            mv = signal[lead] if up == 1 else upsample(signal[lead], up)
            if not np.ptp(mv) > 0:
                continue
            for detect in (lambda: processing.xqrs_detect(mv * 1000.0, rate, verbose=False),  # XQRS in µV
                           lambda: processing.gqrs_detect(mv, rate)):  # GQRS's thresholds assume mV
                hr = _rate(np.asarray(detect()), rate)
                if hr is not None:
                    return hr
    return None
