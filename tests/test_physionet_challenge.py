"""`synthgen prepare physionet-challenge` on real PhysioNet/CinC Challenge 2021 records (.hea + MATLAB v4 .mat).

Records are read in place from the shared 199-record sample (five databases); the end-to-end test links a
handful of them into a folder tree and adds the faults users meet (an unknown code, a header without #Dx, a
name twice, a record shorter than 10 s) written at test time. Nothing is copied into the repo.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb
from scipy.signal import resample_poly

from synthgen.data.labels import SNOMED_AF, SNOMED_PVC, labels_from_snomed, labels_from_text
from synthgen.data.prepare import prepare
from synthgen.data.sources.physionet_challenge import dx_statements, header_comments, reports, tasks
from synthgen.data.splits import split_for_patient
from synthgen.generate.manifest import class_conditions
from synthgen.io.shards import read_shards, signals

LINKED = ["cpsc_2018/A0001", "cpsc_2018/A0002", "cpsc_2018/A0005", "georgia/E00015", "georgia/E00001",
          "ptb-xl/HR03961", "ningbo/JS20006"]


def header_codes(cinc: Path) -> set[str]:
    return {c.strip() for p in cinc.rglob("*.hea") for c in header_comments(p.read_text()).get("dx", "").split(",")
            if c.strip()}


def test_table_words_codes_as_ptbxl_does_and_covers_the_sample(cinc_dir: Path, ptbxl_dir: Path) -> None:
    """Every code of the 199 headers has a row; a row naming an SCP code uses PTB-XL's description word for word
    and its rhythm flag; the label code sets agree with the English text rule on their own statements."""
    scp = pd.read_csv(ptbxl_dir / "scp_statements.csv", index_col=0)
    table_path = Path(__file__).resolve().parents[1] / "synthgen" / "assets" / "snomed_ct" / "dx_statements.csv"
    with table_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len({r["snomed_ct_code"] for r in rows}) == 136
    for r in rows:
        if r["scp_code"]:
            assert r["statement"] == scp.loc[r["scp_code"], "description"], r
            assert (scp.loc[r["scp_code"], "rhythm"] == 1) == (r["rhythm"] == "1"), r
        assert bool(r["statement"]) == bool(r["challenge_table"]), r  # only the 3 unnamed Ningbo codes are empty
    table = dx_statements()
    assert header_codes(cinc_dir) <= set(table)
    assert (SNOMED_AF | SNOMED_PVC) <= set(table)
    for code, st in table.items():
        by_text = labels_from_text([st.text])
        assert (by_text["af"], by_text["pvc"]) == (code in SNOMED_AF, code in SNOMED_PVC), (code, st.text)


def test_reports_rhythm_first_normal_only_for_sinus_rhythm_alone() -> None:
    # JS00001's header order: AF, RBBB, T-wave abnormal; 59118001 and 713427006 are one diagnosis (one statement)
    assert reports(["164889003", "59118001", "164934002", "713427006"], normal=False) == (
        "atrial fibrillation", "complete right bundle branch block", "T-wave abnormality")
    assert labels_from_snomed(["426783006"]) == {"af": False, "pvc": False, "abnormal": False}
    assert reports(["426783006"], normal=True) == ("sinus rhythm", "normal ECG")  # as PTB-XL's NORM + SR
    assert labels_from_snomed(["426783006", "426177001"])["abnormal"]  # sinus bradycardia is a finding
    assert labels_from_snomed(["164890007"])["af"] and labels_from_snomed(["164884008"])["pvc"]
    assert reports(["251238007", "427172004"], normal=False) == ("ventricular premature complex",)


def test_tasks_from_the_real_headers(cinc_dir: Path) -> None:
    by_id = {t.ecg_id: t for t in tasks(str(cinc_dir))}
    assert len(by_id) == 199 and not [t for t in by_id.values() if t.problem]
    a2 = by_id["A0002"]
    assert (a2.age, a2.sex, a2.reports, a2.report_text) == (49.0, "F", ("sinus rhythm", "normal ECG"), "426783006")
    assert a2.labels == {"af": False, "pvc": False, "abnormal": False}
    assert a2.patient_id == "A0002" and a2.split == split_for_patient("A0002") and a2.path.endswith("cpsc_2018/A0002")
    assert by_id["JS00001"].reports == ("atrial fibrillation", "complete right bundle branch block",
                                        "T-wave abnormality")
    assert by_id["E00001"].age is None  # "#Age: NaN"
    js = by_id["JS20006"]  # carries 251238007, named in no challenge table
    assert js.labels["pvc"] and "251238007" in js.report_text and "" not in js.reports


def _write_short_record(cinc: Path, dst: Path) -> None:
    """A real record cut to 6 s, written as a WFDB .dat record with the challenge's header comments."""
    rec = wfdb.rdrecord(str(cinc / "cpsc_2018" / "A0002"))
    dst.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp("SHORT6", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, p_signal=rec.p_signal[:3000],
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                comments=["Age: 50", "Sex: Female", "Dx: 426783006"], write_dir=str(dst))


def challenge_tree(cinc: Path, dst: Path) -> None:
    """A handful of real records linked into a challenge-like tree, plus one fault of each kind."""
    for name in LINKED:
        for ext in (".hea", ".mat"):
            (dst / f"{name}{ext}").parent.mkdir(parents=True, exist_ok=True)
            (dst / f"{name}{ext}").symlink_to(cinc / f"{name}{ext}")
    bad = dst / "edited"
    bad.mkdir()
    header = (cinc / "cpsc_2018" / "A0002.hea").read_text()
    (bad / "XUNK.hea").write_text(header.replace("#Dx: 426783006", "#Dx: 426783006,999999999"))
    (bad / "XNODX.hea").write_text(header.replace("#Dx: 426783006\n", ""))
    (bad / "A0002.hea").write_text(header)  # the same record name a second time
    (bad / "A0002.mat").symlink_to(cinc / "cpsc_2018" / "A0002.mat")
    _write_short_record(cinc, dst / "short")


def test_prepare_a_handful_end_to_end(ray_local, cinc_dir: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "challenge", tmp_path / "shards"
    challenge_tree(cinc_dir, src)
    summary = prepare("physionet-challenge", str(src), str(out))
    assert summary["records_seen"] == 11 and summary["rows"] == 6
    assert summary["rejects_by_reason"] == {"duplicate_record": 1, "no_age": 1, "no_dx": 1, "too_short": 1,
                                            "unknown_dx": 1}
    assert json.loads((out / "_dataset.json").read_text()) == summary
    rejects = pd.read_parquet(out / "_rejects.parquet").set_index("ecg_id")
    assert "999999999" in rejects.loc["XUNK", "detail"] and "cpsc_2018/A0002" in rejects.loc["A0002", "detail"]
    assert rejects.loc["SHORT6", "reason"] == "too_short" and rejects.loc["E00001", "reason"] == "no_age"

    table = read_shards(str(out))
    df = table.to_pandas().set_index("ecg_id")
    assert list(df.index) == ["A0001", "A0002", "A0005", "E00015", "HR03961", "JS20006"]
    assert (df.source == "physionet-challenge").all() and (df.fs_source == 500.0).all()
    assert list(df.loc["A0002", "reports"]) == ["sinus rhythm", "normal ECG"] and not df.loc["A0002", "abnormal"]
    assert df.loc["A0005", "pvc"] and list(df.loc["A0005", "reports"]) == ["ventricular premature complex"]
    assert df.loc["JS20006", "pvc"] and df.loc["A0001", "abnormal"]
    assert [df.loc[n, "split"] for n in df.index] == [split_for_patient(n) for n in df.index]
    x = signals(table)
    assert x.shape == (6, 12, 1024) and np.isfinite(x).all()
    # A0001 runs 15 s: the row is its first 10 s (leads by name; gain 1000/mV decoded by wfdb)
    rec = wfdb.rdrecord(str(cinc_dir / "cpsc_2018" / "A0001"))
    assert rec.p_signal.shape[0] == 7500
    first_10s = resample_poly(rec.p_signal[:5000].T, 1024, 5000, axis=1)
    np.testing.assert_allclose(x[0], first_10s, atol=1e-5)
    # E00015 (4880/mV) and HR03961 (unit written "mv") come out in mV like the rest: QRS of ~0.5–5 mV
    ptp = np.ptp(x, axis=2).max(axis=1)
    assert ((ptp > 0.3) & (ptp < 10)).all(), ptp

    # a real external set: `manifest split` reads its conditions
    manifest = class_conditions(str(out), None, split="train")
    assert len(manifest) == int((df.split == "train").sum()) and set(manifest.sex) <= {"M", "F"}

