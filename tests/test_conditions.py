"""Prompts, the local embedder (really loaded, offline), the embedding cache and patient encoding."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from synthgen.conditions.embedders import CachedEmbedder, LocalEmbedder, get_embedder
from synthgen.conditions.patient import PatientStats, embed_reports
from synthgen.conditions.prompts import ordered_prompt
from synthgen.conditions.spec import Condition
from synthgen.errors import InputError

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- prompts

def test_single_report_prompt_strips_whitespace_and_period() -> None:
    assert ordered_prompt(["  sinus rhythm. "]) == "The report of the ECG is that sinus rhythm."


def test_two_reports_prompt_exact_wording() -> None:
    assert ordered_prompt(["sinus rhythm.", "left axis deviation"]) == (
        "Most importantly, The 1st diagnosis is sinus rhythm. "
        "As a supplementary condition, the 2nd diagnosis is left axis deviation.")


@pytest.mark.parametrize("n, last", [(3, "3rd"), (11, "11th"), (12, "12th"), (13, "13th"),
                                     (21, "21st"), (22, "22nd")])
def test_many_reports_ordinals_and_spacing(n: int, last: str) -> None:
    p = ordered_prompt([f"finding {i}." for i in range(1, n + 1)])
    assert p.startswith("Most importantly, The 1st diagnosis is finding 1. As a supplementary condition, "
                        "the 2nd diagnosis is finding 2.")
    assert p.endswith(f"As a supplementary condition, the {last} diagnosis is finding {n}.")
    assert p.count("As a supplementary condition, the ") == n - 1
    assert ".." not in p and "  " not in p and p == p.strip()


def test_blank_reports_skipped_and_none_rejected() -> None:
    assert ordered_prompt(["", "  ", "normal ECG", "."]) == "The report of the ECG is that normal ECG."
    with pytest.raises(ValueError):
        ordered_prompt([])
    with pytest.raises(ValueError):
        ordered_prompt([" ", ""])


# ---------------------------------------------------------------- local embedder

@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder()


def test_local_embedder_offline_unit_vectors_and_meaning(local: LocalEmbedder, monkeypatch) -> None:
    # Any attempt to reach the network would fail loudly instead of hanging.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    v = local.embed(["The report of the ECG is that atrial fibrillation.",
                     "The ECG shows atrial fibrillation.",
                     "The report of the ECG is that the weather is sunny today."])
    assert v.shape == (3, 384) and v.dtype == np.float32 and local.dim == 384 and local.name == "local"
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
    assert local.embed([]).shape == (0, 384)


# ---------------------------------------------------------------- cache

class CountingEmbedder:
    """Deterministic fake inner embedder that records what it was asked to embed."""

    name = "fake:v1"
    dim = 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([np.random.default_rng(sum(t.encode())).normal(size=self.dim) for t in texts]
                        ).astype(np.float32)


def test_cache_embeds_each_text_once(tmp_path: Path) -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, str(tmp_path))
    first = cached.embed(["a", "b", "a"])
    assert inner.calls == [["a", "b"]]
    assert first.shape == (3, 8) and np.allclose(first[0], first[2])
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    again = cached.embed(["b", "c", "a"])
    assert inner.calls == [["a", "b"], ["c"]]
    assert np.allclose(again[0], first[1]) and np.allclose(again[2], first[0])
    assert cached.embed([]).shape == (0, 8)
    chunks = list((tmp_path / "fake_v1").glob("chunk-*.parquet"))
    assert len(chunks) == 2 and not list((tmp_path / "fake_v1").glob(".*"))

    # A new object (a later run) reads the chunks and embeds nothing.
    inner2 = CountingEmbedder()
    assert np.allclose(CachedEmbedder(inner2, str(tmp_path)).embed(["a", "b", "c"]),
                       np.concatenate([first[:2], again[1:2]]))
    assert inner2.calls == []


def test_cache_survives_a_new_process(tmp_path: Path) -> None:
    expected = CachedEmbedder(CountingEmbedder(), str(tmp_path)).embed(["x", "y"])
    script = textwrap.dedent(f"""
        import json, numpy as np
        from synthgen.conditions.embedders import CachedEmbedder
        class Refuse:
            name, dim = "fake:v1", 8
            def embed(self, texts):
                raise AssertionError(f"cache miss: {{texts}}")
        print(json.dumps(CachedEmbedder(Refuse(), {str(tmp_path)!r}).embed(["y", "x"]).tolist()))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert np.allclose(np.array(json.loads(out.stdout)), expected[::-1])


def test_cache_key_includes_embedder_name(tmp_path: Path) -> None:
    a, b = CountingEmbedder(), CountingEmbedder()
    b.name = "fake:v2"
    CachedEmbedder(a, str(tmp_path)).embed(["same text"])
    CachedEmbedder(b, str(tmp_path)).embed(["same text"])
    assert b.calls == [["same text"]]


def test_get_embedder_names_and_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path))
    e = get_embedder("local")
    assert isinstance(e, CachedEmbedder) and e.url == f"{tmp_path}/local" and e.dim == 384
    assert isinstance(get_embedder("local", cache=""), LocalEmbedder)
    assert get_embedder("local", cache=str(tmp_path / "other")).url == f"{tmp_path / 'other'}/local"
    with pytest.raises(InputError, match="local, openai, openai:<model>"):
        get_embedder("bert")


# ---------------------------------------------------------------- patient

def test_patient_stats_fit_ignores_missing_and_round_trips() -> None:
    s = PatientStats.fit([50, None, float("nan"), 70], np.array([60, 80, np.nan], np.float32))
    assert (s.age_mean, s.age_std, s.hr_mean, s.hr_std) == (60.0, 10.0, 70.0, 10.0)
    assert PatientStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert PatientStats.fit([], [72, 72]) == PatientStats(0.0, 1.0, 72.0, 1.0)
    with pytest.raises(InputError, match="hr_std"):
        PatientStats.from_dict({"age_mean": 1, "age_std": 1, "hr_mean": 1})


def test_patient_encode_values_presence_and_sex_spellings() -> None:
    s = PatientStats(60.0, 10.0, 70.0, 5.0)
    conds = [Condition(("x",), age=70, sex="M", hr=60),
             Condition(("x",), sex="female"),
             Condition(("x",), age=float("nan"), sex=" Male ", hr=80.0),
             Condition(("x",), sex="f"),
             Condition(("x",), age=np.float32("nan"), hr=np.float64("nan"))]
    values, present = s.encode(conds)
    assert values.dtype == np.float32 and present.dtype == bool and values.shape == present.shape == (5, 3)
    np.testing.assert_allclose(values, [[1, 1, -2], [0, 0, 0], [0, 1, 2], [0, 0, 0], [0, 0, 0]])
    assert present.tolist() == [[True, True, True], [False, True, False], [False, True, True],
                                [False, True, False], [False, False, False]]
    # z-scores invert back to the inputs
    assert math.isclose(values[0, 0] * s.age_std + s.age_mean, 70)
    with pytest.raises(ValueError, match="'X'"):
        s.encode([Condition(("x",), sex="X")])


def test_embed_reports_embeds_unique_prompts_once() -> None:
    inner = CountingEmbedder()
    conds = [Condition(("sinus rhythm",)), Condition(("sinus rhythm.", "")), Condition(("AF", "PVC"))]
    v = embed_reports(conds, inner)
    assert v.shape == (3, 8) and np.allclose(v[0], v[1])
    assert inner.calls == [["The report of the ECG is that sinus rhythm.",
                            "Most importantly, The 1st diagnosis is AF. "
                            "As a supplementary condition, the 2nd diagnosis is PVC."]]
    with pytest.raises(ValueError, match="condition 1"):
        embed_reports([conds[0], Condition(())], inner)
