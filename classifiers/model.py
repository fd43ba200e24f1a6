"""The classifier: synthgen's Net1D trunk with a linear layer to class logits (the paper changes only the output
layer of Net1D)."""

from __future__ import annotations

import torch
from torch import nn

from synthgen.model.net1d import Net1D, Net1DConfig


class Net1DClassifier(nn.Module):
    """(B, 12, 1024) ECG in mV → (B, n_classes) logits.

    It returns logits, never probabilities: cross-entropy applies log-softmax itself, and a softmax before it
    (as in the public DiffuSETS code) flattens the gradients.
    """

    def __init__(self, cfg: Net1DConfig | None = None, n_classes: int = 2) -> None:
        super().__init__()
        self.cfg = cfg or Net1DConfig()
        self.trunk = Net1D(self.cfg)
        self.out = nn.Linear(self.cfg.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk.features(x))
