"""Mixed precision for the training loop: fp32 | bf16 | fp16.

bf16 and fp16 run the forward pass and the loss under `torch.autocast` (the weights, their
gradients and the optimiser state stay fp32, so masks hold exactly); fp16 also scales the
loss with a `torch.amp.GradScaler`, which skips a step whose gradients overflowed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, kind: str, device: torch.device):
        self.kind = kind
        self.dtype = DTYPES[kind]
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type) if kind == "fp16" else None

    def autocast(self) -> ContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, losses: torch.Tensor, gradient: torch.Tensor) -> None:
        """Backward from per-replica `losses` with `gradient` (ones: their sum)."""
        (self.scaler.scale(losses) if self.scaler is not None else losses).backward(gradient)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients in their true scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


# The matrix products and convolutions autocast is meant to run in low precision.
_COMPUTE = {"convolution", "mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


def compute_dtypes(fn: Callable[[], Any], device: torch.device, dtype: torch.dtype
                   ) -> list[torch.dtype]:
    """The input dtypes of the matrix products and convolutions `fn` runs under autocast to
    `dtype`, as the kernels see them (a dispatch mode below every transform)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[torch.dtype] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name.split("::")[-1] in _COMPUTE and args:
                seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    with torch.autocast(device.type, dtype=dtype), Record():
        fn()
    return seen
