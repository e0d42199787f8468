"""Short, stable digests of tensors and values: fingerprints of inputs and of training tasks."""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch


def update(h: "hashlib._Hash", part: Any) -> None:
    if isinstance(part, torch.Tensor):
        t = part.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(str(part).encode())


def digest(parts: Iterable[Any], length: int = 16) -> str:
    """Hex SHA-256 of the parts in order: tensors by dtype, shape and bytes, others by str."""
    h = hashlib.sha256()
    for part in parts:
        update(h, part)
    return h.hexdigest()[:length]
