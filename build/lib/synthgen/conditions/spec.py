"""A condition spec: what a user asks an ECG to look like. Any field but the reports may be missing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    """One ECG's conditions.

    ``reports`` are ordered by importance (the first is the main diagnosis); ``sex`` is "M" or "F";
    ``age`` in years; ``hr`` in beats per minute. ``None`` means unknown, which the model was trained
    to accept through condition dropout.
    """

    reports: tuple[str, ...]
    age: float | None = None
    sex: str | None = None
    hr: float | None = None
