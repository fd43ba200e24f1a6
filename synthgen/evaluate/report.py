"""The outputs of `synthgen evaluate` for people: the console table and the self-contained ``report.html``
(the table, plausibility shares, the HR scatter, per-label CLIP and precision/recall, example ECGs)."""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa

from synthgen.data.plausibility import REASONS
from synthgen.evaluate.plot import plot_ecg
from synthgen.io.shards import REPORT_SEP

N_EXAMPLES = 3     # generated ECGs drawn in the report
METRICS = {  # key → (label, which way is better)
    "fid": ("FID (encoder features)", "lower"),
    "precision": ("precision (k=3)", "higher"),
    "recall": ("recall (k=3)", "higher"),
    "f1": ("F1", "higher"),
    "hr_mae": ("HR MAE, requested vs measured (bpm)", "lower"),
    "hr_unmeasured_share": ("share with no measurable HR", "lower"),
    "near_flat_share": ("share near-flat (median lead p-p < 0.25 mV)", "lower"),
    "implausible_share": ("share failing any plausibility check", "lower"),
    "clip_score": ("CLIP score (cosine)", "higher"),
    "einthoven_iii_residual_mv": ("|III − (II − I)| (mV)", "lower"),
    "einthoven_augmented_sum_mv": ("|aVR + aVL + aVF| (mV)", "lower"),
    "nn_train_distance_ratio": ("nearest-train distance ÷ held-out's", "≈ 1"),
    "memorisation_close_share": ("share closer to train than 5 % of held-out", "≈ 0.05"),
}


def format_table(result: dict) -> str:
    """Plain-text table: each generated figure beside its real-vs-real reference and the peers' figures."""
    width = max(len(label) for label, _ in METRICS.values())
    peers = list(result.get("peers", {}))
    cols = [max(10, len(p)) for p in peers]
    head = "".join(f"  {p:>{w}}" for p, w in zip(peers, cols))
    sub = "".join(f"  {'(peer)':>{w}}" for w in cols)
    lines = [f"{'metric':<{width}}  {'generated':>10}  {'reference':>10}{head}  better",
             f"{'':<{width}}  {'(n=' + str(result['counts']['generated']) + ')':>10}  "
             f"{'(' + result['reference_split'] + ')':>10}{sub}"]
    for key, (label, better) in METRICS.items():
        m = result["metrics"][key]
        vals = "".join(f"  {m['peers'][p]:>{w}.4g}" for p, w in zip(peers, cols))
        lines.append(f"{label:<{width}}  {m['generated']:>10.4g}  {m['reference']:>10.4g}{vals}  {better}")
    return "\n".join(lines)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


PEER_STYLE = {"ecgsyn": dict(marker="x", color="tab:blue"), "deepfake-ecg": dict(marker="^", color="tab:green")}


def _hr_plot(generated: dict, reference: dict, peer_sides: dict) -> str:
    """Requested vs measured HR (paper Fig. 2A): generated, the real reference and the peers."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for side, name, style in ((reference, "real (reference)", dict(marker="+", color="tab:gray")),
                              *((s, n, dict(s=10, alpha=0.6, **PEER_STYLE.get(n, {}))) for n, s in peer_sides.items()),
                              (generated, "generated", dict(marker="o", facecolors="none", edgecolors="tab:red"))):
        ax.scatter(side["hr_requested"], side["hr_measured"], **{"s": 14, "label": name, **style})
    ax.plot([30, 180], [30, 180], "k--", lw=0.8)
    ax.set_xlabel("requested HR (bpm)")
    ax.set_ylabel("measured HR (bpm)")
    ax.legend()
    return _png(fig)


def _clip_plot(result: dict) -> str:
    import matplotlib.pyplot as plt

    labels = list(result["clip_by_label"])
    vals = result["clip_by_label"]
    x = np.arange(len(labels))
    bars = [("generated", "tab:red", lambda k: vals[k]["generated"]),
            ("reference", "tab:gray", lambda k: vals[k]["reference"]),
            *((p, PEER_STYLE.get(p, {}).get("color"), lambda k, p=p: vals[k]["peers"][p]) for p in result["peers"])]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(labels) * len(bars)), 4))
    for j, (name, color, get) in enumerate(bars):
        ax.bar(x + (j - (len(bars) - 1) / 2) * width, [np.nan_to_num(get(k)) for k in labels], width, label=name,
               color=color)
    ax.set_xticks(x, [k if len(k) < 22 else k[:20] + "…" for k in labels], rotation=30, ha="right")
    ax.set_ylabel("CLIP score")
    ax.legend()
    return _png(fig)


def _examples(x_gen: np.ndarray, gen: pa.Table) -> list[tuple[str, str]]:
    rows = gen.slice(0, N_EXAMPLES).to_pydict()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(min(N_EXAMPLES, len(x_gen))):
            caption = f"{rows['ecg_id'][i]}  hr={rows['hr'][i]}  —  {REPORT_SEP.join(rows['reports'][i] or [])}"
            path = os.path.join(tmp, f"{i}.png")
            plot_ecg(x_gen[i], path, caption=caption)
            with open(path, "rb") as f:
                out.append((caption, base64.b64encode(f.read()).decode()))
    return out


def _fmt(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4g}"


def html_report(result: dict, generated: dict, reference: dict, peer_sides: dict, x_gen: np.ndarray,
                gen: pa.Table) -> str:
    """A self-contained page: the table, the HR scatter, per-label CLIP bars, example ECGs (inline PNGs)."""
    e = html.escape
    peers = list(result["peers"])
    peer_th = "".join(f"<th>{e(p)}</th>" for p in peers)
    rows = "".join(f"<tr><td>{e(label)}</td><td>{_fmt(result['metrics'][k]['generated'])}</td>"
                   f"<td>{_fmt(result['metrics'][k]['reference'])}</td>"
                   + "".join(f"<td>{_fmt(result['metrics'][k]['peers'][p])}</td>" for p in peers)
                   + f"<td>{e(better)}</td></tr>"
                   for k, (label, better) in METRICS.items())
    clip_rows = "".join(f"<tr><td>{e(k)}</td><td>{_fmt(v['generated'])} (n={v['n_generated']})</td>"
                        f"<td>{_fmt(v['reference'])} (n={v['n_reference']})</td>"
                        + "".join(f"<td>{_fmt(v['peers'][p])}</td>" for p in peers) + "</tr>"
                        for k, v in result["clip_by_label"].items())
    def prf(v: dict) -> str:
        return "/".join(_fmt(v[m]) for m in ("precision", "recall", "f1"))

    pr_rows = "".join(f"<tr><td>{e(k)}</td><td>{prf(v['generated'])} (n={v['generated']['n']})</td>"
                      f"<td>{prf(v['reference'])}</td>" + "".join(f"<td>{prf(v['peers'][p])}</td>" for p in peers)
                      + f"<td>{v['n_real']}</td></tr>" for k, v in result["pr_by_label"].items())
    plaus = result["plausibility"]
    plaus_rows = "".join(f"<tr><td>{e(k)}</td><td>{_fmt(plaus['generated'][k])}</td>"
                         f"<td>{_fmt(plaus['reference'][k])}</td>"
                         + "".join(f"<td>{_fmt(plaus['peers'][p][k])}</td>" for p in peers) + "</tr>"
                         for k in (*REASONS, "implausible"))
    peer_text = "; ".join(f"{e(p)} {e(i['package'])} {e(i['version'])}, seed {i['seed']}, set "
                          f"<code>{e(i['set'])}</code>" for p, i in result["peers"].items())
    peer_note = (f" Peers on the generated set's conditions (reports, requested HR), scored the same way: "
                 f"{peer_text}.") if peers else ""
    examples = "".join(f"<figure><img src='data:image/png;base64,{b64}' style='width:100%'>"
                       f"<figcaption>{e(cap)}</figcaption></figure>" for cap, b64 in _examples(x_gen, gen))
    c = result["counts"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>synthgen evaluation</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd}}
td:nth-child(n+2){{text-align:right}}</style></head><body>
<h1>synthgen evaluation</h1>
<p>generated: <code>{e(result['generated'])}</code> ({c['generated']} ECGs) against real
<code>{e(result['real'])}</code>
{e(result['split'])} split ({c['real']} ECGs). Reference = real {e(result['reference_split'])} split
({c['reference']} ECGs) scored the same way. Encoder <code>{e(result['encoder']['url'])}</code>
(sha256 {result['encoder']['model_hash'][:12]}…), memorisation against {c['train']} training ECGs.{peer_note}</p>
<table><tr><th>metric</th><th>generated</th><th>reference</th>{peer_th}<th>better</th></tr>{rows}</table>
<h2>Plausibility: share of ECGs failing each check</h2><p>Reasons as defined in
<code>synthgen.data.plausibility</code> (near-flat, amplitude, clipped, HR unmeasurable or far from the request,
Einthoven residual); an ECG may fail several.</p>
<table><tr><th>reason</th><th>generated</th><th>reference</th>{peer_th}</tr>{plaus_rows}</table>
<h2>Heart rate: requested vs measured</h2><img src="data:image/png;base64,{_hr_plot(generated, reference, peer_sides)}">
<h2>CLIP score by label</h2><img src="data:image/png;base64,{_clip_plot(result)}">
<table><tr><th>label</th><th>generated</th><th>reference</th>{peer_th}</tr>{clip_rows}</table>
<h2>Precision / recall / F1 (k=3) by label</h2><p>Each label's generated ECGs against the real
{e(result['split'])} ECGs of the same label (— where either side has 3 or fewer).</p>
<table><tr><th>label</th><th>generated</th><th>reference</th>{peer_th}<th>real ECGs</th></tr>{pr_rows}</table>
<h2>Example generated ECGs</h2>{examples}
</body></html>
"""
