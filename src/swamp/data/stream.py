"""Image datasets streamed from local folders (issue 14): ImageNet and Tiny-ImageNet.

Small datasets are held in memory as tensors (data/bundle.py); these are too large for that.
Their split's `x` is a `FileImages`: a list of image files that decodes on indexing, so the
rest of the library sees the same few operations as on a tensor (len, `.shape`, slices and
index-tensor gathers giving float32 batches on the split's device, `.to(device)`).

The training loop (train/fit.py `Batches`) and the evaluation and BatchNorm passes
(`batches_of`) read a FileImages through a torch DataLoader: `workers` processes decode
(Pillow) and hand uint8 pixels over (pinned memory on CUDA, a few batches ahead); the
normalisation and the augmentation run on the training device. The batch order still comes
from the seeded `BatchOrder` of each replica, so a streamed run trains exactly as the same
images held in memory (`imagefolder:DIR`, `image_normalize` imagenet), with any number of
workers, and a resumed run continues at its step.

    --dataset tiny-imagenet   DIR/train/<wnid>/images/*.JPEG; the test split DIR/val/images
                              labelled by DIR/val/val_annotations.txt; 64 x 64
    --dataset imagenet        DIR/train/<wnid>/*; the test split DIR/val/<wnid>/*; each image's
                              shorter side resized to `image_size` (default 224) and the
                              centre cut out

DIR is `data_dir` (or $SWAMP_DATA_DIR), or its sub-folder tiny-imagenet-200 / imagenet. The
images are normalised with ImageNet's channel statistics (`image_normalize` none: not at
all); the training augmentation is a random crop (padding 1/8 of the side) and a flip.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from swamp.data.augment import CropFlip
from swamp.data.files import (IMAGENET_STATS, FileOptions, _classes, _decode, _image_files,
                              _need, _split, normalise)
from swamp.data.sources import Raw, _find_dir, _root
from swamp.errors import SwampError

PREFETCH = 4          # batches each worker decodes ahead


@dataclass(frozen=True)
class Decoder:
    """How a file becomes pixels: picklable, so DataLoader workers decode with it."""

    size: int
    mode: str
    fit: str              # "resize" (to size x size) or "crop" (shorter side, centre crop)
    kind: str             # named in errors, with `root`
    root: str

    def __call__(self, path: str) -> torch.Tensor:
        a = _decode(Path(path), self.size, self.mode, self.kind, Path(self.root), self.fit)
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))   # uint8 (C,H,W)


class _Pixels(Dataset):
    """The DataLoader's dataset: file i -> its uint8 pixels (decoded in a worker)."""

    def __init__(self, files: Sequence[str], decode: Decoder):
        self.files, self.decode = files, decode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.decode(self.files[i])


class FileImages:
    """The `x` of a split streamed from image files: decodes (and normalises) on indexing.

    `x[i]` is one image (C, H, W), `x[a:b]`, `x[index_tensor]` a float32 batch on `device`,
    decoded in this process; `subset(index)` keeps some files without decoding; training
    and evaluation read through `loader` (DataLoader workers).
    """

    is_lazy = True     # what the in-memory code checks (`is_lazy`) to leave the files unread

    def __init__(self, files: Sequence[str], decode: Decoder, mean: tuple[float, ...],
                 std: tuple[float, ...], workers: int = 0, device: torch.device | str = "cpu"):
        self.files = list(files)
        self.decode, self.mean, self.std = decode, tuple(mean), tuple(std)
        self.workers = int(workers)
        self.device = torch.device(device)
        channels = 1 if decode.mode == "L" else 3
        self.shape = torch.Size((len(self.files), channels, decode.size, decode.size))
        self.dtype = torch.float32
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"FileImages({len(self)} files of {self.decode.root}, {tuple(self.shape[1:])})"

    def is_floating_point(self) -> bool:
        return True

    def _like(self, files: Sequence[str], device: torch.device | str | None = None) -> "FileImages":
        return FileImages(files, self.decode, self.mean, self.std, self.workers,
                          self.device if device is None else device)

    def to(self, device: torch.device | str, *args: Any, **kwargs: Any) -> "FileImages":
        return self._like(self.files, device)

    def subset(self, index: torch.Tensor | slice) -> "FileImages":
        """The files at `index`, still undecoded."""
        if isinstance(index, slice):
            return self._like(self.files[index])
        return self._like([self.files[int(i)] for i in torch.as_tensor(index).flatten()])

    def finish(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (from `_Pixels`) -> the normalised float32 batch on `device`."""
        return normalise(pixels.to(self.device, non_blocking=True), self.mean, self.std)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, int):
            return self[key:key + 1][0] if key >= 0 else self[len(self) + key]
        if isinstance(key, slice):
            index = range(len(self))[key]
            lead: tuple[int, ...] = (len(index),)
        else:
            t = torch.as_tensor(key)
            lead, index = tuple(t.shape), [int(i) for i in t.flatten().tolist()]
        if not len(index):
            return torch.empty((*lead, *self.shape[1:]), device=self.device)
        pixels = torch.stack([self.decode(self.files[i]) for i in index])
        return self.finish(pixels).view(*lead, *self.shape[1:])

    def loader(self, batches: Sequence[list[int]] | Sampler,
               workers: int | None = None) -> DataLoader:
        """A DataLoader of the uint8 batches of file indices `batches` (in order)."""
        workers = self.workers if workers is None else workers
        if workers and multiprocessing.current_process().daemon:
            # a training process of the `distributed` engine on one machine is daemonic and
            # may start no children: it decodes itself (its siblings already run in parallel)
            workers = 0
        return DataLoader(_Pixels(self.files, self.decode), batch_sampler=batches,
                          num_workers=workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=PREFETCH if workers else None)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The split in order, `batch_size` at a time, as `x[i:i + batch_size]` gives it."""
        ranges = [list(range(i, min(i + batch_size, len(self))))
                  for i in range(0, len(self), batch_size)]
        # one batch gains nothing from worker processes but their start-up
        it: Any = iter(self.loader(ranges, self.workers if len(ranges) > 1 else 0))
        error = None
        try:
            for _ in ranges:
                try:
                    pixels = next(it)
                except SwampError as e:
                    error = _worker_error(e)
                    break
                yield self.finish(pixels)
        finally:
            it = None       # the workers stop here, also when left early (no exception holds
        if error is not None:                                # the iterator: raised outside)
            raise error


def _worker_error(e: SwampError) -> SwampError:
    """An unreadable image met in a worker, as the worker's own one line (the DataLoader
    re-raises it with the worker's traceback in the message). `e`'s traceback is dropped: it
    is in a reference cycle with the DataLoader's frames, which would keep the workers alive
    until the garbage collector runs (and then stop them late, waiting for a timeout)."""
    e.__traceback__ = None
    return SwampError(str(e).strip().splitlines()[-1].split("SwampError: ", 1)[-1])


def is_lazy(x: Any) -> bool:
    return bool(getattr(x, "is_lazy", False))


def batches_of(x: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """x[0:b], x[b:2b], ...: slices of a tensor, or a FileImages read through its loader."""
    if is_lazy(x):
        yield from x.batches(batch_size)
        return
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


class _Steps(Sampler):
    """Steps start..stop of the training loop as batches of file indices; each step's index
    tensor is queued for the loop (its labels), in the order the DataLoader yields them."""

    def __init__(self, index_of: Callable[[int], torch.Tensor], start: int, stop: int):
        self.index_of, self.start, self.stop = index_of, start, stop
        self.pending: deque[torch.Tensor] = deque()

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            idx = self.index_of(step)
            self.pending.append(idx)
            yield idx.flatten().tolist()


class StepStream:
    """The training batches of a FileImages from step `start` on: `next(step)` gives the
    index tensor `index_of(step)` and its decoded, normalised inputs (shape idx.shape + x's)."""

    def __init__(self, x: FileImages, index_of: Callable[[int], torch.Tensor], stop: int):
        self.x, self.index_of, self.stop = x, index_of, stop
        self._next: int | None = None
        self._it: Iterator[torch.Tensor] | None = None
        self._steps: _Steps | None = None

    def next(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None or step != self._next:
            if self._next is not None and step < self._next:
                raise RuntimeError(f"training batches are read forward; step {step} came "
                                   f"after {self._next - 1}")
            self._steps = _Steps(self.index_of, step, max(step + 1, self.stop))
            self._it = iter(self.x.loader(self._steps))
        assert self._steps is not None
        error = None
        try:
            pixels = next(self._it)
        except SwampError as e:
            error = _worker_error(e)
        if error is not None:
            self.close()
            raise error          # outside the except: no exception keeps the workers alive
        idx = self._steps.pending.popleft()
        self._next = step + 1
        if self._next >= self.stop:
            self.close()
        return idx, self.x.finish(pixels).view(*idx.shape, *self.x.shape[1:])

    def close(self) -> None:
        """Stop the workers now (an iterator left to the garbage collector stops them late)."""
        self._it, self._steps = None, None


# --------------------------------------------------------------------------- the datasets

def _folder(name: str, data_dir: str | None, subdirs: list[str]) -> Path:
    root = _root(name, data_dir)
    found = _find_dir(root, subdirs, lambda d: (d / "train").is_dir())
    if found is None:
        raise SwampError(f"{name}: no train/ folder in {root} (nor in "
                         f"{', '.join(str(root / s) for s in subdirs)}); point `data_dir` at "
                         f"the folder that holds {name}'s train/ and val/")
    return found


def _tiny_val(root: Path, classes: list[str], kind: str) -> list[tuple[Path, int]]:
    """Tiny-ImageNet's validation images, labelled by val_annotations.txt (file, wnid, box)."""
    notes = root / "val" / "val_annotations.txt"
    if not notes.is_file():
        raise SwampError(f"{kind}:{root}: {notes} does not exist; the test split needs "
                         f"val/images and val/val_annotations.txt as Tiny-ImageNet ships them")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for number, line in enumerate(notes.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 2 or cells[1] not in index:
            raise SwampError(f"{kind}:{root}: line {number} of {notes} names "
                             f"{cells[1] if len(cells) > 1 else 'no class'!r}, not a training "
                             f"class; each line is FILE<TAB>WNID")
        path = root / "val" / "images" / cells[0]
        if not path.is_file():
            raise SwampError(f"{kind}:{root}: {path}, listed in {notes}, does not exist")
        items.append((path, index[cells[1]]))
    if not items:
        raise SwampError(f"{kind}:{root}: {notes} lists no images")
    return items


def _load(kind: str, data_dir: str | None, options: FileOptions | None, size: int | None,
          augment: bool) -> Raw:
    _need("PIL", "vision")
    options = options or FileOptions()
    tiny = kind == "tiny-imagenet"
    root = _folder(kind, data_dir, ["tiny-imagenet-200", "tiny-imagenet"] if tiny
                   else ["imagenet", "ILSVRC2012"])
    if options.image_mode not in ("RGB", "L"):
        raise SwampError(f"`image_mode` must be RGB or L (got {options.image_mode!r})")
    side = options.image_size or (64 if tiny else 224)
    classes = _classes(root / "train", kind)
    train = _image_files(root / "train", classes, kind)
    if tiny:
        test = _tiny_val(root, classes, kind)
    else:
        val_classes = _classes(root / "val", kind)
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise SwampError(f"{kind}:{root / 'val'}: class folder(s) {', '.join(unknown[:3])} "
                             f"are not among the training classes in {root / 'train'}")
        test = [(p, classes.index(val_classes[c]))
                for p, c in _image_files(root / "val", val_classes, kind)]
    if options.image_normalize == "none":
        mean, std = (0.0,) * 3, (1.0,) * 3
    elif options.image_normalize in ("train", "imagenet"):   # ImageNet's own statistics
        mean, std = IMAGENET_STATS
    else:
        raise SwampError(f"`image_normalize` must be train, imagenet or none "
                         f"(got {options.image_normalize!r})")
    if options.image_mode == "L":
        mean, std = mean[:1], std[:1]
    decode = Decoder(side, options.image_mode, "resize" if tiny else "crop", kind, str(root))
    decode(str(train[0][0]))          # one image read now: an unreadable folder fails here
    # file indices through the same shuffle, held-out share and `data_size` as imagefolder
    labels = lambda items: torch.tensor([c for _, c in items], dtype=torch.int64)  # noqa: E731
    itr, ytr, ite, yte = _split(f"{kind}:{root}", (torch.arange(len(train)), labels(train)),
                                (torch.arange(len(test)), labels(test)), options, size)
    workers = options.workers
    if workers < 0:
        raise SwampError(f"`workers` must be 0 (decode in the training process) or more "
                         f"(got {workers})")
    x_train = FileImages([str(train[i][0]) for i in itr.tolist()], decode, mean, std, workers)
    x_test = FileImages([str(test[i][0]) for i in ite.tolist()], decode, mean, std, workers)
    aug = (CropFlip(pad=max(1, side // 8), fill=tuple(-m / s for m, s in zip(mean, std)))
           if augment else None)
    return Raw(x_train, ytr, x_test, yte, len(classes), aug)   # type: ignore[arg-type]


def load_tiny_imagenet(data_dir: str | None, options: FileOptions | None, size: int | None,
                       augment: bool) -> Raw:
    return _load("tiny-imagenet", data_dir, options, size, augment)


def load_imagenet(data_dir: str | None, options: FileOptions | None, size: int | None,
                  augment: bool) -> Raw:
    return _load("imagenet", data_dir, options, size, augment)


STREAMED = {"tiny-imagenet": load_tiny_imagenet, "imagenet": load_imagenet}

