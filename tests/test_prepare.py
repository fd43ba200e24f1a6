"""`synthgen prepare`: preprocessing known answers, the three sources end to end, bad input, reruns.

Every fixture is built at test time under tmp_path from the real PTB-XL subset (tests/fixtures/builders.py):
real WFDB files, real Parquet, no mocks. The MIMIC-IV-ECG fixture is written in MIMIC's exact layout
(no MIMIC copy exists here) from PTB-XL 500 Hz signals, leads in MIMIC's order (aVF before aVL).
The whole 1,987-record subset is run by benchmarks/bench_prepare.py, not here: on this 2-core machine it
takes minutes, so these tests use at most 60 records per run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import wfdb
from scipy.signal import resample_poly
from typer.testing import CliRunner

from fixtures.builders import MIMIC_LEADS, PTBXL_LEADS, mimic_fixture, ptbxl_subset
from synthgen.data.heart_rate import hr_from_rr, hr_from_signal
from synthgen.data.labels import labels_from_scp, labels_from_text
from synthgen.data.prepare import prepare
from synthgen.data.preprocess import Rejected, clean, fill_missing, resample_1024
from synthgen.data.splits import split_for_fold, split_for_patient
from synthgen.ecg import LEADS
from synthgen.errors import InputError
from synthgen.io.shards import REJECTS, SUMMARY, read_shards, signals, to_parquet_bytes, to_table


# ------------------------------------------------------------------------------------ preprocessing units
def test_resample_gives_1024_samples_of_the_same_waveform() -> None:
    for fs in (100, 500, 250):
        t = np.arange(int(10 * fs)) / fs
        x = np.tile(np.sin(2 * np.pi * 1.5 * t), (12, 1))
        out = resample_1024(x)
        expected = np.sin(2 * np.pi * 1.5 * np.arange(1024) / 102.4)
        assert out.shape == (12, 1024) and out.dtype == np.float32
        assert np.abs(out[:, 50:-50] - expected[50:-50]).max() < 0.02


def test_missing_samples_interpolated_when_few_rejected_when_a_lead_is_empty() -> None:
    x = np.tile(np.linspace(0, 1, 1000), (12, 1))
    x[3, 100:105] = np.nan
    np.testing.assert_allclose(fill_missing(x), np.tile(np.linspace(0, 1, 1000), (12, 1)))
    x[7] = np.nan
    with pytest.raises(Rejected) as e:
        fill_missing(x)
    assert e.value.reason == "nan_lead" and "V2" in e.value.detail


def test_short_record_rejected_and_ten_seconds_kept() -> None:
    with pytest.raises(Rejected) as e:
        clean(np.zeros((12, 900)), 100.0)
    assert e.value.reason == "too_short"
    out = clean(np.tile(np.arange(1200.0), (12, 1)), 100.0)
    assert out.shape == (12, 1000) and out[3, -1] == 999.0


def _synthetic_ecg(bpm: float, fs: float) -> np.ndarray:
    """A periodic ECG-like trace (narrow R, broad T) on all 12 leads, in mV."""
    t = np.arange(int(10 * fs)) / fs
    period = 60.0 / bpm
    phase = (t % period) - 0.3 * period
    beat = 1.2 * np.exp(-(phase / 0.012) ** 2) + 0.25 * np.exp(-((phase - 0.25) / 0.05) ** 2)
    return np.tile(beat, (12, 1))


@pytest.mark.parametrize("bpm", [48.0, 75.0, 130.0])
@pytest.mark.parametrize("fs", [100.0, 500.0])
def test_heart_rate_from_a_synthetic_periodic_signal(bpm: float, fs: float) -> None:
    assert hr_from_signal(_synthetic_ecg(bpm, fs), fs) == pytest.approx(bpm, rel=0.03)


def test_heart_rate_from_rr_only_when_valid() -> None:
    assert hr_from_rr(800) == 75.0
    assert hr_from_rr(29999) is None and hr_from_rr(0) is None and hr_from_rr(float("nan")) is None
    assert hr_from_signal(np.zeros((12, 1000)), 100.0) is None


def test_label_rules_and_splits() -> None:
    assert labels_from_scp(["NORM", "SR"], ["NORM"]) == {"af": False, "pvc": False, "abnormal": False}
    assert labels_from_scp(["AFLT"], []) == {"af": True, "pvc": False, "abnormal": True}
    assert labels_from_scp(["NORM", "PVC"], ["NORM"])["pvc"]
    assert labels_from_text(["Sinus rhythm", "Otherwise normal ECG"])["abnormal"] is False
    assert labels_from_text(["Sinus rhythm", "Borderline ECG"])["abnormal"] is True
    assert labels_from_text(["Atrial fibrillation", "Abnormal ECG"])["af"]
    assert labels_from_text(["Sinus rhythm with PVCs"])["pvc"]
    assert [split_for_fold(f) for f in (1, 8, 9, 10)] == ["train", "train", "val", "test"]
    assert split_for_patient("10000032") == split_for_patient("10000032")
    shares = pd.Series([split_for_patient(str(i)) for i in range(5000)]).value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["test"] - 0.1) < 0.02


def test_shards_round_trip_through_plain_pandas() -> None:
    rng = np.random.default_rng(0)
    rows = [{"ecg_id": f"{i:05d}", "source": "t", "patient_id": "p", "split": "train",
             "signal": rng.standard_normal((12, 1024)).astype(np.float32), "reports": ["a", "b"],
             "report_text": "a | b", "age": 50.0, "sex": "F", "hr": 60.0, "hr_source": "qrs", "af": False,
             "pvc": False, "abnormal": True, "scp_codes": [], "fs_source": 500.0} for i in range(3)]
    data = to_parquet_bytes(to_table(rows))
    np.testing.assert_array_equal(signals(pq.read_table(pa.BufferReader(data))), np.stack([r["signal"] for r in rows]))
    df = pd.read_parquet(pa.BufferReader(data))
    np.testing.assert_array_equal(np.stack(df["signal"][1]), rows[1]["signal"])


# ----------------------------------------------------------------------------------------- end to end
def _rejects(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / REJECTS)


def test_ptbxl_subset_end_to_end_and_rerun_is_idempotent(ray_local, ptbxl_dir: Path, tmp_path: Path) -> None:
    """60 records: 30 with a 500 Hz file (used), 30 with only 100 Hz; several shards; rerun replaces."""
    src, out = tmp_path / "ptbxl", tmp_path / "out"
    db = ptbxl_subset(ptbxl_dir, src, [*range(30), *range(900, 930)])
    summary = prepare("ptbxl", str(src), str(out), workers=2, shard_rows=25)
    assert summary["records_seen"] == 60 == summary["rows"] + summary["rejected"]
    assert summary["rejected"] == 0 and summary["shards"] == [f"part-0000{i}.parquet" for i in range(3)]
    assert json.loads((out / SUMMARY).read_text()) == summary
    assert pq.read_schema(out / "part-00000.parquet").metadata[b"synthgen.shards.schema_version"] == b"1"

    table = read_shards(str(out))
    ids = table["ecg_id"].to_pylist()
    assert ids == sorted(ids) == [f"{i:05d}" for i in db["ecg_id"]]
    assert sorted(set(table["fs_source"].to_pylist())) == [100.0, 500.0]
    folds = dict(zip(db["ecg_id"].map("{:05d}".format), db["strat_fold"]))
    assert all(s == split_for_fold(folds[i]) for i, s in zip(ids, table["split"].to_pylist()))
    df = table.drop(["signal"]).to_pandas()
    assert summary["splits"] == {s: int((df["split"] == s).sum()) for s in ("train", "val", "test")}
    assert df["age"].max() <= 90 and set(df["sex"]) <= {"M", "F"} and set(df["hr_source"]) == {"qrs"}
    assert df["hr"].between(35, 200).all()
    first = df.iloc[0]
    assert list(first["reports"]) == ["sinus rhythm", "normal ECG",
                                      "low QRS voltages in the frontal and horizontal leads"]
    af_rows = df[df["af"]]
    assert (af_rows["reports"].map(lambda r: r[0] in ("atrial fibrillation", "atrial flutter"))).all()
    assert first["report_text"] == "sinusrhythmus periphere niederspannung" and first["sex"] == "F"
    assert summary["labels"]["af"] == int(df["af"].sum()) and summary["labels"]["abnormal"] > 0

    x = signals(read_shards(str(out), split="test"))
    assert x.shape == ((df["split"] == "test").sum(), 12, 1024) and x.dtype == np.float32
    raw = wfdb.rdrecord(str(ptbxl_dir / db["filename_hr"][0])).p_signal.T  # record 1 at 500 Hz, in mV
    np.testing.assert_allclose(signals(table)[0], resample_poly(raw, 1024, 5000, axis=1), atol=1e-5)

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "part-00007.parquet").write_bytes(before["part-00000.parquet"])  # left by an earlier, larger run
    again = prepare("ptbxl", str(src), str(out), workers=2, shard_rows=25)
    assert again["fingerprint"] == summary["fingerprint"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same bytes, stale part gone
    assert read_shards(str(out)).num_rows == 60


def test_mimic_layout_lead_order_rr_and_patients(ray_local, ptbxl_dir: Path, tmp_path: Path) -> None:
    """MIMIC-IV-ECG's exact layout built here (no MIMIC copy exists) from PTB-XL 500 Hz signals, leads in
    MIMIC's order: aVF is stored before aVL, and the output's aVL must be the fixture's aVL."""
    src = tmp_path / "mimic"
    written = mimic_fixture(ptbxl_dir, src, n=6)
    summary = prepare("mimic-iv-ecg", str(src), str(tmp_path / "out"), patients=str(src / "patients.csv"),
                      workers=2)
    assert summary["rows"] == 6 and summary["hr_source"] == {"rr": 3, "qrs": 3}
    table = read_shards(str(tmp_path / "out"))
    x = signals(table)
    for i, ecg_id in enumerate(table["ecg_id"].to_pylist()):
        expected = resample_poly(written[ecg_id].T, 1024, 5000, axis=1)
        for lead in ("aVL", "aVF", "V6"):
            np.testing.assert_allclose(x[i, LEADS.index(lead)], expected[MIMIC_LEADS.index(lead)], atol=1e-4)
    df = table.drop(["signal"]).to_pandas()
    assert df["hr"][0] == 75.0 and df["hr_source"][0] == "rr" and df["hr_source"][1] == "qrs"
    assert list(df["age"]) == [52.0 + i for i in range(6)]  # anchor_age 52 + (ECG year − anchor year 2180)
    assert list(df["sex"]) == ["F", "F", "M", "M", "F", "F"]
    assert list(df["reports"][1]) == ["Atrial fibrillation", "Premature ventricular contractions", "Abnormal ECG"]
    assert list(df["af"]) == [False, True, False] * 2 and list(df["abnormal"]) == [False, True, True] * 2
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()

    no_patients = prepare("mimic-iv-ecg", str(src), str(tmp_path / "out2"), workers=2)
    assert no_patients["rows"] == 0 and no_patients["rejects_by_reason"] == {"no_age": 6}


def _write(folder: Path, name: str, signal: np.ndarray, names: list[str], fs: int = 100) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(names), sig_name=names, p_signal=signal, fmt=["16"] * len(names),
                adc_gain=[1000.0] * len(names), baseline=[0] * len(names), write_dir=str(folder))


def test_wfdb_folder_with_every_kind_of_bad_input(ray_local, ptbxl_dir: Path, tmp_path: Path) -> None:
    """Good records in nested folders plus one broken case each; the run goes on and counts add up."""
    src = tmp_path / "folder"
    good = [wfdb.rdrecord(str(ptbxl_dir / f"records100/00000/0000{i}_lr")).p_signal for i in range(1, 9)]
    _write(src / "a", "good1", good[0], PTBXL_LEADS)
    _write(src / "a" / "b", "good2", good[1], [n.lower() for n in PTBXL_LEADS])
    _write(src, "hr_given", good[2], PTBXL_LEADS)
    _write(src, "truncated", good[3], PTBXL_LEADS)
    (src / "truncated.dat").write_bytes((src / "truncated.dat").read_bytes()[:5000])
    _write(src, "no_dat", good[4], PTBXL_LEADS)
    (src / "no_dat.dat").unlink()
    _write(src, "broken_header", good[5], PTBXL_LEADS)
    (src / "broken_header.hea").write_text("broken_header twelve 100 1000\nnonsense\n")
    _write(src, "short", good[6][:500], PTBXL_LEADS)
    nan_lead = good[7].copy()
    nan_lead[:, 4] = np.nan
    _write(src, "nan_lead", nan_lead, PTBXL_LEADS)
    _write(src, "odd_leads", good[0], [f"X{i}" for i in range(12)])
    _write(src, "flat", np.zeros((1000, 12)), PTBXL_LEADS)
    _write(src, "no_beats", np.tile(np.arange(1000) / 1000.0, (12, 1)).T, PTBXL_LEADS)  # a 1 mV ramp: no QRS
    _write(src, "two_v1", np.concatenate([good[0], -good[0][:, 6:7]], axis=1), [*PTBXL_LEADS, "v1"])
    _write(src, "unlisted", good[1], PTBXL_LEADS)
    _write(src, "no_age", good[2], PTBXL_LEADS)
    _write(src, "no_sex", good[2], PTBXL_LEADS)
    rows = [("a/good1", "Sinus rhythm | Normal ECG", 60, "M", None),
            ("a/b/good2", "Atrial fibrillation", 70, "female", None),
            ("hr_given", "Sinus rhythm", 300, "F", 66.0),
            *[(name, "x", 50, "M", None) for name in ("truncated", "no_dat", "broken_header", "short", "nan_lead",
                                                        "odd_leads", "flat", "no_beats", "two_v1", "gone")],
            ("no_age", "x", None, "M", None), ("no_sex", "x", 40, "?", None)]
    meta = pd.DataFrame(rows, columns=["record", "report", "age", "sex", "hr"])
    meta.to_csv(tmp_path / "meta.csv", index=False)

    out = tmp_path / "out"
    summary = prepare("wfdb", str(src), str(out), metadata=str(tmp_path / "meta.csv"), workers=2)
    assert summary["records_seen"] == 16 == summary["rows"] + summary["rejected"]
    rejects = _rejects(out).set_index("ecg_id")
    assert rejects["reason"].to_dict() == {
        "truncated": "unreadable_record", "no_dat": "missing_record", "broken_header": "unreadable_record",
        "short": "too_short", "nan_lead": "nan_lead", "odd_leads": "unknown_leads",
        "flat": "implausible_amplitude", "no_beats": "no_hr", "two_v1": "duplicate_lead",
        "gone": "missing_record", "unlisted": "no_metadata", "no_age": "no_age", "no_sex": "no_sex"}
    assert summary["rejects_by_reason"] == rejects["reason"].value_counts().sort_index().to_dict()
    assert "aVL" in rejects.loc["nan_lead", "detail"]

    df = read_shards(str(out), columns=["ecg_id", "reports", "age", "sex", "hr", "hr_source", "af"]).to_pandas()
    df = df.set_index("ecg_id")
    assert list(df.index) == ["a/b/good2", "a/good1", "hr_given"]
    assert list(df.loc["a/good1", "reports"]) == ["Sinus rhythm", "Normal ECG"]
    assert df.loc["a/b/good2", "sex"] == "F" and df.loc["a/b/good2", "af"]
    assert df.loc["hr_given", "age"] == 90.0 and df.loc["hr_given", "hr"] == pytest.approx(66.0)
    assert df.loc["hr_given", "hr_source"] == "rr" and df.loc["a/good1", "hr_source"] == "qrs"

    parquet_meta = meta.head(3).drop(columns=["report"]).assign(report_0=["Sinus rhythm", "AF", "SR"],
                                                                 report_1=["Normal ECG", None, None])
    parquet_meta.to_parquet(tmp_path / "meta.parquet")
    summary = prepare("wfdb", str(src / "a"), str(tmp_path / "out2"), workers=2,
                      metadata=str(tmp_path / "meta.parquet"))
    assert summary["rows"] == 0 and summary["rejects_by_reason"] == {"missing_record": 3, "no_metadata": 2}


def test_truncated_ptbxl_record_is_rejected_and_run_goes_on(ray_local, ptbxl_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "ptbxl"
    ptbxl_subset(ptbxl_dir, src, slice(0, 4), copy=True)
    dat = src / "records500/00000/00002_hr.dat"
    dat.write_bytes(dat.read_bytes()[:1000])
    (src / "records500/00000/00003_hr.hea").unlink()  # falls back to the 100 Hz record
    summary = prepare("ptbxl", str(src), str(tmp_path / "out"), workers=2)
    assert summary["rows"] == 3 and summary["rejects_by_reason"] == {"unreadable_record": 1}
    fs = read_shards(str(tmp_path / "out"), columns=["ecg_id", "fs_source"]).to_pydict()
    assert fs == {"ecg_id": ["00001", "00003", "00004"], "fs_source": [500.0, 100.0, 500.0]}


def test_out_on_s3_and_rerun_replaces(ray_local, s3_server, ptbxl_dir: Path, tmp_path: Path) -> None:
    """--out s3://… (SeaweedFS): shards, rejects and the summary land there; a rerun leaves no stale part."""
    import s3fs

    src = tmp_path / "mimic"
    mimic_fixture(ptbxl_dir, src, n=4)
    out, opts = f"s3://{s3_server.BUCKET}/prepare-test", s3_server.storage_options
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    fs.pipe(f"{s3_server.BUCKET}/prepare-test/part-00003.parquet", b"stale")
    summary = prepare("mimic-iv-ecg", str(src), out, patients=str(src / "patients.csv"), storage_options=opts,
                      shard_rows=3)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_server.BUCKET}/prepare-test"))
    assert names == [SUMMARY, REJECTS, "part-00000.parquet", "part-00001.parquet"]
    assert json.loads(fs.cat(f"{s3_server.BUCKET}/prepare-test/{SUMMARY}")) == summary
    assert signals(read_shards(out, storage_options=opts)).shape == (4, 12, 1024)


# ---------------------------------------------------------------------------------------------- bad --src
@pytest.mark.parametrize("source", ["ptbxl", "mimic-iv-ecg", "wfdb", "physionet-challenge"])
def test_bad_src_raises_and_writes_nothing(source: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    for src in (tmp_path / "does-not-exist", empty):
        with pytest.raises(InputError, match=str(src)):
            prepare(source, str(src), str(out), metadata=str(tmp_path / "meta.csv"))
    assert not out.exists()


def test_cli_exits_2_on_bad_src(tmp_path: Path) -> None:
    from synthgen.cli import app

    result = CliRunner().invoke(app, ["prepare", "ptbxl", "--src", str(tmp_path / "nope"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "nope" in result.output and not (tmp_path / "out").exists()
