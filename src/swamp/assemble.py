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
from swamp.data import DataBundle, load_dataset
from swamp.engines.base import TrainContext
from swamp.errors import SwampError
from swamp.methods import get_method
from swamp.generative import MMDObjective, bandwidths_for, is_generative
from swamp.models import build_model
from swamp.train import CrossEntropy, Objective, Schedule


def prepare_data(settings: Settings, data: DataBundle | None = None,
                 device: torch.device | str = "cpu") -> DataBundle:
    """The run's data on `device`: `data` if given (Python API), else the registered dataset
    named by the settings, with the validation split seeded by the run seed."""
    s = settings
    if data is None:
        data = load_dataset(s.data.dataset, data_dir=s.data.data_dir,
                            val_fraction=s.data.val_fraction, split_seed=s.run.seed,
                            size=s.data.data_size, augment=s.data.augment)
    return data.to(device)


def prepare_model(settings: Settings, data: DataBundle, model: nn.Module | None = None,
                  device: torch.device | str = "cpu") -> nn.Module:
    """The run's model on `device`: a copy of `model` if given, else the registered model
    initialised from the run seed."""
    if model is None:
        torch.manual_seed(derive_seed(settings.run.seed, "init"))
        model = build_model(settings.model.model, data.input_shape, data.num_classes)
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
    model = prepare_model(settings, data, model, device)
    check_model_fits(model, data)
    train = settings.train
    if get_method(settings.method.method).scores is not None:
        # slt trains no weights, so it has no rewind point (issue 16)
        train = dataclasses.replace(train, rewind_epochs=0.0, rewind_iters=0)
    schedule = Schedule.build(train, len(data.train), bool(settings.method.swa))
    if objective is None and is_generative(model):   # a generator (issue 16): moment matching
        objective = MMDObjective(bandwidths_for(data.train.x))
    ctx = TrainContext(model, data, schedule, settings.train, objective or CrossEntropy())
    prepare(ctx)
    ctx.initial_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    return ctx
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


def check_data(data: DataBundle) -> None:
    """Refuse data a run cannot learn from or score, before anything is written: NaN or
    infinite inputs (they give nan metrics to the end of the run)."""
    for name, split in (("training", data.train), ("validation", data.val),
                        ("test", data.test)):
        if len(split) and split.x.is_floating_point():
            bad = ~torch.isfinite(split.x.flatten(1)).all(1)
            if bool(bad.any()):
                first = int(bad.nonzero()[0])
                raise SwampError(f"the {name} split of {data.name} holds NaN or infinite "
                                 f"inputs ({int(bad.sum())} examples, the first at index "
                                 f"{first}); clean or drop them")


def check_model_fits(model: nn.Module, data: DataBundle) -> None:
    """Run the model on two training inputs: its output must be one score per class. A
    model that cannot take the data, or has another number of outputs than the data has
    classes, is one line before anything is written (not an error levels later)."""
    x = data.train.x[:2]
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
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SwampError(f"the model gives outputs of shape {shape} for a batch of 2, but "
                         f"the data has {data.num_classes} classes: it must give "
                         f"(batch, {data.num_classes}) scores")
