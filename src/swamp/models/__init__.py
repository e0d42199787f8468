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
from swamp.models.resnet import ResNet, WideResNet, cifar_resnet, resnet18
from swamp.models.small import MLP, Conv1dNet
from swamp.models.vgg import VGG

__all__ = ["MODELS", "ModelInfo", "build_model", "list_models", "model_description"]

Builder = Callable[[str, tuple[int, ...], int], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    build: Builder


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


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised registered model for inputs of `input_shape` (no batch dim)."""
    key = name.lower().replace("_", "-")
    shape = tuple(int(s) for s in input_shape)
    if isinstance(num_classes, bool) or int(num_classes) < 1:
        raise SwampError(f"num_classes must be >= 1, got {num_classes}")
    k = int(num_classes)
    if not shape or min(shape) < 1:
        raise SwampError(f"input_shape must be a non-empty tuple of positive sizes, got {shape}")
    wrn = _WRN.fullmatch(key)
    if wrn:
        model = _build_wrn(key, int(wrn.group(1)), int(wrn.group(2)), shape, k)
    elif key in MODELS:
        model = MODELS[key].build(key, shape, k)
    else:
        raise SwampError(f"unknown model {name!r};{did_you_mean(name, MODELS)} known: "
                         f"{', '.join(list_models())} "
                         "(see `swamp list`)")
    return init_weights(model)
