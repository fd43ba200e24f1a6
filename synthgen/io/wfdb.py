"""WFDB records (PhysioNet's .hea + .dat/.mat): the one reader and the one writer of ECGs in that format.

Every part of synthgen that reads a WFDB record (prepare's sources, ``plot``) calls ``read_wfdb``, so they
cannot disagree about which samples are which lead or in which unit. wfdb-python decodes the samples;
the header's signal names and units are decoded here, from the header's own bytes (UTF-8, else Latin-1),
because wfdb-python reads headers as ASCII and drops other bytes: ``µV`` would become ``V``.

Checks, each a ``WfdbRecordError`` with a reason code (the same codes as prepare's rejects):
``missing_record`` (no .hea or no signal file), ``unreadable_record`` (wfdb cannot parse it),
``unknown_leads`` (a canonical lead absent), ``duplicate_lead`` (two signals with one lead's name),
``unknown_units`` (a unit other than V/mV/µV/nV), ``implausible_amplitude`` (a unit that cannot be right).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import fsspec
import numpy as np

from synthgen.ecg import LEADS
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, is_local, join, resolve, write_bytes_atomic

# A unit string (lower case, spaces removed) → factor to mV. "µ" is U+00B5, "μ" U+03BC: both occur.
UNIT_TO_MV = {"v": 1e3, "volt": 1e3, "volts": 1e3, "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
              "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3, "nv": 1e-6}
# Plausible size of an ECG in mV, as the range between the 0.5th and 99.5th percentile of a lead's samples.
# On the 1,987 PTB-XL records and 199 CinC 2021 records here the median over leads is 0.12–6.4 mV and no
# lead exceeds 13 mV; a unit read wrongly is off by 1000×, so both bounds are far from either.
MIN_MEDIAN_RANGE_MV = 0.03
MAX_LEAD_RANGE_MV = 50.0
_CANONICAL = {lead.lower(): lead for lead in LEADS}


class WfdbRecordError(InputError):
    """A WFDB record that cannot be used as a 12-lead ECG; ``reason`` is a short code, ``detail`` says why."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        detail = " ".join(detail.split())  # one line, whatever wfdb's own message held
        super().__init__(f"WFDB record {path}: {detail} [{reason}]")
        self.path, self.reason, self.detail = path, reason, detail


class WfdbEcg(NamedTuple):
    """A record as synthgen uses it: ``signal`` (12, n) float64 in mV, leads in ``synthgen.ecg.LEADS`` order
    (NaN where the record marks a sample missing), ``fs`` in Hz, header ``comments`` (without '#').
    float64 as wfdb decodes it: prepare's shards stay byte-identical to what they were before this reader."""

    signal: np.ndarray
    fs: float
    comments: list[str]


def canonical_lead(name: str) -> str | None:
    """The canonical lead a signal name spells, or None: case and spaces ignored (``AVR``, ``avr`` → aVR),
    a ``lead`` prefix dropped, and the ``DI``/``DII``/``DIII`` spelling of the limb leads accepted.
    A sign is kept: ``-aVR`` (Cabrera's inverted aVR) is not aVR."""
    key = re.sub(r"[\s_]", "", name).lower().removeprefix("lead")
    if key in ("di", "dii", "diii"):
        key = key[1:]
    return _CANONICAL.get(key)


def read_wfdb(path: str, storage_options: StorageOptions = None) -> WfdbEcg:
    """Read the record ``path`` (local or URL, without extension) as a 12-lead ECG in mV, canonical lead order.

    Leads are matched by name (``canonical_lead``), never by position; signals that are not one of the 12
    leads are ignored. Raises ``WfdbRecordError`` (an ``InputError``) with a reason code (module docstring).
    """
    ecg = _read_checked_layout(path, storage_options)
    _check_amplitude(path, ecg.signal)
    return ecg


def _read_checked_layout(path: str, storage_options: StorageOptions) -> WfdbEcg:
    """``read_wfdb`` without the amplitude check (the writer's read-back verifies layout, not physiology)."""
    fs, hea = resolve(f"{path}.hea", storage_options)
    try:
        with fs.open(hea, "rb") as f:
            header = _decode(f.read())
    except FileNotFoundError:
        raise WfdbRecordError(path, "missing_record", "no .hea file") from None
    names, units, files, comments = _parse_header(path, header)
    import wfdb

    try:
        if is_local(fs):
            rec = wfdb.rdrecord(hea[:-4])
        else:  # wfdb-python cannot take storage options: fetch the header and its signal files first
            with tempfile.TemporaryDirectory(prefix="synthgen-wfdb-") as tmp:
                base = hea.rsplit("/", 1)[0]
                stem = f"{tmp}/{hea.rsplit('/', 1)[-1][:-4]}"
                Path(f"{stem}.hea").write_text(header)
                for file in sorted(set(files)):
                    fs.get(join(base, file), str(Path(tmp) / file))
                rec = wfdb.rdrecord(stem)
    except FileNotFoundError as e:
        raise WfdbRecordError(path, "missing_record", f"signal file missing ({e})") from None
    except Exception as e:  # wfdb raises many types for broken headers and truncated signal files
        raise WfdbRecordError(path, "unreadable_record", f"{type(e).__name__}: {e}") from None
    if rec.p_signal is None or rec.p_signal.ndim != 2 or rec.p_signal.shape[1] != len(names):
        raise WfdbRecordError(path, "unreadable_record", f"header names {len(names)} signals, wfdb read "
                              f"{None if rec.p_signal is None else rec.p_signal.shape}")
    return WfdbEcg(_canonical_mv(path, rec.p_signal, names, units), float(rec.fs), comments)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # every byte is a character: nothing is dropped


def _parse_header(path: str, header: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(signal names, units, signal files, comments) from a header's text; units default to mV (WFDB spec)."""
    lines = [line.strip() for line in header.splitlines()]
    content = [line for line in lines if line and not line.startswith("#")]
    comments = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
    if not content:
        raise WfdbRecordError(path, "unreadable_record", "empty header")
    record = content[0].split()
    if "/" in record[0]:
        raise WfdbRecordError(path, "unreadable_record", "multi-segment records are not supported")
    names, units, files = [], [], []
    for line in content[1:]:
        fields = line.split(maxsplit=8)
        gain = fields[2] if len(fields) > 2 else ""
        files.append(fields[0])
        units.append(gain.partition("/")[2] or "mV")
        names.append(fields[8] if len(fields) > 8 else "")
    return names, units, files, comments


def _canonical_mv(path: str, samples: np.ndarray, names: list[str], units: list[str]) -> np.ndarray:
    """(n, k) samples in header units → (12, n) mV in LEADS order, chosen by name."""
    column: dict[str, int] = {}
    for i, name in enumerate(names):
        lead = canonical_lead(name)
        if lead is None:
            continue
        if lead in column:
            raise WfdbRecordError(path, "duplicate_lead", f"signals {column[lead] + 1} ({names[column[lead]]!r}) "
                                  f"and {i + 1} ({name!r}) are both lead {lead}")
        column[lead] = i
    missing = [lead for lead in LEADS if lead not in column]
    if missing:
        raise WfdbRecordError(path, "unknown_leads", f"signals {names} lack lead(s) {missing}")
    scale = []
    for lead in LEADS:
        unit = units[column[lead]]
        factor = UNIT_TO_MV.get(unit.replace(" ", "").lower())
        if factor is None:
            raise WfdbRecordError(path, "unknown_units", f"lead {lead} has unit {unit!r} (expected mV, uV/µV, V "
                                  "or nV)")
        scale.append(factor)
    picked = samples[:, [column[lead] for lead in LEADS]].T
    return picked * np.asarray(scale)[:, None]


def _check_amplitude(path: str, signal: np.ndarray) -> None:
    ranges = np.array([np.ptp(np.nanpercentile(lead, [0.5, 99.5])) if np.isfinite(lead).any() else np.nan
                       for lead in signal])
    if np.isnan(ranges).all():
        return  # every sample missing: the caller's missing-sample rule decides
    if np.nanmedian(ranges) < MIN_MEDIAN_RANGE_MV:
        raise WfdbRecordError(path, "implausible_amplitude", f"median lead range {np.nanmedian(ranges):.3g} mV "
                              f"(expected >= {MIN_MEDIAN_RANGE_MV} mV: a flat record, or a unit read wrongly)")
    worst = int(np.nanargmax(ranges))
    if ranges[worst] > MAX_LEAD_RANGE_MV:
        raise WfdbRecordError(path, "implausible_amplitude", f"lead {LEADS[worst]} spans {ranges[worst]:.3g} mV "
                              f"(expected <= {MAX_LEAD_RANGE_MV} mV: a unit read wrongly?)")


# ----------------------------------------------------------------------------------------------- header text
def escape_comment(value: str) -> str:
    """Header comments are one line of ASCII: line breaks, non-ASCII characters, backslashes and '#' are
    written as Python escapes (``\\n``, ``\\xb5``, ``\\u03bc``, ``\\\\``, ``\\x23``); ``unescape_comment``
    restores the exact text."""
    return value.encode("unicode_escape").decode("ascii").replace("#", "\\x23")


def unescape_comment(value: str) -> str:
    """The inverse of ``escape_comment``; text that is not such an escape (e.g. a source's own non-ASCII
    comment, or a lone backslash) comes back unchanged."""
    try:
        return value.encode("ascii").decode("unicode_escape")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def comment_fields(comments: list[str]) -> dict[str, str]:
    """``key: value`` header comments as a dict, values unescaped (lines without a colon are skipped)."""
    fields = {}
    for line in comments:
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = unescape_comment(value.strip())
    return fields


# --------------------------------------------------------------------------------------------------- writing
class WfdbRecord(NamedTuple):
    """One record to write: ``signal`` (12, n) in mV, canonical lead order, at ``fs`` Hz."""

    name: str
    signal: np.ndarray
    fs: float
    comments: Mapping[str, object]


def write_records(fs: fsspec.AbstractFileSystem, folder: str, records: Iterable[WfdbRecord]) -> None:
    """Write 16-bit WFDB records (leads named as ``LEADS``, units mV) into ``folder`` (local or object store),
    then ``RECORDS`` listing them, last.

    ``wfdb.wrsamp`` writes local files only: each record is written to a temporary folder and read back with
    the same reader as ``read_wfdb``; only if its leads come back in order and every value within half an ADC
    step of the input are the files committed (each atomically). A record that does not read back raises
    RuntimeError before anything is committed.
    """
    import wfdb

    names = []
    with tempfile.TemporaryDirectory(prefix="synthgen-wfdb-") as tmp:
        for rec in records:
            signal = np.asarray(rec.signal, dtype=np.float64)
            wfdb.wrsamp(rec.name, fs=rec.fs, units=["mV"] * len(LEADS), sig_name=list(LEADS), p_signal=signal.T,
                        fmt=["16"] * len(LEADS), write_dir=tmp,
                        comments=[f"{k}: {escape_comment(str(v))}" for k, v in rec.comments.items()])
            _verify(f"{tmp}/{rec.name}", signal, rec)
            names.append(rec.name)
        for file in sorted(Path(tmp).iterdir()):
            write_bytes_atomic(fs, join(folder, file.name), file.read_bytes())
    write_bytes_atomic(fs, join(folder, "RECORDS"), "".join(f"{n}\n" for n in names).encode())


def _verify(local: str, signal: np.ndarray, rec: WfdbRecord) -> None:
    """Read a just-written record back; raise unless leads, values (within half an ADC step), missing samples,
    rate and comments are what was meant to be written."""
    import wfdb

    back = _read_checked_layout(local, None)
    expected = {k: str(v) for k, v in rec.comments.items()}
    problems = []
    if back.signal.shape != signal.shape or not np.array_equal(np.isnan(back.signal), np.isnan(signal)):
        problems.append(f"shape/missing samples differ ({back.signal.shape} vs {signal.shape})")
    else:
        gain = np.asarray(wfdb.rdheader(local).adc_gain, dtype=np.float64)[:, None]
        steps = np.nan_to_num(np.abs(back.signal - signal)) * gain
        if steps.size and steps.max() > 0.501:
            lead, i = np.unravel_index(int(steps.argmax()), steps.shape)
            problems.append(f"lead {LEADS[lead]} sample {i} is {steps.max():.3g} ADC steps off")
    if back.fs != rec.fs:
        problems.append(f"fs {back.fs} vs {rec.fs}")
    if comment_fields(back.comments) != expected:
        problems.append(f"comments {comment_fields(back.comments)} vs {expected}")
    if problems:
        raise RuntimeError(f"WFDB record {rec.name} does not read back as written: {'; '.join(problems)}")
