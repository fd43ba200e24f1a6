"""augment-eval: scores with known answers, the arms' arithmetic, split hygiene, a trial that must learn,
plausible-only synthetic sets, and the whole command on the real PTB-XL shards with real CinC records as the
external set. (The paired intervals: test_augment_stats.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from classifiers.arms import build_arms, minority_class
from classifiers.data import LabelledSet, external_sets, real_splits, synthetic_set
from classifiers.metrics import binary_scores
from classifiers.model import Net1DClassifier
from classifiers.train import TrialConfig, train_trial
from synthgen.cli import app
from synthgen.errors import InputError
from synthgen.io.shards import to_parquet_bytes, to_table


def toy(n0: int, n1: int, seed: int = 0) -> LabelledSet:
    """Class 1 is a 24-cycle sine on every lead, class 0 an 8-cycle one, each with a random phase and an amplitude
    spread over 0.2–5 (log-uniform) for both classes: the amplitude, not the class, dominates what an untrained
    network outputs, so only a trained one ranks the classes apart."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * n0 + [1] * n1, dtype=np.int64)
    cycles = np.where(y == 1, 24, 8)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (len(y), 1))
    amp = np.exp(rng.uniform(np.log(0.2), np.log(5.0), (len(y), 1)))
    wave = amp * np.sin(2 * np.pi * cycles * np.arange(1024) / 1024 + phase)
    return LabelledSet((wave[:, None, :] + 0.1 * rng.standard_normal((len(y), 12, 1024))).astype(np.float32), y)


# ---------------------------------------------------------------- scores

def test_scores_perfect_inverted_and_minority_as_positive() -> None:
    y = np.array([0, 0, 0, 1])
    assert binary_scores(y, np.array([0.1, 0.2, 0.3, 0.9]), minority=1) == {
        "f1": 1.0, "auroc": 1.0, "auprc": 1.0, "balanced_accuracy": 1.0}
    worst = binary_scores(y, np.array([0.9, 0.8, 0.7, 0.1]), minority=1)
    assert worst["f1"] == 0.0 and worst["auroc"] == 0.0 and worst["balanced_accuracy"] == 0.0
    # all-majority predictions: the minority F1 is 0 although accuracy would be 75 %
    assert binary_scores(y, np.full(4, 0.2), minority=1)["f1"] == 0.0
    # class 0 as the minority: AUPRC ranks P(class 0)
    y0 = np.array([1, 1, 1, 0])
    s = binary_scores(y0, np.array([0.9, 0.8, 0.7, 0.2]), minority=0)
    assert s["auprc"] == 1.0 and s["f1"] == 1.0


# ---------------------------------------------------------------- arms

def test_arms_weights_ratios_and_nested_fixed_subsets() -> None:
    train, syn = toy(90, 10), toy(50, 40, seed=1)
    arms, skipped = build_arms(train, syn, ratios=[1.0, 0.5, 4.0, 8.0])
    by = {a.name: a for a in arms}
    assert list(by) == ["original", "weighted", "augmented-0.5", "augmented-1", "augmented-4", "synthetic"]
    assert by["original"].class_weight is None and by["weighted"].class_weight == (1.0, 9.0)
    assert [by[f"augmented-{r}"].synthetic_rows for r in ("0.5", "1", "4")] == [5, 10, 40]
    assert by["augmented-1"].train.counts() == {0: 90, 1: 20} and by["synthetic"].train.counts() == {0: 50, 1: 40}
    # a smaller ratio's synthetic rows are the first ones of a larger ratio's, the same on every call
    np.testing.assert_array_equal(by["augmented-0.5"].train.x[100:], by["augmented-1"].train.x[100:105])
    again = {a.name: a for a in build_arms(train, syn, ratios=[1.0])[0]}
    np.testing.assert_array_equal(again["augmented-1"].train.x, by["augmented-1"].train.x)
    # more synthetic minority rows needed than there are: the arm is left out, with the reason
    assert set(skipped) == {"augmented-8"} and "needs 80 synthetic class-1" in skipped["augmented-8"]


def test_arms_minority_can_be_class_0_and_one_class_synthetic_is_skipped() -> None:
    train = toy(10, 30)
    assert minority_class(train) == 0
    arms, skipped = build_arms(train, toy(0, 20), ratios=[1.0])
    assert [a.name for a in arms] == ["original", "weighted"] and set(skipped) == {"augmented-1", "synthetic"}
    assert "class-0 (minority) ECGs, the plausible synthetic set has 0" in skipped["augmented-1"]
    assert arms[1].class_weight == (3.0, 1.0)


# ---------------------------------------------------------------- model and trial

def test_classifier_returns_logits_not_probabilities() -> None:
    torch.manual_seed(0)
    logits = Net1DClassifier()(torch.randn(4, 12, 1024) * 3)
    assert logits.shape == (4, 2) and not torch.allclose(logits.sum(1), torch.ones(4))


def test_trial_learns_what_an_untrained_model_cannot_and_keeps_the_best_val_step() -> None:
    torch.set_num_threads(1)
    train, val, test, ext = toy(48, 16), toy(24, 8, seed=1), toy(24, 8, seed=2), toy(20, 5, seed=3)
    cfg = TrialConfig("af", "original", seed=0, steps=16, eval_every=4, batch_size=16)
    result = train_trial(cfg, train, val, test, minority=1, external=ext)
    assert result["test"]["auroc"] == 1.0 and result["test"]["auprc"] == 1.0
    assert [h["step"] for h in result["history"]] == [4, 8, 12, 16]
    best = max(result["history"], key=lambda h: h["val_auprc"])
    assert result["best_step"] == best["step"] and result["val_auprc"] == best["val_auprc"]
    # the kept per-record probabilities reproduce the scores; the external set is scored by the same model
    assert binary_scores(test.y, np.array(result["test_p1"]), 1) == result["test"]
    assert len(result["external_p1"]) == 25 and result["external"]["auroc"] > 0.9
    # the same trial without learning (lr 0: only batch-norm statistics move) does not solve it
    untrained = train_trial(TrialConfig("af", "original", seed=0, steps=16, eval_every=4, batch_size=16, lr=0.0),
                            train, val, test, minority=1)
    assert untrained["test"]["auroc"] < 0.6


# ---------------------------------------------------------------- data

def _shards(path: Path, rows: list[tuple[str, str, bool]]) -> str:
    recs = [dict(ecg_id=f"e{i}", source="t", patient_id=pid, split=split, signal=np.zeros((12, 1024), np.float32),
                 reports=["x"], report_text="", age=50.0, sex="F", hr=80.0, hr_source="rr", af=af, pvc=False,
                 abnormal=af, scp_codes=[], fs_source=100.0) for i, (pid, split, af) in enumerate(rows)]
    path.mkdir()
    (path / "part-00000.parquet").write_bytes(to_parquet_bytes(to_table(recs)))
    return str(path)


def test_real_splits_refuse_a_patient_in_two_splits(tmp_path: Path) -> None:
    rows = [("p1", "train", True), ("p2", "train", False), ("p3", "val", True), ("p4", "val", False),
            ("p5", "test", True), ("p6", "test", False)]
    splits = real_splits(_shards(tmp_path / "ok", rows), "af")
    assert {k: v.counts() for k, v in splits.items()} == {k: {0: 1, 1: 1} for k in ("train", "val", "test")}
    leaky = _shards(tmp_path / "leaky", rows[:5] + [("p1", "test", False)])
    with pytest.raises(InputError, match="patients appear in both the train and test splits"):
        real_splits(leaky, "af")
    with pytest.raises(InputError, match="expected one of af, pvc, abnormal"):
        real_splits(leaky, "mi")


# ---------------------------------------------------------------- end to end

def _generated(path: Path, x: np.ndarray, labels: list[str]) -> str:
    """A `synthgen generate` output (its writer, its real plausibility check) holding the ECGs ``x``."""
    from synthgen.conditions.spec import Condition
    from synthgen.data.plausibility import check_many
    from synthgen.io.generated import Provenance, shard_table
    from synthgen.io.shards import to_parquet_bytes as parquet_bytes

    n = len(x)
    table = shard_table(x, [Condition(("sinus rhythm",))] * n, [{"label": lab} for lab in labels], np.arange(n),
                        np.zeros(n, np.int64), np.arange(n), Provenance("run", "hash", "ddpm", 2, 2.0, "0"), None,
                        np.zeros(n, np.int32), check_many(x))
    (path / "shards").mkdir(parents=True)
    (path / "shards" / "part-00000.parquet").write_bytes(parquet_bytes(table))
    return str(path)


def test_synthetic_set_keeps_only_plausible_ecgs(ptbxl_shards, tmp_path: Path) -> None:
    train = real_splits(str(ptbxl_shards), "pvc")["train"]
    x = np.concatenate([train.of_class(1).x[:10], train.of_class(0).x[:8]])
    x[[0, 1, 2, 10]] *= 0.01  # near-flat: real ECGs scaled down fail the check
    syn, counts = synthetic_set(_generated(tmp_path / "syn", x, ["pvc"] * 10 + ["not_pvc"] * 8), "pvc")
    assert counts == {"0": {"generated": 8, "dropped": 1, "kept": 7}, "1": {"generated": 10, "dropped": 3, "kept": 7}}
    assert syn.counts() == {0: 7, 1: 7} and np.array_equal(syn.x[:7], x[3:10])


def _cinc_subset(cinc: Path, dst: Path, pvc: int = 6, others: int = 14) -> Path:
    """A few real CinC 2021 records (links), ``pvc`` of them with a PVC code (SNOMED CT 427172004/17338001)."""
    heads = sorted(cinc.rglob("*.hea"))
    is_pvc = [any(c in h.read_text() for c in ("427172004", "17338001")) for h in heads]
    picked = [h for h, p in zip(heads, is_pvc) if p][:pvc] + [h for h, p in zip(heads, is_pvc) if not p][:others]
    dst.mkdir()
    for h in picked:
        for f in (h, h.with_suffix(".mat")):
            (dst / f.name).symlink_to(f)
    return dst


def test_augment_eval_end_to_end_external_and_resume(ray_local, ptbxl_shards, cinc_dir, tmp_path: Path) -> None:
    from synthgen.data.prepare import prepare

    train = real_splits(str(ptbxl_shards), "pvc")["train"]
    x = np.concatenate([train.of_class(1).x[:10], train.of_class(0).x[:8]])
    x[[0, 1, 2, 10]] *= 0.01  # implausible: dropped
    syn = _generated(tmp_path / "syn", x, ["pvc"] * 10 + ["not_pvc"] * 8)
    ext = tmp_path / "cinc"
    prepare("physionet-challenge", str(_cinc_subset(cinc_dir, tmp_path / "cinc-src")), str(ext))
    ext_pvc = external_sets(str(ext), ["pvc"])["pvc"]
    out = tmp_path / "ae"
    args = ["augment-eval", "--data", str(ptbxl_shards), "--out", str(out), "--task", "pvc", "--synthetic", syn,
            "--external", str(ext), "--ratios", "0.05,0.5", "--seeds", "2", "--epochs", "1", "--bootstrap", "200",
            "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 8 and set(trials["arm"]) == {"original", "weighted", "augmented-0.05", "synthetic"}
    assert trials[["f1", "auroc", "external_auroc"]].apply(lambda c: c.between(0, 1)).all().all()
    # ratio 0.05 of 72 real PVC ECGs = 4 synthetic ones; 0.5 (36) needs more than the 7 plausible ones
    assert (trials[trials["arm"] == "augmented-0.05"]["synthetic_rows"] == 4).all()
    assert (trials[trials["arm"] == "synthetic"]["train_n"] == 14).all()
    report = json.loads((out / "augment_eval.json").read_text())
    task = report["tasks"]["pvc"]
    assert task["plausibility"]["1"] == {"generated": 10, "dropped": 3, "kept": 7}
    assert "augmented-0.5" in task["skipped"] and report["external"]["rows"] == len(ext_pvc)
    one = json.loads((out / "trials" / "pvc-weighted-seed1.json").read_text())
    assert len(one["test_p1"]) == sum(task["counts"]["test"].values()) and len(one["external_p1"]) == len(ext_pvc)
    paired = pd.read_csv(out / "paired.csv")
    assert len(paired) == 2 * 3 * 4 and set(paired["set"]) == {"test", "external"}
    assert (paired["low"] <= paired["high"]).all() and (paired["seeds"] == 2).all()
    table = (out / "summary.md").read_text()
    assert f"minority-class ECGs per task: pvc {ext_pvc.counts()[1]})" in table
    assert "| pvc | augmented-0.05 |" in table and "| pvc | pvc | 10 | 3 | 7 |" in table
    assert (out / "summary.png").stat().st_size > 0
    # rerun: every trial is read back, none retrained
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()}
    assert CliRunner().invoke(app, args).exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()} == stamps


def test_augment_eval_bad_task_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["augment-eval", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                   "--task", "af,mi"])
    assert res.exit_code == 2 and "--task 'mi'" in res.output and not (tmp_path / "o").exists()


def test_synthetic_sets_are_sampled_as_asked_and_say_how(ray_local, ptbxl_shards, tiny_bundle, tmp_path: Path) -> None:
    """generate_synthetic: n ECGs of each class of the task from its training conditions, through `generate`
    with the sampling asked for (sampler, steps, decoder); the provenance augment-eval records names them."""
    from classifiers.experiment import _synthetic_provenance, generate_synthetic

    url = generate_synthetic(str(ptbxl_shards), "af", str(tmp_path), 3, model=tiny_bundle.url, sampler="ddim",
                             steps=2, seed=0, gpu=False, storage_options=None, progress=False, decoder="vae")
    df = pd.read_parquet(f"{url}/shards")
    assert len(df) == 6 and set(zip(df.sampler, df.steps, df.decoder)) == {("ddim", 2, "vae")}
    provenance = _synthetic_provenance(url, None)
    assert (provenance["model_hash"], provenance["sampler"], provenance["steps"], provenance["decoder"]) == \
        (tiny_bundle.model_hash, "ddim", 2, "vae")
