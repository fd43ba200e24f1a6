"""`synthgen evaluate`: every figure for a generated set, each beside the same figure for real data.

The reference is real vs real, computed in the same run with the same encoder: the validation split plays
"generated" against the evaluated real split (test by default). A generated figure is only meaningful
next to it: e.g. FID has no absolute scale, and HR "error" on real ECGs is the detector's own error.
Peers (`peers.py`: ECGSYN-like, deepfake-ecg) are run on the generated set's conditions and scored the same way.
The real shards and the generated set are each read once; `report.py` writes the table and report.html.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synthgen.data.labels import labels_from_text
from synthgen.data.plausibility import reason_shares
from synthgen.errors import InputError
from synthgen.evaluate import metrics
from synthgen.evaluate.encoder import Encoder, load_encoder, prompts_of
from synthgen.evaluate.peers import PEERS, get_peer, peer_signals, write_peer_set
from synthgen.evaluate.report import METRICS, format_table, html_report
from synthgen.io.generated import read_generated
from synthgen.io.paths import StorageOptions, check_writable, join, resolve, write_bytes_atomic, write_json_atomic
from synthgen.io.shards import LABELS, read_shards, signals
from synthgen.model.bundle import shipped_bundle_url

SCHEMA = "evaluation-v1"
REAL_COLUMNS = ["ecg_id", "split", "signal", "reports", "hr", *LABELS]
N_STATEMENTS = 6   # most frequent report statements of the real split that get their own CLIP score


def _side(enc: Encoder, x: np.ndarray, text: np.ndarray, requested_hr: np.ndarray,
          masks: dict[str, np.ndarray], workers: int) -> dict[str, Any]:
    """Everything computed on one evaluated set that does not need the other set (``text``: the joint-space
    embeddings of its reports)."""
    feats = enc.features(x)
    clip = metrics.clip_scores(enc.embed_ecg(x), text)
    verdicts = metrics.check_plausibility(x, requested_hr, workers=workers)
    measured = metrics.measured_rates(verdicts)
    return {"features": feats, "masks": masks, "clip": clip, "clip_by_label": metrics.grouped_mean(clip, masks),
            "hr_measured": measured, "hr_requested": requested_hr, "hr": metrics.hr_error(requested_hr, measured),
            "einthoven": metrics.einthoven(x), "plausibility": reason_shares(verdicts)}


def _real_masks(table: pa.Table, statements: list[str]) -> dict[str, np.ndarray]:
    """Label masks of real rows, from the shards' labels (generated rows get theirs from `metrics.label_masks`)."""
    flags = {k: table.column(k).to_numpy(zero_copy_only=False).astype(bool) for k in LABELS}
    return metrics.masks_from_flags(flags, table.column("reports").to_pylist(), statements)


def _score(side: dict, f_target: np.ndarray, target_masks: dict[str, np.ndarray],
           f_train: np.ndarray) -> dict[str, float]:
    """One side's figures against the evaluated real split (its features, FID, precision/recall, memorisation);
    also stores the memorisation details and the per-label precision/recall in ``side``."""
    side["pr_by_label"] = metrics.pr_by_label(f_target, target_masks, side["features"], side["masks"])
    mem = side["memorisation"] = metrics.memorisation(f_train, side["features"], f_target)
    return _flat(metrics.precision_recall(f_target, side["features"]), side, mem,
                 metrics.fid(f_target, side["features"]))


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
    real_rows = read_shards(real, columns=REAL_COLUMNS, storage_options=storage_options)  # every split, once
    target, ref, train = (real_rows.filter(pc.equal(real_rows["split"], s)) for s in (split, ref_split, "train"))
    del real_rows
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
    gen_masks = metrics.label_masks(gen_reports, labels_from_text, statements)

    workers = min(os.cpu_count() or 1, 8) if gen.num_rows + ref.num_rows >= 400 else 1  # pools cost ~1 s to start
    x_gen = signals(gen)
    gen_hr = gen.column("hr").to_numpy(zero_copy_only=False).astype(np.float64)
    gen_text = enc.embed_text(embedder.embed(prompts_of(gen_reports)))
    gen_side = _side(enc, x_gen, gen_text, gen_hr, gen_masks, workers)
    ref_side = _side(enc, signals(ref), enc.embed_text(embedder.embed(prompts_of(ref_reports))),
                     ref.column("hr").to_numpy(zero_copy_only=False).astype(np.float64), ref_masks, workers)
    f_target, f_train = enc.features(signals(target)), enc.features(signals(train))
    flat_gen = _score(gen_side, f_target, target_masks, f_train)
    flat_ref = _score(ref_side, f_target, target_masks, f_train)

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
        "metrics": {k: {"generated": flat_gen[k], "reference": flat_ref[k], "better": METRICS[k][1],
                        "peers": {name: flat_p[name][k] for name in p_sides}} for k in METRICS},
        "clip_by_label": {k: {"generated": gen_side["clip_by_label"][k]["mean"],
                              "n_generated": gen_side["clip_by_label"][k]["n"],
                              "reference": ref_side["clip_by_label"][k]["mean"],
                              "n_reference": ref_side["clip_by_label"][k]["n"],
                              "peers": by_peer(lambda s, k=k: s["clip_by_label"][k]["mean"])}
                          for k in gen_masks},
        "pr_by_label": {k: {"generated": gen_side["pr_by_label"][k], "reference": ref_side["pr_by_label"][k],
                            "n_real": int(target_masks[k].sum()),
                            "peers": by_peer(lambda s, k=k: s["pr_by_label"][k])} for k in gen_masks},
        **{part: {"generated": gen_side[part], "reference": ref_side[part],
                  "peers": by_peer(lambda s, part=part: s[part])}
           for part in ("hr", "einthoven", "memorisation", "plausibility")},
    }
    result["wall_s"] = round(time.monotonic() - started, 1)
    fs, root = resolve(out, storage_options)
    write_json_atomic(fs, join(root, "evaluation.json"), _json_safe(result))
    write_bytes_atomic(fs, join(root, "report.html"),
                       html_report(result, gen_side, ref_side, p_sides, x_gen, gen).encode())
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
