"""The loss the training loop calls.

Every objective sees the outputs of all replicas at once, replica-major: logits of shape
(N, B, ...) for N replicas (N = 1 for one module), the module outputs it asked for in
`captures` (by module name, same leading dims) and the batch. It returns one mean loss per
replica, shape (N,). Later objectives (language-model loss, distillation against a teacher,
moment matching) are new classes here; the loop does not change.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Outputs:
    """The outputs of all replicas: `logits` (N, B, ...) and the captured `features`.

    One module's outputs are kept as they are (`one`, no replica dim): objectives that can,
    compute its loss straight from them, so the loop adds no autograd nodes to a plain
    PyTorch step; `logits` adds the dim when asked.
    """

    def __init__(self, logits: torch.Tensor | None = None,
                 features: dict[str, torch.Tensor] | None = None, *,
                 one: torch.Tensor | None = None):
        self._logits = logits
        self.features = features or {}
        self.one = one

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            assert self.one is not None
            self._logits = self.one.unsqueeze(0)
        return self._logits


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
        if outputs.one is not None:
            # One module: exactly the loss a plain PyTorch loop computes (same reduction).
            return F.cross_entropy(outputs.one, y[0]).reshape(1)
        logits = outputs.logits
        n = logits.shape[0]
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                               reduction="none").view(n, -1).mean(1)

    def __repr__(self) -> str:
        return "CrossEntropy()"
