"""Model registry. Any torch.nn.Module also works through the Python API.

    model = build_model("resnet20", (3, 32, 32), 10)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from swamp.errors import SwampError, did_you_mean
from swamp.models.common import init_weights, require_image
from swamp.models.generator import MLPGenerator
from swamp.models.resnet import ResNet, WideResNet, cifar_resnet, resnet18
from swamp.models.small import (MLP, BagOfWords, CausalConvLM, Conv1dNet, ResidualMLP,
                                conv1d_strides)
from swamp.models.vgg import VGG

__all__ = ["MODELS", "ModelInfo", "build_model", "list_models", "model_description"]

Builder = Callable[[str, tuple[int, ...], int], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    build: Builder
    tokens: bool = False   # takes token ids: `build` gets the vocabulary size as well


def _image(make: Callable[[int, int], nn.Module]) -> Builder:
    return lambda name, shape, k: make(require_image(name, shape), k)


MODELS: dict[str, ModelInfo] = {m.name: m for m in [
    ModelInfo("mlp", "flatten + 2 hidden layers of 256 (ReLU); any input shape",
              lambda n, s, k: MLP(s, k)),
    ModelInfo("conv1d", "1-D conv 32-32-32 (k5, strides 1-2-2) + BN + ReLU, flatten, linear; "
              "input (C, L) [default for mnist1d]", lambda n, s, k: Conv1dNet(s, k)),
    *[ModelInfo(f"resnet{d}", f"CIFAR ResNet-{d} (He et al. 2016, option-A shortcuts); input (C, H, W)",
                _image(lambda c, k, d=d: cifar_resnet(d, c, k))) for d in (20, 32, 56)],
    ModelInfo("resnet18", "ResNet-18, CIFAR stem (3x3 stride 1, no max-pool); input (C, H, W)",
              _image(resnet18)),
    *[ModelInfo(f"vgg{d}", f"VGG-{d} with BatchNorm, CIFAR variant (one linear classifier); "
                "input (C, H, W)", _image(lambda c, k, d=d: VGG(d, c, k))) for d in (11, 13, 16, 19)],
    # token models for the text datasets (csv:, jsonl:, text:; issue 12)
    ModelInfo("bow", "text classification: mean token embedding (masked), 64 hidden, linear; "
              "input (2, L) ids + attention mask", lambda n, s, k, v: BagOfWords(s, k, v), True),
    ModelInfo("causal-conv", "causal LM: embedding, 2 residual causal convs (k3), linear head "
              "over the vocabulary; input (T,) token ids",
              lambda n, s, k, v: CausalConvLM(s, k), True),
    ModelInfo("mlp-generator", "generator: Gaussian noise (16) -> 2 hidden layers of 256 (ReLU) "
              "-> a sample of the data's shape; trained on MMD (issue 16)",
              lambda n, s, k: MLPGenerator(s, latent=16, hidden=(256, 256))),
]}
_WRN = re.compile(r"wrn-(\d+)-(\d+)")
WRN_PATTERN = "wrn-D-K"


def list_models() -> list[str]:
    return [*MODELS, WRN_PATTERN]


def model_description(name: str) -> str:
    if name == WRN_PATTERN:
        return "Wide ResNet (Zagoruyko & Komodakis 2016), depth D = 6n+4 or 6n+2, width K; e.g. wrn-28-2"
    return MODELS[name].description


def _build_wrn(name: str, depth: int, width: int, shape: tuple[int, ...], k: int) -> nn.Module:
    # Two depth conventions are in use: Zagoruyko & Komodakis count the 1x1 shortcut convs
    # (D = 6n+4: wrn-28-2); CIFAR-ResNet-style code does not (D = 6n+2: the SWAMP paper's
    # wrn-32-4). Both name the same family; n blocks per stage.
    if depth < 8 or ((depth - 4) % 6 != 0 and (depth - 2) % 6 != 0):
        raise SwampError(f"{name}: WRN depth must be 6n+4 (10, 16, 22, 28, ...) or 6n+2 "
                         f"(14, 20, 26, 32, ...) with n >= 1, got {depth}; e.g. wrn-28-2")
    if width < 1:
        raise SwampError(f"{name}: WRN width K must be >= 1, got {width}; e.g. wrn-28-2")
    return WideResNet(depth, width, require_image(name, shape), k)


def _build_from_source(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from swamp.models.sources import LogitsOf, build_source, parse_spec

    spec = parse_spec(name)
    model = build_source(spec, tuple(int(s) for s in input_shape), int(num_classes))
    return LogitsOf(model) if spec.family == "hf" else model


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                vocab_size: int | None = None, *, hidden: tuple[int, ...] = (),
                residual: bool = False, channels: tuple[int, ...] = ()) -> nn.Module:
    """A freshly initialised registered model for inputs of `input_shape` (no batch dim);
    `vocab_size`: of token-id inputs, for the token models.

    `hidden` and `residual` size the mlp, `channels` the conv1d; left empty, each model keeps
    its built-in size (and its parameter names, so older runs still load). `timm:NAME`,
    `torchvision:NAME` and `hf:DIR` build models of those libraries with their own
    initialisation, nothing downloaded (`swamp.models.sources`)."""
    key = str(name).lower().replace("_", "-")
    if (hidden or residual) and key != "mlp" or channels and key != "conv1d":
        raise SwampError(f"model {name!r} has no size settings: `hidden` and `residual` size "
                         f"mlp, `channels` sizes conv1d")
    if ":" in str(name):   # model sources (issue 12): another library's architecture
        return _build_from_source(name, input_shape, num_classes)
    shape = tuple(int(s) for s in input_shape)
    if isinstance(num_classes, bool) or int(num_classes) < 1:
        raise SwampError(f"num_classes must be >= 1, got {num_classes}")
    k = int(num_classes)
    if not shape or min(shape) < 1:
        raise SwampError(f"input_shape must be a non-empty tuple of positive sizes, got {shape}")
    wrn = _WRN.fullmatch(key)
    if wrn:
        model = _build_wrn(key, int(wrn.group(1)), int(wrn.group(2)), shape, k)
    elif key == "mlp" and (hidden or residual):
        model = (ResidualMLP if residual else MLP)(shape, k, tuple(hidden) or (256, 256))
    elif key == "conv1d" and channels:
        model = Conv1dNet(shape, k, tuple(channels), conv1d_strides(len(channels)))
    elif key in MODELS and MODELS[key].tokens:
        if vocab_size is None:
            raise SwampError(f"model {key} takes token ids; use a tokenised text dataset "
                             f"(csv:FILE, jsonl:FILE, text:FILE)")
        model = MODELS[key].build(key, shape, k, int(vocab_size))
    elif key in MODELS:
        model = MODELS[key].build(key, shape, k)
    else:
        raise SwampError(f"unknown model {name!r};{did_you_mean(name, MODELS)} known: "
                         f"{', '.join(list_models())} "
                         "(see `swamp list`)")
    return init_weights(model)
