"""Datasets held in memory as tensors: a registry, loaders and user data.

    bundle = load_dataset("mnist1d")            # the default; generated offline and cached
    bundle = from_tensors((x, y), (x_test, y_test))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from swamp.data.augment import CropFlip
from swamp.data.bundle import Augment, DataBundle, Split, from_tensors, split_validation
from swamp.data import files, sources, stream
from swamp.data.files import FileOptions, is_file_dataset
from swamp.data.stream import FileImages, batches_of
from swamp.errors import SwampError, did_you_mean

__all__ = ["Augment", "CropFlip", "DataBundle", "DATASETS", "DatasetInfo", "FileImages",
           "FileOptions", "Split", "batches_of", "default_model", "from_tensors",
           "is_file_dataset", "is_streamed", "list_datasets", "load_dataset", "split_validation"]



@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    loader: Callable[[str | None, int | None, bool], sources.Raw]
    needs_files: bool = False  # read from data_dir / SWAMP_DATA_DIR
    default_model: str = "mlp"  # the model a run uses when none is given (issue 14)
    streamed: bool = False  # images streamed from folders (data/stream.py); the loader also
                            # takes the FileOptions (image_size, workers, ...)


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo("mnist1d", "MNIST-1D, generated offline (size=10000: 8000 train/2000 test), "
                "shape (1, 40), 10 classes [default]", sources.load_mnist1d,
                default_model="conv1d"),
    DatasetInfo("mnist1d-noisy", "MNIST-1D with 4x the correlated and 10x the per-point noise "
                "(a shifted distribution for transfer studies), shape (1, 40), 10 classes",
                sources.load_mnist1d_noisy, default_model="conv1d"),
    DatasetInfo("synthetic", "Gaussian class clusters for tests (size=512, 80/20), shape (1, 32), "
                "10 classes", sources.load_synthetic, default_model="conv1d"),
    DatasetInfo("synthetic-image", "smooth symmetric image clusters for tests (size=512, 80/20), "
                "shape (3, 8, 8), 10 classes, crop(1)+flip", sources.load_synthetic_image),
    DatasetInfo("gaussian-mixture", "2-D Gaussian mixture, 8 modes on a circle (size=2048, "
                "80/20), shape (2,), label = mode; for generators (mlp-generator)",
                sources.load_gaussian_mixture),
    DatasetInfo("digits", "scikit-learn 8x8 digits (1437 train/360 test), shape (1, 8, 8), "
                "10 classes", sources.load_digits_),
    DatasetInfo("mnist", "MNIST from IDX files, shape (1, 28, 28), 10 classes",
                sources.load_mnist, True),
    DatasetInfo("fashion-mnist", "Fashion-MNIST from IDX files, shape (1, 28, 28), 10 classes",
                sources.load_fashion_mnist, True),
    DatasetInfo("cifar10", "CIFAR-10 python batches, shape (3, 32, 32), 10 classes, crop(4)+flip",
                sources.load_cifar10, True, default_model="resnet20"),
    DatasetInfo("cifar100", "CIFAR-100 python batches (fine labels), shape (3, 32, 32), "
                "100 classes, crop(4)+flip", sources.load_cifar100, True,
                default_model="resnet20"),
    # streamed from local folders (issue 14; data/stream.py): DataLoader workers (`workers`)
    DatasetInfo("tiny-imagenet", "Tiny-ImageNet folders (train/<wnid>/images, val/ with "
                "val_annotations.txt as test), streamed, shape (3, 64, 64), 200 classes, "
                "crop(8)+flip", stream.load_tiny_imagenet, True, default_model="resnet18",
                streamed=True),
    DatasetInfo("imagenet", "ImageNet folders (train/<wnid>, val/<wnid> as test), streamed, "
                "resized and centre-cropped to `image_size` (224), 1000 classes, crop+flip",
                stream.load_imagenet, True, default_model="resnet18", streamed=True),
]}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100", "mnist-1d": "mnist1d",
            "synthetic_image": "synthetic-image", "gaussian_mixture": "gaussian-mixture",
            "tiny_imagenet": "tiny-imagenet", "tinyimagenet": "tiny-imagenet"}


def is_streamed(dataset: str) -> bool:
    """Whether `dataset` is streamed from image folders (data/stream.py)."""
    info = DATASETS.get(_ALIASES.get(dataset.lower(), dataset.lower()))
    return info is not None and info.streamed


def list_datasets() -> list[str]:
    return list(DATASETS)


# The user's own files, named KIND:PATH (data/files.py): shown by `swamp list`.
FILE_DATASETS = {
    "imagefolder:DIR": "class sub-folders of images (ImageFolder layout; swamp[vision])",
    "csv:FILE": "text classification: text and label columns, a local `tokenizer`",
    "jsonl:FILE": "text classification, one JSON object per line, a local `tokenizer`",
    "text:FILE": "causal language modelling on a text file: blocks of `block_size` tokens",
}


def default_model(dataset: str) -> str:
    """The model a run of `dataset` uses unless one is given: conv1d for 1-D signals, an MLP
    for small images, ResNet-20 for CIFAR; the user's files and data of the Python API:
    conv1d, as before datasets had defaults."""
    info = DATASETS.get(_ALIASES.get(dataset.lower(), dataset.lower()))
    return info.default_model if info is not None else "conv1d"


def load_dataset(name: str, *, data_dir: str | None = None, val_fraction: float = 0.1,
                 split_seed: int = 0, size: int | None = None, augment: bool = True,
                 file_options: FileOptions | None = None) -> DataBundle:
    """Load a registered dataset into memory, normalised, with a seeded validation split.

    `size`: for generated data (mnist1d, synthetic*) the number of examples generated in all;
    for the others the number of training examples kept (the first ones); more than the
    dataset has is an error.
    `augment=False` drops the dataset's training augmentation.
    `name` KIND:PATH reads the user's files (data/files.py) with `file_options`.
    """
    if not 0.0 <= float(val_fraction) < 1.0:  # fail before any slow loading
        raise SwampError(f"val_fraction must be in [0, 1), got {val_fraction}; "
                         "use e.g. 0.1, or 0 for no validation split")
    if is_file_dataset(name):
        return _bundle(name, files.load(name, file_options or FileOptions(), size, augment),
                       val_fraction, split_seed, augment)
    key = _ALIASES.get(name.lower(), name.lower())
    info = DATASETS.get(key)
    if info is None:
        raise SwampError(f"unknown dataset {name!r};{did_you_mean(name, DATASETS)} known: "
                         f"{', '.join(DATASETS)}, {', '.join(FILE_DATASETS)} (see `swamp list`)")
    raw = (info.loader(data_dir, file_options, size, augment) if info.streamed
           else info.loader(data_dir, size, augment))
    return _bundle(info.name, raw, val_fraction, split_seed, augment)


def _bundle(name: str, raw: sources.Raw, val_fraction: float, split_seed: int,
            augment: bool) -> DataBundle:
    train, val = split_validation(raw.x_train, raw.y_train, val_fraction, split_seed)
    return DataBundle(name, train, val, Split(raw.x_test, raw.y_test), raw.num_classes,
                      tuple(int(s) for s in raw.x_train.shape[1:]),
                      raw.augment if augment else None, raw.task, raw.vocab_size)
