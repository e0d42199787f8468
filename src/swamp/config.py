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
                                    "default: $SWAMP_DATA_DIR")
    data_size: int | None = _setting(None, "number of samples for generated datasets "
                                     "(mnist1d: 10000, synthetic: 512)")
    val_fraction: float = _setting(0.1, "fraction of the training data held out for validation "
                                   "(selection never uses the test split)")
    augment: bool = _setting(True, "use the dataset's training augmentation, if it has one")


@dataclass
class ModelSettings:
    model: str | None = _setting(None, "model name (see `swamp list`; default: the dataset's: "
                                 "conv1d for mnist1d, mlp for digits and MNIST, resnet20 for "
                                 "CIFAR)")


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
                             "and 75%% of training) | constant")
    # Rewinding to initialisation leaves particles of one ticket in different basins on
    # MNIST-1D (a 2.35-point barrier between two particles); one epoch in, they average well.
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
    rewind_optimizer: bool = _setting(False, "also restore the optimiser state (momentum) "
                                      "saved at the rewind point; by default every particle "
                                      "starts with zero momentum, as in OpenLTH")
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
    scope: str = _setting("global", "ranking scope: global | layerwise")
    include: list[str] = _setting([], "name patterns of prunable tensors (default: conv and "
                                  "linear weights)")
    exclude: list[str] = _setting([], "name patterns excluded from pruning")


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
                                 "of an earlier run in the same folder whose settings they "
                                 "depend on are equal (checked by checksums; --no-share-dense "
                                 "trains them anew)")


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
        if inputs:
            changed["inputs"] = inputs
        blob = json.dumps(changed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_name(self, inputs: dict[str, str] | None = None) -> str:
        return f"{self.method.method}-{self.run_hash(inputs)}"


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
    elif kind.startswith("list"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # pragma: no cover - a new field type must be added above
        raise TypeError(f"unsupported settings type {kind}")
    if not ok:
        raise SwampError(f"{source}: setting '{name}' expects {kind}, got {value!r}")
    return value


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
         and t.rewind_epochs != 1.0,     # the default adapts to short runs (train/schedule.py)
         f"`rewind_epochs` {t.rewind_epochs} is not before the end of training "
         f"(`epochs` {t.epochs})"),
        (t.optimizer not in ("sgd", "adam"), f"unknown optimizer '{t.optimizer}'; use sgd or adam"),
        (t.schedule not in ("cosine", "step", "constant"),
         f"unknown schedule '{t.schedule}'; use cosine, step or constant"),
        (p.scorer not in ("magnitude", "lamp", "random"),
         f"unknown scorer '{p.scorer}'; use magnitude, lamp or random"),
        (p.scope not in ("global", "layerwise"),
         f"unknown scope '{p.scope}'; use global or layerwise"),
        (not 0.0 <= s.data.val_fraction < 1.0,
         f"`val_fraction` must be in [0, 1) (got {s.data.val_fraction})"),
        (s.data.data_size is not None and s.data.data_size < 10,
         f"`data_size` must be at least 10 (got {s.data.data_size})"),
        (s.run.engine not in ENGINES,
         f"unknown engine '{s.run.engine}'; use one of: {', '.join(ENGINES)}"),
        (s.run.processes < 0, f"`processes` must be 0 (auto) or more (got {s.run.processes})"),
        *_limits(s),
        (s.run.threads < 0, f"`threads` must be 0 (auto) or more (got {s.run.threads})"),
        (s.run.processes > 1 and s.run.engine in ("sequential", "vectorised"),
         f"`processes` {s.run.processes} trains in several processes; use `engine` "
         f"distributed or auto, not {s.run.engine}"),
    ]
    for bad, message in checks:
        if bad:
            raise SwampError(message)
    method.check(s)


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
