"""Structured sparsity patterns (issue 13): what a pattern is, parsed from its settings.

- `NM(n, m)` (``--scope nm --nm 2:4``): every group of M consecutive weights along the input
  dimension keeps exactly the same number of weights; the last level keeps exactly N. The
  input dimension is the row of the weight viewed as a matrix ``(out, -1)``: a Linear
  weight's input features, a convolution's ``in_channels x kernel`` (the GEMM reduction
  dimension, the view `torch.sparse.to_sparse_semi_structured` takes).
- `Blocks(rows, cols)` (``--block 4x4``): the same matrix view cut into rows x cols tiles;
  a tile is pruned whole. Tiles are scored by their L2 norm (the scorer applied to the
  tensor of tile norms) and counted exactly like single weights, globally or per layer.

Levels under N:M (`nm_counts`): every group starts with M kept; each level removes
``max(1, n_to_remove(prune_fraction, kept))`` weights per group, never going below N. The
run's `levels` must be the level at which the groups reach N (`nm_levels`), so that the
last level's mask is exactly N:M and no level retrains an unchanged mask.

A layer whose matrix does not divide into groups or tiles is refused with a line naming it
and the fix (exclude it), not padded: the accelerated kernels need whole groups/tiles.

No torch here: the settings check (`config.validate`) reads it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from swamp.errors import SwampError

__all__ = ["NM", "Blocks", "Pattern", "parse_nm", "parse_block", "pattern_of", "nm_counts",
           "nm_levels", "matrix_shape", "check_pattern"]


@dataclass(frozen=True)
class NM:
    """N kept in every M consecutive weights along the input dimension."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Blocks:
    """Whole rows x cols tiles of the weight matrix pruned together."""

    rows: int
    cols: int

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


Pattern = Union[NM, Blocks, None]

_NM = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
_BLOCK = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def parse_nm(text: str) -> NM:
    match = _NM.fullmatch(str(text))
    if match is None or not 1 <= int(match[1]) < int(match[2]):
        raise SwampError(f"`nm` must be N:M with 1 <= N < M, e.g. 2:4 (got {text!r})")
    return NM(int(match[1]), int(match[2]))


def parse_block(text: str) -> Blocks:
    match = _BLOCK.fullmatch(str(text))
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise SwampError(f"`block` must be RxC with R, C >= 1, e.g. 4x4 (got {text!r})")
    if int(match[1]) * int(match[2]) == 1:
        raise SwampError("`block` 1x1 is unstructured pruning; leave `block` unset")
    return Blocks(int(match[1]), int(match[2]))


def pattern_of(prune: Any) -> Pattern:
    """The pattern of prune settings (read duck-typed: `scope`, `nm`, `block`)."""
    if getattr(prune, "block", None):
        return parse_block(prune.block)
    if getattr(prune, "scope", None) == "nm" or getattr(prune, "nm", None):
        return parse_nm(prune.nm) if getattr(prune, "nm", None) else parse_nm("")
    return None


def nm_counts(pattern: NM, fraction: float, levels: int, start: int | None = None
              ) -> list[int]:
    """Kept weights per group at levels 0..`levels` (from `start`, default M)."""
    k = pattern.m if start is None else start
    out = [k]
    for _ in range(levels):
        if k > pattern.n:
            k = max(pattern.n, k - max(1, math.floor(fraction * k + 0.5)))
        out.append(k)
    return out


def nm_levels(pattern: NM, fraction: float) -> int:
    """The level at which every group keeps exactly N."""
    return nm_counts(pattern, fraction, pattern.m - pattern.n).index(pattern.n)


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The matrix view of a weight: (out, everything else); a 1-D tensor is one row."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[0]), int(math.prod(shape[1:]))


def check_pattern(pattern: Pattern, shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuse (one line naming the layer and the fix) a layer that the pattern does not fit."""
    for name, shape in shapes.items():
        rows, cols = matrix_shape(shape)
        if isinstance(pattern, NM) and cols % pattern.m:
            raise SwampError(
                f"layer {name!r} {tuple(shape)} has rows of {cols} weights, not a multiple of "
                f"M={pattern.m} of `nm` {pattern}; exclude it (`exclude` {name}) or choose "
                f"another M")
        if isinstance(pattern, Blocks) and (rows % pattern.rows or cols % pattern.cols):
            raise SwampError(
                f"layer {name!r} is a {rows}x{cols} matrix, which {pattern} blocks do not "
                f"tile; exclude it (`exclude` {name}) or choose another `block`")
