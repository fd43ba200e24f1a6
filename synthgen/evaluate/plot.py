"""12-lead ECG printouts: the standard paper layout (3 × 4 leads of 2.5 s + a 10 s lead-II rhythm strip)
on a 1 mm / 5 mm red grid at 25 mm/s and 10 mm/mV, for real and generated ECGs alike.

Everything is drawn in millimetres of paper, so the grid and the calibration are exact at any output size.
"""

from __future__ import annotations

import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from synthgen.ecg import FS, LEADS  # noqa: E402
from synthgen.errors import InputError  # noqa: E402
from synthgen.io.paths import join, read_parquet, resolve  # noqa: E402
from synthgen.io.shards import REPORT_SEP, signals  # noqa: E402
from synthgen.io.wfdb import comment_fields, read_wfdb  # noqa: E402

MM_PER_S, MM_PER_MV = 25.0, 10.0
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
ROW_MM = 30.0       # height of one lead row (±1.5 mV)
SEGMENT_S = 2.5     # each of the 4 columns shows 2.5 s
CAPTION_WIDTH = 150  # characters per caption line


def plot_ecg(signal: np.ndarray, out_path: str, *, fs: float = FS, caption: str = "") -> None:
    """Draw a (12, n) mV ECG at ``fs`` Hz as a 12-lead printout; PNG or PDF by ``out_path``'s extension.
    ``caption`` lines are wrapped at CAPTION_WIDTH characters and printed above the grid."""
    signal = np.asarray(signal, np.float64)
    if signal.ndim != 2 or signal.shape[0] != len(LEADS):
        raise ValueError(f"expected a (12, n) signal, got shape {signal.shape}")
    width = 4 * SEGMENT_S * MM_PER_S  # 250 mm
    height = 4 * ROW_MM
    lines = [w for line in caption.splitlines() for w in textwrap.wrap(line, CAPTION_WIDTH)]
    fig_h_mm = height + 6 + 4.5 * len(lines)
    fig = plt.figure(figsize=(width / 25.4 * 1.2, fig_h_mm / 25.4 * 1.2))
    ax = fig.add_axes((0.0, 0.0, 1.0, height / fig_h_mm))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    for mm in np.arange(0, width + 0.01, 1.0):
        ax.axvline(mm, color="#f4b6b6" if mm % 5 else "#e06060", lw=0.25 if mm % 5 else 0.6, zorder=0)
    for mm in np.arange(0, height + 0.01, 1.0):
        ax.axhline(mm, color="#f4b6b6" if mm % 5 else "#e06060", lw=0.25 if mm % 5 else 0.6, zorder=0)

    t = np.arange(signal.shape[1]) / fs
    seg = int(round(SEGMENT_S * fs))
    for r, row in enumerate(LAYOUT):
        base = height - (r + 0.5) * ROW_MM
        for c, lead in enumerate(row):
            sl = slice(c * seg, min((c + 1) * seg, signal.shape[1]))
            ax.plot(t[sl] * MM_PER_S, base + signal[LEADS.index(lead), sl] * MM_PER_MV, color="k", lw=0.7)
            ax.text(c * SEGMENT_S * MM_PER_S + 1.5, base + 7, lead, fontsize=8)
            if c:  # lead-change marker
                ax.plot([c * SEGMENT_S * MM_PER_S] * 2, [base - 3, base + 3], color="k", lw=0.7)
    base = 0.5 * ROW_MM
    ax.plot(t * MM_PER_S, base + signal[LEADS.index("II")] * MM_PER_MV, color="k", lw=0.7)
    ax.text(1.5, base + 7, "II", fontsize=8)
    header = [f"25 mm/s   10 mm/mV   {signal.shape[1] / fs:.1f} s at {fs:g} Hz", *lines]
    fig.text(0.01, 1 - 3 / fig_h_mm, "\n".join(header), va="top", fontsize=7, family="monospace")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=150)
    plt.close(fig)


def _present(value: object) -> bool:
    return value is not None and value == value and value != ""  # NaN != NaN


def ecg_caption(fields: dict) -> str:
    """The caption of one ECG from its row (or WFDB header) fields: reports, then patient and provenance fields
    that are present. A row generated from `synthgen manifest describe` (it carries ``condition_source``) is
    captioned with its condition, its numbered findings and where they came from, on three lines."""
    reports = fields.get("reports")
    reports = list(reports) if isinstance(reports, (list, tuple, np.ndarray)) else [str(reports or "")]
    described = _present(fields.get("condition_source"))
    keys = ("ecg_id", "age", "sex", "hr", *(() if described else ("label",)), "source", "split", "seed")
    info = "  ".join(f"{k}={fields[k]:.0f}" if isinstance(fields[k], float) else f"{k}={fields[k]}"
                     for k in keys if _present(fields.get(k)))
    if described:
        findings = "; ".join(f"{i + 1}. {r}" for i, r in enumerate(r for r in reports if r))
        citation = f"; reference: {fields['condition_citation']}" if _present(fields.get("condition_citation")) else ""
        return (f"{fields.get('label') or 'condition'} — ECG findings, most important first: {findings}\n{info}\n"
                f"findings from: {fields['condition_source']}{citation}")
    text = REPORT_SEP.join(r for r in reports if r)
    return f"{info}  —  {text}" if text else info


def _parquet_row(src: str, row: int) -> tuple[np.ndarray, float, dict]:
    """Signal, fs and fields of global row ``row`` from a .parquet file, a shard folder, or a generate output."""
    fs_, path = resolve(src)
    if path.endswith(".parquet"):
        parts = [path]
    else:
        parts = sorted(fs_.glob(join(path, "part-*.parquet"))) or sorted(fs_.glob(join(path, "shards",
                                                                                       "part-*.parquet")))
    if not parts:
        raise InputError(f"{src}: no Parquet ECGs (part-*.parquet or shards/part-*.parquet) found")
    for part in parts:
        whole = read_parquet(fs_, part)
        if row < whole.num_rows:
            table = whole.slice(row, 1)
            fields = {k: v[0] for k, v in table.drop_columns(["signal"]).to_pydict().items()}
            return signals(table)[0], float(fields.get("fs") or FS), fields
        row -= whole.num_rows
    raise InputError(f"{src}: row out of range (the source has fewer rows)")


def _wfdb_record(src: str) -> tuple[np.ndarray, float, dict]:
    """Signal (canonical lead order, through the one WFDB reader), fs and ``key: value`` header comments."""
    ecg = read_wfdb(src)
    fields: dict = {"ecg_id": src.rstrip("/").rsplit("/", 1)[-1], **comment_fields(ecg.comments)}
    if "reports" in fields:
        fields["reports"] = fields["reports"].split(REPORT_SEP)
    return np.nan_to_num(ecg.signal), ecg.fs, fields


def plot_source(src: str, out: str, *, row: int = 0) -> str:
    """Draw one ECG with its reports and patient info as caption: a Parquet row (training shards or a
    ``synthgen generate`` output) or a WFDB record (``.hea`` path without extension). Returns the caption."""
    fs_, path = resolve(src)
    if fs_.exists(path + ".hea"):
        sig, fs, fields = _wfdb_record(src)
    elif fs_.exists(path):
        sig, fs, fields = _parquet_row(src, row)
    else:
        raise InputError(f"{src}: neither a Parquet file/folder nor a WFDB record (no {src}.hea)")
    caption = ecg_caption(fields)
    plot_ecg(sig, out, fs=fs, caption=caption)
    return caption
