"""Data loaders, validation split, augmentation and user data (all offline, small, fast)."""

from __future__ import annotations

import gzip
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from swamp.data import (CropFlip, DataBundle, from_tensors, list_datasets, load_dataset,
                        split_validation, sources)
from swamp.errors import SwampError

# Standard per-channel statistics of the CIFAR-10 training pixels (in [0, 1] units).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# ----------------------------------------------------------------------------- file fixtures

def _write_cifar10(d: Path, per_batch: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard layout: data_batch_1..5 and test_batch, python pickles with bytes keys."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(d / f, "wb") as fh:
            pickle.dump({b"batch_label": f.encode(), b"data": data, b"labels": labels}, fh, protocol=2)
        out[f] = data
        out[f + "_labels"] = np.array(labels)
    return out


def _write_cifar100(d: Path, n: int = 8) -> None:
    rng = np.random.default_rng(1)
    d.mkdir(parents=True, exist_ok=True)
    for f in ("train", "test"):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [0, 99] + rng.integers(0, 100, size=n - 2).tolist()
        with open(d / f, "wb") as fh:
            pickle.dump({b"data": data, b"fine_labels": fine,
                         b"coarse_labels": [0] * n}, fh, protocol=2)


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(d: Path, gz: bool, n_train: int = 10, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (d / name).write_bytes(raw)
    return arrays


# ----------------------------------------------------------------------------- CIFAR

def test_cifar10_loads_standard_layout_with_exact_normalisation(tmp_path):
    raw = _write_cifar10(tmp_path / "cifar-10-batches-py")
    b = load_dataset("cifar10", data_dir=str(tmp_path), val_fraction=0.0)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10
    assert b.train.x.shape == (30, 3, 32, 32) and b.test.x.shape == (6, 3, 32, 32)
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    assert len(b.val) == 0 and len(b.train) == 30
    # Train = batches 1..5 in order; pixel (c, h, w) is byte c*1024 + h*32 + w.
    pix = np.concatenate([raw[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([raw[f"data_batch_{i}_labels"] for i in range(1, 6)])
    assert torch.equal(b.train.y, torch.from_numpy(labels))
    for c in range(3):
        expected = (pix[:, c].mean() / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        assert b.train.x[:, c].mean().item() == pytest.approx(expected, abs=1e-4)
    expected_px = (pix[3, 1, 5, 7] / 255.0 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert b.train.x[3, 1, 5, 7].item() == pytest.approx(expected_px, abs=1e-5)
    assert torch.equal(b.test.y, torch.from_numpy(raw["test_batch_labels"]))


def test_cifar10_accepts_batches_dir_itself_and_env_var(tmp_path, monkeypatch):
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    direct = load_dataset("cifar10", data_dir=str(tmp_path / "cifar-10-batches-py"))
    monkeypatch.setenv("SWAMP_DATA_DIR", str(tmp_path))
    via_env = load_dataset("cifar10")
    assert torch.equal(direct.train.x, via_env.train.x)
    assert isinstance(direct.augment, CropFlip) and direct.augment.pad == 4
    assert load_dataset("cifar10", augment=False).augment is None


def test_cifar100_fine_labels(tmp_path):
    _write_cifar100(tmp_path / "cifar-100-python")
    b = load_dataset("cifar100", data_dir=str(tmp_path), val_fraction=0.25)
    assert b.num_classes == 100 and b.input_shape == (3, 32, 32)
    assert len(b.train) == 6 and len(b.val) == 2 and len(b.test) == 8
    all_y = torch.cat([b.train.y, b.val.y])
    assert int(all_y.min()) >= 0 and int(all_y.max()) == 99  # fine labels, not coarse (all 0)
    assert int(b.test.y.max()) <= 99 and b.test.y.dtype == torch.int64


def test_cifar_missing_and_malformed_files_raise_one_line_errors(tmp_path, monkeypatch):
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar10(d)
    (d / "data_batch_3").unlink()
    with pytest.raises(SwampError, match="data_batch_3") as e:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
    _write_cifar10(d)
    (d / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(SwampError, match="test_batch"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(SwampError, match="train, test"):
        load_dataset("cifar100", data_dir=str(tmp_path))
    monkeypatch.delenv("SWAMP_DATA_DIR", raising=False)
    with pytest.raises(SwampError, match="SWAMP_DATA_DIR"):
        load_dataset("cifar10")


# ----------------------------------------------------------------------------- IDX (MNIST)

@pytest.mark.parametrize("gz", [True, False])
def test_idx_mnist_plain_and_gzip(tmp_path, gz):
    arrays = _write_idx(tmp_path, gz)
    b = load_dataset("mnist", data_dir=str(tmp_path), val_fraction=0.0)
    assert b.input_shape == (1, 28, 28) and b.train.x.shape == (10, 1, 28, 28)
    assert b.test.x.shape == (4, 1, 28, 28) and b.train.x.dtype == torch.float32
    assert torch.equal(b.train.y, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    mean, std = MNIST_MEAN, MNIST_STD
    expected = (arrays["train-images-idx3-ubyte"].mean() / 255.0 - mean) / std
    assert b.train.x.mean().item() == pytest.approx(expected, abs=1e-4)
    assert b.test.x[2, 0, 3, 4].item() == pytest.approx(
        (arrays["t10k-images-idx3-ubyte"][2, 3, 4] / 255.0 - mean) / std, abs=1e-5)


def test_fashion_mnist_subdir_and_size(tmp_path):
    _write_idx(tmp_path / "fashion-mnist", gz=True)
    b = load_dataset("fashion-mnist", data_dir=str(tmp_path), size=6, val_fraction=0.0)
    assert len(b.train) == 6 and b.name == "fashion-mnist"
    mean, std = sources.MNIST_STATS["fashion-mnist"]
    assert b.train.x.min().item() >= -mean / std - 1e-5


def test_idx_missing_and_corrupt(tmp_path):
    _write_idx(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(SwampError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(SwampError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- augmentation

def _windows(img: torch.Tensor, pad: int, fill: float = 0.0) -> list[torch.Tensor]:
    """Every crop (flipped or not) that CropFlip may legally return for one image."""
    c, h, w = img.shape
    p = torch.full((c, h + 2 * pad, w + 2 * pad), fill)
    p[:, pad:pad + h, pad:pad + w] = img
    out = []
    for r in range(2 * pad + 1):
        for s in range(2 * pad + 1):
            win = p[:, r:r + h, s:s + w]
            out += [win, win.flip(-1)]
    return out


def test_crop_flip_deterministic_per_seed_and_different_between_seeds():
    x = torch.randn(16, 3, 8, 8)
    aug = CropFlip(pad=4)
    a1 = aug(x, torch.Generator().manual_seed(1))
    a2 = aug(x, torch.Generator().manual_seed(1))
    a3 = aug(x, torch.Generator().manual_seed(2))
    assert a1.shape == x.shape and a1.dtype == x.dtype
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)
    # One generator advancing (e.g. two particles' consecutive batches) also differs.
    g = torch.Generator().manual_seed(1)
    assert not torch.equal(aug(x, g), aug(x, g))


def test_crop_shifts_content_exactly_and_pads_with_fill():
    x = torch.arange(32 * 2 * 6 * 6, dtype=torch.float32).view(32, 2, 6, 6) + 1  # all distinct
    out = CropFlip(pad=2, flip=False, fill=(-5.0, -5.0))(x, torch.Generator().manual_seed(0))
    shifted = 0
    for i in range(len(x)):
        wins = _windows(x[i], 2, fill=-5.0)[0::2]  # unflipped windows only
        match = [k for k, w in enumerate(wins) if torch.equal(w, out[i])]
        assert match, f"sample {i} is not a padded crop of its input"
        shifted += match[0] != 2 * 5 + 2  # index of offset (2, 2) = the identity crop
    assert shifted >= len(x) // 2  # the crop really moves content (25 offsets, 1 is identity)
    assert (out == -5.0).any()  # padding uses the given per-channel fill


def test_flip_flips_and_crop_flip_combined():
    x = torch.randn(64, 3, 5, 7)
    out = CropFlip(pad=0, flip=True)(x, torch.Generator().manual_seed(3))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54
    both = CropFlip(pad=1)(x[:8], torch.Generator().manual_seed(4))
    for i in range(8):
        assert any(torch.equal(w, both[i]) for w in _windows(x[i], 1))


def test_augment_accepts_stacked_particles():
    aug = CropFlip(pad=4)
    x = torch.randn(3, 5, 3, 8, 8)  # (particles, batch, C, H, W)
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out.view(15, 3, 8, 8), aug(x.view(15, 3, 8, 8), torch.Generator().manual_seed(0)))


# ----------------------------------------------------------------------------- splits

def test_val_split_disjoint_complete_and_seeded():
    x = torch.arange(100, dtype=torch.float32).view(100, 1, 1)
    y = torch.arange(100) % 10
    tr, va = split_validation(x, y, 0.2, split_seed=7)
    ids_tr, ids_va = set(tr.x.flatten().tolist()), set(va.x.flatten().tolist())
    assert len(va) == 20 and len(tr) == 80
    assert ids_tr.isdisjoint(ids_va) and ids_tr | ids_va == set(range(100))
    assert torch.equal(tr.y, tr.x.flatten().long() % 10)  # labels travel with their inputs
    assert torch.equal(split_validation(x, y, 0.2, split_seed=7)[1].x, va.x)
    assert not torch.equal(split_validation(x, y, 0.2, split_seed=8)[1].x, va.x)
    tr0, va0 = split_validation(x, y, 0.0, 7)
    assert len(tr0) == 100 and len(va0) == 0 and va0.x.shape == (0, 1, 1)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(SwampError, match="val_fraction"):
            split_validation(x, y, bad, 0)
    with pytest.raises(SwampError, match="val_fraction"):
        load_dataset("synthetic", val_fraction=1.0)


def test_load_dataset_split_seed_changes_validation_membership():
    a = load_dataset("synthetic", split_seed=0)
    b = load_dataset("synthetic", split_seed=1)
    assert len(a.val) == len(b.val) > 0
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.val.x, b.val.x)
    assert torch.equal(load_dataset("synthetic", split_seed=0).val.x, a.val.x)


# ----------------------------------------------------------------------------- generated data

def test_mnist1d_generates_then_uses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWAMP_CACHE", str(tmp_path))
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    b = load_dataset("mnist1d", size=200)
    # mnist1d reseeds the global RNGs; the loader must leave the caller's streams untouched.
    assert np.random.rand() == np_before and random.random() == py_before
    assert b.input_shape == (1, 40) and b.num_classes == 10 and b.augment is None
    assert len(b.train) + len(b.val) == 160 and len(b.test) == 40 and len(b.val) == 16
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    assert abs(float(torch.cat([b.train.x, b.val.x, b.test.x]).mean())) < 0.05
    cache = tmp_path / f"mnist1d-200-{sources.MNIST1D_SEED}.npz"
    assert cache.is_file()

    def boom(*a, **k):
        raise AssertionError("regenerated although a valid cache exists")
    monkeypatch.setattr(sources, "_generate_mnist1d", boom)
    again = load_dataset("mnist1d", size=200)
    assert torch.equal(again.train.x, b.train.x) and torch.equal(again.test.y, b.test.y)


def test_mnist1d_corrupted_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("SWAMP_CACHE", str(tmp_path))
    cache = tmp_path / f"mnist1d-100-{sources.MNIST1D_SEED}.npz"
    cache.write_bytes(b"truncated garbage")
    calls = []
    real = sources._generate_mnist1d
    monkeypatch.setattr(sources, "_generate_mnist1d", lambda *a: calls.append(a) or real(*a))
    b = load_dataset("mnist1d", size=100, val_fraction=0.0)
    assert calls and len(b.train) == 80
    assert sources._read_cache(cache) is not None  # rewritten, valid
    assert not list(tmp_path.glob("*.tmp"))  # no temp file left behind


def test_synthetic_is_deterministic_fast_and_learnable():
    from swamp.models import build_model

    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert torch.equal(a.train.x, b.train.x) and a.input_shape == (1, 32) and a.num_classes == 10
    img = load_dataset("synthetic-image", size=64)
    assert img.input_shape == (3, 8, 8) and len(img.train) + len(img.val) + len(img.test) == 64
    assert img.augment is not None and load_dataset("synthetic-image", augment=False).augment is None
    torch.manual_seed(0)
    model = build_model("mlp", a.input_shape, a.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):  # full-batch steps: well under a second
        loss = torch.nn.functional.cross_entropy(model(a.train.x), a.train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (model(a.test.x).argmax(1) == a.test.y).float().mean().item()
    assert acc > 0.5  # chance is 0.1


def test_digits_bundled_with_sklearn():
    b = load_dataset("digits")
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    assert len(b.train) + len(b.val) == 1438 and len(b.test) == 359
    assert set(b.test.y.unique().tolist()) == set(range(10))
    assert abs(float(torch.cat([b.train.x, b.val.x]).mean())) < 1e-4


def test_unknown_dataset_lists_known_names():
    with pytest.raises(SwampError, match="unknown dataset 'svhn'; known: mnist1d") as e:
        load_dataset("svhn")
    for name in list_datasets():
        assert name in str(e.value)
    assert {"mnist1d", "synthetic", "synthetic-image", "digits", "cifar10", "cifar100", "mnist",
            "fashion-mnist"} <= set(list_datasets())


# ----------------------------------------------------------------------------- user data

def test_from_tensors_pairs_and_datasets():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (50,), generator=g)
    xt, yt = torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    b = from_tensors((x, y), (xt, yt), val_fraction=0.2, split_seed=1)
    assert isinstance(b, DataBundle) and b.input_shape == (4,) and b.num_classes == 3
    assert len(b.train) == 40 and len(b.val) == 10 and b.train.x.dtype == torch.float32
    ds = from_tensors(TensorDataset(x, y), TensorDataset(xt, yt), val_fraction=0.2, split_seed=1)
    assert torch.equal(ds.train.x, b.train.x) and torch.equal(ds.val.y, b.val.y)

    class Pairs(Dataset):  # a generic map-style dataset, materialised once
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return x[i], int(y[i])
    gen = from_tensors(Pairs(), (xt, yt), val=(xt, yt), num_classes=5, name="mine")
    assert torch.equal(gen.train.x, x.float()) and gen.num_classes == 5 and gen.name == "mine"
    assert len(gen.val) == 10 and gen.to("cpu").train.y.dtype == torch.int64


def test_from_tensors_rejects_bad_input():
    x, y = torch.randn(8, 2), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    with pytest.raises(SwampError, match="num_classes=3"):
        from_tensors((x, y), (x, y), num_classes=3)
    with pytest.raises(SwampError, match="same n"):
        from_tensors((x, y[:5]), (x, y))
    with pytest.raises(SwampError, match="input shape"):
        from_tensors((x, y), (torch.randn(8, 3), y))
    with pytest.raises(SwampError, match=">= 0"):
        from_tensors((x, y - 1), (x, y))


# ----------------------------------------------------------------------------- checks on inputs

def test_files_partly_present_in_a_subfolder_are_reported_from_that_folder(tmp_path):
    sub = tmp_path / "mnist"
    _write_idx(sub, gz=True)
    (sub / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SwampError) as e:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(e.value).endswith(f"; {sub} is missing train-labels-idx1-ubyte")  # not all 4
    assert "\n" not in str(e.value)
    c = tmp_path / "cifar-10-batches-py"
    _write_cifar10(c, per_batch=1)
    (c / "data_batch_2").unlink()
    with pytest.raises(SwampError) as e:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert str(e.value).endswith(f"{c} is missing data_batch_2")


def test_labels_out_of_range_are_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar10(d, per_batch=2)
    with open(d / "data_batch_4", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, fh, protocol=2)
    with pytest.raises(SwampError, match=r"labels .* outside \[0, 10\)"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    _write_idx(tmp_path / "m", gz=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([1, 2, 10, 3])))
    with pytest.raises(SwampError, match="t10k labels .* exceed 9"):
        load_dataset("mnist", data_dir=str(tmp_path / "m"))


def test_size_beyond_the_available_data_is_an_error(tmp_path):
    with pytest.raises(SwampError, match="digits has 1438 training examples; size "
                                         r"\(`data_size`\) 5000 is more than that"):
        load_dataset("digits", size=5000)
    assert len(load_dataset("digits", size=1438, val_fraction=0.0).train) == 1438
    _write_idx(tmp_path, gz=False)  # 10 training images
    with pytest.raises(SwampError, match="mnist has 10 training examples"):
        load_dataset("mnist", data_dir=str(tmp_path), size=11)


def test_iterable_dataset_is_refused_in_one_line():
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2), 0

    with pytest.raises(SwampError, match="Stream has no length.*map-style Dataset") as e:
        from_tensors(Stream(), (torch.zeros(2, 2), torch.zeros(2)))
    assert "\n" not in str(e.value)


def test_data_larger_than_free_cuda_memory_is_refused(monkeypatch):
    from swamp.data import bundle

    b = load_dataset("synthetic", size=100)
    nbytes = sum(t.numel() * t.element_size()
                 for s in (b.train, b.val, b.test) for t in (s.x, s.y))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (nbytes - 1, 10 ** 10))
    with pytest.raises(SwampError, match=r"synthetic data takes 0\.00 GB but cuda has only .*`data_size`") as e:
        b.to("cuda")  # refused before any copy is attempted
    assert "\n" not in str(e.value)
    bundle.check_fits_on_device("x", nbytes - 1, "cuda:0")  # fits: no error
    bundle.check_fits_on_device("x", 10 ** 12, "cpu")  # only CUDA devices are checked
    assert b.to("cpu").train.x.device.type == "cpu"


def test_particles_of_a_level_get_their_own_reproducible_augmentation():
    from swamp.config import Settings
    from swamp.core.seeds import derive_seed
    from swamp.methods import get_method

    def augmented(plan_seed: int, level: int) -> list[torch.Tensor]:
        s = Settings.from_dict({"method": "swamp", "particles": 3, "seed": plan_seed}).resolved()
        x = torch.arange(8 * 3 * 8 * 8, dtype=torch.float32).view(8, 3, 8, 8)
        n = len(get_method("swamp").plan(s, 100).subsets(level))
        return [CropFlip(pad=4)(x, torch.Generator().manual_seed(
                    derive_seed(plan_seed, "augment", level, i))) for i in range(n)]

    a = augmented(0, 1)
    assert len(a) == 3
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])
    assert all(torch.equal(p, q) for p, q in zip(a, augmented(0, 1)))  # same seeds, same crops
    assert not torch.equal(a[0], augmented(0, 2)[0])  # a new level draws new crops


def test_a_crafted_cifar_batch_runs_nothing_and_is_one_line(tmp_path):
    """A data_batch that would run a shell command when unpickled with plain `pickle` is
    refused by the restricted reader before anything runs."""
    import pickle as plain

    from swamp.data import load_dataset

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / f, "wb") as fh:
            plain.dump({b"data": Evil(), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(SwampError, match="posix.system|os.system") as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert "nothing was run" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # object arrays (whose elements could be anything) are refused too
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / f, "wb") as fh:
            plain.dump({b"data": np.array([object()] * 3072, dtype=object)[None],
                        b"labels": [0]}, fh, protocol=2)
    with pytest.raises(SwampError, match="cannot read"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_mnist1d_noisy_is_the_same_task_with_more_noise():
    from swamp.data import load_dataset

    kw = dict(data_dir=None, val_fraction=0.1, split_seed=0, size=600, augment=False)
    clean, noisy = load_dataset("mnist1d", **kw), load_dataset("mnist1d-noisy", **kw)
    assert noisy.input_shape == clean.input_shape and noisy.num_classes == clean.num_classes
    assert torch.equal(noisy.train.y, clean.train.y)            # the same examples' labels
    assert not torch.allclose(noisy.train.x, clean.train.x)
    # more point-to-point noise: larger first differences along the signal
    rough = lambda x: x.diff(dim=-1).abs().mean()               # noqa: E731
    assert rough(noisy.train.x) > 1.3 * rough(clean.train.x)   # both scaled to unit std
