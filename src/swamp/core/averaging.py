"""Average and interpolate state dicts; recompute BatchNorm statistics.

We average state dicts rather than use `torch.optim.swa_utils.AveragedModel`: it deep-copies
the module, averages parameters but not buffers unless told to, and cannot average several
finished particles. Integer buffers (BatchNorm's `num_batches_tracked`) are never averaged:
they are copied from the first state. BatchNorm statistics of an average are meaningless
until recomputed, which `recompute_batchnorm` does with swa_utils.update_bn.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from swamp.data import Split, batches_of

StateDict = dict[str, torch.Tensor]


def _is_averaged(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


class RunningAverage:
    """Equal-weight running mean of a sequence of state dicts (SWA inside one particle)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: StateDict = {}      # live running mean (the checkpoint of an average)

    @classmethod
    def restore(cls, mean: StateDict, count: int) -> "RunningAverage":
        """The average a checkpoint saved (`mean` after `count` updates)."""
        out = cls()
        out.mean, out.count = dict(mean), count
        return out

    def update(self, state: StateDict) -> None:
        self.count += 1
        if self.count == 1:
            self.mean = {k: v.detach().clone() for k, v in state.items()}
            return
        for k, v in state.items():
            mean = self.mean[k]
            if _is_averaged(mean):
                mean.add_(v.detach() - mean, alpha=1.0 / self.count)
            else:
                mean.copy_(v)

    def value(self) -> StateDict:
        return {k: v.clone() for k, v in self.mean.items()}


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
    yield from batches_of(split.x, batch_size)   # slices, or images streamed from files


# The seed of the augmentation draws of a BatchNorm pass: one fixed draw, so that candidates
# compared on it (Lottery Pools, greedy soups) see the same augmented batches.
BN_AUGMENT_SEED = 0x5EED_B4


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, train: Split, batch_size: int = 512,
                        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
                        | None = None) -> None:
    """Reset and re-estimate BatchNorm running statistics on the training data: un-augmented
    (the default), or passed once through `augment` (as the SWA reference recomputes them,
    through its augmented training loader).

    update_bn uses a cumulative moving average, so the result is the exact mean over batches
    and does not depend on the batch order.
    """
    if not has_batchnorm(model):
        return
    if augment is None:
        update_bn(batches(train, batch_size), model)
        return
    generator = torch.Generator().manual_seed(BN_AUGMENT_SEED)
    update_bn((augment(x, generator) for x in batches(train, batch_size)), model)
