"""A small MLP generator from Gaussian noise (for MMD-trained generative tasks).

Its forward takes a batch of *real* inputs only for their number and shape: it draws its
own noise from torch's global RNG (which `fit` seeds per run), so the training loop's
(x, y) batches and objectives need no change to train a generator.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPGenerator(nn.Module):
    generative = True      # a run trains it on MMD and scores it with generative metrics
    def __init__(self, output_shape: tuple[int, ...], latent: int = 8,
                 hidden: tuple[int, ...] = (128, 128)):
        super().__init__()
        self.output_shape, self.latent = tuple(output_shape), latent
        layers: list[nn.Module] = []
        width = latent
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, math.prod(self.output_shape)))
        self.body = nn.Sequential(*layers)

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        z = torch.randn(like.shape[0], self.latent, device=like.device, dtype=like.dtype)
        return self.body(z).view(like.shape[0], *self.output_shape)
