"""Models from other libraries, and weights from files; nothing is downloaded.

A model *spec* names where a model comes from:

- ``resnet20``, ``conv1d``, ... : a built-in model (the registry in `swamp.models`);
- ``timm:NAME``: a timm architecture, built with ``pretrained=False``;
- ``torchvision:NAME``: a torchvision architecture, built with ``weights=None``;
- ``hf:DIR``: a local Hugging Face `transformers` directory (``config.json``, and weights if
  it has them); the task head is the one its config names (``architectures``).

Pretrained weights come from a file (`load_weights`): safetensors, or a torch checkpoint
read with ``weights_only=True`` (no pickled code runs). Each optional library is imported
only when a spec needs it; a missing one is one line naming the extra to install.

Prunable tensors are chosen per *family* (`default_prunable`): the weights of Conv/Linear
layers (and of transformers' GPT-2-style ``Conv1D``), leaving embeddings, normalisation
layers, biases and the output head dense for models from other libraries (the head of a
pretrained model is small and task-specific; pruning it hurts most and saves least).
Built-in models keep the study's own default (every Conv/Linear weight, head included).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from swamp.errors import SwampError

__all__ = ["FAMILIES", "ModelSpec", "parse_spec", "build_source", "require_extra",
           "load_weights", "read_weights", "default_prunable", "head_modules", "param_kinds",
           "LogitsOf"]

FAMILIES = ("builtin", "timm", "torchvision", "hf")
_EXTRA_OF = {"timm": "timm", "torchvision": "torchvision", "transformers": "hf"}


@dataclass(frozen=True)
class ModelSpec:
    family: str   # one of FAMILIES
    name: str     # model name, or the directory for hf

    def __str__(self) -> str:
        return self.name if self.family == "builtin" else f"{self.family}:{self.name}"


def parse_spec(spec: str) -> ModelSpec:
    """``timm:resnet18`` -> ModelSpec('timm', 'resnet18'); a name without a prefix is built-in."""
    family, sep, name = str(spec).partition(":")
    if not sep:
        return ModelSpec("builtin", spec)
    if family not in FAMILIES[1:]:
        raise SwampError(f"unknown model source {family!r} in {spec!r}; use timm:NAME, "
                         f"torchvision:NAME, hf:DIR or a built-in name (see `swamp list`)")
    if not name:
        raise SwampError(f"model spec {spec!r} names no model; e.g. {family}:"
                         f"{'DIR' if family == 'hf' else 'resnet18'}")
    return ModelSpec(family, name)


def require_extra(module: str) -> Any:
    """Import an optional library, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRA_OF.get(module, module)
        raise SwampError(f"this model needs {module}, which is not installed; it needs the "
                         f"extra: pip install 'swamp[{extra}]'") from None


class LogitsOf(nn.Module):
    """A transformers model whose forward returns the logits tensor (what training and
    evaluation take), not a ModelOutput. State-dict names gain the prefix ``model.``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3 and x.shape[1] == 2 and not x.is_floating_point():
            # text classification from data/files.py: (B, 2, L) token ids and attention mask
            out = self.model(input_ids=x[:, 0], attention_mask=x[:, 1])
        else:
            out = self.model(x)
        return out.logits if hasattr(out, "logits") else out[0]


# ---------------------------------------------------------------------------------------
# building


def build_source(spec: ModelSpec, input_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None) -> nn.Module:
    """A model of another library with its own initialisation (no pretrained download).

    `input_shape` (C, ...) and `num_classes` adapt timm and torchvision architectures where
    given (torchvision has no channel option: its models take 3 channels); a hf directory's
    config fixes its own head."""
    if spec.family == "timm":
        timm = require_extra("timm")
        kw: dict[str, Any] = {}
        if num_classes is not None:
            kw["num_classes"] = int(num_classes)
        if input_shape:
            kw["in_chans"] = int(input_shape[0])
        try:
            return timm.create_model(spec.name, pretrained=False, **kw)
        except RuntimeError as exc:   # timm's "Unknown model (NAME)"
            raise SwampError(f"timm has no model {spec.name!r} ({exc}); see "
                             f"timm.list_models()") from None
    if spec.family == "torchvision":
        tv_models = require_extra("torchvision").models
        kw = {"weights": None}
        if num_classes is not None:
            kw["num_classes"] = int(num_classes)
        try:
            return tv_models.get_model(spec.name, **kw)
        except ValueError as exc:   # torchvision's "Unknown model name"
            raise SwampError(f"torchvision has no model {spec.name!r} ({exc}); see "
                             f"torchvision.models.list_models()") from None
    if spec.family == "hf":
        return build_hf(spec.name)
    raise SwampError(f"model family {spec.family!r} is not built by build_source")


_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")


def build_hf(directory: str | os.PathLike[str]) -> nn.Module:
    """The model of a local transformers directory: its config's architecture (task head),
    with the directory's weights if it has any, else freshly initialised from the config."""
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise SwampError(f"hf:{directory} is not a transformers model directory (no "
                         f"config.json); pass a directory written by save_pretrained")
    transformers = require_extra("transformers")
    try:
        arch = (json.loads((path / "config.json").read_text()).get("architectures") or [None])[0]
    except (ValueError, OSError) as exc:
        raise SwampError(f"{path / 'config.json'} cannot be read ({exc}); check the file") from None
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel   # no (known) task head: the bare model
    log = transformers.utils.logging
    bar = log.is_progress_bar_enabled()
    log.disable_progress_bar()   # a bar per load of a local file says nothing
    try:
        if any((path / f).is_file() for f in _HF_WEIGHTS):
            return cls.from_pretrained(str(path), local_files_only=True)
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        return cls.from_config(config) if cls is transformers.AutoModel else cls(config)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SwampError(f"cannot load the transformers model in {path}: {first}"[:300]) from None
    finally:
        if bar:
            log.enable_progress_bar()


# ---------------------------------------------------------------------------------------
# weights from files


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A state dict from safetensors, or from a torch file read with weights_only=True
    (a checkpoint dict holding it under 'state_dict' or 'model' is unwrapped)."""
    p = Path(path)
    if not p.is_file():
        raise SwampError(f"weights file {str(p)!r} does not exist; check `weights`")
    with open(p, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte header length, then a JSON header starting with '{'.
    if p.suffix == ".safetensors" or head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:   # several error types for damaged files
            raise SwampError(f"weights file {str(p)!r} is not readable safetensors ({exc}); "
                             f"check the file") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:   # unpickling refused or a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SwampError(f"weights file {str(p)!r} cannot be read as safetensors or as a "
                         f"torch state dict with weights_only=True ({first[:160]}); save it "
                         f"with safetensors.torch.save_file(model.state_dict(), FILE)") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise SwampError(f"weights file {str(p)!r} holds no state dict (name -> tensor); "
                         f"save model.state_dict()")
    return dict(obj)


def _tied_aliases(model: nn.Module) -> set[str]:
    """State-dict names of parameters that share storage with an earlier name (tied heads)."""
    seen: set[int] = set()
    out: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out.add(name)
        seen.add(id(p))
    return out


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load `path` into `model` in place. Keys and shapes must match the model's state dict
    (a tied alias may be absent); the first mismatch is one line naming the key."""
    state = read_weights(path)
    if isinstance(model, LogitsOf):   # a transformers model's file names its own tensors
        _load_state(model.model, _unwrapped(model.model, state), path)
        return model
    _load_state(model, _unwrapped(model, state), path)
    return model


def _unwrapped(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A swamp run's files of a transformers model (solution.safetensors) name LogitsOf's
    tensors, `model.` + the model's own: those names without the prefix, where that gives
    exactly the model's tensors (a tied alias may be absent); else `state` as it is."""
    own = set(model.state_dict())
    if not state or set(state) <= own or not all(k.startswith("model.") for k in state):
        return state
    stripped = {k[len("model."):]: v for k, v in state.items()}
    if set(stripped) <= own and own - set(stripped) <= _tied_aliases(model):
        return stripped
    return state


def _load_state(model: nn.Module, state: dict[str, Tensor], path: str | os.PathLike[str]) -> None:
    own = model.state_dict()
    tied = _tied_aliases(model)
    for key, value in own.items():
        if key not in state:
            if key in tied:
                continue
            wrapped = next((k for k in state if k.endswith("." + key)), None)
            hint = (f"its names carry a prefix ({wrapped!r}): save the inner model's "
                    f"state_dict (e.g. model.module for DDP)" if wrapped
                    else "pass weights saved from the same architecture")
            raise SwampError(f"weights file {str(path)!r} lacks the model's tensor {key!r} "
                             f"({len(state)} tensors in the file, {len(own)} in the model); "
                             f"{hint}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise SwampError(f"weights file {str(path)!r}: tensor {key!r} has shape "
                             f"{tuple(state[key].shape)} in the file but {tuple(value.shape)} "
                             f"in the model; pass weights of the same architecture and number "
                             f"of classes (`num_classes`)")
    extra = [k for k in state if k not in own]
    if extra:
        raise SwampError(f"weights file {str(path)!r} has tensor {extra[0]!r} that the model "
                         f"lacks ({len(extra)} such); pass weights saved from the same "
                         f"architecture")
    model.load_state_dict({k: v for k, v in state.items()}, strict=False)


# ---------------------------------------------------------------------------------------
# prunable tensors per family


def _matmul_modules() -> tuple[type, ...]:
    kinds: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    # GPT-2-style transformers use their own Conv1D (a transposed Linear). Only looked up
    # once transformers is imported (a model of it exists): importing it takes seconds.
    utils = sys.modules.get("transformers.pytorch_utils")
    if utils is None and "transformers" in sys.modules:
        utils = importlib.import_module("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    return (*kinds, conv1d) if isinstance(conv1d, type) else kinds


def head_modules(model: nn.Module, family: str) -> list[str]:
    """Module names of the output head, which stays dense for models of other libraries.

    hf: every module outside the base model (``classifier``, ``score``, ``lm_head``);
    timm: the module ``get_classifier()`` returns; torchvision (and any other): the last
    Conv/Linear module in module order (``fc``, ``classifier.6``, ``heads.head``)."""
    named = list(model.named_modules())
    kinds = _matmul_modules()
    if family == "hf":
        prefix = getattr(model, "base_model_prefix", "")
        if prefix and isinstance(getattr(model, prefix, None), nn.Module):
            return [n for n, m in named if n and isinstance(m, kinds)
                    and n.split(".")[0] != prefix]
    if family == "timm" and hasattr(model, "get_classifier"):
        head = model.get_classifier()
        found = [n for n, m in named if m is head]
        if found and found[0]:
            return found
    last = [n for n, m in named if n and isinstance(m, kinds)]
    return last[-1:]


def default_prunable(model: nn.Module, family: str = "builtin") -> list[str]:
    """State-dict names of the prunable tensors a family prunes by default, in
    `named_parameters` order: Conv/Linear (and transformers Conv1D) weights; for models of
    other libraries without the output head (embeddings and norms are never Conv/Linear)."""
    kinds = _matmul_modules()
    heads = set(head_modules(model, family)) if family != "builtin" else set()
    ids = {id(m.weight) for n, m in model.named_modules()
           if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), nn.Parameter)
           and not any(n == h or n.startswith(h + ".") for h in heads)}
    # A head tied to an embedding shares its parameter: the embedding's name keeps it dense.
    emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [n for n, p in model.named_parameters() if id(p) in ids and id(p) not in emb]


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def param_kinds(model: nn.Module, family: str = "builtin") -> dict[str, str]:
    """What each parameter is, for the printed choice: head | embedding | norm | bias |
    weight (of a Conv/Linear layer) | other. Norms are also found by class name (RMSNorm,
    T5LayerNorm ...), since libraries define their own."""
    heads = set(head_modules(model, family)) if family != "builtin" else set()
    kinds = _matmul_modules()
    out: dict[str, str] = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            name = f"{mname}.{pname}" if mname else pname
            if any(mname == h or mname.startswith(h + ".") for h in heads):
                kind = "head"
            elif isinstance(module, nn.Embedding):
                kind = "embedding"
            elif isinstance(module, _NORMS) or "norm" in type(module).__name__.lower():
                kind = "norm"
            elif pname == "bias":
                kind = "bias"
            elif isinstance(module, kinds):
                kind = "weight"
            else:
                kind = "other"
            out.setdefault(name, kind)
    return out
