"""`synthgen augment-eval`: for each task, the arms × seeds as parallel Ray trials, then mean ± sd and each
arm's paired difference from the original arm with a 95 % interval and a verdict (classifiers/stats.py).

Without ``synthetic`` it builds its own synthetic set per task first: manifests from the conditions of real
training records of each class (as the paper augments), sampled with `synthgen generate` into
``<out>/synthetic/<task>``; only the ECGs that pass generate's plausibility check are used. Trial results,
with every test (and external) record's predicted probability, land in ``<out>/trials/`` as they finish, so a
rerun after a crash trains only what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone

import fsspec
import numpy as np
import pandas as pd

from classifiers.arms import Arm, arm_order, build_arms, minority_class
from classifiers.data import TASKS, LabelledSet, check_task, external_sets, real_task_splits, synthetic_set
from classifiers.metrics import SCORES
from classifiers.stats import CANNOT_TELL, HELPS, HURTS, paired_differences
from classifiers.train import TrialConfig, train_trial
from synthgen import __version__
from synthgen.cluster import console, device_label, gpu_budget, ray_session, torch_device
from synthgen.errors import InputError
from synthgen.generate.manifest import class_conditions, largest_remainder, write_manifest
from synthgen.io.paths import (StorageOptions, check_writable, join, read_json, resolve, write_bytes_atomic,
                               write_json_atomic)
from synthgen.io.shards import read_summary

SCHEMA = "augment-eval-v2"  # v2: paired differences, external set, plausible-only synthetic sets, ratios
REFERENCE = "original"
SCORE_NAMES = {"f1": "minority F1", "auroc": "AUROC", "auprc": "AUPRC", "balanced_accuracy": "balanced acc."}
VERDICT_SCORE = "auprc"  # the headline verdict: the selection score (threshold-free, minority positive)


def generate_synthetic(data: str, task: str, out: str, n_per_class: int, *, model: str | None, sampler: str | None,
                       steps: int | None, seed: int, gpu: bool | None, storage_options: StorageOptions,
                       progress: bool, decoder: str | None = None) -> str:
    """Sample ``n_per_class`` ECGs of each class of ``task`` from real training conditions; returns the output.

    Conditions are spread evenly over a shuffled list of the class's training records, so a small
    ``n_per_class`` still covers many different reports and patients.
    """
    from synthgen.generate.config import GenerateConfig
    from synthgen.generate.run import run_generate

    rng = np.random.default_rng(seed)
    parts = []
    for negative in (False, True):
        df = class_conditions(data, task, negative=negative, storage_options=storage_options)
        df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
        df["n"] = largest_remainder([1.0] * len(df), n_per_class)
        parts.append(df[df["n"] > 0])
    manifest = join(out, "synthetic", f"{task}-manifest.csv")
    write_manifest(pd.concat(parts, ignore_index=True), manifest, storage_options)
    target = join(out, "synthetic", task)
    run_generate(GenerateConfig(manifest, target, model=model, sampler=sampler, steps=steps, decoder=decoder,
                                seed=seed, gpu=gpu,
                                storage_options=storage_options, progress=progress))
    return target


def _run_trial(cfg: TrialConfig, train: LabelledSet, val: LabelledSet, test: LabelledSet, minority: int,
               device: str, external: LabelledSet | None) -> dict:
    """Ray task body: one thread per CPU Ray gave this task, so parallel trials do not oversubscribe cores.
    The result's ``device`` says where it ran (with the GPU id Ray assigned, if any)."""
    import ray
    import torch

    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    return {**train_trial(cfg, train, val, test, minority, device=device, external=external),
            "device": device_label(device)}


def _synthetic_provenance(url: str, storage_options: StorageOptions) -> dict:
    fs, root = resolve(url, storage_options)
    path = join(root, "_SUCCESS.json")
    if not fs.exists(path):
        return {"url": url}
    done = read_json(fs, path)
    return {"url": url, "run_id": done.get("run_id"), **{k: done.get("params", {}).get(k) for k in
                                                          ("model_hash", "sampler", "steps", "guidance", "seed")},
            "decoder": done.get("params", {}).get("decoder", "vae")}  # recorded in plans when not the VAE's


def _check_args(tasks: list[str], seeds: int, epochs: int, ratios: list[float], n_synthetic: int,
                synthetic: str | None, bootstrap: int) -> None:
    for t in tasks:
        check_task(t)
    if not tasks:
        raise InputError("--task: expected at least one of " + ", ".join(TASKS))
    if seeds < 1:
        raise InputError(f"--seeds={seeds}: expected at least 1")
    if epochs < 1:
        raise InputError(f"--epochs={epochs}: expected at least 1")
    if not ratios or not all(r > 0 for r in ratios):
        raise InputError(f"--ratios={','.join(f'{r:g}' for r in ratios)}: expected positive synthetic : real "
                         "minority ratios, e.g. 0.25,0.5,1")
    if synthetic is None and n_synthetic < 1:
        raise InputError(f"--n-synthetic={n_synthetic}: expected at least 1 (or give --synthetic)")
    if bootstrap < 100:
        raise InputError(f"--bootstrap={bootstrap}: expected at least 100 replicates (2000 recommended)")


def summarise(trials: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """Mean and sample sd of each score (columns ``prefix + score``) per (task, arm), tasks as asked, arms in
    `arm_order`."""
    g = trials.groupby(["task", "arm"], sort=False)
    out = g[[prefix + s for s in SCORES]].agg(["mean", "std"])
    out.columns = [f"{score[len(prefix):]}_{stat}" for score, stat in out.columns]
    out = out.join(g.size().rename("seeds")).join(g["train_n"].first()).join(g["synthetic_rows"].first())
    out = out.reset_index()
    task_rank = {t: i for i, t in enumerate(dict.fromkeys(trials["task"]))}
    key = out.apply(lambda r: (task_rank[r["task"]], *arm_order(r["arm"])), axis=1)
    return out.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def paired_table(results: list[dict], sets: dict[str, dict[str, LabelledSet]], *, replicates: int,
                 seed: int) -> pd.DataFrame:
    """One row per (set, task, arm, score): the arm's paired difference from the original arm
    (`classifiers.stats.paired_differences`) on the records of ``sets[set][task]`` (``test`` and, if given,
    ``external``), from the per-record probabilities the trials kept."""
    p1: dict[tuple, dict[int, list[float]]] = {}
    for r in results:
        c = r["config"]
        for name in sets:
            if r.get(f"{name}_p1") is not None:
                p1.setdefault((name, c["task"], c["arm"]), {})[c["seed"]] = r[f"{name}_p1"]
    rows = []
    for (name, task, arm), by_seed in p1.items():
        ref = p1.get((name, task, REFERENCE), {})
        seeds = sorted(set(by_seed) & set(ref))
        data = sets[name][task]
        if arm == REFERENCE or not seeds or min(data.counts().values()) == 0:
            continue
        minority = next(r["minority"] for r in results if r["config"]["task"] == task)
        diffs = paired_differences(data.y, data.patients, np.array([by_seed[s] for s in seeds]),
                                   np.array([ref[s] for s in seeds]), minority, replicates=replicates, seed=seed)
        rows += [{"set": name, "task": task, "arm": arm, "score": k, "estimate": d.estimate, "low": d.low,
                  "high": d.high, "verdict": d.verdict, "seeds": len(seeds), "replicates": d.replicates,
                  "per_seed": list(d.per_seed)} for k, d in diffs.items()]
    return pd.DataFrame(rows, columns=["set", "task", "arm", "score", "estimate", "low", "high", "verdict",
                                       "seeds", "replicates", "per_seed"])


def _mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.3f}" if np.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"  # one seed has no sd


def _diff_cell(row: pd.Series) -> str:
    cell = f"{row['estimate']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"
    return cell if row["verdict"] == CANNOT_TELL else f"{cell} **{row['verdict']}**"


def markdown_tables(summary: pd.DataFrame, paired: pd.DataFrame, set_name: str) -> str:
    """Markdown for one scored set: per task × arm mean ± sd over seeds, then each arm's paired difference from
    the original arm with its 95 % interval, and the verdict on AUPRC."""
    head = "| task | arm | train ECGs (synthetic) | seeds | " + " | ".join(SCORE_NAMES[s] for s in SCORES) + " |"
    lines = [head, "|" + "---|" * (4 + len(SCORES))]
    for r in summary.itertuples():
        cells = [_mean_sd(getattr(r, f"{s}_mean"), getattr(r, f"{s}_std")) for s in SCORES]
        lines.append(f"| {r.task} | {r.arm} | {r.train_n} ({r.synthetic_rows}) | {r.seeds} | {' | '.join(cells)} |")
    part = paired[paired["set"] == set_name]
    if len(part):
        lines += ["", f"Paired difference from the `{REFERENCE}` arm, 95 % interval (bootstrap over patients and "
                  f"seeds, {int(part['replicates'].max())} replicates); verdict on {SCORE_NAMES[VERDICT_SCORE]}: "
                  f"{HELPS} / {HURTS} if the interval excludes 0, else {CANNOT_TELL}.", "",
                  "| task | arm | " + " | ".join(f"Δ {SCORE_NAMES[s]}" for s in SCORES) + " | verdict |",
                  "|" + "---|" * (3 + len(SCORES))]
        for (task, arm), g in part.groupby(["task", "arm"], sort=False):
            by = g.set_index("score")
            lines.append(f"| {task} | {arm} | " + " | ".join(_diff_cell(by.loc[s]) for s in SCORES)
                         + f" | {by.loc[VERDICT_SCORE, 'verdict']} |")
    return "\n".join(lines) + "\n"


def plot_paired(paired: pd.DataFrame) -> bytes:
    """PNG forest plot: one panel per score (columns) and scored set (rows), one line per task × arm: the
    paired difference from the original arm and its 95 % interval; green helps, red hurts, grey cannot tell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(paired["set"])) or ["test"]
    fig, axes = plt.subplots(len(sets), len(SCORES), figsize=(3.6 * len(SCORES), 0.9 + 0.32 * max(
        1, paired.groupby(["task", "arm"]).ngroups) * len(sets)), sharey="row", squeeze=False)
    colour = {HELPS: "tab:green", HURTS: "tab:red", CANNOT_TELL: "0.45"}
    for row, name in zip(axes, sets):
        part = paired[paired["set"] == name]
        labels = list(dict.fromkeys(f"{t} · {a}" for t, a in zip(part["task"], part["arm"])))
        for ax, score in zip(row, SCORES):
            g = part[part["score"] == score]
            ys = [labels.index(f"{t} · {a}") for t, a in zip(g["task"], g["arm"])]
            for y, r in zip(ys, g.itertuples()):
                ax.errorbar(r.estimate, y, xerr=[[r.estimate - r.low], [r.high - r.estimate]], fmt="o",
                            color=colour[r.verdict], capsize=2, ms=4)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"Δ {SCORE_NAMES[score]} ({name})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _synthetic_counts_table(provenance: dict) -> str:
    lines = ["| task | class | generated | dropped (implausible) | kept |", "|---|---|---|---|---|"]
    for task, p in provenance.items():
        for c, n in p["plausibility"].items():
            label = task if c == "1" else f"not {task}"
            lines.append(f"| {task} | {label} | {n['generated']} | {n['dropped']} | {n['kept']} |")
    return "\n".join(lines) + "\n"


def augment_eval(data: str, out: str, *, tasks: tuple[str, ...] | list[str] = TASKS, synthetic: str | None = None,
                 external: str | None = None, seeds: int = 3, epochs: int = 20, batch_size: int = 64,
                 ratios: tuple[float, ...] | list[float] = (0.25, 0.5, 1.0), n_synthetic: int = 300,
                 model: str | None = None, sampler: str | None = None, sampler_steps: int | None = None,
                 seed: int = 0, bootstrap: int = 2000, gpu: bool | None = None, storage_options: StorageOptions = None,
                 progress: bool = True, decoder: str | None = None) -> dict:
    """Run the experiment for ``tasks`` and write trials, summary tables (CSV, Markdown), paired differences,
    plot and provenance.

    Budget per trial: ``epochs`` passes over the real training split, as optimizer steps, for every arm.
    ``external``: prepared shards from another source that every trained model also scores once (all rows).
    ``ratios``: synthetic : real minority-class ECGs, one augmented arm each. ``bootstrap``: replicates of the
    paired intervals (seeded by ``seed``). ``sampler``, ``sampler_steps``, ``decoder``: as `generate`'s
    (None: the model's default sampling).
    """
    tasks, ratios = list(tasks), [float(r) for r in ratios]
    _check_args(tasks, seeds, epochs, ratios, n_synthetic, synthetic, bootstrap)
    t0 = time.perf_counter()
    fs, root = resolve(out, storage_options)
    prepared, provenance = {}, {}
    real = real_task_splits(data, tasks, storage_options)  # bad data fails before any sampling
    ext = external_sets(external, tasks, storage_options) if external else {}
    check_writable(out, storage_options)  # so does an output that cannot be written, before Ray starts
    ext_info = None if not external else {
        "url": external, "fingerprint": (read_summary(external, storage_options) or {}).get("fingerprint"),
        "rows": len(next(iter(ext.values()))), "counts": {t: s.counts() for t, s in ext.items()}}
    for task, splits in real.items():
        syn_url = synthetic or generate_synthetic(
            data, task, out, n_synthetic, model=model, sampler=sampler, steps=sampler_steps, seed=seed, gpu=gpu,
            storage_options=storage_options, progress=progress, decoder=decoder)
        syn, plausibility = synthetic_set(syn_url, task, storage_options)
        arms, skipped = build_arms(splits["train"], syn, ratios, seed)
        prepared[task] = (splits, arms, ext.get(task))
        provenance[task] = {"minority": minority_class(splits["train"]),
                            "counts": {k: v.counts() for k, v in splits.items()},
                            "synthetic": _synthetic_provenance(syn_url, storage_options),
                            "plausibility": plausibility,
                            "arms": {a.name: {"train": a.train.counts(), "synthetic_rows": a.synthetic_rows,
                                              "class_weight": a.class_weight} for a in arms},
                            "skipped": skipped}
    inputs = {"data": data, "data_fingerprint": (read_summary(data, storage_options) or {}).get("fingerprint"),
              "external": ext_info}
    results = _run_trials(prepared, inputs, provenance, fs, root, seeds=seeds, epochs=epochs,
                          batch_size=batch_size, gpu=gpu, progress=progress)
    trials = pd.DataFrame([{"task": r["config"]["task"], "arm": r["config"]["arm"], "seed": r["config"]["seed"],
                            **r["test"], **{f"external_{k}": (r.get("external") or {}).get(k, np.nan)
                                            for k in SCORES},
                            "best_step": r["best_step"], "val_auprc": r["val_auprc"],
                            "train_n": sum(r["train_counts"].values()), "synthetic_rows": r["synthetic_rows"],
                            "wall_s": r["wall_s"], "device": r["device"]} for r in results])
    if not external:
        trials = trials.drop(columns=[f"external_{k}" for k in SCORES])
    sets = {"test": {t: s["test"] for t, (s, _, _) in prepared.items()}, **({"external": ext} if ext else {})}
    paired = paired_table(results, sets, replicates=bootstrap, seed=seed)
    summary = summarise(trials)
    text = ["## Test split", "", markdown_tables(summary, paired, "test")]
    if ext:
        summary_ext = summarise(trials, "external_")
        positives = ", ".join(f"{t} {s.counts()[provenance[t]['minority']]}" for t, s in ext.items())
        text += [f"## External set ({external}: {ext_info['rows']} ECGs; minority-class ECGs per task: "
                 f"{positives})", "", markdown_tables(summary_ext, paired, "external")]
        write_bytes_atomic(fs, join(root, "summary_external.csv"), summary_ext.to_csv(index=False).encode())
    text += ["## Synthetic ECGs used (plausible only)", "", _synthetic_counts_table(provenance)]
    table = "\n".join(text)
    write_bytes_atomic(fs, join(root, "trials.csv"), trials.to_csv(index=False).encode())
    write_bytes_atomic(fs, join(root, "summary.csv"), summary.to_csv(index=False).encode())
    write_bytes_atomic(fs, join(root, "paired.csv"), paired.to_csv(index=False).encode())
    write_bytes_atomic(fs, join(root, "summary.md"), table.encode())
    write_bytes_atomic(fs, join(root, "summary.png"), plot_paired(paired))
    report = {"schema": SCHEMA, "finished": datetime.now(timezone.utc).isoformat(), "synthgen_version": __version__,
              **inputs, "ratios": ratios, "seed": seed, "tasks": provenance, "seeds": seeds, "epochs": epochs,
              "batch_size": batch_size,
              "selection": "best validation AUPRC (minority class positive); test scored once per model",
              "paired_method": {"reference": REFERENCE, "replicates": bootstrap, "level": 0.95,
                                "resampled": "test patients and training seeds (classifiers/stats.py)",
                                "verdict_score": VERDICT_SCORE,
                                "rule": f"{HELPS} if the interval is above 0, {HURTS} if below, else {CANNOT_TELL}"},
              "summary": _records(summary), "summary_external": _records(summarise(trials, "external_")) if ext
              else None, "paired": _records(paired), "wall_s": round(time.perf_counter() - t0, 1)}
    write_json_atomic(fs, join(root, "augment_eval.json"), report)
    print(table, flush=True)
    return report


def _records(df: pd.DataFrame) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def _run_trials(prepared: dict, inputs: dict, provenance: dict, fs: fsspec.AbstractFileSystem, root: str, *,
                seeds: int, epochs: int, batch_size: int, gpu: bool | None, progress: bool) -> list[dict]:
    """Every (task, arm, seed) trial on Ray, one per CPU (or GPU), in that order; finished ones are read back,
    not retrained."""
    from tqdm import tqdm

    results: list[dict | None] = []
    waiting = {}  # Ray ref → (index in results, path, key, arm)
    with ray_session(num_cpus=os.cpu_count() or 1) as ray:
        # one GPU per trial when the job uses GPUs (synthgen.cluster's rule); waiting trials make the
        # autoscaler add GPU nodes
        use_gpu = gpu_budget(ray, gpu) > 0
        remote = ray.remote(_run_trial).options(num_cpus=1, num_gpus=1 if use_gpu else 0)
        device = torch_device(use_gpu)
        for task, (splits, arms, external) in prepared.items():
            per_epoch = max(1, len(splits["train"]) // batch_size)
            val, test = ray.put(splits["val"]), ray.put(splits["test"])
            ext = None if external is None else ray.put(external)
            task_inputs = {**inputs, "synthetic": provenance[task]["synthetic"]}
            minority = minority_class(splits["train"])
            train_refs = {}  # original and weighted share one training set: put it once
            for arm in arms:
                digest = _train_digest(arm.train)
                for s in range(seeds):
                    cfg = TrialConfig(task, arm.name, s, steps=epochs * per_epoch, eval_every=per_epoch,
                                      batch_size=batch_size, class_weight=arm.class_weight)
                    key = _trial_key(cfg, task_inputs, arm, digest)
                    path = join(root, "trials", f"{cfg.name}.json")
                    stored = read_json(fs, path) if fs.exists(path) else {}
                    if stored.get("key") == key:
                        results.append(stored)
                        continue
                    if id(arm.train) not in train_refs:
                        train_refs[id(arm.train)] = ray.put(arm.train)
                    ref = remote.remote(cfg, train_refs[id(arm.train)], val, test, minority, device, ext)
                    waiting[ref] = (len(results), path, key, arm)
                    results.append(None)
        bar = tqdm(total=len(results), initial=len(results) - len(waiting), desc="augment-eval trials",
                   unit="trial", disable=not progress, file=console())
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1)
            i, path, key, arm = waiting.pop(done[0])
            result = results[i] = {**ray.get(done[0]), "key": key, "synthetic_rows": arm.synthetic_rows}
            write_json_atomic(fs, path, result)
            bar.update(1)
            bar.set_postfix_str(f"{result['trial']} test F1 {result['test']['f1']:.2f}")
        bar.close()
    return results


def _train_digest(train: LabelledSet) -> str:
    """sha256 of a training set's exact ECGs and labels (which synthetic rows an arm drew, not just how many)."""
    h = hashlib.sha256(np.ascontiguousarray(train.x).data)
    h.update(np.ascontiguousarray(train.y).data)
    return h.hexdigest()


def _trial_key(cfg: TrialConfig, inputs: dict, arm: Arm, train_digest: str) -> str:
    """What a finished trial's result depends on (its config, the data and external fingerprints, the task's
    synthetic set, the arm's exact training set); a stored result with another key is retrained. Adding an arm
    (a ratio) or a task leaves the other trials valid."""
    doc = {"config": asdict(cfg), "inputs": inputs, "train": train_digest, "synthetic_rows": arm.synthetic_rows,
           "synthgen_version": __version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
