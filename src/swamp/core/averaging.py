"""Average and interpolate state dicts; recompute BatchNorm statistics.

We average state dicts rather than use `torch.optim.swa_utils.AveragedModel`: it deep-copies
the module, averages parameters but not buffers unless told to, and cannot average several
finished particles. Integer buffers (BatchNorm's `num_batches_tracked`) are never averaged:
they are copied from the first state. BatchNorm statistics of an average are meaningless
until recomputed, which `recompute_batchnorm` does with swa_utils.update_bn.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from swamp.data import Split

StateDict = dict[str, torch.Tensor]


def _is_averaged(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


class RunningAverage:
    """Equal-weight running mean of a sequence of state dicts (SWA inside one particle)."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: StateDict = {}

    def update(self, state: StateDict) -> None:
        self.count += 1
        if self.count == 1:
            self._mean = {k: v.detach().clone() for k, v in state.items()}
            return
        for k, v in state.items():
            mean = self._mean[k]
            if _is_averaged(mean):
                mean.add_(v.detach() - mean, alpha=1.0 / self.count)
            else:
                mean.copy_(v)

    def value(self) -> StateDict:
        return {k: v.clone() for k, v in self._mean.items()}


def average_states(states: Sequence[StateDict], weights: Sequence[float] | None = None
                   ) -> StateDict:
    """Weighted mean of floating-point entries; other entries copied from the first state."""
    if not states:
        raise ValueError("average_states needs at least one state")
    if weights is None:
        weights = [1.0 / len(states)] * len(states)
    first = states[0]
    out: StateDict = {}
    for k, v in first.items():
        if _is_averaged(v):
            acc = torch.zeros_like(v)
            for w, s in zip(weights, states):
                acc.add_(s[k], alpha=w)
            out[k] = acc
        else:
            out[k] = v.clone()
    return out


def interpolate(a: StateDict, b: StateDict, t: float) -> StateDict:
    """(1 - t) a + t b on floating-point entries; integer entries from `a`."""
    return average_states([a, b], [1.0 - t, t])


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batches(split: Split, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(split), batch_size):
        yield split.x[i:i + batch_size]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, train: Split, batch_size: int = 512) -> None:
    """Reset and re-estimate BatchNorm running statistics on the (un-augmented) training data.

    update_bn uses a cumulative moving average, so the result is the exact mean over batches
    and does not depend on the batch order.
    """
    if has_batchnorm(model):
        update_bn(batches(train, batch_size), model)
