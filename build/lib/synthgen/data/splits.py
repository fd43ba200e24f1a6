"""Patient-disjoint train/val/test splits: every record of a patient lands in the same split."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def split_for_fold(fold: int) -> str:
    """PTB-XL's own convention: strat_fold 1–8 train, 9 val, 10 test (its folds are patient-disjoint)."""
    if not 1 <= fold <= 10:
        raise ValueError(f"strat_fold {fold} outside 1–10")
    return "train" if fold <= 8 else "val" if fold == 9 else "test"


def split_for_patient(patient_id: str) -> str:
    """Stable 80/10/10 split from sha256(patient id): same id, same split, on any machine and run."""
    bucket = int.from_bytes(hashlib.sha256(patient_id.encode()).digest()[:8], "big") % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"
