"""DiffuSETS ordered prompts: several reports become one sentence that says which diagnosis matters most.

The wording follows the DiffuSETS paper exactly (including its capital "The" after "Most importantly,"),
because the text embedder was trained on, and the cache is keyed by, these exact strings.
"""

from __future__ import annotations

from collections.abc import Sequence


def ordinal(n: int) -> str:
    """English ordinal for n >= 1: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 22nd, 111th."""
    if n < 1:
        raise ValueError(f"ordinal needs n >= 1, got {n}")
    if n % 100 in (11, 12, 13):
        return f"{n}th"
    return str(n) + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _clean(report: str) -> str:
    """Strip whitespace and trailing periods so the template's own period never doubles up."""
    return report.strip().rstrip(".").rstrip()


def ordered_prompt(reports: Sequence[str]) -> str:
    """One prompt from reports ordered by importance; blank reports are skipped.

    Raises ValueError when no non-blank report is left (an ECG prompt needs at least one diagnosis).
    """
    if isinstance(reports, str):
        raise TypeError("ordered_prompt expects a sequence of reports, not a single string")
    texts = [t for t in (_clean(r) for r in reports if r is not None) if t]
    if not texts:
        raise ValueError("ordered_prompt needs at least one non-blank report")
    if len(texts) == 1:
        return f"The report of the ECG is that {texts[0]}."
    parts = [f"Most importantly, The {ordinal(1)} diagnosis is {texts[0]}."]
    parts += [
        f"As a supplementary condition, the {ordinal(i)} diagnosis is {t}."
        for i, t in enumerate(texts[1:], start=2)
    ]
    return " ".join(parts)
