"""A 2-D Gaussian mixture: modes evenly on a circle (the standard toy of generative models)."""

from __future__ import annotations

import math

import torch

from swamp.data.bundle import Split


def gaussian_mixture(n: int, modes: int = 8, radius: float = 2.0, std: float = 0.05,
                     seed: int = 0) -> Split:
    """n points; `y` is each point's mode (so classifiers and feature metrics can use it)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(modes, (n,), generator=g)
    angle = 2 * math.pi * y.double() / modes
    centres = torch.stack([angle.cos(), angle.sin()], 1) * radius
    x = centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return Split(x.float(), y)
