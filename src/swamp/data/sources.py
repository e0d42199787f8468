"""Dataset sources: each returns raw, normalised train/test tensors (no validation split yet)."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from swamp.data.augment import CropFlip
from swamp.data.bundle import Augment
from swamp.errors import SwampError


@dataclass
class Raw:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: Augment | None = None
    task: str = "classification"        # or "lm": y holds each position's next token
    vocab_size: int | None = None       # token inputs (data/files.py): the tokenizer's


def _check_size(name: str, size: int | None, minimum: int) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < minimum):
        raise SwampError(f"{name}: size must be an integer >= {minimum}, got {size!r}")


def _subset(name: str, x: torch.Tensor, y: torch.Tensor,
            size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first `size` training examples (the file datasets are already shuffled).

    Asking for more than there are is an error, not a silent cut to what is available.
    """
    if size is None:
        return x, y
    n = int(y.shape[0])
    if size > n:
        raise SwampError(f"{name} has {n} training examples; size (`data_size`) {size} is more "
                         f"than that: leave it unset to use them all")
    return x[:size], y[:size]


# --------------------------------------------------------------------------- mnist1d

MNIST1D_SEED = 42  # the generator seed of mnist1d's reference dataset


def cache_dir() -> Path:
    """`$SWAMP_CACHE`, else `$XDG_CACHE_HOME/swamp`, else `~/.cache/swamp`."""
    env = os.environ.get("SWAMP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "swamp"


# A shifted distribution for transfer studies: the same ten templates, four times the
# reference's correlated noise and ten times its per-point noise (mnist1d's own knobs).
MNIST1D_NOISY = {"corr_noise_scale": 1.0, "iid_noise_scale": 0.2}


def _generate_mnist1d(size: int, seed: int, **changes: float) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # generated offline, never downloaded

    args = get_dataset_args()
    args.num_samples, args.seed = size, seed
    for key, value in changes.items():
        setattr(args, key, value)
    # make_dataset reseeds the global `random` and numpy RNGs; restore them so that loading
    # data never changes the caller's random streams.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    except Exception:  # missing, truncated or corrupted: regenerate
        return None
    ok = (arrays["x"].ndim == 2 and arrays["x"].shape[0] == arrays["y"].shape[0]
          and arrays["x_test"].shape[0] == arrays["y_test"].shape[0])
    return arrays if ok else None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic write (temp file + os.replace) so concurrent runs never see a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass  # an unwritable cache only costs regeneration next time


def load_mnist1d(data_dir: str | None, size: int | None, augment: bool,
                 noisy: bool = False) -> Raw:
    name = "mnist1d-noisy" if noisy else "mnist1d"
    _check_size(name, size, 10)
    size = 10000 if size is None else size  # 8000 train / 2000 test
    path = cache_dir() / f"{name}-{size}-{MNIST1D_SEED}.npz"
    arrays = _read_cache(path)
    if arrays is None:
        arrays = _generate_mnist1d(size, MNIST1D_SEED, **(MNIST1D_NOISY if noisy else {}))
        _write_cache(path, arrays)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    # make_dataset already centres and scales to unit std; add the channel dim: (n, 1, 40).
    return Raw(t["x"][:, None, :], t["y"], t["x_test"][:, None, :], t["y_test"], 10)


def load_mnist1d_noisy(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    return load_mnist1d(data_dir, size, augment, noisy=True)


# --------------------------------------------------------------------------- synthetic

SYNTHETIC_CLASSES = 10


def _synthetic(size: int | None, shape: tuple[int, ...], image: bool, augment: bool) -> Raw:
    """Gaussian class clusters around fixed random class means (seed 0): learnable, instant.

    `size` examples in all (default 512), 80% train / 20% test, 10 balanced-ish classes.
    For images the class means are smooth and left-right symmetric, so crop/flip
    augmentation keeps the label meaningful.
    """
    _check_size("synthetic", size, 10)
    n = 512 if size is None else size
    g = torch.Generator().manual_seed(0)
    k = SYNTHETIC_CLASSES
    if image:
        c, h, w = shape
        coarse = torch.randn(k, c, 3, 3, generator=g)
        means = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
        means = (means + means.flip(-1)) / 2
        means = means / means.flatten(1).std(dim=1).view(k, 1, 1, 1)
    else:
        means = torch.randn(k, *shape, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    # Noise dominates each feature; the class shows only across many. Scaled to ~unit std.
    x = (0.8 * means[y] + torch.randn(n, *shape, generator=g)) / 1.28
    n_train = int(0.8 * n)
    aug = CropFlip(pad=1) if (image and augment) else None
    return Raw(x[:n_train], y[:n_train], x[n_train:], y[n_train:], k, aug)


def load_synthetic(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    return _synthetic(size, (1, 32), image=False, augment=augment)


def load_synthetic_image(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    return _synthetic(size, (3, 8, 8), image=True, augment=augment)


def load_gaussian_mixture(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    """The 2-D Gaussian mixture of `data.toy` (8 modes on a circle; label = mode) for
    generative tests and pictures: `size` points in all (default 2048), 80/20."""
    from swamp.data.toy import gaussian_mixture

    _check_size("gaussian-mixture", size, 10)
    n = 2048 if size is None else size
    d = gaussian_mixture(n, seed=0)
    n_train = int(0.8 * n)
    return Raw(d.x[:n_train], d.y[:n_train], d.x[n_train:], d.y[n_train:], 8)


# --------------------------------------------------------------------------- digits

def load_digits_(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    """scikit-learn's bundled 8x8 digits (1797 images): fixed 20% test split (seed 0)."""
    from sklearn.datasets import load_digits

    _check_size("digits", size, 1)
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = int(round(0.2 * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    # Normalise with statistics of the training pixels only (scalar mean/std).
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    xtr, ytr = _subset("digits", x[tr], y[tr], size)
    return Raw(xtr, ytr, x[te], y[te], 10)


# --------------------------------------------------------------------------- file datasets

def _root(name: str, data_dir: str | None) -> Path:
    d = data_dir or os.environ.get("SWAMP_DATA_DIR")
    if not d:
        raise SwampError(f"{name} is read from local files: pass `data_dir` "
                         "or set SWAMP_DATA_DIR to the directory that holds them")
    return Path(d).expanduser()


def _find_dir(root: Path, subdirs: list[str], has_files) -> Path | None:
    """The first of root/<subdir>..., root that holds the files (parent dir or the dir itself)."""
    for cand in [root / s for s in subdirs] + [root]:
        if cand.is_dir() and has_files(cand):
            return cand
    return None


def _missing_files(name: str, root: Path, subdirs: list[str], files: list[str] | tuple[str, ...],
                   present, what: str) -> SwampError:
    """The error for files not found: names the folder holding most of them (the one the user
    most likely meant; `root` when none holds any) and what is missing from it."""
    cands = [c for c in [root / s for s in subdirs] + [root] if c.is_dir()]
    scored = [(sum(1 for f in files if present(c, f)), c) for c in cands]
    best_n, best = max(scored, key=lambda t: t[0], default=(0, root))  # ties: first candidate
    if best_n == 0:
        best = root
    missing = [f for f in files if not present(best, f)]
    places = " or ".join(str(root / s) for s in subdirs)
    found = (f"{best} is missing {', '.join(missing)}" if root.is_dir()
             else f"{root} does not exist")
    return SwampError(f"{name}: expected {', '.join(files)} {what} in {places} or {root}; {found}")


CIFAR_STATS = {  # per-channel mean/std of the training pixels, in [0, 1] units
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


# What a CIFAR python batch holds: dicts, lists, bytes, str, numbers, and numpy arrays of
# plain dtypes. These are the only globals the restricted unpickler resolves; anything
# else in a file (os.system, builtins.eval, ...) is refused before it can run.
_CIFAR_GLOBALS = {
    ("_codecs", "encode"),                         # bytes, as pickled by protocol 2
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _CifarUnpickler(pickle.Unpickler):
    """A pickle reader that admits only what the CIFAR format holds (see _CIFAR_GLOBALS)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR batch "
                                         f"never holds (refused; nothing was run)")
        return super().find_class(module, name)


def _plain_array(value: object, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "uif":             # no object arrays: plain numbers only
        raise ValueError(f"{what} holds {array.dtype} values, not numbers")
    return array


def _unpickle(path: Path, label_key: bytes, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        if not isinstance(d, dict):
            raise ValueError("it holds no dict of arrays")
        data = _plain_array(d[b"data"], "data").astype(np.uint8)
        labels = _plain_array(d[label_key], "labels").astype(np.int64)
        x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    except Exception as e:  # the restricted unpickler and numpy raise many kinds
        raise SwampError(f"{name}: cannot read {path} as a CIFAR python batch "
                         f"({type(e).__name__}: {e}); re-extract the official archive") from None
    if x.shape[0] != labels.shape[0]:
        raise SwampError(f"{name}: {path} holds {x.shape[0]} images but {labels.shape[0]} labels; "
                         "re-extract the official archive")
    return x, torch.from_numpy(labels)


def _normalise(x_uint8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    c = len(mean)
    m = torch.tensor(mean).view(1, c, 1, 1)
    s = torch.tensor(std).view(1, c, 1, 1)
    return (x_uint8.to(torch.float32) / 255.0 - m) / s


def _load_cifar(name: str, data_dir: str | None, size: int | None, augment: bool) -> Raw:
    _check_size(name, size, 1)
    root = _root(name, data_dir)
    if name == "cifar10":
        subdir, train_files, test_file, key, k = (
            "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels", 10)
    else:
        subdir, train_files, test_file, key, k = ("cifar-100-python", ["train"], "test", b"fine_labels", 100)
    names = train_files + [test_file]
    d = _find_dir(root, [subdir], lambda p: all((p / f).is_file() for f in names))
    if d is None:
        raise _missing_files(name, root, [subdir], names, lambda p, f: (p / f).is_file(),
                             "(python version of the dataset)")
    parts = [_unpickle(d / f, key, name) for f in train_files]
    xtr, ytr = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    xte, yte = _unpickle(d / test_file, key, name)
    for y in (ytr, yte):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise SwampError(f"{name}: labels in {d} fall outside [0, {k}); is this the right dataset?")
    xtr, ytr = _subset(name, xtr, ytr, size)
    mean, std = CIFAR_STATS[name]
    aug = CropFlip(pad=4, fill=tuple(-m / s for m, s in zip(mean, std))) if augment else None
    return Raw(_normalise(xtr, mean, std), ytr, _normalise(xte, mean, std), yte, k, aug)


def load_cifar10(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    return _load_cifar("cifar10", data_dir, size, augment)


def load_cifar100(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    return _load_cifar("cifar100", data_dir, size, augment)


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_STATS = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
MNIST_SUBDIRS = {"mnist": ["mnist", "MNIST/raw"],
                 "fashion-mnist": ["fashion-mnist", "fashion_mnist", "FashionMNIST/raw"]}


def _idx_path(d: Path, stem: str) -> Path | None:
    for p in (d / stem, d / (stem + ".gz")):
        if p.is_file():
            return p
    return None


def read_idx(path: Path, name: str) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) of unsigned bytes: magic 0x0000 08 <ndim>."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
            raise ValueError("bad magic number (expected unsigned-byte IDX)")
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(dims)):
            raise ValueError(f"{body.size} bytes of data for shape {dims}")
    except Exception as e:  # OSError, bad gzip/zlib stream, truncated data, bad header
        raise SwampError(f"{name}: cannot read {path} as an IDX file ({e}); "
                         "re-download the original files") from None
    return torch.from_numpy(body.reshape(dims).copy())


def _load_idx(name: str, data_dir: str | None, size: int | None, augment: bool) -> Raw:
    _check_size(name, size, 1)
    root = _root(name, data_dir)
    d = _find_dir(root, MNIST_SUBDIRS[name], lambda p: all(_idx_path(p, f) for f in IDX_FILES))
    if d is None:
        raise _missing_files(name, root, MNIST_SUBDIRS[name], IDX_FILES,
                             lambda p, f: _idx_path(p, f) is not None, "(optionally .gz)")
    xtr, ytr, xte, yte = (read_idx(_idx_path(d, f), name) for f in IDX_FILES)  # type: ignore[arg-type]
    for x, y, what in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise SwampError(f"{name}: {what} images {tuple(x.shape)} and labels {tuple(y.shape)} "
                             f"in {d} do not match; re-download the original files")
        if len(y) and int(y.max()) >= 10:
            raise SwampError(f"{name}: {what} labels in {d} exceed 9; is this the right dataset?")
    xtr, ytr = _subset(name, xtr, ytr, size)
    mean, std = MNIST_STATS[name]
    return Raw(_normalise(xtr[:, None], (mean,), (std,)), ytr.long(),
               _normalise(xte[:, None], (mean,), (std,)), yte.long(), 10)


def load_mnist(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    return _load_idx("mnist", data_dir, size, augment)


def load_fashion_mnist(data_dir: str | None, size: int | None, augment: bool) -> Raw:
    return _load_idx("fashion-mnist", data_dir, size, augment)
