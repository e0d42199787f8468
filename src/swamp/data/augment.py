"""Batch augmentation as tensor ops: no per-sample Python loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CropFlip:
    """Random crop after `pad`-pixel padding, plus random horizontal flip, for a whole batch.

    `fill` is the per-channel value of a black pixel after normalisation, so padding the
    normalised batch equals torchvision's RandomCrop(padding=pad) applied before Normalize.
    Random numbers come from the given generator (normally a CPU one) and only the small
    offset/flip tensors move to the batch's device. Any leading batch dims are accepted:
    (..., C, H, W), e.g. stacked particles (P, B, C, H, W).
    """

    pad: int = 4
    flip: bool = True
    fill: tuple[float, ...] | None = None  # one value per channel; None = 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
        xb = x.reshape(-1, c, h, w)
        n, p, dev = xb.shape[0], self.pad, x.device
        gdev = generator.device
        off = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=gdev).to(dev)
        rows = off[0, :, None] + torch.arange(h, device=dev)  # (n, h) rows in padded image
        cols = off[1, :, None] + torch.arange(w, device=dev)  # (n, w)
        if self.flip:
            flips = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(dev)
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        padded = xb.new_zeros(n, c, h + 2 * p, w + 2 * p)
        if self.fill is not None:
            padded += torch.tensor(self.fill, dtype=x.dtype, device=dev).view(1, c, 1, 1)
        padded[:, :, p:p + h, p:p + w] = xb
        # Two gathers (rows, then columns) pick each sample's window, flipped or not.
        out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
        out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
        return out.reshape(*lead, c, h, w)
