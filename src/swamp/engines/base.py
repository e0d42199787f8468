"""The engine interface shared by every way of running particles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch
from torch import nn

from swamp.config import TrainSettings
from swamp.data import DataBundle
from swamp.core.masks import Mask
from swamp.training import ParticleResult, Schedule

StateDict = dict[str, torch.Tensor]
# progress(particle_index, iteration) is called as training goes: the schedule iteration the
# particle has reached (task.start_step .. schedule.total)
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ParticleJob:
    """One particle of a level: its own data order and augmentation randomness."""

    level: int
    index: int
    order_seed: int
    augment_seed: int
    subset: torch.Tensor | None = None   # train only on these training indices (e.g. COLT)


@dataclass
class LevelTask:
    """What all particles of a level share."""

    level: int
    start_state: StateDict       # the ticket: rewind weights (or previous solution) * mask
    mask: Mask
    start_step: int              # schedule iteration the particles start from (T0)
    jobs: list[ParticleJob] = field(default_factory=list)
    # Called with (job, result) as soon as a particle is trained, by engines that finish
    # particles one at a time (the level loop saves it, so a stop loses no finished particle).
    on_particle_done: Optional[Callable[[ParticleJob, ParticleResult], None]] = None
    # Particles of the whole level when `jobs` holds only those left after a stop (0: all
    # are in `jobs`); engines that choose how to train decide by the whole level.
    level_particles: int = 0

    @property
    def particles(self) -> int:
        return self.level_particles or len(self.jobs)


@dataclass
class TrainContext:
    """Everything about training that does not change between levels."""

    model: nn.Module             # a module on the training device, used as a template
    data: DataBundle
    schedule: Schedule
    settings: TrainSettings

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device


class Engine(Protocol):
    """Trains the particles of one level.

    `train_particles` returns one result per job, in job order: the particle's solution
    (its SWA average if it kept one), the number of SWA snapshots and its last epoch's loss.
    Optional members the level loop uses when present: `description` (one line for the
    console), `is_worker` (True on distributed ranks > 0, which call `serve(ctx)` instead of
    running the loop) and `close(rows)` (called once when the run ends).
    """

    name: str

    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        ...
