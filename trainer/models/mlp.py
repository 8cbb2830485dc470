"""A multilayer perceptron classifier: the non-language-model example.

A plain nn.Module with the GPT's calling convention: forward(x) gives logits, forward(x,
targets) the mean cross-entropy loss; evaluate() gives the metrics logged on validation.
Shapes: B batch, F features, H hidden, K classes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLPClassifier(nn.Module):
    def __init__(self, num_features: int, num_classes: int, hidden: int = 64, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for _ in range(depth):  # depth hidden layers: Linear -> GELU -> Dropout
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, F) float. Returns logits (B, K) without targets, else the mean loss."""
        logits = self.net(x)  # (B, K)
        if targets is None:
            return logits
        return F.cross_entropy(logits, targets)

    def evaluate(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metrics of one batch: accuracy."""
        logits = self.net(x)
        return {"acc": (logits.argmax(dim=-1) == targets).float().mean()}
