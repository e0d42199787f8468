"""Accuracy and negative log-likelihood of a model, or of an output ensemble of models.

For language-model data (labels (n, T), logits (n, T, V)) both are per token: the accuracy of
next-token predictions and the mean NLL, whose exp is the perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from swamp.data import Split


@dataclass(frozen=True)
class Score:
    acc: float   # fraction correct, in [0, 1]
    nll: float   # mean negative log-likelihood (nats)

    @staticmethod
    def empty() -> "Score":
        return Score(math.nan, math.nan)


@torch.no_grad()
def log_probs(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    # `batch_size` counts scored positions: a language-model block scores each of its tokens
    step = max(1, batch_size // max(1, split.y[0].numel())) if len(split) else batch_size
    out = torch.cat([torch.log_softmax(model(split.x[i:i + step]).float(), dim=-1)
                     for i in range(0, len(split), step)])
    model.train(was_training)
    return out


def score_log_probs(logp: torch.Tensor, y: torch.Tensor) -> Score:
    acc = (logp.argmax(-1) == y).float().mean().item()
    nll = torch.nn.functional.nll_loss(logp.reshape(-1, logp.shape[-1]), y.reshape(-1)).item()
    return Score(acc, nll)


def evaluate(model: nn.Module, split: Split) -> Score:
    if len(split) == 0:
        return Score.empty()
    return score_log_probs(log_probs(model, split), split.y)


def ensemble_log_probs(members: Sequence[torch.Tensor]) -> torch.Tensor:
    """Log of the mean predicted probability of the members (an output ensemble)."""
    stacked = torch.stack(list(members))
    return torch.logsumexp(stacked, dim=0) - math.log(len(members))


def evaluate_ensemble(member_log_probs: Sequence[torch.Tensor], split: Split) -> Score:
    if len(split) == 0:
        return Score.empty()
    return score_log_probs(ensemble_log_probs(member_log_probs), split.y)
