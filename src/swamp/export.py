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

Other formats (`format`), for use outside swamp:

- "dense": a plain safetensors state dict, zeros included: `model.load_state_dict(
  safetensors.torch.load_file(path))` with nothing but torch and safetensors;
- "torch-prune": the state dict `torch.nn.utils.prune` makes, each prunable `name` stored as
  `name_orig` (the weights) and `name_mask` (0/1 in the weights' dtype): apply
  `prune.identity(module, "weight")` to each pruned module, then `load_state_dict`. For
  `torch.ao.pruning` (torch.nn.utils.parametrize with a `FakeSparsity` mask, state dict key
  `name.parametrizations.weight.original`, the mask not in the model's state dict but in
  the sparsifier's state), `to_parametrized(model, state)` loads it (see there);
- "onnx": the model's graph with the solution's weights, by `torch.onnx.export` (the
  torch.export-based exporter, PyTorch's default since 2.9; the TorchScript one is
  deprecated), checked with onnxruntime against PyTorch on validation inputs before it is
  written (ONNX_RTOL/ONNX_ATOL); needs the extra `swamp[onnx]`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from swamp.formats import COMPACT, FORMATS
from swamp.errors import SwampError
from swamp.core.masks import Mask
from swamp.reader import RunReader
from swamp.store import RunStore, atomic_write_bytes, safetensors_bytes

StateDict = dict[str, torch.Tensor]
FORMAT = "swamp-sparse/1"
SEP = "::"   # never part of a state-dict name (those use dots)
PRIVATE_SETTINGS = {"out", "data_dir"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# standard export formats (issue 13)
DENSE_FORMAT = "swamp-dense/1"
PRUNE_FORMAT = "torch-prune/1"
ONNX_FORMAT = "swamp-onnx/1"
SAFETENSORS_FORMATS = {COMPACT: FORMAT, "dense": DENSE_FORMAT, "torch-prune": PRUNE_FORMAT}
ONNX_RTOL, ONNX_ATOL = 1e-4, 1e-5    # onnxruntime against PyTorch, float32
ONNX_EXTRA = "needs the extra: pip install 'swamp[onnx]'"


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
    format: str = COMPACT
    check: dict[str, float] = field(default_factory=dict)   # onnx: max |diff| to PyTorch


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


def require_onnx() -> Any:
    """(onnx, onnxruntime), or one line naming the extra that provides them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise SwampError(f"`format` onnx {ONNX_EXTRA}") from None
    return onnx, onnxruntime


def export_level(run_dir: str | Path, out: str | Path | None = None, *,
                 level: int | None = None, max_val_drop: float | None = None,
                 dtype: str = "float32", format: str = COMPACT,
                 model: torch.nn.Module | None = None, data: Any = None) -> ExportSummary:
    """Write the solution of one level of a finished run in `format` (see module doc).

    `model` and `data` are needed only for "onnx" of a run made with a model or data passed
    through the Python API (the same ones)."""
    root = Path(run_dir)
    store = RunStore(root)
    if not root.is_dir() or not store.exists():
        raise SwampError(f"{root} is not a swamp run directory (no settings.json); pass a "
                         f"directory made by `swamp run` or `swamp lottery-pools`")
    if dtype not in DTYPES:
        raise SwampError(f"unknown `dtype` '{dtype}'; choose one of {', '.join(DTYPES)}")
    if format not in FORMATS:
        raise SwampError(f"unknown `format` '{format}'; choose one of {', '.join(FORMATS)}")
    if format == "onnx":
        require_onnx()
        if dtype != "float32":
            raise SwampError("`format` onnx is written in float32; drop `dtype` (or export "
                             "a safetensors format in half precision)")
    reader = RunReader(root, model=model, data=data)   # checks the files' checksums
    level = choose_level(store, level, max_val_drop)
    path = Path(out) if out is not None else store.export_path(level, format)
    if path.exists() and not _is_export(path):
        raise SwampError(f"{path} exists and is not a swamp export; choose another `out`")
    solution = reader.solution(level)
    mask = reader.mask(level)
    missing = [n for n in mask if n not in solution]
    if missing:
        raise SwampError(f"{store.mask_path(level)} does not match the level's solution "
                         f"(no tensor {missing[0]!r}); the run directory is damaged")
    provenance = _provenance(store, level)
    dense_bytes = sum(t.numel() * (torch.empty((), dtype=DTYPES[dtype]).element_size()
                                   if t.is_floating_point() else t.element_size())
                      for t in solution.values())
    layers = [LayerStats(n, tuple(mask[n].shape), int(mask[n].sum()), mask[n].numel(),
                         format) for n in mask]
    check: dict[str, float] = {}
    if format == "onnx":
        check = _write_onnx(path, reader, solution, provenance)
    else:
        if format == COMPACT:
            layers = _swamp_tensors(solution, mask, DTYPES[dtype])[1]
        atomic_write_bytes(path, format_bytes(format, solution, mask, DTYPES[dtype],
                                              provenance=provenance))
    return ExportSummary(path, level, mask.density, dense_bytes, path.stat().st_size,
                         layers, provenance, format, check)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (t.to(dtype) if t.is_floating_point() else t).contiguous()


def _meta(fmt: str, provenance: dict[str, Any]) -> dict[str, str]:
    return {"format": fmt, "source": json.dumps(provenance, default=str)}


def _swamp_tensors(solution: StateDict, mask: Mask, dtype: torch.dtype
                   ) -> tuple[StateDict, list[LayerStats], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    layers, entries = [], {}
    for name, t in solution.items():
        if name in mask:
            encoded, stats = _encode(name, t, mask[name], dtype)
            tensors.update(encoded)
            layers.append(stats)
        else:
            tensors[name] = _cast(t, dtype)
            stats = LayerStats(name, tuple(t.shape), t.numel(), t.numel(), "dense")
        entries[name] = {"shape": list(stats.shape), "encoding": stats.encoding}
    return tensors, layers, entries


def format_bytes(format: str, solution: StateDict, mask: Mask, dtype: torch.dtype, *,
                 provenance: dict[str, Any] | None = None, model: torch.nn.Module | None = None,
                 input_shape: tuple[int, ...] | None = None) -> bytes:
    """The bytes of the file `format` holds for a solution ("onnx" needs the `model` and its
    `input_shape`, and is not checked here: `export_level` checks what it writes)."""
    provenance = provenance or {}
    if format == COMPACT:
        tensors, _, entries = _swamp_tensors(solution, mask, dtype)
        return safetensors_bytes(tensors, {**_meta(FORMAT, provenance),
                                           "tensors": json.dumps(entries)})
    if format == "dense":
        return safetensors_bytes({k: _cast(t, dtype) for k, t in solution.items()},
                                 _meta(DENSE_FORMAT, provenance))
    if format == "torch-prune":
        return safetensors_bytes(torch_prune_state(solution, mask, dtype),
                                 _meta(PRUNE_FORMAT, provenance))
    if format == "onnx" and model is not None and input_shape is not None:
        model = copy.deepcopy(model).to("cpu").eval()
        model.load_state_dict({k: v.to("cpu") for k, v in solution.items()})
        return onnx_model(model, torch.zeros(1, *input_shape)).SerializeToString()
    raise SwampError(f"cannot encode `format` {format!r} here; choose one of {', '.join(FORMATS)}")


def torch_prune_state(solution: StateDict, mask: Mapping[str, torch.Tensor],
                      dtype: torch.dtype = torch.float32) -> StateDict:
    """The state dict of the model after `torch.nn.utils.prune` pruned each masked tensor
    `name`: `name_orig` (the weights, as the parametrised module keeps them) and `name_mask`
    (a buffer of 0/1 in the weights' dtype, as `prune` makes it); the rest as it is."""
    state: StateDict = {}
    for name, t in solution.items():
        if name in mask:
            state[f"{name}_orig"] = _cast(t, dtype)
            state[f"{name}_mask"] = mask[name].to(dtype).contiguous()
        else:
            state[name] = _cast(t, dtype)
    return state


def to_parametrized(model: torch.nn.Module, state: Mapping[str, torch.Tensor] | str | Path
                    ) -> torch.nn.Module:
    """Load a "torch-prune" export (a file or its state dict) into `model` as
    `torch.ao.pruning` keeps a pruned model: each masked tensor `name` parametrised by
    `torch.nn.utils.parametrize` with the ao sparsifiers' `FakeSparsity(mask)`, its weights
    in `<module>.parametrizations.<tensor>.original`; returns `model` (changed in place).

    Use it on a bare model, or on one a sparsifier has already prepared
    (`sparsifier.prepare(model, [{"tensor_fqn": "fc.weight"}, ...])`): an existing
    FakeSparsity's mask is then filled in place, so the sparsifier's `state[fqn]["mask"]`
    stays the same tensor (as FakeSparsity requires) and `sparsifier.step()` or
    `squash_mask()` work on the exported mask. The forward pass then computes
    `mask * original`, so the pruned weights stay zero through optimiser steps.

    Why not `load_state_dict` alone: ao.pruning saves no mask in the model's state dict
    (FakeSparsity.state_dict returns {}), while a strict `load_state_dict` into a prepared
    model asks for `...parametrizations.weight.0.mask` all the same; so the masks are set here
    and the rest is loaded strictly, every other key checked."""
    from torch.ao.pruning.sparsifier.utils import FakeSparsity
    from torch.nn.utils import parametrize

    if isinstance(state, (str, Path)):
        state = _read_torch_prune(Path(state))
    masks = {k[:-len("_mask")]: v for k, v in state.items()
             if k.endswith("_mask") and k[:-len("_mask")] + "_orig" in state}
    if not masks:
        raise SwampError("the state has no `name_orig` / `name_mask` pairs; pass a "
                         "`swamp export --format torch-prune` file or its state dict")
    renamed = {k: v for k, v in state.items()
               if not any(k in (f"{n}_orig", f"{n}_mask") for n in masks)}
    mask_keys = set()
    for name, mask in masks.items():
        module_name, _, tensor = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise SwampError(f"the model has no module {module_name!r} (for {name!r}); pass "
                             f"the model the run was made with") from None
        if not hasattr(module, tensor):
            raise SwampError(f"module {module_name!r} has no tensor {tensor!r}; pass the "
                             f"model the run was made with")
        if tuple(getattr(module, tensor).shape) != tuple(mask.shape):
            raise SwampError(f"{name} has shape {tuple(getattr(module, tensor).shape)} in the "
                             f"model and {tuple(mask.shape)} in the export; pass the model "
                             f"the run was made with")
        chain = (module.parametrizations[tensor]
                 if parametrize.is_parametrized(module, tensor) else [])
        found = [i for i, p in enumerate(chain) if isinstance(p, FakeSparsity)]
        if found:
            fake = chain[found[0]]
            with torch.no_grad():
                fake.mask.copy_(mask)          # in place: the sparsifier holds this tensor
        else:
            device = getattr(module, tensor).device
            parametrize.register_parametrization(
                module, tensor, FakeSparsity(mask.to(device, getattr(module, tensor).dtype)))
            found = [len(module.parametrizations[tensor]) - 1]
        prefix = f"{module_name}.parametrizations.{tensor}" if module_name else \
            f"parametrizations.{tensor}"
        renamed[f"{prefix}.original"] = state[f"{name}_orig"]
        mask_keys.add(f"{prefix}.{found[0]}.mask")
    result = model.load_state_dict(renamed, strict=False)
    missing = [k for k in result.missing_keys if k not in mask_keys]
    if missing or result.unexpected_keys:
        first = (f"no tensor {missing[0]!r} in the export" if missing
                 else f"the export's tensor {result.unexpected_keys[0]!r} is not in the model")
        raise SwampError(f"the export does not fit the model ({first}); pass the model the "
                         f"run was made with")
    return model


def _read_torch_prune(path: Path) -> StateDict:
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
    except (OSError, SafetensorError, ValueError) as exc:
        raise SwampError(f"{path} cannot be read as safetensors ({exc}); pass a file written "
                         f"by `swamp export --format torch-prune`") from None
    if fmt != PRUNE_FORMAT:
        raise SwampError(f"{path} is not a torch-prune export (format {fmt!r}); write one "
                         f"with `swamp export RUN --format torch-prune`")
    return load_file(str(path))


def _write_onnx(path: Path, reader: RunReader, solution: StateDict,
                provenance: dict[str, Any]) -> dict[str, float]:
    """The solution's graph as ONNX, written only once onnxruntime gives PyTorch's outputs
    on validation inputs within ONNX_RTOL/ONNX_ATOL."""
    model = copy.deepcopy(reader.model).to("cpu").eval()
    model.load_state_dict({k: v.to("cpu") for k, v in solution.items()})
    x = reader.data.val.x[:16].to("cpu", torch.float32)
    if len(x) == 0:
        x = torch.randn(4, *reader.data.input_shape)
    proto = onnx_model(model, x)
    onnx, _ = require_onnx()
    for key, value in _meta(ONNX_FORMAT, provenance).items():
        proto.metadata_props.add(key=key, value=value)
    data = proto.SerializeToString()
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_session(data).run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not np.allclose(got, expected, rtol=ONNX_RTOL, atol=ONNX_ATOL):
        raise SwampError(f"the ONNX graph of level {provenance['level']} gives other outputs "
                         f"than PyTorch in onnxruntime (max |diff| {diff:.3g}); nothing was "
                         f"written; report it with the run's model name")
    atomic_write_bytes(path, data)
    return {"max_abs_diff": diff, "rtol": ONNX_RTOL, "atol": ONNX_ATOL}


def onnx_model(model: torch.nn.Module, example: torch.Tensor) -> Any:
    """The ONNX ModelProto of `model` (eval mode, CPU), input "input" with a dynamic batch
    dimension, output "output"; by torch.onnx's torch.export-based exporter."""
    require_onnx()
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")     # "torchvision is not installed" notices
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")        # the exporter's deprecation notices
            program = torch.onnx.export(model, (example,), dynamo=True,
                                        input_names=["input"], output_names=["output"],
                                        verbose=False, dynamic_shapes=({0: batch},),
                                        external_data=False)
    finally:
        quiet.setLevel(level)
    return program.model_proto


def onnx_session(model: bytes | str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of an ONNX model (bytes or a file)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _is_export(path: Path) -> bool:
    """A file that an export may overwrite: one written by an export, in any format."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") in SAFETENSORS_FORMATS.values()
    except (OSError, SafetensorError, ValueError):
        pass
    try:
        onnx, _ = require_onnx()
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                 .metadata_props}
        return props.get("format") == ONNX_FORMAT
    except Exception:   # not ONNX either (onnx raises several error types), or no extra
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
