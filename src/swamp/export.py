"""Sparse export of a level's solution: a compact file, its size and nnz statistics.

The file is a safetensors file (so it loads without pickle, from any language) in the
layout "swamp-sparse/1":

- a tensor that no mask covers (biases, BatchNorm, buffers) is stored as it is;
- a prunable tensor `name` is stored as the values it keeps, `name::values` (row-major
  order), plus where they are, whichever is smaller: `name::bitmap` (one bit per weight,
  numpy `packbits` little-endian order) or `name::indices` (flat int32/int64 positions).
  At density d a bitmap costs 1/8 byte per weight and indices 4d bytes, so indices win
  below about 3% density;
- the metadata holds the format, each tensor's shape and encoding, and where it came from
  (run, method, level, density, accuracies, settings).

safetensors has no sparse tensors, and torch's own sparse formats need pickle to be saved;
this layout keeps both the weights and the exact mask (kept weights that happen to be 0.0
stay kept), which `load_exported` gives back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from swamp.errors import SwampError
from swamp.core.masks import Mask
from swamp.reader import RunReader
from swamp.store import RunStore, save_state

StateDict = dict[str, torch.Tensor]
FORMAT = "swamp-sparse/1"
SEP = "::"   # never part of a state-dict name (those use dots)
PRIVATE_SETTINGS = {"out", "data_dir"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LayerStats:
    name: str
    shape: tuple[int, ...]
    nnz: int
    numel: int
    encoding: str        # "bitmap" | "indices" | "dense" (not prunable)

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0


@dataclass
class ExportSummary:
    """What `export_level` wrote, for the console and for callers."""

    path: Path
    level: int
    density: float           # realised, over prunable tensors
    dense_bytes: int         # the same state dict stored densely in the chosen dtype
    file_bytes: int
    layers: list[LayerStats] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


# ---- choosing a level -------------------------------------------------------------------

def choose_level(store: RunStore, level: int | None = None,
                 max_val_drop: float | None = None) -> int:
    """The level to export: `level`, or the sparsest level whose validation accuracy is at
    most `max_val_drop` (a fraction, 0.01 = one point) below the dense level's, or else the
    last finished level. Selection reads the validation split only, never the test split."""
    finished = store.finished_levels()
    if not finished:
        raise SwampError(f"{store.root} has no finished level; run it first")
    if level is not None and max_val_drop is not None:
        raise SwampError("give `level` or `max_val_drop`, not both")
    if level is not None:
        if level not in finished:
            raise SwampError(f"level {level} of {store.root} is not finished (finished: "
                             f"0..{finished[-1]}); choose one of those")
        return level
    if max_val_drop is None:
        return finished[-1]
    if not 0 <= max_val_drop < 1:
        raise SwampError(f"`max_val_drop` is a fraction of accuracy in [0, 1), e.g. 0.01 for "
                         f"one point (got {max_val_drop})")
    rows = store.level_metrics()
    dense = rows[0].get("val_acc")
    if dense is None:
        raise SwampError(f"{store.root} has no validation accuracy (made with val_fraction 0?); "
                         f"choose a level with `level`")
    ok = [r["level"] for r in rows
          if r.get("val_acc") is not None and r["val_acc"] >= dense - max_val_drop - 1e-12]
    return max(ok, key=lambda lv: (1.0 - rows[lv]["density"], lv))


# ---- encoding -----------------------------------------------------------------------------

def _encode(name: str, weight: torch.Tensor, keep: torch.Tensor,
            dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], LayerStats]:
    flat_keep = keep.reshape(-1).cpu()
    values = weight.reshape(-1).cpu()[flat_keep].to(dtype)
    nnz, numel = int(flat_keep.sum()), flat_keep.numel()
    index_dtype = torch.int32 if numel < 2**31 else torch.int64
    index_bytes = nnz * (4 if index_dtype == torch.int32 else 8)
    if math.ceil(numel / 8) <= index_bytes:
        bits = np.packbits(flat_keep.numpy(), bitorder="little")
        where, encoding = {f"{name}{SEP}bitmap": torch.from_numpy(bits)}, "bitmap"
    else:
        idx = flat_keep.nonzero().reshape(-1).to(index_dtype)
        where, encoding = {f"{name}{SEP}indices": idx}, "indices"
    stats = LayerStats(name, tuple(weight.shape), nnz, numel, encoding)
    return {f"{name}{SEP}values": values.contiguous(), **where}, stats


def _decode(name: str, info: dict[str, Any], f: Any) -> tuple[torch.Tensor, torch.Tensor]:
    shape = tuple(info["shape"])
    numel = math.prod(shape)
    values = f.get_tensor(f"{name}{SEP}values")
    if info["encoding"] == "bitmap":
        bits = f.get_tensor(f"{name}{SEP}bitmap").numpy()
        keep = torch.from_numpy(np.unpackbits(bits, count=numel, bitorder="little")
                                .astype(bool))
    else:
        keep = torch.zeros(numel, dtype=torch.bool)
        keep[f.get_tensor(f"{name}{SEP}indices").long()] = True
    if int(keep.sum()) != values.numel():
        raise ValueError(f"{name}: {values.numel()} values for {int(keep.sum())} kept weights")
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[keep] = values
    return dense.reshape(shape), keep.reshape(shape)


def _provenance(store: RunStore, level: int) -> dict[str, Any]:
    settings = store.read_record(store.settings_path) if store.settings_path.is_file() else {}
    row = store.read_record(store.level_metrics_path(level))
    method = (store.read_record(store.posthoc_path).get("method") if store.posthoc_path.is_file()
              else settings.get("method", {}).get("method"))
    keys = ("density", "sparsity", "test_acc", "test_nll", "val_acc", "val_nll")
    # An export is shared: it names the run by its directory name only, and leaves out
    # the settings that are paths on the machine that made it (they may hold user names).
    shared = {section: {k: v for k, v in values.items() if k not in PRIVATE_SETTINGS}
              for section, values in settings.items() if isinstance(values, dict)}
    return {"run": store.root.name, "level": level, "method": method,
            "model": settings.get("model", {}).get("model"),
            "dataset": settings.get("data", {}).get("dataset"),
            **{k: row.get(k) for k in keys}, "settings": shared}


def export_level(run_dir: str | Path, out: str | Path | None = None, *,
                 level: int | None = None, max_val_drop: float | None = None,
                 dtype: str = "float32") -> ExportSummary:
    """Write the solution of one level of a finished run as a sparse file; see module doc."""
    root = Path(run_dir)
    store = RunStore(root)
    if not root.is_dir() or not store.exists():
        raise SwampError(f"{root} is not a swamp run directory (no settings.json); pass a "
                         f"directory made by `swamp run` or `swamp lottery-pools`")
    if dtype not in DTYPES:
        raise SwampError(f"unknown `dtype` '{dtype}'; choose one of {', '.join(DTYPES)}")
    reader = RunReader(root)   # checks the files' checksums
    level = choose_level(store, level, max_val_drop)
    path = Path(out) if out is not None else store.export_path(level)
    if path.exists() and not _is_export(path):
        raise SwampError(f"{path} exists and is not a swamp export; choose another `out`")
    solution = reader.solution(level)
    mask = reader.mask(level)
    missing = [n for n in mask if n not in solution]
    if missing:
        raise SwampError(f"{store.mask_path(level)} does not match the level's solution "
                         f"(no tensor {missing[0]!r}); the run directory is damaged")

    tensors: dict[str, torch.Tensor] = {}
    layers, entries = [], {}
    dense_bytes = 0
    for name, t in solution.items():
        as_float = t.is_floating_point()
        element = torch.empty((), dtype=DTYPES[dtype] if as_float else t.dtype).element_size()
        dense_bytes += t.numel() * element
        if name in mask:
            encoded, stats = _encode(name, t, mask[name], DTYPES[dtype])
            tensors.update(encoded)
            layers.append(stats)
        else:
            tensors[name] = (t.to(DTYPES[dtype]) if as_float else t).contiguous()
            stats = LayerStats(name, tuple(t.shape), t.numel(), t.numel(), "dense")
        entries[name] = {"shape": list(stats.shape), "encoding": stats.encoding}

    provenance = _provenance(store, level)
    metadata = {"format": FORMAT, "tensors": json.dumps(entries),
                "source": json.dumps(provenance, default=str)}
    save_state(path, tensors, metadata)
    return ExportSummary(path, level, mask.density, dense_bytes, path.stat().st_size,
                         layers, provenance)


def _is_export(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (OSError, SafetensorError, ValueError):
        return False


def load_exported(path: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[StateDict, Mask, dict[str, Any]]:
    """(dense state dict, mask, provenance) of a file written by `export_level`.

    The state dict loads straight into the run's model (`model.load_state_dict`).
    """
    path = Path(path)
    if not path.is_file():
        raise SwampError(f"{path} does not exist; pass a file written by `swamp export`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise SwampError(f"{path} is not a swamp export (format "
                                 f"{meta.get('format')!r}, expected {FORMAT!r})")
            entries = json.loads(meta["tensors"])
            state, keep = {}, {}
            for name, info in entries.items():
                if info["encoding"] == "dense":
                    state[name] = f.get_tensor(name)
                else:
                    state[name], keep[name] = _decode(name, info, f)
            source = json.loads(meta.get("source", "{}"))
    except SwampError:
        raise
    except (OSError, SafetensorError, ValueError, KeyError, RuntimeError) as exc:
        raise SwampError(f"{path} is corrupted and cannot be read ({exc}); export it "
                         f"again") from None
    state = {k: v.to(device) for k, v in state.items()}
    return state, Mask({k: v.to(device) for k, v in keep.items()}), source
