"""`synthgen augment-eval`: for each task, the four arms × seeds as parallel Ray trials, then mean ± sd.

Without ``synthetic`` it builds its own synthetic set per task first: manifests from the conditions of real
training records of each class (as the paper augments), sampled with `synthgen generate` into
``<out>/synthetic/<task>``. Trial results land in ``<out>/trials/`` as they finish, so a rerun after a
crash trains only what is missing.
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

from classifiers.arms import ARMS, Arm, build_arms, minority_class
from classifiers.data import TASKS, LabelledSet, check_task, real_task_splits, synthetic_set
from classifiers.metrics import SCORES
from classifiers.train import TrialConfig, train_trial
from synthgen import __version__
from synthgen.cluster import console, device_label, gpu_budget, ray_session, torch_device
from synthgen.errors import InputError
from synthgen.generate.manifest import class_conditions, largest_remainder, write_manifest
from synthgen.io.paths import (StorageOptions, check_writable, join, read_json, resolve, write_bytes_atomic,
                               write_json_atomic)
from synthgen.io.shards import read_summary

SCHEMA = "augment-eval-v1"


def generate_synthetic(data: str, task: str, out: str, n_per_class: int, *, model: str | None, sampler: str,
                       steps: int, seed: int, gpu: bool | None, storage_options: StorageOptions,
                       progress: bool) -> str:
    """Sample ``n_per_class`` ECGs of each class of ``task`` from real training conditions; returns the output.

    Conditions are spread evenly over a shuffled list of the class's training records, so a small
    ``n_per_class`` still covers many different reports and patients.
    """
    from synthgen.generate.run import generate

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
    generate(manifest, target, model=model, sampler=sampler, steps=steps, seed=seed, gpu=gpu,
             storage_options=storage_options, progress=progress)
    return target


def _run_trial(cfg: TrialConfig, train: LabelledSet, val: LabelledSet, test: LabelledSet, minority: int,
               device: str) -> dict:
    """Ray task body: one thread per CPU Ray gave this task, so parallel trials do not oversubscribe cores.
    The result's ``device`` says where it ran (with the GPU id Ray assigned, if any)."""
    import ray
    import torch

    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    return {**train_trial(cfg, train, val, test, minority, device=device), "device": device_label(device)}


def _synthetic_provenance(url: str, storage_options: StorageOptions) -> dict:
    fs, root = resolve(url, storage_options)
    path = join(root, "_SUCCESS.json")
    if not fs.exists(path):
        return {"url": url}
    done = read_json(fs, path)
    return {"url": url, "run_id": done.get("run_id"), **{k: done.get("params", {}).get(k) for k in
                                                          ("model_hash", "sampler", "steps", "guidance", "seed")}}


def _check_args(tasks: list[str], seeds: int, epochs: int, target_ratio: float, n_synthetic: int,
                synthetic: str | None) -> None:
    for t in tasks:
        check_task(t)
    if not tasks:
        raise InputError("--task: expected at least one of " + ", ".join(TASKS))
    if seeds < 1:
        raise InputError(f"--seeds={seeds}: expected at least 1")
    if epochs < 1:
        raise InputError(f"--epochs={epochs}: expected at least 1")
    if not target_ratio > 0:
        raise InputError(f"--target-ratio={target_ratio}: expected a positive minority : majority ratio")
    if synthetic is None and n_synthetic < 1:
        raise InputError(f"--n-synthetic={n_synthetic}: expected at least 1 (or give --synthetic)")


def summarise(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd of each score per (task, arm), in the arms' fixed order."""
    g = trials.groupby(["task", "arm"], sort=False)
    out = g[list(SCORES)].agg(["mean", "std"])
    out.columns = [f"{score}_{stat}" for score, stat in out.columns]
    out = out.join(g.size().rename("seeds")).join(g["train_n"].first()).join(g["synthetic_rows"].first())
    out = out.reset_index()
    out["arm"] = pd.Categorical(out["arm"], ARMS, ordered=True)
    out["task"] = pd.Categorical(out["task"], list(dict.fromkeys(trials["task"])), ordered=True)  # as asked
    return out.sort_values(["task", "arm"]).reset_index(drop=True)


def _mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.3f}" if np.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"  # one seed has no sd


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as Markdown: one row per task × arm, scores as mean ± sd."""
    head = "| task | arm | train ECGs (synthetic) | seeds | minority F1 | AUROC | AUPRC | balanced acc. |"
    lines = [head, "|" + "---|" * 8]
    for r in summary.itertuples():
        cells = [_mean_sd(getattr(r, f"{s}_mean"), getattr(r, f"{s}_std")) for s in SCORES]
        lines.append(f"| {r.task} | {r.arm} | {r.train_n} ({r.synthetic_rows}) | {r.seeds} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def plot_summary(summary: pd.DataFrame) -> bytes:
    """PNG: one panel per score, grouped bars per task, one bar per arm, error bars = sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.6), sharey=True)
    width = 0.8 / len(ARMS)
    for ax, score in zip(axes, SCORES):
        for j, arm in enumerate(ARMS):
            rows = [summary[(summary["task"] == t) & (summary["arm"] == arm)] for t in tasks]
            means = [r[f"{score}_mean"].iloc[0] if len(r) else np.nan for r in rows]
            sds = [r[f"{score}_std"].iloc[0] if len(r) else np.nan for r in rows]
            ax.bar(np.arange(len(tasks)) + (j - (len(ARMS) - 1) / 2) * width, means, width, yerr=sds,
                   label=arm, capsize=2)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_title(score.replace("_", " "))
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def augment_eval(data: str, out: str, *, tasks: tuple[str, ...] | list[str] = TASKS, synthetic: str | None = None,
                 seeds: int = 3, epochs: int = 20, batch_size: int = 64, target_ratio: float = 1.0,
                 n_synthetic: int = 300, model: str | None = None, sampler: str = "ddpm", sampler_steps: int = 100,
                 seed: int = 0, gpu: bool | None = None, storage_options: StorageOptions = None,
                 progress: bool = True) -> dict:
    """Run the experiment for ``tasks`` and write trials, summary table (CSV, Markdown), plot and provenance.

    Budget per trial: ``epochs`` passes over the real training split, as optimizer steps, for every arm.
    """
    tasks = list(tasks)
    _check_args(tasks, seeds, epochs, target_ratio, n_synthetic, synthetic)
    t0 = time.perf_counter()
    fs, root = resolve(out, storage_options)
    prepared, provenance = {}, {}
    real = real_task_splits(data, tasks, storage_options)  # bad data fails before any sampling
    check_writable(out, storage_options)  # so does an output that cannot be written, before Ray starts
    for task, splits in real.items():
        syn_url = synthetic or generate_synthetic(
            data, task, out, n_synthetic, model=model, sampler=sampler, steps=sampler_steps, seed=seed, gpu=gpu,
            storage_options=storage_options, progress=progress)
        arms, skipped = build_arms(splits["train"], synthetic_set(syn_url, task, storage_options), target_ratio,
                                   seed)
        prepared[task] = (splits, arms)
        provenance[task] = {"minority": minority_class(splits["train"]),
                            "counts": {k: v.counts() for k, v in splits.items()},
                            "synthetic": _synthetic_provenance(syn_url, storage_options),
                            "arms": {a.name: {"train": a.train.counts(), "synthetic_rows": a.synthetic_rows,
                                              "class_weight": a.class_weight} for a in arms},
                            "skipped": skipped}
    inputs = {"data": data, "data_fingerprint": (read_summary(data, storage_options) or {}).get("fingerprint"),
              "target_ratio": target_ratio, "synthetic": {t: provenance[t]["synthetic"] for t in tasks}}
    results = _run_trials(prepared, inputs, fs, root, seeds=seeds, epochs=epochs, batch_size=batch_size, gpu=gpu,
                          progress=progress)
    trials = pd.DataFrame([{"task": r["config"]["task"], "arm": r["config"]["arm"], "seed": r["config"]["seed"],
                            **r["test"], "best_step": r["best_step"], "val_auprc": r["val_auprc"],
                            "train_n": sum(r["train_counts"].values()), "synthetic_rows": r["synthetic_rows"],
                            "wall_s": r["wall_s"], "device": r["device"]} for r in results])
    summary = summarise(trials)
    table = markdown_table(summary)
    write_bytes_atomic(fs, join(root, "trials.csv"), trials.to_csv(index=False).encode())
    write_bytes_atomic(fs, join(root, "summary.csv"), summary.to_csv(index=False).encode())
    write_bytes_atomic(fs, join(root, "summary.md"), table.encode())
    write_bytes_atomic(fs, join(root, "summary.png"), plot_summary(summary))
    report = {"schema": SCHEMA, "finished": datetime.now(timezone.utc).isoformat(), "synthgen_version": __version__,
              **inputs, "tasks": provenance, "seeds": seeds, "epochs": epochs, "batch_size": batch_size,
              "selection": "best validation AUPRC (minority class positive); test scored once per model",
              "summary": summary.astype(object).where(summary.notna(), None).to_dict(orient="records"),
              "wall_s": round(time.perf_counter() - t0, 1)}
    write_json_atomic(fs, join(root, "augment_eval.json"), report)
    print(table, flush=True)
    return report


def _run_trials(prepared: dict, inputs: dict, fs: fsspec.AbstractFileSystem, root: str, *, seeds: int, epochs: int,
                batch_size: int, gpu: bool | None, progress: bool) -> list[dict]:
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
        for task, (splits, arms) in prepared.items():
            per_epoch = max(1, len(splits["train"]) // batch_size)
            val, test = ray.put(splits["val"]), ray.put(splits["test"])
            minority = minority_class(splits["train"])
            train_refs = {}  # original and weighted share one training set: put it once
            for arm in arms:
                for s in range(seeds):
                    cfg = TrialConfig(task, arm.name, s, steps=epochs * per_epoch, eval_every=per_epoch,
                                      batch_size=batch_size, class_weight=arm.class_weight)
                    key = _trial_key(cfg, inputs, arm)
                    path = join(root, "trials", f"{cfg.name}.json")
                    stored = read_json(fs, path) if fs.exists(path) else {}
                    if stored.get("key") == key:
                        results.append(stored)
                        continue
                    if id(arm.train) not in train_refs:
                        train_refs[id(arm.train)] = ray.put(arm.train)
                    ref = remote.remote(cfg, train_refs[id(arm.train)], val, test, minority, device)
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


def _trial_key(cfg: TrialConfig, inputs: dict, arm: Arm) -> str:
    """What a finished trial's result depends on; a stored result with another key is retrained."""
    doc = {"config": asdict(cfg), "inputs": inputs, "train": arm.train.counts(), "synthetic_rows": arm.synthetic_rows,
           "synthgen_version": __version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
