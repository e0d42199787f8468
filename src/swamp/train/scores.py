"""Strong lottery tickets: train a score per weight, never the weights (edge-popup).

`ScoredNetwork` wraps a model whose prunable weights are frozen at their initialisation
(buffers of the wrapper, never touched by the optimiser) and gives each of them a trainable
score. Its forward pass calls the wrapped model with `functional_call` on
`weight * mask(scores)`, where the mask keeps the top weights by |score| at a fixed density
with the exact counts of `swamp.core.pruning.keep_exactly` (global or per layer; the one
top-k of the project). Gradients reach the scores straight through the mask (Ramanujan et
al. 2020): d loss / d |score| = d loss / d effective weight * weight.

Its only trainable parameters are the scores, so the one training loop (`train/fit.py`,
through a `SingleReplica`) trains it like any model: no second loop. Biases and norm layers
are frozen at their initialisation as in edge-popup (norm running statistics still follow
the batches in training mode). The ticket it hands back is `mask()` and
`solution()` = initial weights * mask (the wrapped model's state dict).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from swamp.core.masks import Mask, select_prunable
from swamp.core.pruning import counts_at_density, keep_exactly
from swamp.errors import SwampError
from swamp.train.fit import train_steps
from swamp.train.schedule import Schedule

StateDict = dict[str, torch.Tensor]
INITS = ("kaiming", "signed-constant")


def _key(name: str) -> str:
    return name.replace(".", "__")    # parameter names may not contain dots


def frozen_init(weight: torch.Tensor, init: str, density: float,
                generator: torch.Generator) -> torch.Tensor:
    """Edge-popup's scaled initialisations: Kaiming normal, or its signed constant
    +-sqrt(2 / fan_in), both scaled by 1/sqrt(density) so that the kept subnetwork's
    activations keep their variance."""
    if init not in INITS:
        raise SwampError(f"unknown `slt_init` '{init}'; use {' or '.join(INITS)}")
    fan_in = math.prod(weight.shape[1:]) if weight.dim() > 1 else weight.numel()
    std = math.sqrt(2.0 / fan_in) / math.sqrt(density)
    w = torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * std
    if init == "signed-constant":
        w = torch.where(w >= 0, std, -std).to(weight.dtype)
    return w.to(weight.device)


class _StraightThrough(torch.autograd.Function):
    """Forward: the 0/1 mask; backward: the gradient passes to the scores unchanged.
    (setup_context + generate_vmap_rule: it runs under vmap, for stacked particles.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(scores.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _keep_top_flat(s: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of a flat score vector, as a bool mask, with the tie rule of
    `core/pruning.py` (among equal scores the lower flat index is removed first): a stable
    ascending sort puts ties in index order, so the last k are kept. Written with sort and
    scatter (fixed k) because `keep_exactly`'s exact radix select counts with Python ints
    and does not run under vmap; `ScoredNetwork.mask()` (keep_exactly) is the reference,
    and the tests check both give the same mask."""
    order = torch.sort(s.float(), stable=True).indices
    keep = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    return keep.scatter(0, order[s.numel() - k:], True)


def top_masks(ranked: dict[str, torch.Tensor], counts: dict[str, int], scope: str
              ) -> dict[str, torch.Tensor]:
    """Bool masks keeping exactly `counts` (format of `target_counts`) of `ranked`, globally
    or per layer; runs under vmap (one replica's scores)."""
    names = list(ranked)
    if scope == "global":
        flat = torch.cat([ranked[n].reshape(-1) for n in names])
        parts = _keep_top_flat(flat, counts[""]).split([ranked[n].numel() for n in names])
        return {n: p.view(ranked[n].shape) for n, p in zip(names, parts)}
    return {n: _keep_top_flat(ranked[n].reshape(-1), counts[n]).view(ranked[n].shape)
            for n in names}


class ScoredNetwork(nn.Module):
    """`model` with frozen weights and one trainable score per prunable weight."""

    def __init__(self, model: nn.Module, density: float, *, scope: str = "global",
                 init: str | None = "kaiming", names: Sequence[str] | None = None,
                 seed: int = 0, scores: StateDict | None = None,
                 counts: dict[str, int] | None = None):
        """`counts`: the kept counts (format of `target_counts`), e.g. an IMP level's exact
        counts; default `counts_at_density(density)`."""
        super().__init__()
        self.net = model
        self.names = list(names) if names is not None else select_prunable(model)
        self.density, self.scope = float(density), scope
        params = dict(model.named_parameters())
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if init is not None:
                for n in self.names:
                    params[n].copy_(frozen_init(params[n], init, density, g))
        for p in model.parameters():
            p.requires_grad_(False)
        self.ones = Mask({n: torch.ones_like(params[n], dtype=torch.bool) for n in self.names})
        self.counts = (dict(counts) if counts is not None
                       else counts_at_density(self.ones, self.density, scope))
        # Edge-popup initialises scores like weights (Kaiming uniform); only their order matters.
        self.scores = nn.ParameterDict()
        for n in self.names:
            if scores is not None:
                s = scores[n].detach().clone().to(params[n])
            else:
                # drawn on the CPU generator, then moved: the same scores on every device
                s = torch.empty(params[n].shape, dtype=params[n].dtype)
                bound = 1.0 / math.sqrt(max(1, math.prod(s.shape[1:])))
                s = s.uniform_(-bound, bound, generator=g).to(params[n].device)
            self.scores[_key(n)] = nn.Parameter(s)

    def score_state(self) -> StateDict:
        return {n: self.scores[_key(n)].detach().clone() for n in self.names}

    def mask(self) -> Mask:
        """Top |score| at the density: exactly `counts` weights (global or per layer)."""
        with torch.no_grad():
            ranked = {n: self.scores[_key(n)].detach().abs() for n in self.names}
            return keep_exactly(ranked, self.ones, self.counts, self.scope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = top_masks({n: self.scores[_key(n)].detach().abs() for n in self.names},
                         self.counts, self.scope)
        weights = dict(self.net.named_parameters())
        # through |score| (what ranks), as edge-popup: d loss/d score = sign(score) * w * g
        masked = {n: weights[n] * _StraightThrough.apply(self.scores[_key(n)].abs(), mask[n])
                  for n in self.names}
        return functional_call(self.net, masked, (x,))

    def solution(self, mask: Mask | None = None) -> StateDict:
        """The ticket: the wrapped model's state with its frozen weights times the mask."""
        mask = mask or self.mask()
        return mask.apply_to_state_dict({k: v.detach().clone()
                                         for k, v in self.net.state_dict().items()})


    def parts(self, state: StateDict) -> tuple[StateDict, StateDict]:
        """A state dict of this wrapper (e.g. a trained particle's) -> (the wrapped model's
        state, the scores by prunable tensor name)."""
        model = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        return model, {n: state["scores." + _key(n)] for n in self.names}


def average_scores(states: Sequence[StateDict]) -> StateDict:
    """SWAMP-style combination of score particles: the mean score per weight. |mean| ranks,
    so particles agreeing on a weight's sign reinforce it."""
    return {n: torch.stack([s[n] for s in states]).mean(0) for n in states[0]}


def train_scores(net: ScoredNetwork, data, settings, *, order_seed: int, epochs: int,
                 objective=None, callbacks=(), label: str = "scores") -> float:
    """Train `net`'s scores with the one loop (`train_steps`: `fit` on a `SingleReplica`):
    `settings` a `TrainSettings` (optimiser, lr, batch size), `data` a `Split`, no rewind and
    no SWA; returns the mean training loss. Weight decay applies to the scores (edge-popup
    does the same)."""
    t = dataclasses.replace(settings, epochs=epochs, steps=None, rewind_epochs=0.0, rewind_iters=0)
    schedule = Schedule.build(t, len(data), swa=False)
    result = train_steps(net, None, data, schedule, t, start=0, stop=schedule.total,
                         order_seed=order_seed, label=label, objective=objective,
                         callbacks=callbacks)
    return result.train_loss
