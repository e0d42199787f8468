"""Typed settings for a run: dataclasses, file loading, validation and the run hash.

Every setting lives in one section dataclass; field names are unique across sections so that
each one is also a command-line flag (`train.lr` <-> `--lr`). Settings files (TOML, YAML or
JSON) may use sections (`[train] lr = 0.1`) or flat keys (`lr = 0.1`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from swamp.errors import SwampError, did_you_mean
from swamp.methods import get_method


def _setting(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataSettings:
    dataset: str = _setting("mnist1d", "dataset name (see `swamp list`)")
    data_dir: str | None = _setting(None, "directory holding the dataset files (CIFAR, MNIST); "
                                    "default: $SWAMP_DATA_DIR (KIND:PATH datasets: the "
                                    "folder relative paths start from; default: here)")
    data_size: int | None = _setting(None, "number of samples for generated datasets "
                                     "(mnist1d: 10000, synthetic: 512)")
    val_fraction: float = _setting(0.1, "fraction of the training data held out for validation "
                                   "(selection never uses the test split)")
    augment: bool = _setting(True, "use the dataset's training augmentation, if it has one")
    # ---- datasets from the user's files (issue 12; data/files.py): `dataset` imagefolder:DIR,
    # csv:FILE, jsonl:FILE (text classification) or text:FILE (causal language modelling)
    test_path: str | None = _setting(None, "file datasets: the test split's own folder or file "
                                     "(default: DIR/test or DIR/val next to DIR/train, else "
                                     "a fixed `test_fraction` of the data)")
    test_fraction: float = _setting(0.2, "file datasets without `test_path`: the share held "
                                    "out as the test split (fixed, seed 0)")
    image_size: int | None = _setting(None, "imagefolder: resize every image to SIZE x SIZE "
                                      "(default: keep the size; all images must share it)")
    image_mode: str = _setting("RGB", "imagefolder: RGB (3 channels) | L (grey, 1 channel)")
    image_normalize: str = _setting("train", "imagefolder: per-channel normalisation: train "
                                    "(statistics of the training pixels) | imagenet | none")
    text_column: str = _setting("text", "csv/jsonl: the column of the text")
    label_column: str = _setting("label", "csv/jsonl: the column of the label (integers are "
                                 "class indices; other values are class names)")
    tokenizer: str | None = _setting(None, "csv/jsonl/text: a local tokenizer: a "
                                     "tokenizer.json file or hf:DIR (default: the model's, "
                                     "for a model hf:DIR)")
    max_length: int = _setting(128, "csv/jsonl: tokens per example (truncated or padded)")
    block_size: int = _setting(128, "text: tokens per training block")
    # ---- streamed image folders (issue 14; data/stream.py): imagenet, tiny-imagenet
    workers: int = _setting(0, "imagenet/tiny-imagenet: DataLoader worker processes that "
                            "decode images (0: decode in the training process); changes "
                            "no result")


@dataclass
class ModelSettings:
    model: str | None = _setting(None, "model name (see `swamp list`; default: the dataset's: "
                                 "conv1d for mnist1d, mlp for digits and MNIST, resnet20 for "
                                 "CIFAR)")
    # Model size (issue 14): empty / off keeps each model's built-in size, so the run hash of
    # every existing run is unchanged.
    hidden: list[int] = _setting([], "mlp: widths of the hidden layers, e.g. 500,500 "
                                 "(default: 256,256)")
    residual: bool = _setting(False, "mlp: add a skip connection around every hidden layer "
                              "whose input and output widths match")
    channels: list[int] = _setting([], "conv1d: channels of the convolutions, e.g. 32,64,64 "
                                   "(default: 32,32,32; strides 1, then 2)")
    # model sources (issue 12): pretrained weights for any model (timm:NAME,
    # torchvision:NAME, hf:DIR or a built-in name as `model`)
    weights: str | None = _setting(None, "weights file loaded into the model before training "
                                   "(safetensors, or a torch state dict read with "
                                   "weights_only=True); default: the model's initialisation")


@dataclass
class TrainSettings:
    epochs: int = _setting(20, "training epochs per level (from initialisation, including the "
                           "rewind segment)")
    batch_size: int = _setting(128, "mini-batch size")
    optimizer: str = _setting("sgd", "optimiser: sgd | adam")
    lr: float = _setting(0.1, "peak learning rate")
    momentum: float = _setting(0.9, "SGD momentum (Adam: beta1)")
    weight_decay: float = _setting(5e-4, "L2 weight decay")
    schedule: str = _setting("cosine", "learning-rate schedule: cosine | step (lr / 10 at 50%% "
                             "and 75%% of training) | linear (decay to 0 after the warm-up; "
                             "Sparse Model Soups) | constant")
    warmup: float = _setting(0.0, "fraction of training over which the lr rises linearly to "
                             "the schedule's value (0: no warm-up)")
    # Rewinding to initialisation leaves particles of one ticket in different basins on
    # MNIST-1D (a 2.50-point barrier between two particles); one epoch in, they average well.
    rewind_epochs: float = _setting(1.0, "rewind point in epochs; 0 rewinds to initialisation")
    rewind_iters: int = _setting(0, "rewind point in iterations; when > 0 it replaces "
                                 "--rewind-epochs")
    swa_start: float = _setting(0.75, "fraction of training after which SWA averages weights "
                                "(0 <= value < 1)")
    swa_lr: float | None = _setting(None, "constant learning rate during SWA "
                                    "(default: lr / 2); before it the schedule anneals to it")
    swa_freq: int = _setting(0, "iterations between SWA updates; 0 = at the end of every epoch")
    precision: str = _setting("fp32", "arithmetic of the forward pass: fp32 | bf16 | fp16 "
                              "(autocast; fp16 with a gradient scaler); weights stay fp32")
    clip_grad_norm: float | None = _setting(None, "clip each particle's gradient norm to this "
                                            "value before every step (default: no clipping)")
    bn_augment: bool = _setting(False, "recompute BatchNorm statistics of every average "
                                "through the training augmentation, as the SWA reference "
                                "does (default: on the un-augmented training data)")
    rewind_optimizer: bool = _setting(False, "also restore the optimiser state (momentum) "
                                      "saved at the rewind point; by default every particle "
                                      "starts with zero momentum, as in OpenLTH")
    # ---- distillation against the dense starting model (issue 12) ----
    distill: str = _setting("none", "distillation loss added to the task loss: none | "
                            "squarehead (normalised per-layer feature MSE) | kd (KL of the "
                            "logits at --kd-temperature)")
    distill_weight: float = _setting(1.0, "weight of the distillation loss")
    task_weight: float = _setting(1.0, "weight of the task loss when distilling")
    kd_temperature: float = _setting(2.0, "temperature T of --distill kd (the loss is "
                                     "scaled by T^2)")
    distill_layers: list[str] = _setting([], "module name patterns whose outputs squarehead "
                                         "matches (default: the blocks of the model's "
                                         "largest ModuleList, else every prunable layer "
                                         "but the head)")
    teacher: str = _setting("dense", "the frozen teacher: dense (the level-0 solution; "
                            "level 0 trains on the task loss alone) | init (the weights the "
                            "run starts from, e.g. a pretrained model)")
    # issue 14: a training budget in iterations beside whole epochs
    steps: int | None = _setting(None, "training iterations per level (from initialisation, "
                                 "including the rewind segment); when given it replaces "
                                 "--epochs (default: --epochs x iterations per epoch)")


@dataclass
class PruneSettings:
    levels: int = _setting(14, "number of pruning levels after the dense level 0 "
                           "(density after the last one: (1 - prune_fraction)^levels)")
    prune_fraction: float = _setting(0.2, "fraction of the remaining weights removed per level")
    scorer: str = _setting("magnitude", "pruning score: magnitude | lamp | random")
    scope: str = _setting("global", "ranking scope: global | layerwise | nm (N:M groups, "
                          "with --nm)")
    include: list[str] = _setting([], "name patterns of prunable tensors (default: conv and "
                                  "linear weights)")
    exclude: list[str] = _setting([], "name patterns excluded from pruning")
    # structured sparsity (issue 13; swamp.core.patterns)
    nm: str | None = _setting(None, "N:M sparsity with --scope nm, e.g. 2:4: every M "
                              "consecutive weights along the input dimension keep exactly "
                              "N at the last level (default: unset)")
    block: str | None = _setting(None, "block sparsity RxC, e.g. 4x4: whole tiles of the weight "
                                 "matrix pruned, ranked by tile norm, counted in tiles "
                                 "(default: unset)")
    # ---- gradual pruning within a level, and ticket transfer (issue 12) ----
    prune_schedule: str = _setting("levels", "levels (prune between levels, IMP) | gradual "
                                   "(each level >= 1 prunes while it trains, from its start "
                                   "mask to its density, along --ramp)")
    ramp: str = _setting("cubic", "sparsity ramp of gradual pruning: cubic (Zhu & Gupta) | "
                         "linear | harmonic (half cosine)")
    prune_start: int | None = _setting(None, "gradual: iteration the ramp starts at "
                                       "(default: the level's start, the rewind point)")
    prune_end: int | None = _setting(None, "gradual: iteration the ramp reaches the level's "
                                     "sparsity (default: the SWA start with SWA, else 3/4 "
                                     "of training)")
    prune_every: int = _setting(0, "gradual: iterations between pruning steps (0: a tenth "
                                "of the ramp)")
    mask_from: str | None = _setting(None, "RUN[:LEVEL]: start from the mask another run "
                                     "found (default level: its last); same architecture, "
                                     "a head of another size is re-initialised and kept "
                                     "dense")


@dataclass
class MethodSettings:
    method: str = _setting("swamp", "method (see `swamp list`)")
    particles: int | None = _setting(None, "particles per level (default: the method's)")
    swa: bool | None = _setting(None, "keep an SWA average inside each particle "
                                "(default: the method's)")
    soup: str = _setting("uniform", "how averaging methods combine a level's particles: uniform "
                         "(all) | greedy (add a particle only if validation accuracy does not "
                         "drop)")
    vote_share: float = _setting(0.5, "mask-vote: a weight survives if at least this share of "
                                 "particles keep it (1: intersection; 1/N: union)")
    swamp_plus_level: int | None = _setting(None, "swamp+: first level trained with all "
                                            "particles (one before it; default: half of "
                                            "--levels)")
    target_sparsity: float | None = _setting(None, "oneshot: one level pruned straight to "
                                             "this sparsity (default: every level's density "
                                             "of the schedule, each pruned from the dense "
                                             "solution)")
    # ---- strong lottery tickets (issue 16: method slt) ----
    slt_init: str = _setting("signed-constant", "slt: the frozen weights: signed-constant | "
                             "kaiming (edge-popup's, scaled by 1/sqrt(density)) | model (the "
                             "model's own initialisation)")
    slt_combine: str = _setting("average", "slt: how a level's score particles make its mask: "
                                "average (the mask of the mean score) | vote (the particles' "
                                "masks vote; a majority passes) | overlap (all must keep it); "
                                "exact counts either way")


@dataclass
class RunSettings:
    seed: int = _setting(0, "run seed: initialisation, data orders, validation split")
    device: str = _setting("auto", "torch device: auto | cpu | cuda | cuda:N | mps")
    out: str = _setting("runs", "directory that holds the run directories")
    engine: str = _setting("auto", "how particles are trained: auto | sequential | vectorised "
                           "| distributed (auto: the fastest here; it says which it chose)")
    processes: int = _setting(0, "processes on this machine that train particles "
                              "(0: --engine auto decides; K > 1: start K ranks, as "
                              "--engine distributed); for several machines use torchrun")
    threads: int = _setting(0, "torch threads per process (0: the cores this process may "
                            "use, divided among this machine's processes, at most torch's "
                            "current count or OMP_NUM_THREADS; fixed, not following the "
                            "load; on a busy machine try 1)")
    save_particles: bool = _setting(True, "save every particle's weights in the level folder")
    checkpoint_every: int = _setting(1000, "iterations between checkpoints of a particle in "
                                     "training (0: only on SIGINT/SIGTERM and when it "
                                     "finishes); a killed run resumes from the last one")
    # issue 14: dense work done once (swamp/dense_cache.py)
    share_dense: bool = _setting(True, "reuse the initial weights, rewind point and level 0 "
                                 "of a run in the same folder whose settings they depend on "
                                 "are equal (its files, checked by its checksums; level 0 "
                                 "needs its saved particles); --no-share-dense trains them "
                                 "anew")


SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "model": ModelSettings,
    "train": TrainSettings,
    "prune": PruneSettings,
    "method": MethodSettings,
    "run": RunSettings,
}

# Settings that do not change what a run computes; they stay out of the run hash.
UNHASHED = {"data_dir", "device", "out", "engine", "processes", "threads", "save_particles",
            "checkpoint_every"}
UNHASHED |= {"share_dense"}   # issue 14: whether dense work is shared changes no result
UNHASHED |= {"workers"}       # issue 14: how many processes decode images changes no result


@dataclass
class Settings:
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    run: RunSettings = field(default_factory=RunSettings)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings") -> "Settings":
        """Sectioned or flat mapping -> Settings; unknown keys are an error."""
        settings = cls()
        settings.update(values, source)
        return settings

    @classmethod
    def from_file(cls, path: str | Path) -> "Settings":
        return cls.from_dict(read_settings_file(path), str(path))

    def update(self, values: dict[str, Any], source: str = "settings") -> None:
        owners = field_owners()
        for key, value in values.items():
            key = key.replace("-", "_")
            if key in SECTIONS and isinstance(value, dict):
                section = getattr(self, key)
                for sub, v in value.items():
                    sub = sub.replace("-", "_")
                    if owners.get(sub) != key:
                        known = [n for n, sec in owners.items() if sec == key]
                        raise SwampError(f"{source}: unknown setting {key + '.' + sub!r};"
                                         f"{did_you_mean(sub, known, key + '.')} see "
                                         f"`swamp run --help` for the settings")
                    setattr(section, sub, _coerce(sub, v, section, source))
            elif key in owners:
                section = getattr(self, owners[key])
                setattr(section, key, _coerce(key, value, section, source))
            else:
                raise SwampError(f"{source}: unknown setting {key!r};"
                                 f"{did_you_mean(key, [*owners, *SECTIONS])} see "
                                 f"`swamp run --help` for the settings")

    # ---- views --------------------------------------------------------------------------
    def items(self) -> Iterator[tuple[str, str, Any]]:
        """(section, name, value) for every setting."""
        for section in SECTIONS:
            obj = getattr(self, section)
            for f in fields(obj):
                yield section, f.name, getattr(obj, f.name)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def resolved(self) -> "Settings":
        """A copy with the method's defaults filled in, validated."""
        out = dataclasses.replace(
            self, **{s: dataclasses.replace(getattr(self, s)) for s in SECTIONS})
        method = get_method(out.method.method)
        if out.model.model is None:   # the dataset's default model (issue 14)
            from swamp.data import default_model

            out.model.model = default_model(out.data.dataset)
        if out.method.particles is None:
            out.method.particles = method.particles
        if out.method.swa is None:
            out.method.swa = method.swa
        if out.method.swa and out.train.swa_lr is None:
            # Written out, so settings.json says which SWA learning rate a run used even if
            # this default changes (it did: lr / 20 -> lr / 2).
            out.train.swa_lr = out.train.lr / 2
        validate(out)
        return out

    def run_hash(self, inputs: dict[str, str] | None = None) -> str:
        """Stable hash of the settings that differ from the defaults (OpenLTH-style), and of
        the fingerprints of a model or data passed through the Python API (`inputs`)."""
        defaults = {(s, n): v for s, n, v in Settings().items()}
        # The model default became the dataset's; the default dataset's model (conv1d) stays
        # out of the hash as it did, so run names made before are found again.
        defaults[("model", "model")] = Settings().resolved().model.model
        changed: dict[str, Any] = {f"{s}.{n}": v for s, n, v in self.resolved().items()
                                   if n not in UNHASHED and v != defaults[(s, n)]}
        if self.model.weights:
            # The weights file is named by its content as well as its path: another file at
            # the same path is another starting point, so another run.
            inputs = {**(inputs or {}), "weights": weights_digest(self.model.weights)}
        if inputs:
            changed["inputs"] = inputs
        blob = json.dumps(changed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_name(self, inputs: dict[str, str] | None = None) -> str:
        return f"{self.method.method}-{self.run_hash(inputs)}"


_WEIGHT_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_digest(path: str) -> str:
    """SHA-256 (16 hex digits) of a weights file's bytes, cached by (path, size, mtime)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise SwampError(f"weights file {path} does not exist (`weights`); check the path")
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _WEIGHT_DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _WEIGHT_DIGESTS[key] = h.hexdigest()[:16]
    return _WEIGHT_DIGESTS[key]


def field_owners() -> dict[str, str]:
    """Setting name -> its section."""
    return {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)}


def _coerce(name: str, value: Any, section: Any, source: str) -> Any:
    """Check a file/flag value against the field's type; ints are accepted for floats."""
    kind = {f.name: f.type for f in fields(section)}[name]
    kind = str(kind)
    ok: bool
    if value is None:
        ok = "None" in kind
    elif kind.startswith("bool"):
        ok = isinstance(value, bool)
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind.startswith("str"):
        ok = isinstance(value, str)
    elif kind.startswith("list[int]"):
        if isinstance(value, str):
            parts = [v.strip() for v in value.split(",") if v.strip()]
            value = [int(v) for v in parts] if all(_is_int(v) for v in parts) else value
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                             for v in value)
    elif kind.startswith("list"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # pragma: no cover - a new field type must be added above
        raise TypeError(f"unsupported settings type {kind}")
    if not ok and name == "nm" and isinstance(value, int):    # structured sparsity (issue 13)
        raise SwampError(f"{source}: setting 'nm' is text such as \"2:4\"; quote it (YAML "
                         f"reads an unquoted 2:4 as the number {value})")
    if not ok:
        raise SwampError(f"{source}: setting '{name}' expects {kind}, got {value!r}")
    return value


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_settings_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SwampError(f"settings file {path} does not exist; check the path")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SwampError(f"settings file {path} is not UTF-8 text (byte {exc.start}); save it "
                         f"as UTF-8") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise SwampError(f"settings file {path}: unknown format '{path.suffix}'; "
                             f"use .toml, .yaml or .json")
    except SwampError:
        raise
    except Exception as exc:  # parser errors differ per format; report them in one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SwampError(f"settings file {path} could not be parsed: {msg}") from None
    if not isinstance(data, dict):
        raise SwampError(f"settings file {path} must hold a mapping of settings")
    return data


def validate(s: Settings) -> None:
    """Reject impossible settings with one line naming the setting and the fix."""
    t, p, m = s.train, s.prune, s.method
    for _, name, value in s.items():   # NaN passes every comparison below: refuse it first
        if isinstance(value, float) and not math.isfinite(value):
            raise SwampError(f"`{name}` must be a finite number (got {value})")
    method = get_method(m.method)
    checks = [
        (s.run.seed < 0, f"`seed` must be 0 or more (got {s.run.seed})"),
        (m.particles is not None and m.particles < 1,
         f"`particles` must be at least 1 (got {m.particles})"),
        (method.fixed_particles and m.particles != 1,
         f"method {method.name} trains one particle (got `particles` {m.particles}); "
         f"use `method` imp-wa or swamp for several"),
        (not 0.0 < p.prune_fraction < 1.0,
         f"`prune_fraction` must be in (0, 1) (got {p.prune_fraction})"),
        (p.levels < 0, f"`levels` must be 0 or more (got {p.levels})"),
        (t.epochs < 1, f"`epochs` must be at least 1 (got {t.epochs})"),
        (t.batch_size < 1, f"`batch_size` must be at least 1 (got {t.batch_size})"),
        (t.lr <= 0, f"`lr` must be positive (got {t.lr})"),
        (t.swa_lr is not None and t.swa_lr < 0, f"`swa_lr` must be >= 0 (got {t.swa_lr})"),
        (t.weight_decay < 0, f"`weight_decay` must be >= 0 (got {t.weight_decay})"),
        (not 0.0 <= t.momentum < 1.0, f"`momentum` must be in [0, 1) (got {t.momentum})"),
        (t.swa_start >= 1.0,
         f"`swa_start` {t.swa_start} starts SWA at or after the end of training; "
         f"use a fraction in [0, 1)"),
        (t.swa_start < 0, f"`swa_start` must be in [0, 1) (got {t.swa_start})"),
        (t.swa_freq < 0, f"`swa_freq` must be >= 0 (got {t.swa_freq})"),
        (t.precision not in ("fp32", "bf16", "fp16"),
         f"unknown `precision` '{t.precision}'; use fp32, bf16 or fp16"),
        (t.clip_grad_norm is not None and t.clip_grad_norm <= 0,
         f"`clip_grad_norm` must be positive (got {t.clip_grad_norm})"),
        (s.run.checkpoint_every < 0,
         f"`checkpoint_every` must be 0 or more (got {s.run.checkpoint_every})"),
        (t.rewind_epochs < 0 or t.rewind_iters < 0, "the rewind point must be >= 0"),
        (t.steps is not None and t.steps < 1, f"`steps` must be at least 1 (got {t.steps})"),
        (t.steps is None and t.rewind_iters == 0 and t.rewind_epochs >= t.epochs
         and t.rewind_epochs != 1.0      # the default adapts to short runs (train/schedule.py)
         and method.scores is None,           # slt trains no weights: no rewind point
         f"`rewind_epochs` {t.rewind_epochs} is not before the end of training "
         f"(`epochs` {t.epochs})"),
        (t.optimizer not in ("sgd", "adam"), f"unknown optimizer '{t.optimizer}'; use sgd or adam"),
        (t.schedule not in ("cosine", "step", "linear", "constant"),
         f"unknown schedule '{t.schedule}'; use cosine, step, linear or constant"),
        (not 0.0 <= t.warmup < 1.0, f"`warmup` must be in [0, 1) (got {t.warmup})"),
        (bool(s.method.swa) and t.warmup >= t.swa_start > 0,
         f"`warmup` {t.warmup} lasts into SWA (`swa_start` {t.swa_start}); use a shorter "
         f"warm-up"),
        (p.scorer not in ("magnitude", "lamp", "random"),
         f"unknown scorer '{p.scorer}'; use magnitude, lamp or random"),
        (p.scope not in ("global", "layerwise", "nm"),
         f"unknown scope '{p.scope}'; use global, layerwise or nm"),
        *_structured(s),
        (not 0.0 <= s.data.val_fraction < 1.0,
         f"`val_fraction` must be in [0, 1) (got {s.data.val_fraction})"),
        (s.data.data_size is not None and s.data.data_size < 10,
         f"`data_size` must be at least 10 (got {s.data.data_size})"),
        (s.run.engine not in ENGINES,
         f"unknown engine '{s.run.engine}'; use one of: {', '.join(ENGINES)}"),
        (s.run.processes < 0, f"`processes` must be 0 (auto) or more (got {s.run.processes})"),
        *_limits(s),
        (s.run.threads < 0, f"`threads` must be 0 (auto) or more (got {s.run.threads})"),
        *_model_size_checks(s.model),
        *_file_data_checks(s),
        (s.run.processes > 1 and s.run.engine in ("sequential", "vectorised"),
         f"`processes` {s.run.processes} trains in several processes; use `engine` "
         f"distributed or auto, not {s.run.engine}"),
    ]
    checks += _finetune_checks(s, method)
    for bad, message in checks:
        if bad:
            raise SwampError(message)
    method.check(s)


def _model_size_checks(m: ModelSettings) -> list[tuple[bool, str]]:
    name = m.model.lower()
    return [
        (bool(m.hidden) and name != "mlp",
         f"`hidden` sets the widths of model mlp, not {m.model}; for a wider ResNet use "
         f"wrn-D-K, or drop `hidden`"),
        (m.residual and name != "mlp",
         f"`residual` adds skip connections to model mlp, not {m.model}; drop `residual`"),
        (bool(m.channels) and name != "conv1d",
         f"`channels` sets the convolutions of model conv1d, not {m.model}; drop `channels`"),
        (any(w < 1 for w in [*m.hidden, *m.channels]),
         f"layer widths must be at least 1 (got `hidden` {m.hidden}, `channels` {m.channels})"),
        (any(w > 2**16 for w in [*m.hidden, *m.channels]),
         f"layer widths above {2**16:,} do not fit any machine's memory as dense layers "
         f"(got `hidden` {m.hidden}, `channels` {m.channels})"),
        (len(m.hidden) > 64, f"`hidden` has {len(m.hidden)} layers; use at most 64"),
        (len(m.channels) > 8,
         f"`channels` {m.channels}: conv1d halves the length at every layer after the first; "
         f"use at most 8 layers"),
    ]


def _file_data_checks(s: Settings) -> list[tuple[bool, str]]:
    """The settings of datasets from the user's files (issue 12)."""
    d = s.data
    return [
        (not 0.0 < d.test_fraction < 1.0,
         f"`test_fraction` must be in (0, 1) (got {d.test_fraction})"),
        (d.image_size is not None and d.image_size < 1,
         f"`image_size` must be at least 1 (got {d.image_size})"),
        (d.image_mode not in ("RGB", "L"), f"unknown `image_mode` '{d.image_mode}'; use RGB or L"),
        (d.image_normalize not in ("train", "imagenet", "none"),
         f"unknown `image_normalize` '{d.image_normalize}'; use train, imagenet or none"),
        (d.max_length < 1, f"`max_length` must be at least 1 (got {d.max_length})"),
        (d.block_size < 1, f"`block_size` must be at least 1 (got {d.block_size})"),
        # streamed image folders (issue 14)
        (d.workers < 0, f"`workers` must be 0 (decode in the training process) or more "
                        f"(got {d.workers})"),
    ]


def _finetune_checks(s: Settings, method: Any) -> list[tuple[bool, str]]:
    """Gradual pruning, distillation and ticket transfer (issue 12)."""
    t, p = s.train, s.prune
    gradual = p.prune_schedule == "gradual"
    # gradual pruning replaces "prune the solution between levels": methods with another
    # next-mask rule (mask combinations, random or one-shot masks) do not apply
    plain = type(method.next_mask).__name__ == "NextMask" and not method.next_mask.random
    return [
        (p.prune_schedule not in ("levels", "gradual"),
         f"unknown `prune_schedule` '{p.prune_schedule}'; use levels or gradual"),
        (p.ramp not in ("cubic", "linear", "harmonic"),
         f"unknown `ramp` '{p.ramp}'; use cubic, linear or harmonic"),
        (gradual and not plain,
         f"`prune_schedule` gradual prunes each level's own particles; method "
         f"{method.name} makes its masks otherwise (use imp, imp-swa, imp-wa, swamp, "
         f"swamp+ or sms)"),
        (gradual and (p.nm is not None or p.block is not None or p.scope == "nm"),
         "`prune_schedule` gradual keeps counts per tensor; N:M and block patterns "
         "(`nm`, `block`) prune between levels only: use `prune_schedule` levels"),
        (p.mask_from is not None and (p.nm is not None or p.block is not None),
         "`mask_from` starts from another run's unstructured mask; it does not combine with "
         "`nm` or `block`"),
        (gradual and p.scorer not in ("magnitude", "lamp"),
         "`prune_schedule` gradual prunes by weight scores; use `scorer` magnitude or lamp"),
        (not gradual and (p.prune_start is not None or p.prune_end is not None
                          or p.prune_every != 0 or p.ramp != "cubic"),
         "`ramp`, `prune_start`, `prune_end` and `prune_every` apply to `prune_schedule` "
         "gradual only"),
        (p.prune_start is not None and p.prune_start < 0,
         f"`prune_start` must be 0 or more (got {p.prune_start})"),
        (p.prune_every < 0, f"`prune_every` must be 0 or more (got {p.prune_every})"),
        (p.prune_start is not None and p.prune_end is not None
         and p.prune_end <= p.prune_start,
         f"`prune_end` {p.prune_end} must be after `prune_start` {p.prune_start}"),
        (p.mask_from is not None and not p.mask_from.strip(),
         "`mask_from` is empty; give RUN or RUN:LEVEL"),
        (t.distill not in ("none", "squarehead", "kd"),
         f"unknown `distill` '{t.distill}'; use none, squarehead or kd"),
        (t.teacher not in ("dense", "init"),
         f"unknown `teacher` '{t.teacher}'; use dense or init"),
        (t.distill_weight < 0 or t.task_weight < 0,
         "`distill_weight` and `task_weight` must be >= 0"),
        (t.distill != "none" and t.distill_weight == 0 and t.task_weight == 0,
         "`distill_weight` and `task_weight` are both 0: nothing to train on"),
        (t.kd_temperature <= 0, f"`kd_temperature` must be positive (got {t.kd_temperature})"),
        (t.distill == "none" and (t.distill_weight != 1.0 or t.task_weight != 1.0
                                  or t.kd_temperature != 2.0 or bool(t.distill_layers)
                                  or t.teacher != "dense"),
         "`distill_weight`, `task_weight`, `kd_temperature`, `distill_layers` and `teacher` "
         "apply to `distill` squarehead or kd only"),
        (t.distill == "kd" and bool(t.distill_layers),
         "`distill_layers` applies to `distill` squarehead only (kd compares the logits)"),
        (t.distill == "squarehead" and t.kd_temperature != 2.0,
         "`kd_temperature` applies to `distill` kd only"),
    ]


# Beyond these a run cannot work on any machine; refused at once instead of failing (or
# allocating for hours) later.
MAX_WEIGHTS = 10**12            # no model has more prunable weights
LIMITS = {"data_size": (10**8, "generated datasets are held in memory"),
          "batch_size": (10**7, "a batch is held in memory at once"),
          "particles": (1024, "each particle is a copy of the model trained in full"),
          "epochs": (10**6, "every level trains this many epochs"),
          "steps": (10**10, "every level trains this many iterations"),
          "threads": (4096, "more threads than any machine has cores"),
          "processes": (4096, "one process per core or GPU at most")}


def _limits(s: Settings) -> list[tuple[bool, str]]:
    values = {n: v for _, n, v in s.items()}
    out = [(isinstance(values[n], int) and values[n] > top,
            f"`{n}` {values[n]} is more than {top:,} ({why})")
           for n, (top, why) in LIMITS.items()]
    p = s.prune
    if 0 < p.prune_fraction < 1 and p.levels >= 0:
        left = math.log10(MAX_WEIGHTS) + p.levels * math.log10(1 - p.prune_fraction)
        out.append((left < 0, f"`levels` {p.levels} of `prune_fraction` {p.prune_fraction} "
                              f"keep less than one weight of any model (a density of "
                              f"{1 - p.prune_fraction:g}^{p.levels}); use fewer levels"))
    return out


ENGINES = ("auto", "sequential", "vectorised", "distributed")


# ---- structured sparsity (issue 13) ----------------------------------------------------------
def _structured(s: Settings) -> list[tuple[bool, str]]:
    """N:M and block patterns: the combinations that are refused (docs/structured.md)."""
    from swamp.core.patterns import nm_levels, parse_block, parse_nm

    p, target = s.prune, s.method.target_sparsity
    if p.block is not None:
        parse_block(p.block)                                  # its one-line error
        return [(p.scope == "nm", "`block` and `scope` nm are two patterns; use `scope` "
                                  "global or layerwise with `block`, or unset `block`")]
    if p.nm is None:
        return [(p.scope == "nm", "`scope` nm needs the pattern: `nm` N:M, e.g. `nm` 2:4")]
    nm = parse_nm(p.nm)
    if p.scope != "nm":
        return [(True, f"`nm` {nm} applies with `scope` nm (got `scope` {p.scope}); use "
                       f"`scope` nm")]
    reach = nm_levels(nm, p.prune_fraction) if 0 < p.prune_fraction < 1 else p.levels
    return [
        (p.scorer == "lamp", "`scorer` lamp ranks layers against each other; with `scope` nm "
                             "every group keeps the same count, so it equals magnitude; use "
                             "`scorer` magnitude"),
        (target is not None, f"`target_sparsity` does not apply with `scope` nm: {nm} fixes "
                             f"the sparsity at {1 - nm.n / nm.m:g}; unset `target_sparsity`"),
        (p.levels != reach, f"`scope` nm {nm} with `prune_fraction` {p.prune_fraction:g} "
                            f"reaches {nm} at level {reach}; use `levels` {reach} (got "
                            f"{p.levels})"),
    ]
