"""What the training loop trains: one module, or N copies of it stacked along a new dim 0.

Both offer the same few operations to `fit`: the parameters the optimiser steps, the
parameters by state-dict name (for the mask), a forward pass that returns replica-major
`Outputs`, the live state dict, per-replica copies of a state, per-replica gradient
clipping, and the expansion of a per-replica tensor to the replicas' layout.

`StackedReplicas` follows the PyTorch model-ensembling recipe (torch.func: stacked
parameters and buffers, `functional_call` under `vmap`): each replica gets its own
mini-batch, BatchNorm in training mode uses each replica's own batch statistics and updates
its own stacked running statistics, and one optimiser steps all stacked parameters at once
(SGD and Adam are elementwise, so each replica's update equals its own optimiser's).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from swamp.train.objective import Outputs

StateDict = dict[str, torch.Tensor]


class _Capture:
    """Forward hooks that keep the outputs of named modules for the objective."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.names = tuple(names)
        self.values: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            from swamp.errors import SwampError

            raise SwampError(f"the objective reads the output of module {missing[0]!r}, which "
                             f"the model does not have; see model.named_modules()")
        for n in self.names:
            modules[n].register_forward_hook(self._keep(n))

    def _keep(self, name: str):
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            # a transformer block's (hidden, ...) tuple: its hidden states (issue 12)
            while isinstance(output, (tuple, list)):
                output = output[0]
            self.values[name] = output
        return hook

    def take(self) -> tuple[torch.Tensor, ...]:
        out = tuple(self.values.pop(n) for n in self.names)
        self.values.clear()
        return out


class SingleReplica:
    """One module trained in place (the reference every other backend is tested against)."""

    n = 1

    def __init__(self, model: nn.Module, start: StateDict | None = None,
                 captures: Sequence[str] = ()):
        if start is not None:
            model.load_state_dict(start)
        self.model = model
        self._capture = _Capture(model, captures) if captures else None

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters(remove_duplicate=False))

    def forward(self, x: torch.Tensor) -> Outputs:
        logits = self.model(x[0])
        if self._capture is None:
            return Outputs(one=logits)
        names = self._capture.names
        return Outputs(features={n: v.unsqueeze(0) for n, v in zip(names, self._capture.take())},
                       one=logits)

    def state(self) -> StateDict:
        return self.model.state_dict()

    def split(self, state: StateDict) -> list[StateDict]:
        return [{k: v.detach().clone() for k, v in state.items()}]

    def load(self, state: StateDict) -> None:
        self.model.load_state_dict(state)

    def clip_grad_norm_(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)

    def expand(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    def train(self) -> None:
        self.model.train()


class _Holder(nn.Module):
    """Owns the stacked parameters, so that the optimiser sees ordinary leaf parameters."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self.plist = nn.ParameterList([nn.Parameter(p, requires_grad=p.requires_grad)
                                       for p in params.values()])


def _aliases(model: nn.Module) -> dict[str, str]:
    """State-dict name -> the canonical (first) name of that parameter or buffer."""
    first: dict[int, str] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        first.setdefault(id(t), name)
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    out = {}
    for key in model.state_dict():
        t = tensors.get(key)
        out[key] = first[id(t)] if t is not None else key
    return out


class StackedReplicas:
    """N copies of a module's parameters and buffers, stacked along dim 0, trained with vmap."""

    def __init__(self, model: nn.Module, start: StateDict, n: int,
                 captures: Sequence[str] = ()):
        model.load_state_dict(start)
        self.model = model
        self.n = n
        self.aliases = _aliases(model)

        def stacked(t: torch.Tensor) -> torch.Tensor:
            return t.detach().unsqueeze(0).repeat(n, *([1] * t.dim())).contiguous()

        named = dict(model.named_parameters())
        self.holder = _Holder({name: stacked(p).requires_grad_(p.requires_grad)
                               for name, p in named.items()})
        # the tensors the optimiser owns are the ones the forward pass reads
        self.params: dict[str, torch.Tensor] = dict(zip(named, self.holder.plist))
        self.buffers = {name: stacked(b) for name, b in model.named_buffers()}
        self._capture = _Capture(model, captures) if captures else None

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.holder.parameters() if p.requires_grad]

    def named_parameters(self) -> dict[str, torch.Tensor]:
        return {key: self.params[c] for key, c in self.aliases.items() if c in self.params}

    def forward(self, x: torch.Tensor) -> Outputs:
        capture = self._capture

        def one(p: StateDict, b: StateDict, xb: torch.Tensor):
            out = functional_call(self.model, (p, b), (xb,))
            return out, (capture.take() if capture is not None else ())

        logits, features = vmap(one)(self.params, self.buffers, x)
        names = capture.names if capture is not None else ()
        return Outputs(logits, dict(zip(names, features)))

    def state(self) -> StateDict:
        """Stacked state dict, keyed like `model.state_dict()` (views, not copies)."""
        out = {}
        for key, canonical in self.aliases.items():
            t = self.params.get(canonical)
            out[key] = (t if t is not None else self.buffers[canonical]).detach()
        return out

    def split(self, state: StateDict) -> list[StateDict]:
        return [{k: v[i].clone() for k, v in state.items()} for i in range(self.n)]

    def load(self, state: StateDict) -> None:
        with torch.no_grad():
            for key, canonical in self.aliases.items():
                target = self.params.get(canonical)
                (target if target is not None else self.buffers[canonical]).copy_(state[key])

    def clip_grad_norm_(self, max_norm: float) -> None:
        """`torch.nn.utils.clip_grad_norm_`'s arithmetic, per replica (each particle's own
        gradient norm, as if it had its own optimiser)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, dim=0)                     # (N,)
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))

    def expand(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().unsqueeze(0).repeat(self.n, *([1] * t.dim())).contiguous()

    def train(self) -> None:
        self.model.train()
