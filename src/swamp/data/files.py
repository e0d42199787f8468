"""Datasets from the user's own files, named `KIND:PATH` (issue 12):

    imagefolder:DIR   class sub-folders of images (torchvision's ImageFolder layout), read
                      with Pillow (`pip install "swamp[vision]"`)
    csv:FILE          text classification: a text column and a label column, tokenised by
    jsonl:FILE        a local tokenizer (a tokenizer.json file, or `hf:DIR`)
    text:FILE         causal language modelling: the file's tokens cut into blocks, each
                      token's target the next one

Each returns a `Raw` like the built-in sources: train and test tensors (the validation split
is carved later, seeded by the run seed). The test split is `test_path` when given (for an
image folder also DIR/train with DIR/test or DIR/val), else a fixed share (`test_fraction`,
seed 0) of the examples: it never depends on the run seed and is never used for selection.

What the tensors hold:
- images: float32 (n, C, H, W), normalised; labels int64 (n,), classes = sorted folder names;
- text classification: int64 (n, 2, max_length), [:, 0] the token ids, [:, 1] the attention
  mask (1 = token, 0 = padding); labels int64 (n,);
- causal LM: int64 (n, block_size) token ids and int64 (n, block_size) targets (the same
  text one token later); `num_classes` is the vocabulary size.

Every problem with a file (missing, empty, unreadable, a missing column, no tokenizer) is one
line naming the file and the fix, raised before a run directory is written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from swamp.data.augment import CropFlip
from swamp.data.sources import Raw
from swamp.errors import SwampError

KINDS = ("imagefolder", "csv", "jsonl", "text")
# torchvision.datasets.folder.IMG_EXTENSIONS: the files an ImageFolder reads
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TEST_SEED = 0          # the fixed shuffle of the examples before a share is held out as test


@dataclass(frozen=True)
class FileOptions:
    """The settings of the file datasets (config.DataSettings' block of the same names)."""

    test_path: str | None = None
    test_fraction: float = 0.2
    image_size: int | None = None
    image_mode: str = "RGB"
    image_normalize: str = "train"
    text_column: str = "text"
    label_column: str = "label"
    tokenizer: str | None = None
    max_length: int = 128
    block_size: int = 128
    data_dir: str | None = None     # relative paths of the dataset and test_path start here
    workers: int = 0                # streamed datasets (data/stream.py): DataLoader workers

    @classmethod
    def from_settings(cls, data_settings: Any, **override: Any) -> "FileOptions":
        values = {f.name: getattr(data_settings, f.name) for f in fields(cls)
                  if hasattr(data_settings, f.name)}
        return cls(**{**values, **override})


def parse(name: str) -> tuple[str, Path] | None:
    """(kind, path) of a `KIND:PATH` dataset name; None for a registered dataset."""
    kind, sep, path = name.partition(":")
    if not sep or kind.lower() not in KINDS:
        return None
    if not path:
        raise SwampError(f"dataset {name!r} names no path; use e.g. `dataset` {kind}:PATH")
    return kind.lower(), Path(path).expanduser()


def is_file_dataset(name: str) -> bool:
    kind, sep, _ = name.partition(":")
    return bool(sep) and kind.lower() in KINDS


def _under(base: str | None, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if base is None or path.is_absolute() else Path(base).expanduser() / path


def load(name: str, options: FileOptions, size: int | None, augment: bool) -> Raw:
    parsed = parse(name)
    assert parsed is not None, name
    kind, path = parsed
    path = _under(options.data_dir, path)
    if options.test_path:
        options = replace(options, test_path=str(_under(options.data_dir, options.test_path)))
    if not 0.0 < options.test_fraction < 1.0 and options.test_path is None:
        raise SwampError(f"`test_fraction` must be in (0, 1) (got {options.test_fraction}); "
                         f"or give the test split's own file with `test_path`")
    return LOADERS[kind](kind, path, options, size, augment)


# --------------------------------------------------------------------------- shared pieces

def _need(module: str, extra: str) -> Any:
    """Import an optional package, or one line naming the extra that installs it."""
    try:
        return __import__(module)
    except ImportError:
        raise SwampError(f"reading this dataset needs {module}, in the extra: "
                         f"pip install 'swamp[{extra}]'") from None


def _hold_out(n: int, options: FileOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, test indices): a fixed shuffle (seed 0), the last `test_fraction`
    of it the test split; both in shuffled order, so that `data_size` keeps a random subset
    of the training examples rather than the first classes of a folder."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_SEED))
    n_test = min(max(int(round(options.test_fraction * n)), 1), n - 1)
    return perm[:n - n_test], perm[n - n_test:]


def _keep(what: str, x: torch.Tensor, y: torch.Tensor,
          size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None:
        return x, y
    if size > len(y):
        raise SwampError(f"{what} has {len(y)} training examples; `data_size` {size} is more "
                         f"than that: leave it unset to use them all")
    return x[:size], y[:size]


def _shuffle(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(TEST_SEED))
    return x[perm], y[perm]


def _split(what: str, train: tuple[torch.Tensor, torch.Tensor],
           test: tuple[torch.Tensor, torch.Tensor] | None, options: FileOptions,
           size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test tensors: the given test data, or a fixed held-out share of `train`."""
    x, y = train
    if test is None:
        if len(y) < 2:
            raise SwampError(f"{what} holds {len(y)} example(s); a run needs at least 2 (one "
                             f"to train on, one to test), or a test file in `test_path`")
        tr, te = _hold_out(len(y), options)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    else:
        (xtr, ytr), (xte, yte) = _shuffle(x, y), test
    xtr, ytr = _keep(what, xtr, ytr, size)
    return xtr, ytr, xte, yte


def _missing(kind: str, path: Path, what: str) -> SwampError:
    return SwampError(f"{kind}:{path}: {path} does not exist; give the {what} as "
                      f"`dataset` {kind}:PATH")


# --------------------------------------------------------------------------- image folders

def _classes(root: Path, kind: str) -> list[str]:
    """Sorted class folder names, as torchvision's `find_classes`."""
    if not root.is_dir():
        raise _missing(kind, root, "folder of class sub-folders")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise SwampError(f"{kind}:{root}: {root} holds no class folders; put each class's "
                         f"images in a sub-folder named after it (DIR/cat/1.png, DIR/dog/2.png)")
    return classes


def _image_files(root: Path, classes: list[str], kind: str) -> list[tuple[Path, int]]:
    """(file, class index) of every image, as torchvision's `make_dataset` lists them."""
    items: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        found = [Path(d) / f for d, _, files in sorted(os.walk(root / name, followlinks=True))
                 for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
        if not found:
            raise SwampError(f"{kind}:{root}: the class folder {root / name} holds no images "
                             f"({', '.join(IMG_EXTENSIONS)}); add some or remove the folder")
        items += [(p, index) for p in found]
    return items


def _decode(path: Path, size: int | None, mode: str, kind: str, root: Path,
            fit: str = "resize") -> np.ndarray:
    """One image as uint8 (H, W, C), converted to `mode`; with `size`, resized to size x size
    (bilinear, as torchvision's Resize) or, with `fit` "crop", its shorter side resized to
    `size` and the centre cut out (torchvision's Resize(size) + CenterCrop(size))."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size, size):
                if fit == "crop":
                    w, h = img.size
                    scale = size / min(w, h)
                    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                    img = img.resize((nw, nh), Image.BILINEAR)
                    left, top = (nw - size) // 2, (nh - size) // 2
                    img = img.crop((left, top, left + size, top + size))
                else:
                    img = img.resize((size, size), Image.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, UnidentifiedImageError) as e:
        raise SwampError(f"{kind}:{root}: cannot read {path} as an image "
                         f"({type(e).__name__}); replace or remove it") from None
    return a[:, :, None] if a.ndim == 2 else a


def _read_images(items: list[tuple[Path, int]], options: FileOptions,
                 kind: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, C, H, W) and labels; every image converted to `image_mode` and resized to
    `image_size` (bilinear, as torchvision's Resize), or all of the first image's size."""
    _need("PIL", "vision")
    arrays, first = [], None
    for path, _ in items:
        a = _decode(path, options.image_size, options.image_mode, kind, root)
        if first is None:
            first = (path, a.shape)
        elif a.shape != first[1]:
            raise SwampError(f"{kind}:{root}: {path} is {a.shape[1]}x{a.shape[0]} but "
                             f"{first[0]} is {first[1][1]}x{first[1][0]}; set `image_size` "
                             f"to resize every image to one size")
        arrays.append(a)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([c for _, c in items], dtype=torch.int64)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 pixels (..., C, H, W) -> float32 (x / 255 - mean) / std, per channel; the one
    normalisation of images read into memory and of images streamed from files
    (data/stream.py), so both give the same bits."""
    c = x.shape[-3]
    m = torch.tensor(mean, device=x.device).view(c, 1, 1)
    s = torch.tensor(std, device=x.device).view(c, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


def _load_images(kind: str, root: Path, options: FileOptions, size: int | None,
                 augment: bool) -> Raw:
    what = f"{kind}:{root}"
    if options.image_mode not in ("RGB", "L"):
        raise SwampError(f"`image_mode` must be RGB or L (got {options.image_mode!r})")
    test_root = Path(options.test_path).expanduser() if options.test_path else None
    if test_root is None and (root / "train").is_dir():
        test_root = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        if test_root is not None:
            root = root / "train"
    classes = _classes(root, kind)
    train = _read_images(_image_files(root, classes, kind), options, kind, root)
    test = None
    if test_root is not None:
        test_classes = _classes(test_root, kind)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise SwampError(f"{kind}:{test_root}: class folder(s) {', '.join(unknown)} are "
                             f"not among the training classes in {root}; the splits must "
                             f"share their classes")
        items = [(p, classes.index(test_classes[c]))
                 for p, c in _image_files(test_root, test_classes, kind)]
        test = _read_images(items, options, kind, test_root)
        if test[0].shape[1:] != train[0].shape[1:]:
            raise SwampError(f"{kind}:{test_root}: test images are {tuple(test[0].shape[1:])} "
                             f"but training images {tuple(train[0].shape[1:])}; set "
                             f"`image_size` to resize both")
    xtr, ytr, xte, yte = _split(what, train, test, options, size)
    c = xtr.shape[1]
    if options.image_normalize == "train":    # per-channel statistics of the training pixels
        pixels = xtr.to(torch.float32).div(255).transpose(0, 1).reshape(c, -1)
        mean = tuple(float(v) for v in pixels.mean(1))
        std = tuple(max(float(v), 1e-6) for v in pixels.std(1))
    elif options.image_normalize == "imagenet":
        if c != 3:
            raise SwampError("`image_normalize` imagenet needs RGB images; use `image_mode` "
                             "RGB, or `image_normalize` train")
        mean, std = IMAGENET_STATS
    elif options.image_normalize == "none":
        mean, std = (0.0,) * c, (1.0,) * c
    else:
        raise SwampError(f"`image_normalize` must be train, imagenet or none "
                         f"(got {options.image_normalize!r})")

    def norm(x: torch.Tensor) -> torch.Tensor:
        return normalise(x, mean, std)

    # Random crops (padding 1/8 of the side, as CIFAR's 4 of 32) and horizontal flips
    aug = (CropFlip(pad=max(1, xtr.shape[-1] // 8), fill=tuple(-m / s for m, s in zip(mean, std)))
           if augment else None)
    return Raw(norm(xtr), ytr, norm(xte), yte, len(classes), aug)


# --------------------------------------------------------------------------- tokenizers

class Tokenizer:
    """One interface over a `tokenizers` tokenizer.json and a transformers AutoTokenizer."""

    def __init__(self, spec: str):
        self.spec = spec
        if spec.startswith("hf:"):
            path = Path(spec[3:]).expanduser()
            if not path.is_dir():
                raise SwampError(f"tokenizer {spec}: {path} is not a directory; give `tokenizer` "
                                 f"hf:DIR with a local Hugging Face tokenizer in DIR")
            _need("transformers", "hf")
            from transformers import AutoTokenizer

            try:   # local files only: nothing is downloaded
                self.hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except Exception as e:  # transformers raises many kinds for a bad directory
                text = str(e).strip().splitlines()
                raise SwampError(f"tokenizer {spec}: cannot load a tokenizer from {path} "
                                 f"({type(e).__name__}: {text[0] if text else ''})"[:300]
                                 + "; save one there with tokenizer.save_pretrained") from None
            self.fast = None
            if self.hf.pad_token is None and self.hf.eos_token is not None:
                self.hf.pad_token = self.hf.eos_token   # GPT-2 style: pad with end-of-text
            self.vocab_size = len(self.hf)
            return
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise SwampError(f"tokenizer {spec}: {path} does not exist; give `tokenizer` a "
                             f"tokenizer.json file (the `tokenizers` library) or hf:DIR")
        _need("tokenizers", "text")
        from tokenizers import Tokenizer as Fast

        try:
            self.fast = Fast.from_file(str(path))
        except Exception as e:  # a Rust-side parse error
            raise SwampError(f"tokenizer {spec}: cannot read {path} as a tokenizer.json "
                             f"({' '.join(str(e).split())[:120]}); save it with Tokenizer.save") from None
        self.hf = None
        self.vocab_size = self.fast.get_vocab_size(with_added_tokens=True)

    def _pad_id(self) -> int:
        """The tokenizer's own padding id; else a [PAD]/<pad> token; else 0 (masked out)."""
        assert self.fast is not None
        if self.fast.padding is not None:
            return int(self.fast.padding["pad_id"])
        for token in ("[PAD]", "<pad>", "<|pad|>", "<PAD>"):
            i = self.fast.token_to_id(token)
            if i is not None:
                return int(i)
        return 0

    def encode_padded(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, (n, max_length) each: truncated, then padded."""
        if self.hf is not None:
            enc = self.hf(texts, padding="max_length", truncation=True, max_length=max_length)
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            assert self.fast is not None
            pad = self._pad_id()
            self.fast.enable_truncation(max_length)
            self.fast.enable_padding(length=max_length, pad_id=pad,
                                     pad_token=self.fast.id_to_token(pad) or "[PAD]")
            encs = self.fast.encode_batch(texts)
            ids = [e.ids for e in encs]
            mask = [e.attention_mask for e in encs]
        return torch.tensor(ids, dtype=torch.int64), torch.tensor(mask, dtype=torch.int64)

    def encode_plain(self, text: str) -> list[int]:
        """The ids of a running text: no special tokens, no truncation, no padding."""
        if self.hf is not None:
            self.hf.model_max_length = 1 << 62     # no "longer than the model" warning
            return list(self.hf(text, add_special_tokens=False)["input_ids"])
        assert self.fast is not None
        self.fast.no_truncation()
        self.fast.no_padding()
        return list(self.fast.encode(text, add_special_tokens=False).ids)


def _tokenizer(what: str, options: FileOptions) -> Tokenizer:
    if not options.tokenizer:
        raise SwampError(f"{what} needs a local tokenizer: set `tokenizer` to a tokenizer.json "
                         f"file or hf:DIR (a model given as hf:DIR lends its own)")
    spec = options.tokenizer
    if spec.startswith("hf:"):
        return Tokenizer("hf:" + str(_under(options.data_dir, spec[3:])))
    return Tokenizer(str(_under(options.data_dir, spec)))


def _check_ids(what: str, ids: torch.Tensor, tok: Tokenizer) -> None:
    if ids.numel() and int(ids.max()) >= tok.vocab_size:
        raise SwampError(f"{what}: tokenizer {tok.spec} gives id {int(ids.max())} beyond its "
                         f"vocabulary of {tok.vocab_size}; the tokenizer file is inconsistent")


# --------------------------------------------------------------------------- text tables

def _read_rows(kind: str, path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise _missing(kind, path, f"{kind.upper()} file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SwampError(f"{kind}:{path}: {path} is not UTF-8 text (byte {e.start}); save it "
                         f"as UTF-8") from None
    rows: list[dict[str, Any]] = []
    if kind == "csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))  # quoted newlines kept
        except csv.Error as e:
            raise SwampError(f"{kind}:{path}: {path} is not valid CSV ({e}); fix the file") from None
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SwampError(f"{kind}:{path}: line {number} of {path} is not JSON "
                                 f"({e.msg}); write one JSON object per line") from None
            if not isinstance(row, dict):
                raise SwampError(f"{kind}:{path}: line {number} of {path} is not a JSON "
                                 f"object; write one object per line, e.g. "
                                 f'{{"text": "...", "label": 0}}')
            rows.append(row)
    if not rows:
        raise SwampError(f"{kind}:{path}: {path} holds no examples; add rows of text and label")
    return rows


def _columns(kind: str, path: Path, rows: list[dict[str, Any]],
             options: FileOptions) -> tuple[list[str], list[Any]]:
    texts, labels = [], []
    for column, setting in ((options.text_column, "text_column"),
                            (options.label_column, "label_column")):
        for number, row in enumerate(rows, 1):
            if row.get(column) is None:
                present = ", ".join(str(k) for k in row) or "none"
                raise SwampError(f"{kind}:{path}: example {number} of {path} has no column "
                                 f"{column!r} (it has: {present}); name the column with "
                                 f"`{setting}`")
    for number, row in enumerate(rows, 1):
        text = row[options.text_column]
        if not isinstance(text, str):
            raise SwampError(f"{kind}:{path}: example {number} of {path} has a "
                             f"{type(text).__name__} in {options.text_column!r}, not text")
        texts.append(text)
        labels.append(row[options.label_column])
    return texts, labels


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.strip().isdigit()


def _label_ids(what: str, train: list[Any], test: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Integer labels >= 0 are class indices as they are; other labels are names, numbered
    in sorted order of the training labels."""
    if all(_is_int(v) for v in train + test):
        ytr = torch.tensor([int(v) for v in train], dtype=torch.int64)
        yte = torch.tensor([int(v) for v in test], dtype=torch.int64)
        return ytr, yte, int(torch.cat([ytr, yte]).max()) + 1
    names = sorted({str(v) for v in train})
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted({str(v) for v in test} - set(names))
    if unseen:
        raise SwampError(f"{what}: test label(s) {', '.join(unseen[:3])} never occur in the "
                         f"training data; every class needs training examples")
    return (torch.tensor([index[str(v)] for v in train], dtype=torch.int64),
            torch.tensor([index[str(v)] for v in test], dtype=torch.int64), len(names))


def _load_table(kind: str, path: Path, options: FileOptions, size: int | None,
                augment: bool) -> Raw:
    what = f"{kind}:{path}"
    if options.max_length < 1:
        raise SwampError(f"`max_length` must be at least 1 (got {options.max_length})")
    texts, labels = _columns(kind, path, _read_rows(kind, path), options)
    test_texts: list[str] = []
    test_labels: list[Any] = []
    if options.test_path:
        test_file = Path(options.test_path).expanduser()
        test_kind = "jsonl" if test_file.suffix.lower() in (".jsonl", ".json") else kind
        test_texts, test_labels = _columns(test_kind, test_file,
                                           _read_rows(test_kind, test_file), options)
    tok = _tokenizer(what, options)
    ytr_all, yte_given, k = _label_ids(what, labels, test_labels)

    def encode(values: list[str]) -> torch.Tensor:
        ids, mask = tok.encode_padded(values, options.max_length)
        _check_ids(what, ids, tok)
        return torch.stack([ids, mask], dim=1)              # (n, 2, max_length)

    train = (encode(texts), ytr_all)
    test = (encode(test_texts), yte_given) if options.test_path else None
    xtr, ytr, xte, yte = _split(what, train, test, options, size)
    return Raw(xtr, ytr, xte, yte, k, vocab_size=tok.vocab_size)


# --------------------------------------------------------------------------- causal LM text

def _read_text(kind: str, path: Path) -> str:
    if not path.is_file():
        raise _missing(kind, path, "text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SwampError(f"{kind}:{path}: {path} is not UTF-8 text (byte {e.start}); save it "
                         f"as UTF-8") from None
    if not text.strip():
        raise SwampError(f"{kind}:{path}: {path} is empty; give a file of running text")
    return text


def blocks(ids: list[int] | torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping blocks of `block_size` tokens and their targets, the next token of each
    position: x[i] = ids[i*B : (i+1)*B], y[i] = ids[i*B+1 : (i+1)*B+1]."""
    t = torch.as_tensor(ids, dtype=torch.int64)
    n = (len(t) - 1) // block_size
    x = t[:n * block_size].view(n, block_size)
    y = t[1:n * block_size + 1].view(n, block_size)
    return x.clone(), y.clone()


def _load_lm(kind: str, path: Path, options: FileOptions, size: int | None,
             augment: bool) -> Raw:
    what = f"{kind}:{path}"
    if options.block_size < 1:
        raise SwampError(f"`block_size` must be at least 1 (got {options.block_size})")
    tok = _tokenizer(what, options)

    def tokens(p: Path) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(tok.encode_plain(_read_text(kind, p)), dtype=torch.int64)
        _check_ids(what, ids, tok)
        if len(ids) < options.block_size + 1:
            raise SwampError(f"{kind}:{p}: {p} gives {len(ids)} tokens, fewer than one block "
                             f"and its targets ({options.block_size + 1}); use a smaller "
                             f"`block_size` or a longer file")
        return blocks(ids, options.block_size)

    train = tokens(path)
    test = tokens(Path(options.test_path).expanduser()) if options.test_path else None
    if test is None:   # the file's last blocks are the test text (no shuffle: no overlap)
        n = len(train[1])
        if n < 2:
            raise SwampError(f"{what}: {path} gives one block of {options.block_size} "
                             f"tokens; a run needs 2 or more (a smaller `block_size`), or a "
                             f"test file in `test_path`")
        n_test = min(max(int(round(options.test_fraction * n)), 1), n - 1)
        test = (train[0][n - n_test:], train[1][n - n_test:])
        train = (train[0][:n - n_test], train[1][:n - n_test])
    xtr, ytr = _keep(what, *train, size)
    return Raw(xtr, ytr, test[0], test[1], tok.vocab_size, task="lm",
               vocab_size=tok.vocab_size)


LOADERS: dict[str, Callable[..., Raw]] = {"imagefolder": _load_images, "csv": _load_table,
                                          "jsonl": _load_table, "text": _load_lm}
