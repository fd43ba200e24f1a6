"""Inputs from the field (issue 12): each case in tests/fixtures/field-inputs/ run through the CLI, plus the
kinds of fault behind them — units and lead names decoded from WFDB headers by the one reader, tables read
as text, and outputs that their own readers (pandas, pyarrow, Ray Data, wfdb) read back exactly.

Fixtures are copies of the cases in the shared field-inputs folder (PTB-XL signals, CC BY 4.0; made-up
metadata); variants are written at test time under tmp_path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import wfdb
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.data.sources.common import read_table
from synthgen.ecg import LEADS
from synthgen.errors import InputError
from synthgen.io.paths import resolve
from synthgen.io.shards import REJECTS, SUMMARY, read_shards, signals
from synthgen.io.wfdb import (WfdbRecord, WfdbRecordError, canonical_lead, comment_fields, escape_comment,
                              read_wfdb, unescape_comment, write_records)

CASES = Path(__file__).parent / "fixtures" / "field-inputs"
MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


def cli(*args: str) -> object:
    """Run the CLI in-process (on the session's Ray when a test holds ``ray_local``)."""
    return CliRunner().invoke(app, list(args))


def _control() -> np.ndarray:
    return read_wfdb(str(CASES / "read-shards-folder" / "ctl")).signal


def _rewrite_units(src: Path, dst: Path, unit: str, gain_factor: float, encoding: str = "utf-8") -> None:
    """Copy a record with every signal's unit spelled ``unit`` and its gain multiplied by ``gain_factor``
    (the unit's size in mV keeps the physical values; 1 keeps the samples' numbers, mislabelling them)."""
    lines = src.with_suffix(".hea").read_text().splitlines()
    out = [lines[0].replace(src.name, dst.name, 1)]
    for line in lines[1:]:
        fields = line.split(" ")
        gain, _, baseline = fields[2].partition("(")
        fields[0] = f"{dst.name}.dat"
        fields[2] = f"{float(gain) * gain_factor!r}({baseline.split(')')[0]})/{unit}"
        out.append(" ".join(fields))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.with_suffix(".hea").write_bytes(("\n".join(out) + "\n").encode(encoding))
    shutil.copy(src.with_suffix(".dat"), dst.with_suffix(".dat"))


# -------------------------------------------------------------------------------- kind 1: units and leads
@pytest.mark.parametrize("unit,to_mv,encoding", [
    ("mV", 1.0, "utf-8"), ("mv", 1.0, "utf-8"), ("MV", 1.0, "utf-8"), ("uV", 1e-3, "utf-8"),
    ("µV", 1e-3, "utf-8"), ("µV", 1e-3, "latin-1"), ("μV", 1e-3, "utf-8"), ("V", 1e3, "utf-8"),
    ("nV", 1e-6, "utf-8")])
def test_units_are_decoded_from_the_header_bytes(tmp_path: Path, unit: str, to_mv: float, encoding: str) -> None:
    """The same physical values in every spelling of a unit read as the same mV (µV as UTF-8 and as Latin-1)."""
    _rewrite_units(CASES / "read-shards-folder" / "ctl", tmp_path / "rec", unit, to_mv, encoding)
    np.testing.assert_allclose(read_wfdb(str(tmp_path / "rec")).signal, _control(), rtol=1e-9, atol=1e-12)


def test_microvolt_case_reads_like_its_control() -> None:
    """``micro`` holds the control record in whole µV with a UTF-8 ``µV`` unit (wfdb alone reads ``V``)."""
    micro = read_wfdb(str(CASES / "units-microvolt-header" / "micro"))
    assert wfdb.rdheader(str(CASES / "units-microvolt-header" / "micro")).units[0] == "V"  # the fault
    np.testing.assert_allclose(micro.signal, _control(), atol=0.5e-3)  # quantised to 1 µV
    assert micro.fs == 500.0 and micro.signal.shape == (12, 5000)


@pytest.mark.parametrize("unit,reason", [
    ("V", "implausible_amplitude"),   # mV samples labelled V: 1000× too large
    ("uV", "implausible_amplitude"),  # … labelled µV: 1000× too small
    ("mmHg", "unknown_units")])
def test_a_wrong_unit_is_rejected_with_its_reason(tmp_path: Path, unit: str, reason: str) -> None:
    _rewrite_units(CASES / "read-shards-folder" / "ctl", tmp_path / "rec", unit, 1.0)
    with pytest.raises(WfdbRecordError) as e:
        read_wfdb(str(tmp_path / "rec"))
    assert e.value.reason == reason and str(tmp_path / "rec") in str(e.value)


def test_records_on_s3_are_read_with_the_storage_options(s3_server) -> None:
    """wfdb-python cannot take storage options; the reader fetches the header and the files it names."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options)
    for ext in (".hea", ".dat"):
        fs.put(str(CASES / "units-microvolt-header" / f"micro{ext}"), f"{s3_server.BUCKET}/field/micro{ext}")
    url = f"s3://{s3_server.BUCKET}/field/micro"
    ecg = read_wfdb(url, s3_server.storage_options)
    np.testing.assert_allclose(ecg.signal, read_wfdb(str(CASES / "units-microvolt-header" / "micro")).signal)
    with pytest.raises(WfdbRecordError) as e:
        read_wfdb(f"{url}-gone", s3_server.storage_options)
    assert e.value.reason == "missing_record"


def test_lead_names_are_matched_by_spelling_not_position(tmp_path: Path) -> None:
    assert [canonical_lead(n) for n in ("AVR", "avl", "aVF", "DI", "DIII", "Lead II", "v6", " V1 ")] == \
        ["aVR", "aVL", "aVF", "I", "III", "II", "V6", "V1"]
    assert [canonical_lead(n) for n in ("-aVR", "V7", "MLII", "ECG", "")] == [None] * 5
    x = _control()
    spelled = ["DI", "Lead II", "iii", "AVR", "AVF", "avl", "V1", "V2", "V3", "V4", "V5", "V6", "Resp"]
    order = [LEADS.index(n) for n in MIMIC_ORDER]
    raw = np.concatenate([x[order], x[:1] * 0.5]).T  # MIMIC's order, odd spellings, an extra non-ECG signal
    wfdb.wrsamp("mixed", fs=500, units=["mV"] * 13, sig_name=spelled, p_signal=raw, fmt=["16"] * 13,
                adc_gain=[1000.0] * 13, baseline=[0] * 13, write_dir=str(tmp_path))
    np.testing.assert_allclose(read_wfdb(str(tmp_path / "mixed")).signal, x, atol=0.5e-3)

    for names, reason in ((["AVR" if n == "aVL" else n for n in LEADS], "duplicate_lead"),
                          ([*LEADS[:-1], "V7"], "unknown_leads")):
        wfdb.wrsamp("bad", fs=500, units=["mV"] * 12, sig_name=names, p_signal=x.T, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
        with pytest.raises(WfdbRecordError) as e:
            read_wfdb(str(tmp_path / "bad"))
        assert e.value.reason == reason


def test_duplicate_lead_case_is_rejected_by_prepare_and_plot(ray_local, tmp_path: Path) -> None:
    """``dup`` has 13 signals, V1 twice (the second inverted): no reader may pick one of them silently."""
    case = CASES / "duplicate-lead-name"
    res = cli("prepare", "wfdb", "--src", str(case), "--metadata", str(case / "meta.csv"), "--out",
              str(tmp_path / "o2"))
    assert res.exit_code == 0, res.output
    rejects = pd.read_parquet(tmp_path / "o2" / REJECTS)
    assert rejects[["ecg_id", "reason"]].to_dict("records") == [{"ecg_id": "dup", "reason": "duplicate_lead"}]
    assert "V1" in rejects["detail"][0] and read_shards(str(tmp_path / "o2")).num_rows == 0

    res = cli("plot", "--src", str(case / "dup"), "--out", str(tmp_path / "dup.png"))
    assert res.exit_code == 2 and "duplicate_lead" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "dup.png").exists()


def test_microvolt_case_through_prepare_equals_its_control(ray_local, tmp_path: Path) -> None:
    micro, ctl = CASES / "units-microvolt-header", CASES / "read-shards-folder"
    for case, out in ((micro, "o1"), (ctl, "ctl")):
        res = cli("prepare", "wfdb", "--src", str(case), "--metadata", str(case / "meta.csv"), "--out",
                  str(tmp_path / out))
        assert res.exit_code == 0, res.output
    a, b = signals(read_shards(str(tmp_path / "o1"))), signals(read_shards(str(tmp_path / "ctl")))
    assert a.shape == (1, 12, 1024) and 0.5 < np.ptp(a[0, 0]) < 2.0  # lead I ≈ 0.9 mV, not ≈ 886,000 mV
    np.testing.assert_allclose(a, b, atol=1e-3)


# ------------------------------------------------------------------------------------- kind 2: tables as text
def test_leading_zero_record_names_case(ray_local, tmp_path: Path) -> None:
    case = CASES / "leading-zero-record-names"
    res = cli("prepare", "wfdb", "--src", str(case / "src"), "--metadata", str(case / "meta.csv"), "--out",
              str(tmp_path / "o3"))
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o3" / SUMMARY).read_text())
    assert summary["rows"] == 1 and summary["rejected"] == 0
    assert read_shards(str(tmp_path / "o3"), columns=["ecg_id"])["ecg_id"].to_pylist() == ["00017"]


def test_tables_are_text_and_blank_or_bad_rows_are_named(tmp_path: Path) -> None:
    fs, _ = resolve(str(tmp_path))
    (tmp_path / "m.csv").write_text("record,age,sex,hr\n00017,56,F,\n,,,\n007,NaN,M,inf\n")
    df = read_table(fs, str(tmp_path / "m.csv"), "--metadata", {"record"})
    assert df["record"].tolist() == ["00017", "007"] and df["age"].tolist() == ["56", "NaN"]
    assert df.index.tolist() == [0, 2]  # the all-blank row is dropped; positions stay for messages

    pq.write_table(pa.table({"record": pa.array([17, None], pa.int64()), "age": [56.5, 60.0]}),
                   tmp_path / "m.parquet")
    df = read_table(fs, str(tmp_path / "m.parquet"), "--metadata", {"record"})
    assert df.to_dict("records") == [{"record": "17", "age": "56.5"}, {"record": "", "age": "60"}]

    (tmp_path / "bad.csv").write_text("record,age\na,1\nb,2,3,4\n")
    with pytest.raises(InputError, match=r"bad.csv.*line 3"):
        read_table(fs, str(tmp_path / "bad.csv"), "--metadata", {"record"})


def test_ptbxl_rows_with_blank_or_bad_ids_are_rejected_by_name(ray_local, ptbxl_dir: Path, tmp_path: Path) -> None:
    from fixtures.builders import ptbxl_subset

    from synthgen.data.prepare import prepare

    src = tmp_path / "ptbxl"
    ptbxl_subset(ptbxl_dir, src, slice(0, 3))
    lines = (src / "ptbxl_database.csv").read_text().splitlines()
    header = lines[0].split(",")
    blank_id = lines[2].split(",", 1)[1]  # row 2 with an empty ecg_id
    lines[2] = "," + blank_id
    lines[3] = "x" + lines[3]  # ecg_id "x3"
    lines.append("," * (len(header) - 1))  # an all-blank row
    (src / "ptbxl_database.csv").write_text("\n".join(lines) + "\n")
    summary = prepare("ptbxl", str(src), str(tmp_path / "out"), workers=2)
    rejects = pd.read_parquet(tmp_path / "out" / REJECTS).set_index("ecg_id")
    assert summary["records_seen"] == 3 and summary["rows"] == 1
    assert rejects["reason"].to_dict() == {"(row 2)": "bad_metadata", "x3": "bad_metadata"}
    assert "row 2" in rejects.loc["(row 2)", "detail"] and "'x3'" in rejects.loc["x3", "detail"]


# ------------------------------------------------------------------------ kind 3: outputs their readers read
def test_prepared_folder_reads_as_exactly_its_rows_everywhere(ray_local, tmp_path: Path) -> None:
    """The README's way of reading shards (pandas on the folder), pyarrow datasets and Ray Data."""
    import ray.data

    case = CASES / "read-shards-folder"
    # a second record that is rejected, so that _rejects.parquet has a row that must not be read as data
    _rewrite_units(case / "ctl", tmp_path / "src" / "ctl", "mV", 1.0)
    _rewrite_units(case / "ctl", tmp_path / "src" / "volts", "V", 1.0)
    (tmp_path / "meta.csv").write_text((case / "meta.csv").read_text() + "volts,x,50,M\n")
    out = tmp_path / "o5"
    res = cli("prepare", "wfdb", "--src", str(tmp_path / "src"), "--metadata", str(tmp_path / "meta.csv"), "--out",
              str(out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [SUMMARY, REJECTS, "part-00000.parquet"]
    assert pd.read_parquet(out / REJECTS)["reason"].tolist() == ["implausible_amplitude"]

    df = pd.read_parquet(str(out))
    assert df["ecg_id"].tolist() == ["ctl"] and np.stack(df.signal.map(np.stack)).shape == (1, 12, 1024)
    table = pads.dataset(str(out)).to_table()
    assert table["ecg_id"].to_pylist() == ["ctl"] and table.schema.names == df.columns.tolist()
    rows = ray.data.read_parquet(str(out)).take_all()
    assert [r["ecg_id"] for r in rows] == ["ctl"] and np.asarray(rows[0]["signal"]).shape == (12, 1024)


def test_write_records_commits_only_records_that_read_back(tmp_path: Path) -> None:
    x = _control()[:, :1000]
    fs, root = resolve(str(tmp_path / "ok"))
    text = "Vorhofflimmern\nüber 2 µV # Ω \\ end"
    write_records(fs, root, [WfdbRecord("r1", x, 500.0, {"reports": text, "age": 70.0})])
    rec = wfdb.rdrecord(str(tmp_path / "ok" / "r1"))  # the reference reader takes the header
    assert rec.sig_name == list(LEADS) and rec.units == ["mV"] * 12 and len(rec.comments) == 2
    assert all(c.isascii() for c in rec.comments) and comment_fields(rec.comments)["reports"] == text
    assert np.abs(rec.p_signal.T - x).max() <= 0.5 / min(rec.adc_gain) + 1e-9
    assert (tmp_path / "ok" / "RECORDS").read_text() == "r1\n"
    assert unescape_comment(escape_comment(text)) == text and unescape_comment("C:\\") == "C:\\"

    fs, root = resolve(str(tmp_path / "bad"))
    with pytest.raises(RuntimeError, match="does not read back"):  # a header comment cannot keep a trailing space
        write_records(fs, root, [WfdbRecord("r2", x, 500.0, {"label": "af "})])
    assert not (tmp_path / "bad").exists()


def test_newline_in_report_case_writes_readable_wfdb(ray_local, tiny_bundle, tmp_path: Path) -> None:
    """A report with a line break (and one with non-ASCII text): exit 0 only with WFDB records that wfdb
    reads, whose values are the Parquet signal within half an ADC step, and which `synthgen plot` draws."""
    import ray.data

    manifest = tmp_path / "manifest.csv"
    manifest.write_text((CASES / "newline-in-report" / "manifest.csv").read_text()
                        + "\"Vorhofflimmern, QRS 120 µs\",50,F,,af\n")
    out = tmp_path / "o6"
    res = cli("generate", "--manifest", str(manifest), "--n", "3", "--steps", "2", "--format", "both",
              "--out", str(out), "--model", tiny_bundle.url, "--no-progress")
    assert res.exit_code == 0, res.output
    assert (out / "_SUCCESS.json").exists() and (out / "_plan.json").exists()

    df = pd.read_parquet(out / "shards")  # docs/schema-outputs.md's reading of generated shards
    assert np.stack(df.signal.map(np.stack)).shape == (3, 12, 1024)
    assert df["report_text"].tolist() == ["sinus rhythm\nleft axis deviation", "atrial fibrillation",
                                          "Vorhofflimmern, QRS 120 µs"]
    assert pads.dataset(str(out / "shards")).count_rows() == 3 == ray.data.read_parquet(str(out / "shards")).count()
    for row in df.itertuples():
        rec = wfdb.rdrecord(str(out / row.wfdb_record))
        assert rec.sig_name == list(LEADS) and rec.units == ["mV"] * 12 and rec.fs == pytest.approx(102.4)
        parquet = np.stack(row.signal)
        steps = np.abs(rec.p_signal.T - parquet) * np.asarray(rec.adc_gain)[:, None]
        assert steps.max() <= 0.501, "WFDB values differ from the Parquet signal beyond quantisation"
        assert comment_fields(rec.comments)["reports"] == " | ".join(row.reports)
    first = out / df["wfdb_record"][0]
    res = cli("plot", "--src", str(first), "--out", str(tmp_path / "first.png"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "first.png").stat().st_size > 10_000
