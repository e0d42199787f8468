"""In-memory dataset containers and the seeded validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, TensorDataset

from swamp.errors import SwampError

# A batch augmentation: (batch on any device, CPU generator) -> augmented batch, same shape.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class Split:
    """One split: `x` float32 (already normalised), `y` int64 labels. `x` is a tensor held in
    memory, or images streamed from files (data/stream.py: FileImages), decoded on indexing."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class DataBundle:
    """Everything a run needs about its data; `val` is carved from the training data.

    The tensors are held whole in memory; a run moves them to its training device (`to`).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Augment | None = None
    # Token data from the user's files (data/files.py): "lm" = causal language modelling, y
    # (n, block) the next token of every position and num_classes the vocabulary size.
    task: str = "classification"
    vocab_size: int | None = None       # of the token ids in x, when x holds token ids

    def to(self, device: torch.device | str) -> "DataBundle":
        """The bundle with every split on `device`.

        Data lives on the training device: a run moves the whole dataset there once (no
        streaming from host memory), so it must fit in that device's memory next to the model.
        On a CUDA device that has less free memory than the data needs, this raises a
        SwampError instead of failing with an out-of-memory error.
        """
        device = torch.device(device)
        moving = sum(t.numel() * t.element_size()      # images streamed from files
                     for sp in (self.train, self.val, self.test) for t in (sp.x, sp.y)
                     if isinstance(t, torch.Tensor) and not _on(t, device))   # stay there
        check_fits_on_device(self.name, moving, device)
        return DataBundle(self.name, self.train.to(device), self.val.to(device), self.test.to(device),
                          self.num_classes, self.input_shape, self.augment, self.task,
                          self.vocab_size)

    def __repr__(self) -> str:  # tensors would flood the repr
        return (f"DataBundle(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
                f"test={len(self.test)}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape}, augment={self.augment!r})")


def _on(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and device.index in (None, t.device.index)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def check_fits_on_device(name: str, nbytes: int, device: torch.device | str) -> None:
    """Refuse, in one line, to copy `nbytes` of data to a CUDA device with less memory free."""
    device = torch.device(device)
    if device.type != "cuda" or nbytes <= 0 or not torch.cuda.is_available():
        return
    free, _total = torch.cuda.mem_get_info(device)
    if nbytes > free:
        raise SwampError(f"the {name} data takes {_gb(nbytes)} but {device} has only "
                         f"{_gb(free)} free, and a run keeps all its data on the training "
                         f"device; keep fewer training examples with `data_size`, or use a "
                         f"smaller dataset")


def split_validation(x: torch.Tensor, y: torch.Tensor, val_fraction: float,
                     split_seed: int) -> tuple[Split, Split]:
    """Move a seeded random `val_fraction` of (x, y) to a validation split.

    The training part keeps the original order (only the membership is random), so the
    same seed always yields the same two sets whatever else changes.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise SwampError(f"val_fraction must be in [0, 1), got {val_fraction}; "
                         "use e.g. 0.1, or 0 for no validation split")
    n = int(y.shape[0])
    n_val = int(round(val_fraction * n))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)  # a non-zero fraction always yields >= 1 example
    # images streamed from files (data/stream.py) keep a subset of their files, undecoded
    take = x.subset if getattr(x, "is_lazy", False) else x.__getitem__
    if n_val <= 0:
        return Split(x, y), Split(take(slice(0, 0)), y[:0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    val_idx = perm[:n_val].sort().values
    train_idx = perm[n_val:].sort().values
    return Split(take(train_idx), y[train_idx]), Split(take(val_idx), y[val_idx])


def _as_tensors(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept an (x, y) pair or any map-style torch Dataset of (x, y) items; materialise once."""
    if isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise SwampError(f"{what}: TensorDataset must hold exactly (x, y); "
                             f"got {len(data.tensors)} tensors")
        x, y = data.tensors
    elif isinstance(data, Dataset):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:  # an IterableDataset (or any Dataset without __len__)
            raise SwampError(f"{what}: {type(data).__name__} has no length (an IterableDataset?); "
                             "pass a map-style Dataset (with __len__ and __getitem__) or an "
                             "(x, y) pair of tensors") from None
        if n == 0:
            raise SwampError(f"{what}: the dataset is empty; pass at least one example")
        items = [data[i] for i in range(n)]  # one-off Python loop, never in a hot path
        xs = [torch.as_tensor(item[0]) for item in items]
        x = torch.stack(xs)
        y = torch.as_tensor([int(item[1]) for item in items])
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(t) for t in data)
    else:
        raise SwampError(f"{what}: expected an (x, y) pair of tensors or a torch Dataset, "
                         f"got {type(data).__name__}")
    if y.ndim != 1 or x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise SwampError(f"{what}: x must be (n, *input_shape) and y (n,) with the same n; "
                         f"got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise SwampError(f"{what}: labels must be integer class indices, got fractional values")
    return x.detach().to(torch.float32).contiguous(), y.detach().to(torch.int64).contiguous()


def from_tensors(train: Any, test: Any, *, val: Any = None, val_fraction: float = 0.1,
                 split_seed: int = 0, num_classes: int | None = None, name: str = "custom",
                 augment: Augment | None = None) -> DataBundle:
    """Wrap user data (tensor pairs or torch Datasets) in a DataBundle.

    `x` is cast to float32 as given: normalise it yourself. With `val` given, `val_fraction`
    is ignored; otherwise a seeded `val_fraction` of `train` becomes the validation split.
    """
    xtr, ytr = _as_tensors(train, "train")
    xte, yte = _as_tensors(test, "test")
    if xte.shape[1:] != xtr.shape[1:]:
        raise SwampError(f"test inputs have shape {tuple(xte.shape[1:])} but train inputs "
                         f"{tuple(xtr.shape[1:])}; both splits must share one input shape")
    if val is not None:
        train_split, val_split = Split(xtr, ytr), Split(*_as_tensors(val, "val"))
        if val_split.x.shape[1:] != xtr.shape[1:]:
            raise SwampError(f"val inputs have shape {tuple(val_split.x.shape[1:])} but train "
                             f"inputs {tuple(xtr.shape[1:])}; all splits must share one shape")
    else:
        train_split, val_split = split_validation(xtr, ytr, val_fraction, split_seed)
    labels = torch.cat([ytr, yte, val_split.y])
    if int(labels.min()) < 0:
        raise SwampError("labels must be class indices >= 0; found a negative label")
    inferred = int(labels.max()) + 1
    if num_classes is None:
        num_classes = inferred
    elif inferred > num_classes:
        raise SwampError(f"a label equals {inferred - 1} but num_classes={num_classes}; "
                         "labels must lie in [0, num_classes)")
    return DataBundle(name, train_split, val_split, Split(xte, yte), int(num_classes),
                      tuple(int(s) for s in xtr.shape[1:]), augment)
