"""The loss the training loop calls.

Every objective sees the outputs of all replicas at once, replica-major: logits of shape
(N, B, ...) for N replicas (N = 1 for one module), the module outputs it asked for in
`captures` (by module name, same leading dims) and the batch. It returns one mean loss per
replica, shape (N,). Later objectives (language-model loss, distillation against a teacher,
moment matching) are new classes here; the loop does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass
class Outputs:
    logits: torch.Tensor                                   # (N, B, ...)
    features: dict[str, torch.Tensor] = field(default_factory=dict)   # captured, (N, B, ...)


class Objective(Protocol):
    # Names of modules (as in `model.named_modules()`) whose outputs the objective reads.
    captures: tuple[str, ...]

    def __call__(self, outputs: Outputs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-replica mean loss, shape (N,); x: (N, B, ...), y: (N, B)."""
        ...


class CrossEntropy:
    """Classification cross-entropy of logits (N, B, C) against labels (N, B)."""

    captures: tuple[str, ...] = ()

    def __call__(self, outputs: Outputs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = outputs.logits
        n = logits.shape[0]
        if n == 1:
            # One module: exactly the loss a plain PyTorch loop computes (same reduction).
            return F.cross_entropy(logits[0], y[0]).unsqueeze(0)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                               reduction="none").view(n, -1).mean(1)

    def __repr__(self) -> str:
        return "CrossEntropy()"
