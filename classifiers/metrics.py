"""Binary scores with the minority class as the positive one: what an imbalanced task is judged by."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score

SCORES = ("f1", "auroc", "auprc", "balanced_accuracy")


def binary_scores(y: np.ndarray, p1: np.ndarray, minority: int) -> dict[str, float]:
    """Minority-class F1 and balanced accuracy at the argmax decision (p1 ≥ 0.5), AUROC and AUPRC of the
    minority-class probability. ``p1`` is P(class 1)."""
    y = np.asarray(y)
    p_min = p1 if minority == 1 else 1.0 - p1
    pred = (p1 >= 0.5).astype(np.int64)
    is_min = (y == minority).astype(np.int64)
    return {
        "f1": float(f1_score(y, pred, pos_label=minority, zero_division=0.0)),
        "auroc": float(roc_auc_score(is_min, p_min)),
        "auprc": float(average_precision_score(is_min, p_min)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
    }
