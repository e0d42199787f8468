"""How the particles of one level are trained.

An engine receives one `LevelTask` (the ticket every particle starts from, the mask and one
`ParticleJob` per particle) and returns one `ParticleResult` per job, in job order. Engines
differ only in how they schedule the work; all train through the same step loop
(`swamp.train.fit`, via `engines.base.train_group`); `sequential` is the reference the
others are tested against:

- `sequential`: one particle after another in this process.
- `vectorised`: all particles stacked in one forward/backward (torch.func + vmap).
- `distributed`: particles spread over processes (torchrun, or `--processes K`).
- `auto` (default): the fastest of these for the device and model; says which it chose.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from swamp import cpu, world
from swamp.config import Settings
from swamp.engines.base import Engine, LevelTask, ParticleJob, TrainContext
from swamp.engines.sequential import SequentialEngine
from swamp.engines.vectorised import VectorisedEngine
from swamp.errors import SwampError

__all__ = ["Engine", "LevelTask", "ParticleJob", "TrainContext", "SequentialEngine",
           "VectorisedEngine", "ENGINE_NAMES", "make_engine", "engine_device", "prepare"]

ENGINE_NAMES = ("auto", "sequential", "vectorised", "distributed")


def engine_device(name: str, device: torch.device) -> torch.device:
    """The device this process trains on: under torchrun, `cuda` is cuda:LOCAL_RANK."""
    if world.launched() and name in ("auto", "distributed"):
        return world.rank_device(device)
    return device


def prepare(ctx: TrainContext) -> None:
    """Per-device preparation of the model template (channels_last for 2-D convs on CPU)."""
    if cpu.wants_channels_last(ctx.model, ctx.model_device):
        cpu.use_channels_last(ctx.model)


def make_engine(name: str, ctx: TrainContext | None = None, settings: Settings | None = None,
                info: Callable[[str], None] | None = None,
                recorded: dict[str, dict] | None = None,
                particles: Sequence[int] = ()) -> Engine:
    """The engine called `name` for this run (`ctx` and `settings` of the level loop).

    `recorded`: the choices `auto` made in an earlier invocation of the same run (see
    `AutoEngine`), followed unless processes or threads are now given explicitly.
    `particles`: the number of particles of each level still to train; with it and `ctx`,
    `auto` decides (and starts processes) at once.
    """
    settings = settings or Settings()
    run = settings.run
    info = info or (lambda message: None)
    if name not in ENGINE_NAMES:
        raise SwampError(f"unknown engine '{name}'; use one of: {', '.join(ENGINE_NAMES)}")
    world.check_not_bootstrapping()
    if world.launched():
        if name not in ("auto", "distributed"):
            raise SwampError(f"this process is one of {world.local_world()}+ ranks "
                             f"started by torchrun, but `engine` is {name}; use the "
                             f"distributed (or auto) engine")
        if run.processes > 1:
            raise SwampError("`processes` starts ranks itself; do not combine it with "
                             "torchrun")
        if ctx is None:
            raise SwampError("the distributed engine needs the training context")
        return join_torchrun(ctx, run.threads, info)
    if run.processes > 1 and name in ("sequential", "vectorised"):
        raise SwampError(f"`processes` {run.processes} needs the distributed or auto engine "
                         f"(got `engine` {name})")
    if name == "sequential":
        return SequentialEngine(run.threads, info)
    if name == "vectorised":
        return VectorisedEngine(info, run.threads)
    from swamp.engines.auto import AutoEngine

    if run.processes or run.threads:
        recorded = None                       # explicit choices win over the record
    return AutoEngine(settings, info, requested=name, recorded=recorded,
                      ctx=ctx if particles else None, particles=particles)


def join_torchrun(ctx: TrainContext, threads: int = 0,
                  info: Callable[[str], None] | None = None) -> Engine:
    """This rank's engine in a torchrun launch (rank 0 trains; the others `serve`)."""
    from swamp.engines.processes import DistributedEngine

    threads = threads or max(1, cpu.usable_cores() // world.local_world())
    if ctx.model_device.type == "cpu":
        torch.set_num_threads(threads)
    return DistributedEngine(world.join_from_env(ctx.model_device), threads=threads, info=info)
