"""Stage 1 of the paper's two-stage flow for rare conditions (DiffuSETS Fig. 4B): a condition's ECG findings.

A condition too rare to be in the training data (Brugada syndrome, long QT) or not cardiac at all
(hyperkalemia) is first described as ECG findings, most important first; stage 2 feeds those findings, as
the reports of an ordered prompt, to the generator. Two sources of findings:

- ``curated`` (offline): ``synthgen/assets/conditions/ecg_findings.csv``, ~30 conditions, findings worded
  where possible in PTB-XL's SCP statement vocabulary, each row citing its published source;
- ``openai``: a chat-completions model asked for structured output (a JSON schema), cached on disk by
  (model, prompt) and retried with backoff. Its findings are unreviewed model output.

``nearest_statements`` says what the generator can express: for each finding, the closest SCP statements
(the shipped model's training vocabulary, ``scp_statements.csv``) in the text embedder's space.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import importlib.resources
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthgen import __version__
from synthgen.conditions.embedders import Embedder, cache_key, default_cache_dir, get_embedder
from synthgen.conditions.openai_api import OpenAIService, OpenAIServiceError
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join, resolve, write_bytes_atomic

SOURCES = ("curated", "openai")
FINDINGS_TABLE = "ecg_findings.csv"
VOCABULARY_TABLE = "scp_statements.csv"
DEFAULT_CHAT_MODEL = "gpt-4o-mini"
MAX_FINDINGS = 12
MAX_FINDING_CHARS = 200
HR_RANGE = (20.0, 300.0)  # bpm, as the manifest accepts
# Cosine similarity (local MiniLM, bare phrases) of a finding to its nearest SCP statement, and what it means.
# Exact statements score 1.0; rewordings of one statement score ~0.75-0.95; findings with no counterpart in
# the vocabulary (epsilon wave, delta wave, Osborn waves) score below ~0.6.
CLOSE, PARTIAL = 0.8, 0.6
LLM_CITATION = "language-model output, not reviewed: check the findings against a published source before use"


def _asset(name: str) -> str:
    return importlib.resources.files("synthgen").joinpath("assets", "conditions", name).read_text("utf-8")


def _norm(name: str) -> str:
    """Lower case, every run of non-alphanumerics one space: 'Long-QT  syndrome' → 'long qt syndrome'."""
    return re.sub(r"[^0-9a-z]+", " ", name.casefold()).strip()


def _clean_finding(text: str) -> str:
    """One line, no trailing period, no report separator (a '|' would split it into two reports)."""
    return " ".join(str(text).replace("|", "/").split()).rstrip(".").rstrip()


@dataclass(frozen=True)
class Description:
    """A condition's ECG findings, most important first, and where they came from.

    ``source`` is the provenance (curated table row, or model and prompt hash), ``citation`` the published
    source (curated) or a warning that the findings are unreviewed model output. ``typical_hr`` (bpm) is
    set when the condition implies a heart rate (complete heart block ~40), with ``typical_hr_basis``.
    """

    condition: str
    findings: tuple[str, ...]
    source: str
    citation: str
    typical_hr: float | None = None
    typical_hr_basis: str | None = None


@dataclass(frozen=True)
class CuratedCondition:
    """One row of the curated table; ``row`` is its 1-based line number after the header."""

    key: str
    condition: str
    aliases: tuple[str, ...]
    category: str
    findings: tuple[str, ...]
    typical_hr: float | None
    typical_hr_basis: str | None
    source: str
    row: int

    def names(self) -> tuple[str, ...]:
        """Every name the condition is found by: its key, its name and its aliases."""
        return (self.key.replace("_", " "), self.condition, *self.aliases)

    def description(self) -> Description:
        return Description(self.condition, self.findings,
                           source=f"curated table synthgen/assets/conditions/{FINDINGS_TABLE} row {self.row} "
                                  f"({self.key}), synthgen {__version__}",
                           citation=self.source, typical_hr=self.typical_hr, typical_hr_basis=self.typical_hr_basis)


def curated_conditions() -> list[CuratedCondition]:
    """The shipped table of conditions (rare cardiac, pericardial, electrolyte, drug, pulmonary, …)."""
    rows = csv.DictReader(io.StringIO(_asset(FINDINGS_TABLE)))
    return [CuratedCondition(
        key=r["key"], condition=r["condition"], aliases=tuple(a.strip() for a in r["aliases"].split(";") if a.strip()),
        category=r["category"], findings=tuple(f.strip() for f in r["findings"].split("|") if f.strip()),
        typical_hr=float(r["typical_hr"]) if r["typical_hr"] else None,
        typical_hr_basis=r["typical_hr_basis"] or None, source=r["source"], row=i)
        for i, r in enumerate(rows, start=1)]


def find_curated(name: str, table: Sequence[CuratedCondition] | None = None) -> CuratedCondition:
    """The curated condition called ``name`` (its key, name or an alias; case, spaces and punctuation do not
    matter). An unknown name is an InputError listing the closest names."""
    table = curated_conditions() if table is None else table
    by_name = {_norm(n): c for c in table for n in c.names()}
    wanted = _norm(name)
    if wanted in by_name:
        return by_name[wanted]
    close = difflib.get_close_matches(wanted, list(by_name), n=5, cutoff=0.6)
    shown = list(dict.fromkeys(f"{by_name[n].condition!r}" if _norm(by_name[n].condition) == n
                               else f"{n!r} ({by_name[n].condition})" for n in close))
    hint = f"close matches: {', '.join(shown)}" if shown else "no close match"
    raise InputError(f"unknown condition {name!r} in the curated table ({hint}); `synthgen manifest describe "
                     f"--list` shows all {len(table)}, or use --source openai")


# --------------------------------------------------------------------------------------------- openai
SYSTEM_PROMPT = (
    "You are a cardiologist writing ECG findings for a generator of synthetic 12-lead ECGs. For the condition "
    "the user names, list the findings a resting 12-lead ECG of a typical adult patient with it shows, most "
    "important (most characteristic) first, at most {max_findings}. Each finding is a short phrase, not a "
    "sentence. Where a finding has a name in this vocabulary of ECG statements, use that exact wording: "
    "{vocabulary}. Give typical_heart_rate_bpm only when the condition itself implies a heart rate (e.g. "
    "complete heart block), else null. Name the condition as you understood it."
)
FINDINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "condition": {"type": "string"},
        "findings": {"type": "array", "items": {"type": "string"}},
        "typical_heart_rate_bpm": {"type": ["number", "null"]},
    },
    "required": ["condition", "findings", "typical_heart_rate_bpm"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "ecg_findings", "strict": True,
                                                          "schema": FINDINGS_SCHEMA}}


class DescriptionServiceError(OpenAIServiceError):
    """The chat-completions service refused, kept failing or replied with something that is not findings."""


class OpenAIDescriber:
    """Findings from an OpenAI chat model (or a compatible server) through structured output.

    Replies are cached as JSON files ``<cache>/chat-completions/<model-slug>/<sha256(model + prompt)>.json``
    (``cache=None``: ``$SYNTHGEN_CACHE`` or ``~/.cache/synthgen/embeddings``; ``""``: no cache), written
    only after a reply passed validation, so a cached description needs neither the network nor a key.
    Retries, time-outs and key masking: ``openai_api.OpenAIService``.
    """

    def __init__(self, model: str = DEFAULT_CHAT_MODEL, *, cache: str | None = None,
                 storage_options: StorageOptions = None, **service_kwargs: Any) -> None:
        self.model = model
        self.service_kwargs = service_kwargs
        self._service: OpenAIService | None = None
        root = default_cache_dir() if cache is None else cache
        self._cache = (resolve(join(root, "chat-completions", re.sub(r"[^A-Za-z0-9._-]+", "_", model)),
                               storage_options) if root else None)

    def prompt(self, condition: str) -> dict[str, Any]:
        """The request body without the model: messages and response format (what is hashed and cached)."""
        vocabulary = "; ".join(description for _, description in scp_vocabulary())
        return {"messages": [{"role": "system", "content": SYSTEM_PROMPT.format(max_findings=MAX_FINDINGS,
                                                                               vocabulary=vocabulary)},
                             {"role": "user", "content": condition}],
                "response_format": RESPONSE_FORMAT}

    def describe(self, condition: str) -> Description:
        """The model's findings for ``condition``, from the cache or one (retried) request."""
        prompt = self.prompt(condition)
        prompt_json = json.dumps(prompt, sort_keys=True)
        prompt_hash = hashlib.sha256(prompt_json.encode()).hexdigest()
        path = f"{self._cache[1]}/{cache_key(self.model, prompt_json)}.json" if self._cache else None
        if path and self._cache[0].exists(path):
            with self._cache[0].open(path, "rb") as f:
                entry = json.load(f)
        else:
            entry = self._request(condition, prompt, prompt_hash)
            if path:
                write_bytes_atomic(self._cache[0], path, json.dumps(entry, indent=1).encode())
        reply = entry["reply"]
        return Description(
            condition, tuple(reply["findings"]),
            source=f"openai chat model {entry['response_model']} (asked for {self.model}), prompt sha256 "
                   f"{prompt_hash[:16]}, synthgen {__version__}",
            citation=LLM_CITATION, typical_hr=reply["typical_heart_rate_bpm"],
            typical_hr_basis="suggested by the model" if reply["typical_heart_rate_bpm"] is not None else None)

    def _request(self, condition: str, prompt: dict[str, Any], prompt_hash: str) -> dict[str, Any]:
        if self._service is None:
            self._service = OpenAIService(user="--source openai", offline_hint="use the offline table: "
                                          "--source curated", error=DescriptionServiceError, **self.service_kwargs)
        what = f"OpenAI chat completion for {condition!r} with model {self.model!r}"
        resp = self._service.call(what, lambda client: client.chat.completions.create(model=self.model, **prompt))
        try:
            reply = _parse_reply(resp)
        except ValueError as err:
            raise DescriptionServiceError(f"{what} got a malformed reply: {self._service.mask(str(err))}") from None
        return {"model": self.model, "response_model": str(getattr(resp, "model", None) or self.model),
                "prompt_sha256": prompt_hash, "created": getattr(resp, "created", None), "reply": reply}


def _parse_reply(resp: Any) -> dict[str, Any]:
    """The validated structured reply; ValueError says what is wrong with it."""
    choices = getattr(resp, "choices", None) or []
    if not choices:
        raise ValueError("no choices in the reply")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        raise ValueError("no message in the reply")
    if getattr(message, "refusal", None):
        raise ValueError(f"the model refused: {message.refusal}")
    if getattr(choice, "finish_reason", None) == "length":
        raise ValueError("the reply was cut off (finish_reason=length)")
    try:
        data = json.loads(getattr(message, "content", None) or "")
    except ValueError:
        raise ValueError(f"the content is not JSON: {str(getattr(message, 'content', ''))[:80]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        raise ValueError("expected a JSON object with a 'findings' list (the requested schema)")
    findings = [_clean_finding(f) for f in data["findings"] if isinstance(f, str)]
    if len(findings) != len(data["findings"]) or not all(findings):
        raise ValueError("every finding must be a non-empty string")
    if not 1 <= len(findings) <= MAX_FINDINGS or any(len(f) > MAX_FINDING_CHARS for f in findings):
        raise ValueError(f"expected 1 to {MAX_FINDINGS} findings of at most {MAX_FINDING_CHARS} characters, "
                         f"got {len(findings)}")
    hr = data.get("typical_heart_rate_bpm")
    if hr is not None and (isinstance(hr, bool) or not isinstance(hr, (int, float)) or not math.isfinite(hr)
                           or not HR_RANGE[0] <= hr <= HR_RANGE[1]):
        raise ValueError(f"typical_heart_rate_bpm={hr!r}: expected null or {HR_RANGE[0]:g}-{HR_RANGE[1]:g} bpm")
    return {"findings": findings, "typical_heart_rate_bpm": None if hr is None else float(hr),
            "condition": str(data.get("condition", ""))}


def describe(conditions: Sequence[str], source: str = "curated", *, model: str | None = None,
             cache: str | None = None, storage_options: StorageOptions = None,
             **service_kwargs: Any) -> list[Description]:
    """Findings for each condition name from ``source`` ("curated" or "openai"); every name is checked
    before anything is requested, and any failure raises before the caller writes anything."""
    names = [" ".join(c.split()) for c in conditions]
    if not names or not all(names):
        raise InputError("name at least one condition (e.g. \"Brugada syndrome\")")
    if source == "curated":
        if model is not None:
            raise InputError("--model applies to --source openai only")
        table = curated_conditions()
        return [find_curated(n, table).description() for n in names]
    if source == "openai":
        describer = OpenAIDescriber(model or DEFAULT_CHAT_MODEL, cache=cache, storage_options=storage_options,
                                    **service_kwargs)
        return [describer.describe(n) for n in names]
    raise InputError(f"--source={source!r}: expected one of {', '.join(SOURCES)}")


# ------------------------------------------------------------------------------------------ vocabulary
def scp_vocabulary() -> list[tuple[str, str]]:
    """(SCP code, description) of the 71 PTB-XL statements: the reports the shipped model was trained on
    (Wagner et al., PTB-XL, Sci Data 7:154, 2020; CC BY 4.0)."""
    return [(r["scp_code"], r["description"]) for r in csv.DictReader(io.StringIO(_asset(VOCABULARY_TABLE)))]


@dataclass(frozen=True)
class VocabularyMatch:
    """A finding and its nearest statements of the training vocabulary, as (description, cosine), best first."""

    finding: str
    nearest: tuple[tuple[str, float], ...]

    @property
    def verdict(self) -> str:
        """'in vocabulary' (an exact statement), 'close', 'partial' or 'outside' (what the model learned)."""
        best = self.nearest[0][1]
        return ("in vocabulary" if best >= 0.999 else "close" if best >= CLOSE else "partial" if best >= PARTIAL
                else "outside")


def nearest_statements(findings: Sequence[str], embedder: Embedder | None = None, k: int = 3,
                       vocabulary: Sequence[str] | None = None) -> list[VocabularyMatch]:
    """For each finding, the ``k`` nearest statements of ``vocabulary`` (default: the SCP descriptions) by
    cosine similarity of the bare phrases in ``embedder``'s space (default: the local MiniLM, as the shipped
    model uses), so a user sees which findings lie outside what the model learned."""
    vocabulary = [d for _, d in scp_vocabulary()] if vocabulary is None else list(vocabulary)
    if not findings:
        return []
    embedder = embedder or get_embedder("local")
    vecs = embedder.embed(list(dict.fromkeys([*vocabulary, *findings])))
    index = {t: i for i, t in enumerate(dict.fromkeys([*vocabulary, *findings]))}
    voc = vecs[[index[v] for v in vocabulary]]
    sims = vecs[[index[f] for f in findings]] @ voc.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [VocabularyMatch(f, tuple((vocabulary[j], round(float(sims[i, j]), 3)) for j in order[i]))
            for i, f in enumerate(findings)]


def describe_summary(descriptions: Sequence[Description], hr: float | None,
                     matches: Sequence[Sequence[VocabularyMatch]] | None) -> str:
    """What `synthgen manifest describe` prints: per condition its findings, the HR used and why (``hr``: the
    user's --hr, else the condition's typical HR), the provenance, and (when computed) each finding's nearest
    training statements."""
    lines = []
    for i, d in enumerate(descriptions):
        lines.append(f"{d.condition}  [{d.source}]")
        for j, finding in enumerate(d.findings):
            lines.append(f"  {j + 1}. {finding}")
            if matches is not None:
                m = matches[i][j]
                near = "; ".join(f"{s} ({c:.2f})" for s, c in m.nearest)
                lines.append(f"       {m.verdict}: nearest training statements {near}")
        if hr is not None:
            lines.append(f"  heart rate: {hr:g} bpm (from --hr)")
        elif d.typical_hr is not None:
            lines.append(f"  heart rate: {d.typical_hr:g} bpm, typical for the condition ({d.typical_hr_basis}); "
                         "--hr overrides")
        else:
            lines.append("  heart rate: not set (the model's 'unknown'); --hr sets one")
        lines.append(f"  source: {d.citation}")
    if matches is not None:
        lines.append(f"cosine of each finding to the shipped model's training statements (PTB-XL SCP, local MiniLM): "
                     f">= {CLOSE} close, {PARTIAL}-{CLOSE} partial, < {PARTIAL} outside what the model learned")
    return "\n".join(lines)
