"""One trial: train a Net1D classifier on one arm for a fixed step budget, keep the step with the best
validation AUPRC, and score that model once on the test split (and on an external set, if given).

Every arm of a task gets the same budget (optimizer steps, not epochs), so a bigger augmented set does not
also buy more training. The test split is never looked at before the model is chosen.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from classifiers.data import LabelledSet
from classifiers.metrics import binary_scores
from classifiers.model import Net1DClassifier


@dataclass(frozen=True)
class TrialConfig:
    """What one trial trains; ``steps`` and ``eval_every`` are the same for every arm of a task."""

    task: str
    arm: str
    seed: int
    steps: int
    eval_every: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weight: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return f"{self.task}-{self.arm}-seed{self.seed}"


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, device: str, batch_size: int = 256) -> np.ndarray:
    """P(class 1) for each ECG, in eval mode (batch-norm running statistics)."""
    model.eval()
    out = [torch.softmax(model(torch.from_numpy(x[i:i + batch_size]).to(device)), dim=1)[:, 1].cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless shuffled mini-batches of indices; every row once per pass."""
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[i:i + batch_size]


def train_trial(cfg: TrialConfig, train: LabelledSet, val: LabelledSet, test: LabelledSet, minority: int,
                device: str = "cpu", external: LabelledSet | None = None) -> dict:
    """Train, select on validation, test once; returns the scores, how they were obtained, and each test
    record's P(class 1) (``test_p1``, in the test set's row order) for the paired comparison of arms. With
    ``external``, the selected model also scores it once (``external``: scores or None if it lacks a class,
    ``external_p1``)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = Net1DClassifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    weight = None if cfg.class_weight is None else torch.tensor(cfg.class_weight, dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight)  # on logits: it applies log-softmax itself
    best = {"val_auprc": -1.0, "step": 0, "state": None}
    history = []
    batches = _batches(len(train), cfg.batch_size, rng)
    for step in range(1, cfg.steps + 1):
        model.train()
        idx = next(batches)
        xb = torch.from_numpy(train.x[idx]).to(device)
        yb = torch.from_numpy(train.y[idx]).to(device)
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_scores = binary_scores(val.y, predict(model, val.x, device), minority)
            history.append({"step": step, "train_loss": loss.item(), **{f"val_{k}": v for k, v in val_scores.items()}})
            if val_scores["auprc"] > best["val_auprc"]:
                best = {"val_auprc": val_scores["auprc"], "step": step, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    p_test = predict(model, test.x, device)  # the one look at test
    out = {"trial": cfg.name, "config": asdict(cfg), "minority": minority, "train_counts": train.counts(),
           "best_step": best["step"], "val_auprc": best["val_auprc"], "test": binary_scores(test.y, p_test, minority),
           "test_p1": p_test.tolist(), "history": history, "device": device}
    if external is not None:
        p_ext = predict(model, external.x, device)
        both = min(external.counts().values()) > 0
        out.update(external=binary_scores(external.y, p_ext, minority) if both else None, external_p1=p_ext.tolist())
    return {**out, "wall_s": round(time.perf_counter() - t0, 2)}
