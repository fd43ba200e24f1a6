"""Patient conditions (age, sex, heart rate) as model inputs, and the reports as text vectors.

Age and heart rate are z-scored with statistics fitted on the training set and saved in the model bundle,
so generation feeds the U-Net numbers on the same scale it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from synthgen.conditions.embedders import Embedder
from synthgen.conditions.prompts import ordered_prompt
from synthgen.conditions.spec import Condition
from synthgen.errors import InputError

_SEX = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}


def _is_missing(x: Any) -> bool:
    """None or NaN of any float type (numpy and Arrow hand us np.float32/np.float64 NaNs)."""
    if x is None:
        return True
    try:
        return math.isnan(x)
    except TypeError:
        return False


def _mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and std of the known values; std 1.0 when it is undefined or zero, so z-scoring never divides by 0."""
    v = np.asarray([float(x) for x in values if not _is_missing(x)], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    std = float(v.std())
    return float(v.mean()), std if std > 1e-6 else 1.0


@dataclass(frozen=True)
class PatientStats:
    """Training-set statistics used to z-score age (years) and heart rate (bpm)."""

    age_mean: float
    age_std: float
    hr_mean: float
    hr_std: float

    @classmethod
    def fit(cls, ages: Iterable[float | None], hrs: Iterable[float | None]) -> PatientStats:
        """Statistics of the known values (None/NaN ignored)."""
        age_mean, age_std = _mean_std(ages)
        hr_mean, hr_std = _mean_std(hrs)
        return cls(age_mean, age_std, hr_mean, hr_std)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatientStats:
        """Inverse of ``to_dict``; a missing key (a damaged bundle config) is an InputError naming it."""
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise InputError(f"patient_stats is missing {', '.join(missing)}")
        return cls(**{f.name: float(d[f.name]) for f in fields(cls)})

    def encode(self, conditions: Sequence[Condition]) -> tuple[np.ndarray, np.ndarray]:
        """(values float32 (B,3), present bool (B,3)), columns [age, sex, hr]; unknown → 0.0, present False."""
        values = np.zeros((len(conditions), 3), np.float32)
        present = np.zeros((len(conditions), 3), bool)
        for i, c in enumerate(conditions):
            if not _is_missing(c.age):
                values[i, 0], present[i, 0] = (float(c.age) - self.age_mean) / self.age_std, True
            if not _is_missing(c.sex):
                values[i, 1], present[i, 1] = parse_sex(c.sex), True
            if not _is_missing(c.hr):
                values[i, 2], present[i, 2] = (float(c.hr) - self.hr_mean) / self.hr_std, True
        return values, present


def parse_sex(sex: str) -> float:
    """1.0 for male, 0.0 for female ("M"/"F"/"male"/"female", any case); anything else is a ValueError."""
    value = _SEX.get(sex.strip().lower()) if isinstance(sex, str) else None
    if value is None:
        raise ValueError(f"sex must be 'M' or 'F' (or male/female), got {sex!r}")
    return value


def report_prompts(conditions: Sequence[Condition]) -> list[str]:
    """The ordered prompt of each condition's reports (conditions.prompts); ValueError naming the condition's
    index when it has no report."""
    prompts = []
    for i, c in enumerate(conditions):
        try:
            prompts.append(ordered_prompt(c.reports))
        except ValueError as err:
            raise ValueError(f"condition {i}: {err}") from None
    return prompts


def embed_reports(conditions: Sequence[Condition], embedder: Embedder) -> np.ndarray:
    """(B, dim) float32 prompt vectors; each distinct prompt is embedded once (many ECGs share reports)."""
    prompts = report_prompts(conditions)
    unique = list(dict.fromkeys(prompts))
    if not unique:
        return np.zeros((0, embedder.dim), np.float32)
    vecs = embedder.embed(unique)
    index = {p: j for j, p in enumerate(unique)}
    return np.asarray(vecs[[index[p] for p in prompts]], dtype=np.float32)
