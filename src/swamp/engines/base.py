"""The engine interface, and the one way every engine trains a group of particles.

An engine is handed one `LevelTask` (the ticket every particle starts from, the mask, one
`ParticleJob` per particle) with the run's `TrainContext`, and returns one `ParticleResult`
per job, in job order. Every engine trains through `train_group`, which calls the one step
loop (`swamp.train.fit`) with a single module or with stacked copies: a feature of training
holds in every engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from swamp.config import TrainSettings
from swamp.core.digest import digest
from swamp.core.masks import Mask
from swamp.data import DataBundle
from swamp.train import CrossEntropy, Objective, ParticleResult, Schedule, TrainPlan, fit
from swamp.train.checkpoint import CheckpointFile

StateDict = dict[str, torch.Tensor]
# progress(particle_index, iteration): the schedule iteration the particle has reached
ProgressFn = Callable[[int, int], None]
Info = Callable[[str], None]


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
    mask: Mask | None
    start_step: int              # schedule iteration the particles start from (T0)
    jobs: list[ParticleJob] = field(default_factory=list)
    # where the particles' checkpoints go (the level's folder; None: no checkpoints) and
    # how many iterations apart (0: only on a stop and when a particle finishes)
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0
    # per-replica optimiser state to start from (`rewind_optimizer`), by parameter name
    optimizer_state: StateDict | None = None
    # issue 12: prune the mask gradually while training (a train.gradual.GradualStep), and
    # the weights of the frozen teacher a distillation objective compares with
    gradual: Any = None
    teacher_state: StateDict | None = None
    _digest: str | None = field(default=None, repr=False)

    def digest(self) -> str:
        """Fingerprint of the ticket: a checkpoint of another ticket is never resumed."""
        if self._digest is None:
            mask = dict(self.mask.items()) if self.mask is not None else {}
            self._digest = digest([self.level, self.start_step,
                                   *(p for k in sorted(self.start_state)
                                     for p in (k, self.start_state[k])),
                                   *(p for k in sorted(mask) for p in (k, mask[k])),
                                   *(p for k in sorted(self.optimizer_state or {})
                                     for p in (k, self.optimizer_state[k])),
                                   *([repr(self.gradual)] if self.gradual is not None else []),
                                   *(p for k in sorted(self.teacher_state or {})
                                     for p in (k, self.teacher_state[k]))])
        return self._digest


@dataclass
class TrainContext:
    """Everything about training that does not change between levels."""

    model: nn.Module             # a module on the training device, used as a template
    data: DataBundle
    schedule: Schedule
    settings: TrainSettings
    objective: Objective = field(default_factory=CrossEntropy)
    # the model's weights as built (its initialisation): engines train `model` in place, so a
    # context shared by several studies keeps where each must start
    initial_state: dict[str, torch.Tensor] | None = None

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device


class Engine(Protocol):
    """How the particles of a level are trained (sequential, vectorised, processes, auto)."""

    name: str

    @property
    def description(self) -> str:
        """One line for the console: what trains the particles, with how many threads."""
        ...

    @property
    def record(self) -> dict[str, Any]:
        """What a run records (engine.json) to train the same way when it is resumed."""
        ...

    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        """One result per job of `task`, in job order."""
        ...

    def close(self, rows: Sequence[dict[str, Any]] = ()) -> None:
        """Release what the engine holds (processes, groups) when the run ends; `rows` are
        the run's level rows, which serving ranks hand back to their caller."""
        ...


def label(job: ParticleJob) -> str:
    return f"level {job.level}, particle {job.index}"


def checkpoint_file(task: LevelTask, ctx: TrainContext, jobs: Sequence[ParticleJob]
                    ) -> CheckpointFile | None:
    """The checkpoint of these jobs of the task (one file per group trained together)."""
    if task.checkpoint_dir is None:
        return None
    ids = "-".join(str(j.index) for j in jobs)
    # the objective by its class: a default repr would name its memory address
    objective = f"{type(ctx.objective).__module__}.{type(ctx.objective).__qualname__}"
    fingerprint = digest([task.digest(), ctx.schedule, ctx.settings, objective,
                          *(p for j in jobs for p in (j.index, j.order_seed, j.augment_seed,
                                                      "all" if j.subset is None else j.subset))])
    return CheckpointFile(task.checkpoint_dir / f"checkpoint_{ids}.safetensors", fingerprint,
                          task.checkpoint_every)


def train_group(replicas: Any, task: LevelTask, ctx: TrainContext,
                jobs: Sequence[ParticleJob], progress: ProgressFn | None = None,
                info: Info | None = None) -> list[ParticleResult]:
    """Train `jobs` of `task` together as `replicas` (one module for one job, or stacked
    copies), resuming from their checkpoint if one exists."""
    s = ctx.settings
    objective = ctx.objective
    if task.teacher_state is not None and hasattr(objective, "with_teacher"):
        objective = objective.with_teacher(ctx.model, task.teacher_state)
    plan = TrainPlan(ctx.data.train, ctx.schedule, s, task.start_step, ctx.schedule.total,
                     order_seeds=[j.order_seed for j in jobs],
                     augment_seeds=[j.augment_seed for j in jobs],
                     subsets=[j.subset for j in jobs], labels=[label(j) for j in jobs],
                     augment=ctx.data.augment, objective=objective,
                     swa=ctx.schedule.swa, mask=task.mask, rng_seed=jobs[0].order_seed,
                     gradual=task.gradual)
    file = checkpoint_file(task, ctx, jobs)
    resume = file.load(ctx.model_device) if file is not None else None
    if resume is not None and info is not None:
        step = int(resume[1]["step"])
        what = ", ".join(label(j) for j in jobs)
        info(f"{what}: " + ("trained before the stop; kept" if step >= plan.stop else
                            f"resuming from the checkpoint at iteration {step}"))
    def report(done: int) -> None:
        for j in jobs:
            progress(j.index, done)
    results, _ = fit(replicas, plan, precision=s.precision, clip_grad_norm=s.clip_grad_norm,
                     checkpoint=file, resume=resume,
                     progress=report if progress is not None else None,
                     optimizer_state=task.optimizer_state)
    return results
