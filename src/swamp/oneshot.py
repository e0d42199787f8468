"""One-shot pruning of a model one already has: no training, a target sparsity per group.

    model, family = load_model("hf:./my-bert", weights="pruned-start.safetensors")
    result = prune_oneshot(model, [Group("bert.encoder.*", 0.5)], family=family)
    save_pruned(model, result.mask, "bert-50.safetensors")

A *group* is an fnmatch pattern over the names of prunable tensors with its own target
sparsity (``text_encoder.*=0.475``); each prunable tensor belongs to the first group whose
pattern matches it, and a tensor in no group stays dense. Every group is pruned to exactly
`counts_at_density(group, 1 - sparsity, scope)` kept weights (`swamp.core.pruning`: globally
within the group, or per tensor for the layerwise scope), by the scorers of that module.
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from swamp.core.masks import Mask, select_prunable
from swamp.core.pruning import SCORERS, counts_at_density, keep_exactly, score
from swamp.errors import SwampError
from swamp.models import build_model
from swamp.models.sources import (LogitsOf, ModelSpec, build_source, default_prunable,
                                  load_weights, param_kinds, parse_spec)

__all__ = ["Group", "parse_group", "load_model", "select_tensors", "prune_oneshot",
           "OneShotResult", "LayerRow", "GroupRow", "save_pruned", "mask_path_for",
           "ONESHOT_SCOPES", "run_prunable"]

ONESHOT_SCOPES = ("global", "layerwise")


@dataclass(frozen=True)
class Group:
    pattern: str     # fnmatch pattern over prunable tensor names
    sparsity: float  # target fraction of zeros over the group's tensors, in [0, 1)

    def __post_init__(self) -> None:
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (
                math.isfinite(s) and 0.0 <= s < 1.0):
            raise SwampError(f"group {self.pattern!r}: a sparsity must lie in [0, 1), got "
                             f"{s!r}; e.g. 0.5 prunes half of the group's weights")


def parse_group(text: str) -> Group:
    """``'text_encoder.*=0.475'`` -> Group('text_encoder.*', 0.475)."""
    pattern, sep, value = str(text).rpartition("=")
    if not sep or not pattern:
        raise SwampError(f"group {text!r} is not PATTERN=SPARSITY; e.g. --group "
                         f"'encoder.*=0.5'")
    try:
        sparsity = float(value)
    except ValueError:
        raise SwampError(f"group {text!r}: {value!r} is not a number; e.g. --group "
                         f"'encoder.*=0.5'") from None
    return Group(pattern, sparsity)


def load_model(spec: str | ModelSpec, weights: str | os.PathLike[str] | None = None, *,
               input_shape: Sequence[int] | None = None, num_classes: int | None = None,
               seed: int = 0) -> tuple[nn.Module, str]:
    """The model a spec names (see `swamp.models.sources`), with `weights` loaded if given,
    and its family. Built-in models need `input_shape` and `num_classes`; timm/torchvision
    use them where given; hf directories carry their own."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    torch.manual_seed(seed)   # models built without weights are reproducible
    if spec.family == "builtin":
        if input_shape is None or num_classes is None:
            raise SwampError(f"the built-in model {spec.name!r} needs an input shape and a "
                             f"number of classes: give a dataset (`dataset`), or "
                             f"`input_shape` and `num_classes`")
        model = build_model(spec.name, tuple(input_shape), int(num_classes))
    else:
        model = build_source(spec, tuple(input_shape) if input_shape else None, num_classes)
    if weights is not None:
        load_weights(model, weights)
    return model, spec.family


def select_tensors(model: nn.Module, family: str = "builtin", include: Sequence[str] = (),
                   exclude: Sequence[str] = ()) -> list[str]:
    """Prunable tensors: the family's default (`default_prunable`), plus the parameters
    matching an `include` pattern (e.g. ``'classifier.weight'`` to prune the head too),
    minus those matching an `exclude` pattern; in `named_parameters` order."""
    params = [n for n, _ in model.named_parameters()]
    for pattern in include:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in params):
            raise SwampError(f"include pattern {pattern!r} matches no parameter of the "
                             f"model; check the name against model.named_parameters()")
    chosen = set(default_prunable(model, family))
    chosen |= {n for n in params if any(fnmatch.fnmatchcase(n, p) for p in include)}
    names = [n for n in params if n in chosen
             and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not names:
        raise SwampError("no prunable tensors selected (no Conv/Linear weights outside the "
                         "head, or `exclude` removed them all); adjust `include`/`exclude`")
    return names


def run_prunable(model: nn.Module, spec: str, include: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> list[str]:
    """The prunable tensors of a run's model named by `spec` (the `model` setting): for
    built-in models, and whenever `include` is given, `select_prunable` (include replaces
    the default); for models of other libraries their family's default (head dense; a hf
    model is wrapped in `LogitsOf`, its names prefixed ``model.``), minus `exclude`."""
    family = parse_spec(spec).family if ":" in str(spec) else "builtin"
    if family == "builtin" or include:
        return select_prunable(model, include, exclude)
    inner, prefix = (model.model, "model.") if isinstance(model, LogitsOf) else (model, "")
    names = [prefix + n for n in default_prunable(inner, family)]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not names:
        raise SwampError("no prunable tensors selected (`exclude` removed them all); adjust "
                         "the include/exclude patterns")
    return names


@dataclass(frozen=True)
class LayerRow:
    name: str
    shape: tuple[int, ...]
    group: str | None      # None: in no group, kept dense
    target: float          # the group's target sparsity (0 for a dense tensor)
    kept: int
    total: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0


@dataclass(frozen=True)
class GroupRow:
    pattern: str
    target: float
    kept: int
    total: int
    tensors: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0


@dataclass
class OneShotResult:
    mask: Mask                 # over every prunable tensor (all True where in no group)
    layers: list[LayerRow]
    groups: list[GroupRow]
    # the parameters left dense: (name, numel, kind: head | embedding | norm | bias | ...)
    dense: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.mask.nnz

    @property
    def total(self) -> int:
        return self.mask.numel

    @property
    def sparsity(self) -> float:
        return 1.0 - self.mask.density


def _assign(names: Sequence[str], groups: Sequence[Group]) -> dict[str, Group | None]:
    out: dict[str, Group | None] = {}
    for n in names:
        out[n] = next((g for g in groups if fnmatch.fnmatchcase(n, g.pattern)), None)
    for g in groups:
        if not any(v is g for v in out.values()):
            matched = [n for n in names if fnmatch.fnmatchcase(n, g.pattern)]
            why = (f"its tensors {matched[:2]} are taken by an earlier group" if matched
                   else "it matches no prunable tensor")
            raise SwampError(f"group {g.pattern!r}: {why}; check the pattern against the "
                             f"prunable tensors (e.g. {names[0]!r}), or `include` more")
    return out


def prune_oneshot(model: nn.Module, groups: Sequence[Group], *,
                  names: Sequence[str] | None = None, family: str = "builtin",
                  scorer: str = "magnitude", scope: str = "global", seed: int = 0
                  ) -> OneShotResult:
    """Prune `model` once, in place: each group to exactly its count of kept weights, by
    `scorer` (magnitude | lamp | random, the latter seeded by `seed`) over `scope` (global
    within the group | layerwise). `names`: the prunable tensors (default:
    `select_tensors(model, family)`). Pruned weights of `model` are zero afterwards."""
    if not groups:
        raise SwampError("nothing to prune: give a `sparsity` or at least one `group`")
    if scorer not in SCORERS:
        raise SwampError(f"unknown `scorer` {scorer!r}; use {', '.join(SCORERS)}")
    if scope not in ONESHOT_SCOPES:
        raise SwampError(f"unknown `scope` {scope!r}; use {' or '.join(ONESHOT_SCOPES)}")
    names = list(names) if names is not None else select_tensors(model, family)
    owner = _assign(names, groups)
    params = dict(model.named_parameters(remove_duplicate=False))
    weights = {n: params[n].detach() for n in names}
    gen = torch.Generator(device=next(iter(weights.values())).device).manual_seed(int(seed))
    kept: dict[str, Tensor] = {n: torch.ones_like(w, dtype=torch.bool)
                               for n, w in weights.items()}
    rows: list[GroupRow] = []
    for g in groups:
        members = [n for n in names if owner[n] is g]
        full = Mask({n: kept[n] for n in members})
        counts = counts_at_density(full, 1.0 - g.sparsity, scope)
        scores = score(weights, full, scorer, gen)
        pruned = keep_exactly(scores, full, counts, scope)
        kept.update({n: pruned[n] for n in members})
        rows.append(GroupRow(g.pattern, float(g.sparsity), pruned.nnz, pruned.numel,
                             len(members)))
    mask = Mask({n: kept[n] for n in names})
    mask.apply_to_module(model)
    layers = [LayerRow(n, tuple(weights[n].shape), owner[n].pattern if owner[n] else None,
                       float(owner[n].sparsity) if owner[n] else 0.0, k, t)
              for n, (k, t) in mask.per_layer().items()]
    chosen = set(names)
    kinds = param_kinds(model, family)
    dense = [(n, p.numel(), kinds.get(n, "other")) for n, p in model.named_parameters()
             if n not in chosen]
    return OneShotResult(mask, layers, rows, dense)


def mask_path_for(out: str | os.PathLike[str]) -> Path:
    """The mask file next to a pruned-weights file: ``x.safetensors`` -> ``x.mask.safetensors``."""
    p = Path(out)
    stem = p.name[:-len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(stem + ".mask.safetensors")


def save_pruned(model: nn.Module, mask: Mask, out: str | os.PathLike[str],
                mask_out: str | os.PathLike[str] | None = None,
                metadata: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write the model's (pruned) state dict as plain safetensors, every state-dict key
    included (tied tensors as copies), and the mask next to it (`Mask.save`)."""
    from swamp.store import save_state

    out = Path(out)
    mask_file = Path(mask_out) if mask_out is not None else mask_path_for(out)
    if out.resolve() == mask_file.resolve():
        raise SwampError(f"the pruned weights and the mask would both be written to {out}; "
                         f"give another `mask_out`")
    save_state(out, model.state_dict(), metadata={"format": "pt", **(metadata or {})})
    mask.save(mask_file)
    return out, mask_file
