"""`synthgen evaluate`: every figure for a generated set, each beside the same figure for real data.

The reference is real vs real, computed in the same run with the same encoder: the validation split plays
"generated" against the evaluated real split (test by default). A generated figure is only meaningful
next to it: e.g. FID has no absolute scale, and HR "error" on real ECGs is the detector's own error.
Peers (`peers.py`: ECGSYN-like, deepfake-ecg) are run on the generated set's conditions and scored the same way.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from synthgen.data.labels import labels_from_text
from synthgen.data.plausibility import REASONS, reason_shares
from synthgen.errors import InputError
from synthgen.evaluate import metrics as M
from synthgen.evaluate.encoder import Encoder, load_encoder, prompts_of
from synthgen.evaluate.peers import PEERS, get_peer, peer_signals, write_peer_set
from synthgen.evaluate.plot import plot_ecg
from synthgen.io.paths import StorageOptions, check_writable, join, resolve, write_bytes_atomic, write_json_atomic
from synthgen.io.generated import read_generated
from synthgen.io.shards import LABELS, read_shards, signals
from synthgen.model.bundle import shipped_bundle_url

SCHEMA = "evaluation-v1"
REAL_COLUMNS = ["ecg_id", "signal", "reports", "hr", *LABELS]
N_STATEMENTS = 6   # most frequent report statements of the real split that get their own CLIP score
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


def _side(enc: Encoder, x: np.ndarray, text: np.ndarray, requested_hr: np.ndarray,
          masks: dict[str, np.ndarray], workers: int) -> dict[str, Any]:
    """Everything computed on one evaluated set that does not need the other set (``text``: the joint-space
    embeddings of its reports)."""
    feats = enc.features(x)
    clip = M.clip_scores(enc.embed_ecg(x), text)
    verdicts = M.check_plausibility(x, requested_hr, workers=workers)
    measured = M.measured_rates(verdicts)
    return {"features": feats, "masks": masks, "clip": clip, "clip_by_label": M.grouped_mean(clip, masks),
            "hr_measured": measured, "hr_requested": requested_hr, "hr": M.hr_error(requested_hr, measured),
            "einthoven": M.einthoven(x), "plausibility": reason_shares(verdicts)}


def _real_masks(table: pa.Table, statements: list[str]) -> dict[str, np.ndarray]:
    """Label masks of real rows, from the shards' labels (generated rows get theirs from `metrics.label_masks`)."""
    flags = {k: table.column(k).to_numpy(zero_copy_only=False).astype(bool) for k in LABELS}
    return M.masks_from_flags(flags, table.column("reports").to_pylist(), statements)


def _score(side: dict, f_target: np.ndarray, target_masks: dict[str, np.ndarray],
           f_train: np.ndarray) -> dict[str, float]:
    """One side's figures against the evaluated real split (its features, FID, precision/recall, memorisation);
    also stores the memorisation details and the per-label precision/recall in ``side``."""
    side["pr_by_label"] = M.pr_by_label(f_target, target_masks, side["features"], side["masks"])
    mem = side["memorisation"] = M.memorisation(f_train, side["features"], f_target)
    return _flat(M.precision_recall(f_target, side["features"]), side, mem, M.fid(f_target, side["features"]))


def _flat(pr: dict, side: dict, mem: dict, fid: float) -> dict[str, float]:
    return {"fid": fid, **pr, "hr_mae": side["hr"]["mae"], "hr_unmeasured_share": side["hr"]["unmeasured_share"],
            "near_flat_share": side["plausibility"]["near_flat"],
            "implausible_share": side["plausibility"]["implausible"],
            "clip_score": float(side["clip"].mean()),
            "einthoven_iii_residual_mv": side["einthoven"]["iii_residual_mv"],
            "einthoven_augmented_sum_mv": side["einthoven"]["augmented_sum_mv"],
            "nn_train_distance_ratio": mem["ratio"], "memorisation_close_share": mem["close_share"]}


def evaluate(real: str, generated: str, out: str, *, encoder: str | None = None, split: str = "test",
             peers: tuple[str, ...] | list[str] = PEERS, peer_seed: int = 0,
             storage_options: StorageOptions = None) -> dict:
    """Evaluate a generated set against the ``split`` of real shards; writes ``<out>/evaluation.json`` and
    ``<out>/report.html``, prints the table, returns the evaluation dict. Each of ``peers`` (names from
    `peers.PEERS`) makes one ECG per generated row (its conditions, seed ``peer_seed``) into
    ``<out>/peers/<name>``, scored beside the generated set."""
    started = time.monotonic()
    if split not in ("train", "val", "test"):
        raise InputError(f"split must be train, val or test, got {split!r}")
    peers = list(dict.fromkeys(peers))
    if unknown := [p for p in peers if p not in PEERS]:
        raise InputError(f"unknown peer(s) {', '.join(map(repr, unknown))}; known: {', '.join(PEERS)}")
    ref_split = "test" if split == "val" else "val"
    encoder = encoder or shipped_bundle_url("encoder")
    enc = load_encoder(encoder, storage_options)
    embedder = enc.text_embedder()
    target = read_shards(real, split, REAL_COLUMNS, storage_options)
    ref = read_shards(real, ref_split, REAL_COLUMNS, storage_options)
    train = read_shards(real, "train", ["signal"], storage_options)
    gen = read_generated(generated, storage_options)
    for name, t in ((f"real {split} split", target), (f"real {ref_split} split", ref), ("real train split", train),
                    ("generated set", gen)):
        if t.num_rows < 5:
            raise InputError(f"{name} has {t.num_rows} ECGs; at least 5 are needed (k=3 neighbours)")
    check_writable(out, storage_options)  # before minutes of peers and features

    target_reports = target.column("reports").to_pylist()
    counts = Counter(s for r in target_reports for s in dict.fromkeys(r or []))
    statements = [s for s, _ in counts.most_common(N_STATEMENTS)]
    gen_reports = gen.column("reports").to_pylist()
    ref_reports = ref.column("reports").to_pylist()
    ref_masks, target_masks = _real_masks(ref, statements), _real_masks(target, statements)
    gen_masks = M.label_masks(gen_reports, labels_from_text, statements)

    workers = min(os.cpu_count() or 1, 8) if gen.num_rows + ref.num_rows >= 400 else 1  # pools cost ~1 s to start
    x_gen = signals(gen)
    gen_hr = gen.column("hr").to_numpy(zero_copy_only=False).astype(np.float64)
    gen_text = enc.embed_text(embedder.embed(prompts_of(gen_reports)))
    g = _side(enc, x_gen, gen_text, gen_hr, gen_masks, workers)
    r = _side(enc, signals(ref), enc.embed_text(embedder.embed(prompts_of(ref_reports))),
              ref.column("hr").to_numpy(zero_copy_only=False).astype(np.float64), ref_masks, workers)
    f_target, f_train = enc.features(signals(target)), enc.features(signals(train))
    flat_g, flat_r = _score(g, f_target, target_masks, f_train), _score(r, f_target, target_masks, f_train)

    p_sides, flat_p, peer_info = {}, {}, {}
    for name in peers:  # same conditions (reports, requested HR) as the generated rows
        t0 = time.monotonic()
        fn, info = get_peer(name)
        x_peer = peer_signals(gen.column("hr").to_pylist(), fn, seed=peer_seed)
        peer_out = join(out, "peers", name)
        write_peer_set(gen, x_peer, peer_out, storage_options)
        p_sides[name] = _side(enc, x_peer, gen_text, gen_hr, gen_masks, workers)
        flat_p[name] = _score(p_sides[name], f_target, target_masks, f_train)
        peer_info[name] = {**info, "seed": peer_seed, "n": len(x_peer), "set": peer_out,
                           "wall_s": round(time.monotonic() - t0, 1)}
        del x_peer

    def by_peer(get: Any) -> dict[str, Any]:
        return {name: get(side) for name, side in p_sides.items()}

    result = {
        "schema": SCHEMA, "real": real, "generated": generated, "split": split, "reference_split": ref_split,
        "encoder": {"url": encoder, "model_hash": enc.model_hash, "embedder": enc.config["embedder"]["name"]},
        "counts": {"generated": gen.num_rows, "real": target.num_rows, "reference": ref.num_rows,
                   "train": train.num_rows},
        "peers": peer_info,
        "metrics": {k: {"generated": flat_g[k], "reference": flat_r[k], "better": METRICS[k][1],
                        "peers": {name: flat_p[name][k] for name in p_sides}} for k in METRICS},
        "clip_by_label": {k: {"generated": g["clip_by_label"][k]["mean"], "n_generated": g["clip_by_label"][k]["n"],
                              "reference": r["clip_by_label"][k]["mean"], "n_reference": r["clip_by_label"][k]["n"],
                              "peers": by_peer(lambda s, k=k: s["clip_by_label"][k]["mean"])}
                          for k in gen_masks},
        "pr_by_label": {k: {"generated": g["pr_by_label"][k], "reference": r["pr_by_label"][k],
                            "n_real": int(target_masks[k].sum()),
                            "peers": by_peer(lambda s, k=k: s["pr_by_label"][k])} for k in gen_masks},
        **{part: {"generated": g[part], "reference": r[part], "peers": by_peer(lambda s, part=part: s[part])}
           for part in ("hr", "einthoven", "memorisation", "plausibility")},
    }
    result["wall_s"] = round(time.monotonic() - started, 1)
    fs, root = resolve(out, storage_options)
    write_json_atomic(fs, join(root, "evaluation.json"), _json_safe(result))
    write_bytes_atomic(fs, join(root, "report.html"), _html(result, g, r, p_sides, x_gen, gen).encode())
    print(format_table(result), flush=True)
    return result


def _json_safe(obj: Any) -> Any:
    """NaN → null (strict JSON readers refuse NaN)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


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


def _hr_plot(g: dict, r: dict, p_sides: dict) -> str:
    """Requested vs measured HR (paper Fig. 2A): generated, the real reference and the peers."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for side, name, style in ((r, "real (reference)", dict(marker="+", color="tab:gray")),
                              *((s, n, dict(s=10, alpha=0.6, **PEER_STYLE.get(n, {}))) for n, s in p_sides.items()),
                              (g, "generated", dict(marker="o", facecolors="none", edgecolors="tab:red"))):
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
            caption = f"{rows['ecg_id'][i]}  hr={rows['hr'][i]}  —  {' | '.join(rows['reports'][i] or [])}"
            path = os.path.join(tmp, f"{i}.png")
            plot_ecg(x_gen[i], path, caption=caption)
            with open(path, "rb") as f:
                out.append((caption, base64.b64encode(f.read()).decode()))
    return out


def _fmt(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4g}"


def _html(result: dict, g: dict, r: dict, p_sides: dict, x_gen: np.ndarray, gen: pa.Table) -> str:
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
<h2>Heart rate: requested vs measured</h2><img src="data:image/png;base64,{_hr_plot(g, r, p_sides)}">
<h2>CLIP score by label</h2><img src="data:image/png;base64,{_clip_plot(result)}">
<table><tr><th>label</th><th>generated</th><th>reference</th>{peer_th}</tr>{clip_rows}</table>
<h2>Precision / recall / F1 (k=3) by label</h2><p>Each label's generated ECGs against the real
{e(result['split'])} ECGs of the same label (— where either side has 3 or fewer).</p>
<table><tr><th>label</th><th>generated</th><th>reference</th>{peer_th}<th>real ECGs</th></tr>{pr_rows}</table>
<h2>Example generated ECGs</h2>{examples}
</body></html>
"""
