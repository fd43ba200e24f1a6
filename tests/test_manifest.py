"""Manifest parsing, validation (all bad rows at once) and the deterministic count split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.conditions.spec import Condition
from synthgen.errors import InputError
from synthgen.generate.manifest import (build_minority_manifest, class_conditions, largest_remainder, read_manifest,
                                        sample_counts)
from synthgen.io.shards import to_parquet_bytes, to_table


def write(tmp_path, text: str, name: str = "m.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_report_forms_and_blanks(tmp_path):
    specs = read_manifest(write(tmp_path, "report,age,sex,hr,label\n"
                                          "atrial fibrillation | left axis deviation,63,male,,af\n"
                                          "sinus rhythm,,,72.5,\n"))
    assert specs[0].condition == Condition(("atrial fibrillation", "left axis deviation"), 63.0, "M", None)
    assert specs[0].label == "af" and specs[1].label is None
    assert specs[1].condition == Condition(("sinus rhythm",), None, None, 72.5)
    numbered = read_manifest(write(tmp_path, "report_2,report_1,sex\nsecond,first,F\n,only,f\n", "k.csv"))
    assert [s.condition.reports for s in numbered] == [("first", "second"), ("only",)]
    pq_path = tmp_path / "m.parquet"
    pd.DataFrame({"report": [["a", "b"]], "age": [40.0], "n": [3]}).to_parquet(pq_path)
    [spec] = read_manifest(str(pq_path))
    assert spec.condition.reports == ("a", "b") and spec.n == 3 and spec.condition.age == 40.0


def test_every_bad_row_is_named_at_once(tmp_path):
    with pytest.raises(InputError) as e:
        read_manifest(write(tmp_path, "report,age,sex,hr,n\n"
                                      "ok,50,M,60,1\n"
                                      ",130,X,10,-1\n"
                                      "ok,abc,F,400,1.5\n"))
    msg = str(e.value)
    for expected in ("row 2: report=''", "row 2: age='130'", "row 2: sex='X'", "row 2: hr='10'", "row 2: n='-1'",
                     "row 3: age='abc'", "row 3: hr='400'", "row 3: n='1.5'"):
        assert expected in msg
    assert "row 1" not in msg and "8 bad value(s)" in msg


@pytest.mark.parametrize("text, needle", [
    ("report,Age\nx,3\n", "unknown column"),
    ("report,report_1\nx,y\n", "both 'report' and report_1"),
    ("age\n3\n", "no report column"),
    ("report,n,weight\nx,1,1\n", "both 'n' and 'weight'"),
    ("report\n", "no rows"),
])
def test_bad_columns(tmp_path, text, needle):
    with pytest.raises(InputError, match=needle):
        read_manifest(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_manifest(str(tmp_path / "nope.csv"))


def test_counts(tmp_path):
    assert largest_remainder([1, 1, 1], 10) == [4, 3, 3]
    assert largest_remainder([1, 2, 1], 7) == [2, 3, 2]
    even = read_manifest(write(tmp_path, "report\na\nb\nc\n"))
    assert sample_counts(even, 5) == [2, 2, 1]
    assert sample_counts(even, None) == [1, 1, 1]
    by_n = read_manifest(write(tmp_path, "report,n\na,1\nb,3\n", "n.csv"))
    assert sample_counts(by_n, None) == [1, 3] and sample_counts(by_n, 8) == [2, 6]
    by_w = read_manifest(write(tmp_path, "report,weight\na,0.5\nb,0\nc,1.5\n", "w.csv"))
    assert sample_counts(by_w, 10) == [3, 0, 7] and sum(sample_counts(by_w, 999)) == 999


def test_build_minority_manifest(tmp_path):
    rows = [dict(ecg_id=f"e{i}", source="t", patient_id=f"p{i}", split=split, signal=np.zeros((12, 1024), np.float32),
                 reports=["atrial fibrillation", "left axis deviation"] if af else ["sinus rhythm"],
                 report_text="", age=50.0 + i, sex="F", hr=80.0, hr_source="rr", af=af, pvc=False, abnormal=af,
                 scp_codes=[], fs_source=100.0)
            for i, (split, af) in enumerate([("train", True), ("train", False), ("val", True), ("train", True)])]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-00000.parquet").write_bytes(to_parquet_bytes(to_table(rows)))
    out = str(tmp_path / "af.csv")
    assert build_minority_manifest(str(tmp_path / "shards"), "af", out) == 2
    specs = read_manifest(out)
    assert [s.condition.age for s in specs] == [50.0, 53.0]
    assert specs[0].condition.reports == ("atrial fibrillation", "left axis deviation") and specs[0].label == "af"
    with pytest.raises(InputError, match="expected one of"):
        build_minority_manifest(str(tmp_path / "shards"), "mi", out)
    with pytest.raises(InputError, match="no train records with pvc"):
        build_minority_manifest(str(tmp_path / "shards"), "pvc", out)
    rest = class_conditions(str(tmp_path / "shards"), "af", negative=True)
    assert rest["age"].tolist() == [51.0] and rest["label"].tolist() == ["not_af"] and rest["n"].tolist() == [1]
    res = CliRunner().invoke(app, ["manifest", "split", "--data", str(tmp_path / "shards"), "--split", "train",
                                   "--out", str(tmp_path / "train.csv")])
    assert res.exit_code == 0 and "3 condition specs" in res.output
    assert [s.condition.age for s in read_manifest(str(tmp_path / "train.csv"))] == [50.0, 51.0, 53.0]


def test_shipped_example_manifest_is_valid():
    from importlib.resources import files

    specs = read_manifest(str(files("synthgen").joinpath("assets", "examples", "minority_af.csv")))
    assert {s.label for s in specs} == {"af", "pvc"} and all(s.n for s in specs)


def test_provenance_columns_are_read_and_fingerprinted_only_when_present(tmp_path):
    import hashlib
    import json
    from dataclasses import asdict

    from synthgen.generate.manifest import specs_fingerprint

    plain = read_manifest(write(tmp_path, "report,label\nsinus rhythm,x\n"))
    old_formula = hashlib.sha256(json.dumps([[asdict(s.condition), s.label] for s in plain],
                                            sort_keys=True).encode()).hexdigest()
    assert specs_fingerprint(plain) == old_formula  # runs started before these columns existed still resume
    text = ("report_1,report_2,label,condition_source,condition_citation\n"
            "a,b,Brugada,\"curated table  row 1\",\"Smith J. A review. 2001\"\n")
    [spec] = read_manifest(write(tmp_path, text, "p.csv"))
    assert spec.condition_source == "curated table row 1" and spec.condition_citation == "Smith J. A review. 2001"
    assert spec.text_fields() == {"label": "Brugada", "condition_source": "curated table row 1",
                                  "condition_citation": "Smith J. A review. 2001"}
    [edited] = read_manifest(write(tmp_path, text.replace("row 1", "row 2"), "q.csv"))
    assert specs_fingerprint([spec]) != specs_fingerprint([edited])
