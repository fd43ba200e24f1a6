"""augment-eval: scores with known answers, the arms' arithmetic, split hygiene, a trial that must learn, and
the whole command on the real PTB-XL shards with a tiny generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from classifiers.arms import build_arms, minority_class
from classifiers.data import LabelledSet, real_splits
from classifiers.metrics import binary_scores
from classifiers.model import Net1DClassifier
from classifiers.train import TrialConfig, train_trial
from synthgen.cli import app
from synthgen.errors import InputError
from synthgen.io.shards import to_parquet_bytes, to_table


def toy(n0: int, n1: int, seed: int = 0, gap: float = 1.0) -> LabelledSet:
    """Class 1 carries a 1 Hz-ish bump of height ``gap`` on every lead; class 0 is noise only."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * n0 + [1] * n1, dtype=np.int64)
    x = 0.1 * rng.standard_normal((len(y), 12, 1024)).astype(np.float32)
    x[y == 1] += gap * np.sin(np.linspace(0, 20 * np.pi, 1024, dtype=np.float32))
    return LabelledSet(x, y)


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

def test_arms_weights_target_ratio_and_fixed_subset() -> None:
    train, syn = toy(90, 10), toy(50, 40, seed=1)
    arms, skipped = build_arms(train, syn, target_ratio=0.5)
    by = {a.name: a for a in arms}
    assert list(by) == ["original", "weighted", "augmented", "synthetic"] and not skipped
    assert by["original"].class_weight is None and by["weighted"].class_weight == (1.0, 9.0)
    assert by["augmented"].train.counts() == {0: 90, 1: 45} and by["augmented"].synthetic_rows == 35
    assert by["synthetic"].train.counts() == {0: 50, 1: 40}
    again = {a.name: a for a in build_arms(train, syn, target_ratio=0.5)[0]}
    np.testing.assert_array_equal(again["augmented"].train.x, by["augmented"].train.x)
    # fewer synthetic rows than needed: all of them; a target already met: none
    assert {a.name: a for a in build_arms(train, syn, 1.0)[0]}["augmented"].synthetic_rows == 40
    assert {a.name: a for a in build_arms(train, syn, 0.1)[0]}["augmented"].synthetic_rows == 0


def test_arms_minority_can_be_class_0_and_one_class_synthetic_is_skipped() -> None:
    train = toy(10, 30)
    assert minority_class(train) == 0
    arms, skipped = build_arms(train, toy(0, 20), target_ratio=1.0)
    assert [a.name for a in arms] == ["original", "weighted"] and set(skipped) == {"augmented", "synthetic"}
    assert "no class-0" in skipped["augmented"] and arms[1].class_weight == (3.0, 1.0)


# ---------------------------------------------------------------- model and trial

def test_classifier_returns_logits_not_probabilities() -> None:
    torch.manual_seed(0)
    logits = Net1DClassifier()(torch.randn(4, 12, 1024) * 3)
    assert logits.shape == (4, 2) and not torch.allclose(logits.sum(1), torch.ones(4))


def test_trial_learns_a_separable_task_and_keeps_the_best_val_step() -> None:
    torch.set_num_threads(1)
    cfg = TrialConfig("af", "original", seed=0, steps=12, eval_every=4, batch_size=16)
    result = train_trial(cfg, toy(48, 16), toy(24, 8, seed=1), toy(24, 8, seed=2), minority=1)
    assert result["test"]["auroc"] == 1.0 and result["test"]["auprc"] == 1.0  # a random model: ~0.5, ~0.25
    assert [h["step"] for h in result["history"]] == [4, 8, 12]
    best = max(result["history"], key=lambda h: h["val_auprc"])
    assert result["best_step"] == best["step"] and result["val_auprc"] == best["val_auprc"]


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

def test_augment_eval_end_to_end_and_resume(ray_local, ptbxl_shards, tiny_bundle, tmp_path: Path) -> None:
    out = tmp_path / "ae"
    args = ["augment-eval", "--data", str(ptbxl_shards), "--out", str(out), "--task", "pvc", "--seeds", "2",
            "--epochs", "1", "--n-synthetic", "6", "--model", tiny_bundle.url, "--sampler", "ddim",
            "--sampler-steps", "2", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 8 and set(trials["arm"]) == {"original", "weighted", "augmented", "synthetic"}
    assert trials[["f1", "auroc", "auprc", "balanced_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
    syn = trials[trials["arm"] == "synthetic"]
    assert (syn["train_n"] == 12).all() and (trials[trials["arm"] == "augmented"]["synthetic_rows"] == 6).all()
    report = json.loads((out / "augment_eval.json").read_text())
    assert report["tasks"]["pvc"]["synthetic"]["model_hash"] == tiny_bundle.model_hash
    assert report["tasks"]["pvc"]["counts"]["train"]["1"] == 72  # PVC records of the subset's train split
    assert "| pvc | weighted |" in (out / "summary.md").read_text() and (out / "summary.png").stat().st_size > 0
    # rerun: every trial is read back, none retrained
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()}
    assert CliRunner().invoke(app, args).exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()} == stamps


def test_augment_eval_bad_task_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["augment-eval", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                                   "--task", "af,mi"])
    assert res.exit_code == 2 and "--task 'mi'" in res.output and not (tmp_path / "o").exists()
