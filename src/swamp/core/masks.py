"""Masks over prunable tensors: which weights survive, and keeping pruned weights at zero.

A `Mask` maps state-dict names of prunable tensors to bool tensors of the same shape
(True = kept). It knows nothing about training; the training loop uses `Mask.bind` to get a
`BoundMask` whose `apply_()` re-zeroes pruned weights *and* their optimiser state after every
step with a single `torch._foreach_mul_`, so momentum and weight decay cannot revive them.

Masks are treated as immutable: every operation returns a new mask, and the tensors returned
by `mask[name]` must not be modified in place (float copies of them are cached).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from swamp.errors import SwampError

__all__ = ["select_prunable", "Mask", "BoundMask"]

_PRUNABLE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def select_prunable(
    model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[str]:
    """State-dict names of the prunable tensors of `model`, in `named_parameters` order.

    Default selection: the `weight` of every Conv1d/2d/3d and Linear module (biases and
    normalisation layers stay dense). If `include` is non-empty it *replaces* the default:
    every parameter whose name matches at least one include pattern (fnmatch, e.g.
    ``"layer4.*.weight"``) is selected, whatever its module type. `exclude` patterns are then
    removed from the selection. A parameter shared by several modules appears once.

    Raises SwampError if an include pattern matches no parameter (likely a typo) or if the
    selection ends up empty.
    """
    params = dict(model.named_parameters())  # first name of each (possibly shared) parameter
    if include:
        for pattern in include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in params):
                raise SwampError(
                    f"include pattern {pattern!r} matches no parameter of the model; "
                    f"check the name against model.named_parameters()"
                )
        names = [n for n in params if any(fnmatch.fnmatchcase(n, p) for p in include)]
    else:
        ids = {
            id(m.weight)
            for m in model.modules()
            if isinstance(m, _PRUNABLE_MODULES) and isinstance(m.weight, nn.Parameter)
        }
        names = [n for n, p in params.items() if id(p) in ids]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not names:
        raise SwampError(
            "no prunable tensors selected (the model has no Conv/Linear weights, or include/"
            "exclude removed them all); adjust the include/exclude patterns"
        )
    return names


def _named_params(model: nn.Module, names: Sequence[str]) -> list[Tensor]:
    """The parameters called `names` (any state-dict alias of a shared parameter works)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in names if n not in params]
    if missing:
        raise SwampError(
            f"the mask covers parameters the model lacks: {missing[:5]}; "
            f"was the mask made for a different model?"
        )
    return [params[n] for n in names]


class Mask(Mapping[str, Tensor]):
    """Bool tensors over prunable tensors, keyed by state-dict name (True = weight kept)."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        if not tensors:
            raise SwampError("a mask needs at least one tensor; select prunable tensors first")
        # Non-bool tensors (e.g. 0/1 floats) are read as `!= 0`.
        self._t: dict[str, Tensor] = {
            n: (t if t.dtype == torch.bool else t != 0).detach() for n, t in tensors.items()
        }
        # (dtype, device) -> name -> 0/1 tensor; built once, used by every multiply.
        self._factors: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def ones(cls, model: nn.Module, names: Sequence[str] | None = None) -> Mask:
        """All-True mask over `names` (default: `select_prunable(model)`), on the params' device."""
        names = select_prunable(model) if names is None else list(names)
        params = _named_params(model, names)
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in zip(names, params)})

    # -- mapping --------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    @property
    def names(self) -> list[str]:
        return list(self._t)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return set(self._t) == set(other._t) and all(
            t.shape == other._t[n].shape and torch.equal(t, other._t[n].to(t.device))
            for n, t in self._t.items()
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container of tensors

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, nnz={self.nnz}/{self.numel}, density={self.density:.4f})"

    # -- statistics -----------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Number of kept weights."""
        return sum(int(t.count_nonzero()) for t in self._t.values())

    @property
    def numel(self) -> int:
        """Number of prunable weights."""
        return sum(t.numel() for t in self._t.values())

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept (sparsity is 1 - density)."""
        numel = self.numel
        return self.nnz / numel if numel else 0.0

    def per_layer(self) -> dict[str, tuple[int, int]]:
        """name -> (kept, total) for a per-layer sparsity table."""
        return {n: (int(t.count_nonzero()), t.numel()) for n, t in self._t.items()}

    # -- copies and set operations ----------------------------------------------------------
    def to(self, device: torch.device | str) -> Mask:
        return Mask({n: t.to(device) for n, t in self._t.items()})

    def clone(self) -> Mask:
        return Mask({n: t.clone() for n, t in self._t.items()})

    def _check_same_layout(self, other: Mask, op: str) -> None:
        if set(self._t) != set(other._t) or any(
            t.shape != other._t[n].shape for n, t in self._t.items()
        ):
            raise SwampError(
                f"cannot {op} masks over different tensors or shapes; "
                f"both masks must come from the same model and selection"
            )

    def intersect(self, other: Mask) -> Mask:
        """Kept where both keep (e.g. the overlap of particles' masks in COLT)."""
        self._check_same_layout(other, "intersect")
        return Mask({n: t & other._t[n].to(t.device) for n, t in self._t.items()})

    def union(self, other: Mask) -> Mask:
        """Kept where either keeps."""
        self._check_same_layout(other, "unite")
        return Mask({n: t | other._t[n].to(t.device) for n, t in self._t.items()})

    # -- applying ---------------------------------------------------------------------------
    def _factor(self, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The mask of `name` as 0/1 in `dtype` on `device`, cached for later multiplies."""
        key = (dtype, torch.device(device))
        cache = self._factors.get(key)
        if cache is None:
            cache = self._factors[key] = {}
        f = cache.get(name)
        if f is None:
            f = cache[name] = self._t[name].to(device=device, dtype=dtype)
        return f

    def _check_shapes(self, tensors: Sequence[Tensor], what: str) -> None:
        for n, t in zip(self._t, tensors):
            if t.shape != self._t[n].shape:
                raise SwampError(
                    f"{what} {n!r} has shape {tuple(t.shape)} but the mask has "
                    f"{tuple(self._t[n].shape)}; was the mask made for a different model?"
                )

    def apply_to_module(self, model: nn.Module) -> None:
        """Zero, in place, the weights of `model` where the mask is False."""
        params = _named_params(model, self.names)
        self._check_shapes(params, "parameter")
        factors = [self._factor(n, p.dtype, p.device) for n, p in zip(self._t, params)]
        with torch.no_grad():
            torch._foreach_mul_(params, factors)

    def apply_to_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A shallow copy of `state_dict` whose masked tensors are zeroed (input untouched)."""
        missing = [n for n in self._t if n not in state_dict]
        if missing:
            raise SwampError(
                f"the state dict lacks masked tensors {missing[:5]}; "
                f"was the mask made for a different model?"
            )
        self._check_shapes([state_dict[n] for n in self._t], "state-dict entry")
        out = dict(state_dict)
        for n, m in self._t.items():
            t = state_dict[n]
            # masked_fill (not multiply) so that NaN/inf at pruned entries become 0 as well.
            out[n] = t.masked_fill(~m.to(t.device), 0)
        return out

    def _optimizer_targets(
        self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Optimizer state tensors shaped like a masked parameter, with their 0/1 factors."""
        targets: list[Tensor] = []
        factors: list[Tensor] = []
        for n, p in zip(self._t, params):
            state = optimizer.state.get(p)
            if not state:
                continue
            for k, v in state.items():
                # Shape equality picks momentum_buffer, exp_avg, exp_avg_sq, max_exp_avg_sq;
                # `step` is skipped by name too, in case a masked parameter is a scalar.
                if isinstance(v, Tensor) and v.shape == p.shape and k != "step":
                    targets.append(v)
                    factors.append(self._factor(n, v.dtype, v.device))
        return targets, factors

    def apply_to_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        """Zero, in place, every optimizer state tensor of a masked parameter where pruned."""
        params = _named_params(model, self.names)
        self._check_shapes(params, "parameter")
        targets, factors = self._optimizer_targets(optimizer, params)
        if targets:
            with torch.no_grad():
                torch._foreach_mul_(targets, factors)

    def bind(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> BoundMask:
        """A `BoundMask` for the training loop: call `.apply_()` after every optimiser step."""
        return BoundMask(self, model, optimizer)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the mask as safetensors (bool tensors keyed by state-dict name), atomically.

        The name order is kept in the metadata: it is the global tie-break order of pruning.
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        # Own contiguous CPU copies: safetensors refuses views sharing storage.
        save_file(
            {n: t.to("cpu", copy=True).contiguous() for n, t in self._t.items()},
            str(tmp),
            metadata={"format": "swamp-mask", "names": json.dumps(self.names)},
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Mask:
        """Read a mask written by `save`. A missing or corrupt file raises SwampError."""
        try:
            tensors = load_file(str(path), device=str(device))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            order = json.loads(meta["names"]) if "names" in meta else sorted(tensors)
        except (OSError, SafetensorError, ValueError, RuntimeError) as e:
            raise SwampError(
                f"cannot read mask file {str(path)!r} ({e}); check the path, or delete the "
                f"file so that the mask is recomputed"
            ) from e
        bad = [n for n, t in tensors.items() if t.dtype != torch.bool]
        if not tensors or bad or not isinstance(order, list) or sorted(order) != sorted(tensors):
            raise SwampError(
                f"{str(path)!r} is not a mask file (expected bool tensors); check the path"
            )
        return cls({n: tensors[n] for n in order})


class BoundMask:
    """A mask tied to one model (and optionally its optimizer) for the hot training loop.

    `apply_()` does one `torch._foreach_mul_` over lists collected once: the masked weights
    and the optimizer state tensors shaped like them, each with its cached 0/1 factor. No
    dict lookups or allocations per step. Optimizer state appears lazily (first step) and is
    replaced by `optimizer.load_state_dict`; both are detected by the identity and size of
    `optimizer.state`, and the lists are re-collected. Call `refresh()` if you replace state
    tensors yourself, and re-bind after moving the model to another device or dtype.
    """

    def __init__(
        self, mask: Mask, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        self.mask = mask
        self.model = model
        self.optimizer = optimizer
        self._params = _named_params(model, mask.names)
        mask._check_shapes(self._params, "parameter")
        self._param_factors = [
            mask._factor(n, p.dtype, p.device) for n, p in zip(mask.names, self._params)
        ]
        self.refresh()

    def refresh(self) -> None:
        """Re-collect the optimizer state tensors to mask."""
        targets, factors = list(self._params), list(self._param_factors)
        opt = self.optimizer
        if opt is not None:
            t, f = self.mask._optimizer_targets(opt, self._params)
            targets += t
            factors += f
            self._state_ref: object = opt.state
            self._state_len = len(opt.state)
        self._targets, self._factors = targets, factors

    def apply_(self) -> None:
        """Zero pruned weights and their optimizer state, in place."""
        opt = self.optimizer
        if opt is not None and (
            opt.state is not self._state_ref or len(opt.state) != self._state_len
        ):
            self.refresh()
        with torch.no_grad():
            torch._foreach_mul_(self._targets, self._factors)
