"""Shared helpers: standard initialisation and input-shape checks."""

from __future__ import annotations

import torch.nn as nn

from swamp.errors import SwampError


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_in, ReLU gain) for conv/linear weights, zero biases, BN = identity.

    The lottery-ticket literature (e.g. OpenLTH) uses this scheme for all its CIFAR models.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def require_image(name: str, input_shape: tuple[int, ...]) -> int:
    """2-D CNNs take (C, H, W) of any size; returns C."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise SwampError(f"model {name!r} needs image inputs of shape (C, H, W), got "
                         f"{tuple(input_shape)}; use 'mlp' or 'conv1d' for this data")
    return int(input_shape[0])
