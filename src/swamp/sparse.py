"""Pruned layers on sparse kernels: `sparsify(model, mask)`.

A masked dense model is no faster than the dense one: its zeros are multiplied like any
other weight. `sparsify` returns a copy of the model in which each pruned Linear layer holds
its kept weights as a `torch.sparse` CSR (or BSR) matrix and multiplies with PyTorch's sparse
kernels (MKL's on CPU, cuSPARSE on CUDA), for inference. The outputs are the masked dense
model's, up to floating-point summation order.

Convolutions stay dense by default. PyTorch has no sparse convolution kernel, so a sparse
convolution here is im2col (`F.unfold`) followed by a CSR matrix product; at the sizes of
this library's models that was slower than oneDNN's dense convolution at every sparsity
measured (benchmarks/results/inference.md, the conv1d rows "csr+conv"), so `convs=True`
only where you have measured it to pay on your model.

Where sparse kernels win depends on the layer size and the batch, not only the sparsity: a
sparse product has a fixed cost of a few microseconds that a small layer at batch 1 never
earns back (benchmarks/results/inference.md says where they win on this CPU).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swamp.errors import SwampError

__all__ = ["sparsify", "SparseLinear", "SparseConv", "LAYOUTS"]

LAYOUTS = ("csr", "bsr")
BLOCKS = (16, 8, 4, 2)   # BSR block sizes tried, largest first, when none is given


def _block(shape: tuple[int, int], blocksize: int | None) -> tuple[int, int] | None:
    """The square BSR block for a (rows, cols) matrix: `blocksize` if it divides both, else
    the largest of BLOCKS that does; None if none does (the layer then uses CSR)."""
    rows, cols = shape
    for b in ([blocksize] if blocksize else []) + list(BLOCKS):
        if rows % b == 0 and cols % b == 0:
            return (b, b)
    return None


def _to_sparse(weight2d: Tensor, layout: str, blocksize: int | None) -> Tensor:
    weight2d = weight2d.detach().contiguous()
    with warnings.catch_warnings():   # "sparse CSR tensor support is in beta": known, once
        warnings.simplefilter("ignore", UserWarning)
        if layout == "bsr":
            block = _block(tuple(weight2d.shape), blocksize)
            if block is not None:
                return weight2d.to_sparse_bsr(block)
        return weight2d.to_sparse_csr()


class SparseLinear(nn.Module):
    """y = x W^T + b with W a sparse CSR or BSR matrix (inference only: no gradients)."""

    def __init__(self, linear: nn.Linear, keep: Tensor, layout: str = "csr",
                 blocksize: int | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach() * keep.to(linear.weight.device, linear.weight.dtype)
        self.register_buffer("weight", _to_sparse(weight, layout, blocksize))
        self.register_buffer("bias", None if linear.bias is None
                             else linear.bias.detach().clone().unsqueeze(1))

    @property
    def nnz(self) -> int:
        return int(self.weight.values().count_nonzero())

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        cols = x.reshape(-1, self.in_features).t()          # (in, batch): W @ x^T
        y = (torch.addmm(self.bias, self.weight, cols) if self.bias is not None
             else torch.mm(self.weight, cols))
        return y.t().reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"layout={self.weight.layout}, nnz={self.nnz}")


class SparseConv(nn.Module):
    """A Conv1d/Conv2d (groups 1, zero padding) as im2col + a sparse matrix product."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, keep: Tensor, layout: str = "csr",
                 blocksize: int | None = None):
        super().__init__()
        self.one_d = isinstance(conv, nn.Conv1d)
        # a Conv1d runs as a Conv2d of kernel (1, k) over a (C, 1, L) view
        as2d = (lambda v, one=1: (one, v[0])) if self.one_d else (lambda v, one=1: tuple(v))
        self.kernel, self.stride = as2d(conv.kernel_size), as2d(conv.stride)
        self.padding, self.dilation = as2d(conv.padding, 0), as2d(conv.dilation)
        self.out_channels = conv.out_channels
        weight = conv.weight.detach() * keep.to(conv.weight.device, conv.weight.dtype)
        self.register_buffer("weight", _to_sparse(weight.reshape(conv.out_channels, -1),
                                                  layout, blocksize))
        self.register_buffer("bias", None if conv.bias is None
                             else conv.bias.detach().clone().unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        x4 = x.unsqueeze(2) if self.one_d else x
        n, _, h, w = x4.shape
        cols = F.unfold(x4, self.kernel, self.dilation, self.padding, self.stride)  # (N, CK, L)
        ck, length = cols.shape[1], cols.shape[2]
        cols = cols.transpose(0, 1).reshape(ck, n * length)
        y = (torch.addmm(self.bias, self.weight, cols) if self.bias is not None
             else torch.mm(self.weight, cols))                                    # (O, N*L)
        h_out = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) \
            // self.stride[0] + 1
        y = y.reshape(self.out_channels, n, h_out, length // h_out).transpose(0, 1)
        return y.squeeze(2) if self.one_d else y


def _sparse_conv_ok(m: nn.Module) -> bool:
    return (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def sparsify(model: nn.Module, mask: Mapping[str, Tensor], *, layout: str = "csr",
             blocksize: int | None = None, convs: bool = False) -> nn.Module:
    """A copy of `model` for inference whose pruned Linear layers (and, with `convs`, its
    pruned Conv1d/Conv2d layers) multiply by their kept weights as sparse `layout`
    ("csr" or "bsr") matrices; every other module is the model's own (copied).

    `mask` maps state-dict names of weights (`"fc.weight"`) to bool tensors, as a
    `swamp.core.masks.Mask` or a plain dict. BSR uses square blocks of `blocksize` (default:
    the largest of 16, 8, 4, 2 that divides the layer), and CSR for a layer no block fits.
    The copy gives the masked dense model's outputs within floating-point tolerance.
    """
    if layout not in LAYOUTS:
        raise SwampError(f"unknown sparse `layout` {layout!r}; choose one of "
                         f"{', '.join(LAYOUTS)}")
    names = dict(model.named_modules())
    unknown = [k for k in mask if k.rpartition(".")[0] not in names
               or k.rpartition(".")[2] != "weight"]
    if unknown:
        raise SwampError(f"mask entry {unknown[0]!r} names no module weight of the model; "
                         f"pass the mask of this model (keys like 'fc.weight')")
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for key, keep in mask.items():
        path = key.rpartition(".")[0]
        module = modules[path]
        if tuple(keep.shape) != tuple(module.weight.shape):
            raise SwampError(f"mask entry {key!r} has shape {tuple(keep.shape)}, the weight "
                             f"{tuple(module.weight.shape)}; pass the mask of this model")
        if isinstance(module, nn.Linear):
            new: nn.Module = SparseLinear(module, keep, layout, blocksize)
        elif convs and _sparse_conv_ok(module):
            new = SparseConv(module, keep, layout, blocksize)
        else:
            with torch.no_grad():   # stays dense, masked like the model it stands for
                module.weight.mul_(keep.to(module.weight.device, module.weight.dtype))
            continue
        if not path:            # the model is itself the layer
            return new
        parent, _, child = path.rpartition(".")
        setattr(modules[parent] if parent else out, child, new)
    return out
