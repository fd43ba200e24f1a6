"""Evaluation: metrics with known answers, the encoder on real PTB-XL records, an end-to-end evaluation of a
tiny generated set, and ECG printouts."""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from synthgen.errors import InputError
from synthgen.evaluate import metrics as M
from synthgen.io.shards import SCHEMA, read_shards, signals, to_parquet_bytes, to_table

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- metrics (known answers)

def test_fid_identical_is_zero_and_shifted_gaussians_match_closed_form() -> None:
    a = RNG.standard_normal((20000, 4))
    assert M.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0, 0.0])
    assert M.fid(a, RNG.standard_normal((20000, 4)) + shift) == pytest.approx(5.0, abs=0.1)  # |Δμ|²
    # N(0, I) vs N(0, 4I): Tr(I + 4I − 2·2I) = d
    assert M.fid(a, 2 * RNG.standard_normal((20000, 4))) == pytest.approx(4.0, abs=0.15)


def _brute_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def cover(p, c, r):
        return float(np.mean((np.linalg.norm(p[:, None] - c[None], axis=-1) <= r[None]).any(1)))

    return cover(fake, real, radii(real)), cover(real, fake, radii(fake))


def test_precision_recall_known_answers_and_chunking() -> None:
    a = RNG.standard_normal((300, 8))
    assert M.precision_recall(a, a) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    far = M.precision_recall(a, a + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # a generator that only makes the centre of the distribution: precise, not diverse
    collapsed = M.precision_recall(a, 0.1 * RNG.standard_normal((300, 8)))
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.2
    b = RNG.standard_normal((250, 8)) + 0.5
    pr = M.precision_recall(a, b, chunk=7)  # chunks smaller than the set, uneven last chunk
    assert (pr["precision"], pr["recall"]) == pytest.approx(_brute_pr(a, b, 3), abs=1e-9)
    assert pr["f1"] == pytest.approx(2 * pr["precision"] * pr["recall"] / (pr["precision"] + pr["recall"]))


def test_knn_radii_and_nearest_distance_match_brute_force() -> None:
    x, y = RNG.standard_normal((50, 5)), RNG.standard_normal((40, 5))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    assert M.knn_radii(x, 3, chunk=8) == pytest.approx(np.sort(d, 1)[:, 3], abs=1e-4)
    assert M.nearest_distance(x, y, chunk=8) == pytest.approx(
        np.linalg.norm(x[:, None] - y[None], axis=-1).min(1), abs=1e-4)


def test_hr_error_counts_unmeasured() -> None:
    out = M.hr_error(np.array([60.0, 80.0, 100.0, np.nan]), np.array([62.0, 77.0, np.nan, 70.0]))
    assert out == {"mae": 2.5, "n_requested": 3, "n_measured": 2, "unmeasured_share": pytest.approx(1 / 3)}
    assert np.isnan(M.measure_hr(np.zeros((1, 12, 1024)))[0])  # a flat line has no heart rate


def test_clip_einthoven_memorisation() -> None:
    e = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert M.clip_scores(e, np.array([[3.0, 0.0], [1.0, 0.0]])) == pytest.approx([1.0, 0.0])
    # limb leads built from two independent ones satisfy both laws exactly
    x = RNG.standard_normal((4, 12, 1024))
    i, ii = x[:, 0], x[:, 1]
    x[:, 2], x[:, 3], x[:, 4], x[:, 5] = ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2
    ein = M.einthoven(x)
    assert ein["iii_residual_mv"] < 1e-12 and ein["augmented_sum_mv"] < 1e-12
    assert M.einthoven(RNG.standard_normal((4, 12, 1024)))["iii_residual_mv"] > 0.5
    train, held = RNG.standard_normal((200, 6)), RNG.standard_normal((100, 6))
    copies = M.memorisation(train, train[:50] + 1e-6, held)
    assert copies["close_share"] == 1.0 and copies["ratio"] < 1e-3
    fresh = M.memorisation(train, RNG.standard_normal((500, 6)), held)
    assert fresh["close_share"] < 0.15 and 0.7 < fresh["ratio"] < 1.4


def test_precision_recall_by_label() -> None:
    real = RNG.standard_normal((40, 3))
    fake = np.concatenate([real[:20], real[20:] + 50.0])  # label a: copies; label b: far away
    real_masks = {"a": np.arange(40) < 20, "b": np.arange(40) >= 20, "rare": np.arange(40) < 10}
    fake_masks = {"a": np.arange(40) < 20, "b": np.arange(40) >= 20, "rare": np.arange(40) < 3}
    out = M.pr_by_label(real, real_masks, fake, fake_masks)
    assert out["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "n": 20}
    assert out["b"]["precision"] == 0.0 and out["b"]["recall"] == 0.0
    assert math.isnan(out["rare"]["precision"]) and out["rare"]["n"] == 3  # 3 rows: no 3rd neighbour


def test_label_masks() -> None:
    reports = [["atrial fibrillation"], ["sinus rhythm", "normal ECG"], []]
    masks = M.label_masks(reports, lambda r: {"af": "atrial fibrillation" in r, "pvc": False,
                                               "abnormal": "normal ECG" not in r}, ["sinus rhythm"])
    assert masks["af"].tolist() == [True, False, False] and masks["normal"].tolist() == [False, True, False]
    assert masks["sinus rhythm"].tolist() == [False, True, False]


# ---------------------------------------------------------------- encoder on real PTB-XL records

@pytest.fixture(scope="module")
def small_shards(ptbxl_shards, tmp_path_factory) -> Path:
    """A slice of the real shards (192 train, 64 val, 64 test) so the encoder trains in seconds."""
    out = tmp_path_factory.mktemp("small_shards")
    parts = [read_shards(str(ptbxl_shards), split).slice(0, n) for split, n in
             (("train", 192), ("val", 64), ("test", 64))]
    table = pa.concat_tables(parts).cast(SCHEMA)
    (out / "part-00000.parquet").write_bytes(to_parquet_bytes(table))
    return out


@pytest.fixture(scope="module")
def encoder_bundle(small_shards, tmp_path_factory) -> Path:
    from synthgen.evaluate.encoder import train_encoder

    out = tmp_path_factory.mktemp("encoder") / "bundle"
    train_encoder(str(small_shards), str(out), epochs=3, cache=str(tmp_path_factory.mktemp("emb")))
    return out


def test_encoder_trains_and_round_trips(encoder_bundle, small_shards) -> None:
    from synthgen.evaluate.encoder import load_encoder

    config = json.loads((encoder_bundle / "config.json").read_text())
    hist = config["training"]["history"]
    assert len(hist) == 3 and config["training"]["n_train"] == 192
    assert min(h["train_loss"] for h in hist[1:]) < hist[0]["train_loss"]  # it learns
    assert config["training"]["best_val_loss"] == min(h["val_loss"] for h in hist)
    enc = load_encoder(str(encoder_bundle))
    x = np.stack([np.zeros((12, 1024), np.float32)] * 2)
    assert enc.features(x).shape == (2, enc.model.ecg.cfg.feature_dim)
    emb = enc.embed_ecg(x)
    assert np.linalg.norm(emb, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_shipped_encoder_matches_real_test_ecgs_to_their_own_reports(ptbxl_shards) -> None:
    """The shipped encoder was trained on the train split; on test records it must rank each ECG's own report
    above a random other record's report more often than chance."""
    from synthgen.evaluate.encoder import load_encoder, prompts_of
    from synthgen.model.bundle import shipped_bundle_url

    enc = load_encoder(shipped_bundle_url("encoder"))
    test = read_shards(str(ptbxl_shards), "test", ["signal", "reports"])
    prompts = prompts_of(test.column("reports").to_pylist())
    e = enc.embed_ecg(signals(test))
    t = enc.embed_text(enc.text_embedder().embed(prompts))
    own = np.sum(e * t, axis=1)
    other = np.sum(e * t[np.random.default_rng(0).permutation(len(t))], axis=1)
    differs = np.array(prompts) != np.array(prompts)[np.random.default_rng(0).permutation(len(t))]
    assert np.mean(own[differs] > other[differs]) > 0.7


def test_altered_encoder_is_refused(encoder_bundle, tmp_path) -> None:
    import shutil

    from synthgen.evaluate.encoder import WEIGHTS_FILE, load_encoder

    bad = tmp_path / "bad"
    shutil.copytree(encoder_bundle, bad)
    data = bytearray((bad / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (bad / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(InputError, match=WEIGHTS_FILE):
        load_encoder(str(bad))
    (bad / "config.json").unlink()
    with pytest.raises(InputError, match="config.json"):
        load_encoder(str(bad))


def test_measured_hr_on_real_ecgs_at_102_hz(small_shards) -> None:
    """The HR reference is credible: measured at 102.4 Hz it matches prepare's measurement at the source rate."""
    from synthgen.io.shards import signals

    t = read_shards(str(small_shards), "test", ["signal", "hr"])
    measured = M.measure_hr(signals(t)[:20])
    err = M.hr_error(t.column("hr").to_numpy()[:20], measured)
    assert err["unmeasured_share"] <= 0.1 and err["mae"] < 5.0


# ---------------------------------------------------------------- evaluation end to end, plots

@pytest.fixture(scope="module")
def generated(tmp_path_factory, ray_local) -> Path:
    from synthgen.generate.run import generate
    from test_bundle import save_tiny_bundle

    tmp = tmp_path_factory.mktemp("gen")
    save_tiny_bundle(str(tmp / "bundle"), embedder_name="local", dim=384)
    manifest = tmp / "m.csv"
    manifest.write_text("report,age,sex,hr,label,n\natrial fibrillation,70,M,95,af,6\n"
                        "sinus rhythm | normal ECG,40,F,62,,6\n")
    generate(str(manifest), str(tmp / "out"), 12, model=str(tmp / "bundle"), steps=2, progress=False,
             output_format="both")
    return tmp / "out"


def test_evaluate_end_to_end(small_shards, generated, encoder_bundle, tmp_path, capsys) -> None:
    from synthgen.evaluate.run import METRICS, evaluate

    result = evaluate(str(small_shards), str(generated), str(tmp_path / "eval"), encoder=str(encoder_bundle))
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(saved["metrics"]) == set(METRICS)
    assert saved["counts"] == {"generated": 12, "real": 64, "reference": 64, "train": 192}
    for k in ("fid", "precision", "recall", "f1", "clip_score", "hr_unmeasured_share"):
        assert math.isfinite(result["metrics"][k]["generated"]) and math.isfinite(result["metrics"][k]["reference"])
    assert saved["clip_by_label"]["af"]["n_generated"] == 6
    assert {"af", "pvc", "abnormal", "normal"} <= set(saved["clip_by_label"])
    assert set(saved["pr_by_label"]) == set(saved["clip_by_label"])
    assert saved["pr_by_label"]["normal"]["generated"]["n"] == saved["clip_by_label"]["normal"]["n_generated"]
    assert saved["hr"]["generated"]["n_requested"] == 12
    # peers on the same conditions, scored the same way, in their own columns
    peers = ("ecgsyn", "deepfake-ecg")
    assert set(saved["peers"]) == set(peers)
    assert saved["peers"]["deepfake-ecg"]["version"] == version("deepfake-ecg")
    assert {saved["peers"][p]["seed"] for p in peers} == {0} and {saved["peers"][p]["n"] for p in peers} == {12}
    for k in ("fid", "precision", "clip_score", "einthoven_iii_residual_mv"):
        assert set(saved["metrics"][k]["peers"]) == set(peers)
        assert all(math.isfinite(v) for v in saved["metrics"][k]["peers"].values())
    assert saved["metrics"]["einthoven_iii_residual_mv"]["peers"]["deepfake-ecg"] < 1e-6
    assert set(saved["clip_by_label"]["af"]["peers"]) == set(peers) == set(saved["pr_by_label"]["af"]["peers"])
    assert saved["hr"]["peers"]["ecgsyn"]["n_requested"] == 12
    for p in peers:
        assert len(list((tmp_path / "eval" / "peers" / p / "shards").glob("part-*.parquet"))) == 1
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "<table>" in page and "<th>deepfake-ecg</th>" in page
    assert "Precision / recall / F1 (k=3) by label" in page
    printed = capsys.readouterr().out
    assert "FID" in printed and "ecgsyn" in printed and "deepfake-ecg" in printed


def test_evaluate_refuses_unknown_peer_from_the_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from synthgen.cli import app

    res = CliRunner().invoke(app, ["evaluate", "--real", str(tmp_path), "--generated", str(tmp_path), "--out",
                                   str(tmp_path / "e"), "--encoder", str(tmp_path), "--peers", "ecgsyn, nope"])
    assert res.exit_code == 2 and "nope" in res.output


def test_plot_parquet_row_and_wfdb_record(generated, small_shards, tmp_path) -> None:
    from synthgen.evaluate.plot import plot_ecg, plot_source

    plot_source(str(small_shards), str(tmp_path / "real.png"), row=3)
    plot_source(str(generated), str(tmp_path / "gen.png"), row=1)
    record = sorted(generated.glob("wfdb/part-*/*.hea"))[0].with_suffix("")
    plot_source(str(record), str(tmp_path / "wfdb.pdf"))
    for name in ("real.png", "gen.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "wfdb.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(InputError):
        plot_source(str(tmp_path / "nothing"), str(tmp_path / "x.png"))
    with pytest.raises(ValueError):
        plot_ecg(np.zeros((8, 1024)), str(tmp_path / "y.png"))


def _changed_outside_and_inside(before: Path, after: Path, lead: str) -> tuple[int, int]:
    """Pixels that differ between two printouts: (outside, inside) the panels where ``lead`` is drawn (its
    2.5 s panel, and the rhythm strip for II), each widened by 1 mm for line width and antialiasing."""
    from matplotlib.image import imread

    from synthgen.evaluate.plot import LAYOUT, MM_PER_S, ROW_MM, SEGMENT_S

    a, b = imread(str(before)), imread(str(after))
    changed = np.abs(a - b).sum(axis=-1) > 0.05
    height_px, width_px = changed.shape
    px_per_mm = width_px / (4 * SEGMENT_S * MM_PER_S)  # the paper spans the image width; the grid sits at the bottom
    boxes = [(c * SEGMENT_S * MM_PER_S, (c + 1) * SEGMENT_S * MM_PER_S, (3 - r) * ROW_MM, (4 - r) * ROW_MM)
             for r, row in enumerate(LAYOUT) for c, name in enumerate(row) if name == lead]
    if lead == "II":
        boxes.append((0.0, 4 * SEGMENT_S * MM_PER_S, 0.0, ROW_MM))
    inside = np.zeros_like(changed)
    for x0, x1, y0, y1 in boxes:
        cols = slice(max(0, int((x0 - 1) * px_per_mm)), int((x1 + 1) * px_per_mm) + 1)
        rows = slice(max(0, int(height_px - (y1 + 1) * px_per_mm)), int(height_px - (y0 - 1) * px_per_mm) + 1)
        inside[rows, cols] = True
    return int(changed[~inside].sum()), int(changed[inside].sum())


def test_plot_draws_each_lead_in_its_labelled_panel(tmp_path) -> None:
    """A 1 mV step on one lead moves ink only inside that lead's panel, for WFDB records whose leads are stored
    in MIMIC's order with other spellings (read by name) and for Parquet rows (canonical order)."""
    import wfdb

    from synthgen.ecg import LEADS
    from synthgen.evaluate.plot import plot_source

    t = np.arange(5000) / 500.0
    base = np.tile(0.3 * np.sin(2 * np.pi * 1.2 * t), (12, 1))  # a plausible amplitude on every lead
    stored = ["I", "II", "III", "AVR", "AVF", "AVL", "v1", "v2", "v3", "v4", "v5", "v6"]  # MIMIC order, odd case
    order = [LEADS.index(name) if name in LEADS else [n.lower() for n in LEADS].index(name.lower())
             for name in stored]

    def draw(signal: np.ndarray, folder: str) -> Path:
        (tmp_path / folder).mkdir()
        wfdb.wrsamp("rec", fs=500, units=["mV"] * 12, sig_name=stored, p_signal=signal[order].T, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path / folder))
        plot_source(str(tmp_path / folder / "rec"), str(tmp_path / f"{folder}.png"))
        return tmp_path / f"{folder}.png"

    reference = draw(base, "base")
    for i, lead in enumerate(LEADS):
        outside, inside = _changed_outside_and_inside(reference, draw(base + np.eye(12)[i][:, None], lead), lead)
        assert outside == 0 and inside > 200, (lead, outside, inside)

    wave = np.tile(0.3 * np.sin(2 * np.pi * 1.2 * np.arange(1024) / 102.4), (12, 1))
    rows = [{"ecg_id": "x", "source": "t", "patient_id": "p", "split": "test", "reports": ["sinus rhythm"],
             "report_text": "sinus rhythm", "age": 50.0, "sex": "F", "hr": 60.0, "hr_source": "qrs", "af": False,
             "pvc": False, "abnormal": False, "scp_codes": [], "fs_source": 500.0, "signal": wave + step}
            for step in (0.0, np.eye(12)[LEADS.index("V2")][:, None])]
    (tmp_path / "part-00000.parquet").write_bytes(to_parquet_bytes(to_table(rows)))
    for row in (0, 1):
        plot_source(str(tmp_path / "part-00000.parquet"), str(tmp_path / f"row{row}.png"), row=row)
    outside, inside = _changed_outside_and_inside(tmp_path / "row0.png", tmp_path / "row1.png", "V2")
    assert outside == 0 and inside > 200


def test_ecgsyn_like_peer_has_requested_rate_and_consistent_leads(generated, tmp_path) -> None:
    from synthgen.evaluate.peers import simulate_ecg, simulate_like
    from synthgen.io.generated import read_generated

    hrs = np.array([45.0, 75.0, 110.0, 160.0])
    x = np.stack([simulate_ecg(h, i) for i, h in enumerate(hrs)])
    assert x.shape == (4, 12, 1024) and x.dtype == np.float32
    assert np.abs(M.measure_hr(x, workers=2) - hrs).max() < 3.0
    ein = M.einthoven(x)
    assert ein["iii_residual_mv"] < 1e-6 and ein["augmented_sum_mv"] < 1e-6
    assert not np.array_equal(simulate_ecg(75, 0), simulate_ecg(75, 1))
    assert simulate_like(str(generated), str(tmp_path / "peer")) == 12
    peer = read_generated(str(tmp_path / "peer"))
    assert peer.column("hr").to_pylist() == read_generated(str(generated)).column("hr").to_pylist()


def test_deepfake_ecg_peer_is_12_lead_deterministic_and_consistent() -> None:
    from synthgen.evaluate.peers import DeepfakeECG

    peer = DeepfakeECG()
    x = peer(75.0, 0)
    assert x.shape == (12, 1024) and x.dtype == np.float32 and np.isfinite(x).all()
    i, ii = x[0], x[1]
    assert np.array_equal(x[2], ii - i)  # III = II − I exactly
    assert np.abs(x[3] + x[4] + x[5]).max() < 1e-5  # aVR + aVL + aVF = 0
    assert 0.2 < np.abs(ii).max() < 10.0  # mV, not µV
    assert np.array_equal(DeepfakeECG()(120.0, 0), x)  # same seed → same ECG (HR is ignored), fresh load too
    assert not np.allclose(peer(75.0, 1), x)
    raw = peer.raw(0)
    assert raw.shape == (8, 5000) and np.array_equal(raw, np.trunc(raw))  # the integer µV its generate() writes
