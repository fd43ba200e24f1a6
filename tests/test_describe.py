"""`synthgen manifest describe`: the curated table, unknown names, the OpenAI path against a local server speaking
the chat-completions API (tests/fake_openai.py), the chat cache, the vocabulary check, and the plot caption of
what generate makes from such a manifest."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_openai import KEY, MALFORMED, TIMEOUT, FakeOpenAIServer, running_server
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.conditions.describe import (RESPONSE_FORMAT, DescriptionServiceError, curated_conditions,
                                          describe, describe_summary, find_curated, nearest_statements,
                                          scp_vocabulary)
from synthgen.errors import InputError
from synthgen.generate.manifest import build_describe_manifest, read_manifest

FAST = dict(base_delay=0.001, max_delay=0.01)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with running_server() as srv:
        yield srv


@pytest.fixture
def openai_env(server: FakeOpenAIServer, monkeypatch) -> FakeOpenAIServer:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    return server


# ------------------------------------------------------------------------------------------ curated table
def test_curated_table_is_complete_cited_and_in_the_training_vocabulary():
    table = curated_conditions()
    assert len(table) >= 30 and len({c.key for c in table}) == len(table)
    statements = {d for _, d in scp_vocabulary()}
    assert len(statements) == 71 and {"prolonged PR interval", "third degree AV block"} <= statements
    names: dict[str, str] = {}
    for c in table:
        assert c.row == table.index(c) + 1
        assert len(c.findings) >= 2 and all(f and "|" not in f and f == f.strip() for f in c.findings), c.key
        assert re.search(r"(19|20)\d\d", c.source) and len(c.source) > 40, c.key  # a findable citation
        assert (c.typical_hr is None) == (c.typical_hr_basis is None), c.key
        assert c.typical_hr is None or 20 <= c.typical_hr <= 300
        assert c.category in {"rare cardiac", "pericardial", "electrolyte", "environmental", "drug", "pulmonary",
                              "neurological", "endocrine"}
        for n in c.names():  # no name or alias leads to two conditions
            key = re.sub(r"[^0-9a-z]+", " ", n.casefold()).strip()
            assert names.setdefault(key, c.key) == c.key, (n, c.key, names[key])
    findings = [f for c in table for f in c.findings]
    assert sum(f in statements for f in findings) >= len(findings) // 3  # worded as SCP statements where possible
    by_key = {c.key: c for c in table}
    assert by_key["complete_heart_block"].typical_hr == 40 and by_key["hypothermia"].typical_hr < 60
    assert by_key["brugada_type1"].findings[0].startswith("coved ST elevation")
    assert by_key["hyperkalemia"].findings[0].startswith("tall, peaked")
    assert "Wolf-Parkinson-White syndrome" in by_key["wpw"].findings  # PTB-XL's own spelling, so it matches


@pytest.mark.parametrize("name, key", [
    ("Brugada syndrome", "brugada_type1"), ("brugada", "brugada_type1"), ("LQTS", "long_qt"),
    ("long QT syndrome", "long_qt"), ("Long-QT  syndrome", "long_qt"), ("hyperkalaemia", "hyperkalemia"),
    ("third-degree AV block", "complete_heart_block"), ("WPW", "wpw"), ("de_winter", "de_winter"),
])
def test_aliases(name, key):
    assert find_curated(name).key == key


def test_unknown_condition_lists_close_matches_on_one_line(tmp_path):
    with pytest.raises(InputError) as info:
        describe(["Brugda syndrom"])
    msg = str(info.value)
    assert "unknown condition 'Brugda syndrom'" in msg and "close matches:" in msg and "Brugada" in msg
    assert "\n" not in msg and "--list" in msg
    with pytest.raises(InputError, match="no close match"):
        find_curated("xyzzy")
    out = tmp_path / "m.csv"
    res = CliRunner().invoke(app, ["manifest", "describe", "hyperkalemia", "Long QT sindrome", "--out", str(out),
                                   "--no-vocabulary"])
    assert res.exit_code == 2 and not out.exists()
    assert "close matches" in res.output and "long QT syndrome" in res.output


def test_curated_manifest_reads_back_as_generate_reads_it(tmp_path):
    out = str(tmp_path / "m.csv")
    descs = build_describe_manifest(["Brugada syndrome", "complete heart block", "LQTS"], out, age=45, sex="male",
                                    n=3)
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["report_1", "report_2", "report_3", "report_4", "age", "sex", "hr", "label", "n",
                                "condition_source", "condition_citation"]
    assert df.report_4.tolist() == ["prolonged PR interval", "", ""]  # fewer findings: blanks, skipped on reading
    specs = read_manifest(out)
    assert [s.condition.reports for s in specs] == [d.findings for d in descs]
    brugada, chb, lqts = specs
    assert brugada.condition.reports[0] == "coved ST elevation of 2 mm or more in V1 and V2"
    assert brugada.label == "Brugada syndrome (type 1 pattern)" and brugada.n == 3
    assert (brugada.condition.age, brugada.condition.sex, brugada.condition.hr) == (45.0, "M", None)
    assert chb.condition.hr == 40.0  # the condition's typical HR when --hr is not given
    assert "row 11 (complete_heart_block)" in chb.condition_source and "Circulation" in chb.condition_citation
    assert lqts.condition_citation.startswith("Goldenberg I")
    build_describe_manifest(["complete heart block"], out, hr=35)
    assert read_manifest(out)[0].condition.hr == 35.0  # --hr overrides
    text = describe_summary(descs, None, None)
    assert "40 bpm, typical for the condition" in text and "not set" in text


def test_bad_options_write_nothing(tmp_path):
    out = tmp_path / "m.csv"
    with pytest.raises(InputError) as info:
        build_describe_manifest(["Brugada"], str(out), age=130, sex="X", hr=10, n=-1)
    msg = str(info.value)
    for needle in ("--age=130", "--sex='X'", "--hr=10", "--n=-1"):
        assert needle in msg
    with pytest.raises(InputError, match="--model applies to --source openai"):
        build_describe_manifest(["Brugada"], str(out), model="gpt-x")
    with pytest.raises(InputError, match="--source='claude'"):
        build_describe_manifest(["Brugada"], str(out), source="claude")
    assert not out.exists()


# ------------------------------------------------------------------------------------------- vocabulary
def test_nearest_statements_say_what_the_model_learned():
    [exact, outside, reworded] = nearest_statements(
        ["prolonged PR interval", "epsilon wave in V1 to V3", "inverted T-waves in V1 and V2"], k=3)
    assert exact.nearest[0] == ("prolonged PR interval", 1.0) and exact.verdict == "in vocabulary"
    assert outside.verdict == "outside" and outside.nearest[0][1] < 0.6
    assert reworded.nearest[0][0] == "inverted T-waves" and reworded.verdict == "close"
    assert all(len(m.nearest) == 3 and [c for _, c in m.nearest] == sorted((c for _, c in m.nearest), reverse=True)
               for m in (exact, outside, reworded))


def test_cli_prints_findings_hr_and_vocabulary(tmp_path):
    out = tmp_path / "b.csv"
    res = CliRunner().invoke(app, ["manifest", "describe", "Brugada syndrome", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1. coved ST elevation" in res.output
    assert "partial: nearest training statements non-specific ST elevation" in res.output
    assert "in vocabulary: nearest training statements incomplete right bundle branch block (1.00)" in res.output
    assert "heart rate: not set" in res.output and "Antzelevitch C" in res.output
    assert read_manifest(str(out))[0].n == 10
    listed = CliRunner().invoke(app, ["manifest", "describe", "--list"])
    assert listed.exit_code == 0 and len(listed.output.splitlines()) == len(curated_conditions())


# ----------------------------------------------------------------------------------------------- openai
def test_openai_structured_output_manifest_and_cache(openai_env: FakeOpenAIServer, tmp_path, monkeypatch):
    cache, out = tmp_path / "cache", str(tmp_path / "m.csv")
    descs = build_describe_manifest(["Brugada syndrome"], out, source="openai", cache=str(cache))
    [req] = openai_env.requests
    assert openai_env.paths == ["/v1/chat/completions"] and openai_env.auth == [f"Bearer {KEY}"]
    assert req["model"] == "gpt-4o-mini" and req["response_format"] == RESPONSE_FORMAT
    assert req["messages"][1] == {"role": "user", "content": "Brugada syndrome"}
    assert "prolonged PR interval" in req["messages"][0]["content"]  # the training vocabulary is offered
    [spec] = read_manifest(out)
    assert spec.condition.reports == ("first finding of Brugada syndrome", "sinus bradycardia")
    assert spec.condition.hr == 48.0 and spec.label == "Brugada syndrome"
    assert re.search(r"openai chat model gpt-4o-mini-2024-fake \(asked for gpt-4o-mini\), prompt sha256 [0-9a-f]{16}",
                     spec.condition_source)
    assert "not reviewed" in spec.condition_citation and descs[0].typical_hr_basis == "suggested by the model"
    [cached] = list(cache.glob("chat-completions/gpt-4o-mini/*.json"))
    assert json.loads(cached.read_text())["reply"]["findings"][0] == "first finding of Brugada syndrome"

    # cached by (model, prompt): the same request is not sent again, even without a key or a server
    monkeypatch.delenv("OPENAI_API_KEY")
    assert describe(["Brugada syndrome"], "openai", cache=str(cache)) == descs
    assert len(openai_env.requests) == 1
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    describe(["Brugada syndrome"], "openai", model="gpt-other", cache=str(cache))  # another model: asked
    describe(["hyperkalemia"], "openai", cache=str(cache))                        # another prompt: asked
    assert [r["model"] for r in openai_env.requests] == ["gpt-4o-mini", "gpt-other", "gpt-4o-mini"]
    assert len(list(cache.glob("chat-completions/*/*.json"))) == 3


def test_openai_retries_429_and_500_then_succeeds(openai_env: FakeOpenAIServer, tmp_path):
    openai_env.failures = [429, 500]
    [d] = describe(["hypothermia"], "openai", cache="", **FAST)
    assert d.findings[0] == "first finding of hypothermia" and len(openai_env.requests) == 3


def bad_content(content: str):
    return lambda body: content


@pytest.mark.parametrize("failures, content, needle", [
    ([401], None, "was refused: HTTP 401"),
    ([400], None, "was refused: HTTP 400"),
    ([429] * 3, None, "failed after 3 attempts; last error: HTTP 429"),
    ([500] * 3, None, "failed after 3 attempts; last error: HTTP 500"),
    ([TIMEOUT] * 3, None, "failed after 3 attempts; last error: APITimeoutError"),
    ([MALFORMED], None, "unreadable reply"),
    ([], "the findings are: ST elevation", "malformed reply: the content is not JSON"),
    ([], json.dumps({"condition": "x", "findings": [], "typical_heart_rate_bpm": None}), "expected 1 to 12 findings"),
    ([], json.dumps({"condition": "x", "findings": ["ok", 3], "typical_heart_rate_bpm": None}), "non-empty string"),
    ([], json.dumps({"condition": "x", "findings": ["ok"], "typical_heart_rate_bpm": 900}), "typical_heart_rate"),
    ([], json.dumps({"diagnosis": "x"}), "expected a JSON object with a 'findings' list"),
])
def test_openai_failures_are_one_line_errors_and_write_nothing(openai_env: FakeOpenAIServer, tmp_path, caplog,
                                                               failures, content, needle):
    openai_env.failures = list(failures)
    openai_env.slow_s = 1.0
    if content is not None:
        openai_env.chat_content = bad_content(content)
    cache, out = tmp_path / "cache", tmp_path / "m.csv"
    with pytest.raises(DescriptionServiceError) as info:
        build_describe_manifest(["Brugada syndrome"], str(out), source="openai", cache=str(cache),
                                max_attempts=3, timeout=0.3, **FAST)
    msg = str(info.value)
    assert needle in msg and "'Brugada syndrome'" in msg and "\n" not in msg, msg
    assert KEY not in msg and KEY not in caplog.text and info.value.__cause__ is None
    assert not out.exists() and not list(cache.rglob("*.json"))
    assert len(openai_env.requests) == (len(failures) or 1)


def test_echoed_key_is_masked(openai_env: FakeOpenAIServer, tmp_path):
    openai_env.failures = [401]
    with pytest.raises(DescriptionServiceError) as info:
        describe(["x"], "openai", cache="", **FAST)
    assert "you sent 'Bearer ***'" in str(info.value) and KEY not in str(info.value)


def test_openai_cli_errors_and_missing_key(openai_env: FakeOpenAIServer, tmp_path, monkeypatch):
    out = tmp_path / "m.csv"
    openai_env.failures = [401]
    res = CliRunner().invoke(app, ["manifest", "describe", "Brugada syndrome", "--source", "openai", "--out",
                                   str(out), "--cache", str(tmp_path / "c"), "--no-vocabulary"])
    assert res.exit_code == 2 and not out.exists() and KEY not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "HTTP 401" in res.output
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(InputError, match="OPENAI_API_KEY .*--source curated"):
        describe(["Brugada"], "openai", cache="")


# ----------------------------------------------------------------------------------- generate and plot
def test_writer_carries_the_provenance_and_plot_captions_it(tmp_path):
    from synthgen.conditions.spec import Condition
    from synthgen.evaluate.plot import ecg_caption, plot_source
    from synthgen.data.plausibility import check_many
    from synthgen.io.generated import Provenance, shard_table, write_wfdb_records
    from synthgen.io.shards import to_parquet_bytes as parquet_bytes
    from synthgen.io.paths import resolve

    d = find_curated("hyperkalemia").description()
    fields = {"label": d.condition, "condition_source": d.source, "condition_citation": d.citation}
    prov = Provenance("run", "hash", "ddpm", 2, 2.0, "0.1.0")
    signals = np.random.default_rng(0).normal(size=(2, 12, 1024)).astype(np.float32) * 0.1
    conds = [Condition(d.findings, 50, "M", 90), Condition(("sinus rhythm",))]
    table = shard_table(signals, conds, [fields, {"label": "af"}], np.array([0, 1]), np.array([0, 0]),
                        np.array([1, 2]), prov, "wfdb/part-00000", np.zeros(2, np.int32),
                        check_many(signals, np.array([90.0, np.nan])))
    assert table.column("condition_source").to_pylist() == [d.source, None]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-00000.parquet").write_bytes(parquet_bytes(table))
    caption = plot_source(str(tmp_path), str(tmp_path / "ecg.png"), row=0)
    first, info, source = caption.splitlines()
    assert first.startswith("hyperkalemia — ECG findings, most important first: 1. tall, peaked, narrow-based T-waves;")
    assert "5. electrolytic disturbance or drug (former EDIS)" in first
    assert "age=50" in info and "hr=90" in info and "label=" not in info
    assert source.startswith("findings from: curated table") and "reference: Mattu A" in source
    assert (tmp_path / "ecg.png").stat().st_size > 10_000
    plain = plot_source(str(tmp_path), str(tmp_path / "plain.png"), row=1)
    assert plain == "ecg_id=s000001_000000  label=af  seed=2  —  sinus rhythm"  # rows without provenance: as before
    fs, root = resolve(str(tmp_path))
    write_wfdb_records(fs, f"{root}/wfdb/part-00000", table, signals, None)
    from_wfdb = plot_source(str(tmp_path / "wfdb/part-00000/s000000_000000"), str(tmp_path / "w.png"))
    assert from_wfdb.splitlines()[0] == first and "reference: Mattu A" in from_wfdb
    assert ecg_caption({"reports": ["a"], "condition_source": "x", "label": None}).startswith("condition — ")


@pytest.mark.slow
def test_describe_generate_plot_end_to_end(ray_local, tiny_bundle, tmp_path):
    from synthgen.generate.run import generate

    manifest, out = str(tmp_path / "b.csv"), str(tmp_path / "out")
    runner = CliRunner()
    assert runner.invoke(app, ["manifest", "describe", "Brugada syndrome", "--out", manifest,
                               "--no-vocabulary"]).exit_code == 0
    summary = generate(manifest, out, 4, model=tiny_bundle.url, steps=2, progress=False, output_format="both")
    assert summary["total_samples"] == 4
    rows = pd.read_parquet(Path(out) / "shards")
    assert set(rows.label) == {"Brugada syndrome (type 1 pattern)"} and rows.condition_source.str.contains(
        "brugada_type1").all()
    res = runner.invoke(app, ["plot", "--src", out, "--row", "2", "--out", str(tmp_path / "b.png")])
    assert res.exit_code == 0 and "Brugada syndrome (type 1 pattern) — ECG findings" in res.output
    assert (tmp_path / "b.png").exists()

