"""Building what a run needs from its settings: the data, the model, the training context.

Shared by the level loop, by serving ranks (which train without a level loop) and by the
read-only tools (post-hoc commands, report, export), which need a run's model and data but
no training machinery.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from swamp.config import Settings
from swamp.core.seeds import derive_seed
from swamp.data import DataBundle, FileOptions, is_file_dataset, is_streamed, load_dataset
from swamp.engines.base import TrainContext
from swamp.errors import SwampError
from swamp.methods import get_method
from swamp.generative import MMDObjective, bandwidths_for, is_generative
from swamp.models import build_model
from swamp.train import CrossEntropy, Objective, Schedule
from swamp.train.lm import TokenCrossEntropy


def prepare_data(settings: Settings, data: DataBundle | None = None,
                 device: torch.device | str = "cpu") -> DataBundle:
    """The run's data on `device`: `data` if given (Python API), else the registered dataset
    named by the settings, with the validation split seeded by the run seed."""
    s = settings
    if data is None:
        data = load_dataset(s.data.dataset, data_dir=s.data.data_dir,
                            val_fraction=s.data.val_fraction, split_seed=s.run.seed,
                            size=s.data.data_size, augment=s.data.augment,
                            file_options=file_options(s))
    return data.to(device)


def file_options(settings: Settings) -> FileOptions | None:
    """The settings of a dataset read from the user's files (data/files.py); a model given
    as hf:DIR lends its tokenizer when `tokenizer` is not set."""
    if is_streamed(settings.data.dataset):       # imagenet, tiny-imagenet (issue 14)
        return FileOptions.from_settings(settings.data)
    if not is_file_dataset(settings.data.dataset):
        return None
    model = settings.model.model
    tokenizer = settings.data.tokenizer or (model if model.startswith("hf:") else None)
    return FileOptions.from_settings(settings.data, tokenizer=tokenizer)


def prepare_model(settings: Settings, data: DataBundle, model: nn.Module | None = None,
                  device: torch.device | str = "cpu", pretrained: bool = True) -> nn.Module:
    """The run's model on `device`: a copy of `model` if given, else the registered model
    initialised from the run seed (and loaded with `weights` unless `pretrained` is False:
    a reader of a finished run loads the run's own weight files instead)."""
    if model is None:
        torch.manual_seed(derive_seed(settings.run.seed, "init"))
        m = settings.model
        model = build_model(m.model, data.input_shape, data.num_classes,
                            vocab_size=data.vocab_size, hidden=tuple(m.hidden),
                            residual=m.residual, channels=tuple(m.channels))
        if settings.model.weights and pretrained:   # issue 12: pretrained weights
            from swamp.models.sources import load_weights

            load_weights(model, settings.model.weights)
    else:
        model = copy.deepcopy(model)
    return model.to(device)


def build_context(settings: Settings, *, model: nn.Module | None = None,
                  data: DataBundle | None = None, device: torch.device | str = "cpu",
                  objective: Objective | None = None) -> TrainContext:
    """Everything training needs that does not change between levels: data and model on
    `device` (the model in the memory format that trains fastest there), the schedule and
    the objective. `settings` must be resolved (method defaults filled in)."""
    from swamp.engines import prepare

    data = prepare_data(settings, data, device)
    check_data(data)
    bn_augment(settings, data)          # refused before anything is written
    model = prepare_model(settings, data, model, device)
    check_model_fits(model, data)
    train = settings.train
    if get_method(settings.method.method).scores is not None:
        # slt trains no weights, so it has no rewind point (issue 16)
        train = dataclasses.replace(train, rewind_epochs=0.0, rewind_iters=0)
    schedule = Schedule.build(train, len(data.train), bool(settings.method.swa))
    if objective is None and is_generative(model):   # a generator (issue 16): moment matching
        objective = MMDObjective(bandwidths_for(data.train.x))
    task_loss = objective or (TokenCrossEntropy() if data.task == "lm" else CrossEntropy())
    objective = distill_objective(settings, model, task_loss)
    ctx = TrainContext(model, data, schedule, settings.train, objective)
    prepare(ctx)
    ctx.initial_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    return ctx
def distill_objective(settings: Settings, model: nn.Module, task: Objective) -> Objective:
    """`task`, or with `distill` set, the task loss plus distillation (issue 12): the layers
    SquareHead matches are the modules `distill_layers` names (fnmatch patterns), else the
    default of `train.objective.default_distill_layers`; the choice is refused early if a
    pattern matches no module."""
    import fnmatch

    from swamp.core.masks import select_prunable
    from swamp.train.objective import Distill, default_distill_layers

    t = settings.train
    if t.distill == "none":
        return task
    layers: tuple[str, ...] = ()
    if t.distill == "squarehead":
        names = [n for n, _ in model.named_modules() if n]
        if t.distill_layers:
            for pattern in t.distill_layers:
                if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                    raise SwampError(f"`distill_layers` pattern {pattern!r} matches no module "
                                     f"of the model; see model.named_modules()")
            layers = tuple(n for n in names
                           if any(fnmatch.fnmatchcase(n, p) for p in t.distill_layers))
        else:
            prunable = select_prunable(model, settings.prune.include, settings.prune.exclude)
            layers = default_distill_layers(model, prunable)
        if not layers:
            raise SwampError("`distill` squarehead found no layers to match in this model; "
                             "name them with `distill_layers`")
    return Distill(t.distill, task=task, task_weight=t.task_weight,
                   distill_weight=t.distill_weight, temperature=t.kd_temperature,
                   layers=layers)


def resolve_device(name: str) -> torch.device:
    """The torch device the `device` setting names (auto: cuda, then mps, then cpu)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SwampError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SwampError(f"device '{name}' was asked for but CUDA is not available here; "
                         f"use `device` cpu")
    return device


def bn_augment(settings: Settings, data: DataBundle):
    """The augmentation BatchNorm statistics are recomputed through (`bn_augment`), or None
    for the un-augmented training data."""
    if not settings.train.bn_augment:
        return None
    if data.augment is None:
        raise SwampError(f"`bn_augment` recomputes BatchNorm through the training "
                         f"augmentation, and {data.name} has none here (or `augment` is "
                         f"off); drop `bn_augment`")
    return data.augment


def check_data(data: DataBundle) -> None:
    """Refuse data a run cannot learn from or score, before anything is written: NaN or
    infinite inputs (they give nan metrics to the end of the run)."""
    for name, split in (("training", data.train), ("validation", data.val),
                        ("test", data.test)):
        # images streamed from files are decoded 8-bit pixels (finite): nothing to scan
        if len(split) and isinstance(split.x, torch.Tensor) and split.x.is_floating_point():
            bad = ~torch.isfinite(split.x.flatten(1)).all(1)
            if bool(bad.any()):
                first = int(bad.nonzero()[0])
                raise SwampError(f"the {name} split of {data.name} holds NaN or infinite "
                                 f"inputs ({int(bad.sum())} examples, the first at index "
                                 f"{first}); clean or drop them")


def check_model_fits(model: nn.Module, data: DataBundle) -> None:
    """Run the model on two training inputs: its output must be one score per class (per
    position, for language-model data). A model that cannot take the data, or has another
    number of outputs than the data has classes, is one line before anything is written
    (not an error levels later)."""
    x = data.train.x[:2]
    positions = tuple(int(d) for d in data.train.y.shape[1:])    # () for classification
    was_training = model.training
    model.eval()                       # no BatchNorm statistics move
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # any error of the user's forward: report it in one line
        text = str(exc).strip().splitlines()
        raise SwampError(f"the model cannot take the data's inputs (shape "
                         f"{tuple(x.shape[1:])}): {type(exc).__name__}: "
                         f"{text[0] if text else ''}"[:300]) from None
    finally:
        model.train(was_training)
    if is_generative(model):         # a generator: samples of the data's shape
        if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != tuple(x.shape[1:]):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SwampError(f"the generator gives samples of shape {shape} for a batch of 2, "
                             f"but the data's inputs have shape {tuple(x.shape[1:])}")
        return
    wanted = (len(x), *positions, data.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != wanted:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = (f"a vocabulary of {data.num_classes} tokens" if data.task == "lm"
                else f"{data.num_classes} classes")
        raise SwampError(f"the model gives outputs of shape {shape} for a batch of 2, but "
                         f"the data has {what}: it must give "
                         f"({', '.join(['batch', *map(str, positions), str(data.num_classes)])}) "
                         f"scores")
