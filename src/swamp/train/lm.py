"""The causal language-model objective: cross-entropy of every position's next token.

Data from `--dataset text:FILE` (data/files.py) holds blocks of token ids x (B, T) and their
targets y (B, T), the same text one token later; a model gives logits (B, T, V). The loss is
the mean over all B x T positions, so that exp(loss) is the perplexity per token. It is the
default objective of such data (assemble.build_context); the loop does not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swamp.train.objective import Outputs


class TokenCrossEntropy:
    """Mean next-token cross-entropy of logits (N, B, T, V) against targets (N, B, T)."""

    captures: tuple[str, ...] = ()

    def __call__(self, outputs: Outputs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if outputs.one is not None:   # one module: the loss a plain PyTorch loop computes
            logits = outputs.one
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   y[0].reshape(-1)).reshape(1)
        logits = outputs.logits
        n = logits.shape[0]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                               reduction="none").view(n, -1).mean(1)

    def __repr__(self) -> str:
        return "TokenCrossEntropy()"
