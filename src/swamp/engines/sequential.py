"""The reference engine: particles one after another in this process."""

from __future__ import annotations

from swamp.engines.base import LevelTask, ProgressFn, TrainContext
from swamp.training import ParticleResult, train_steps


class SequentialEngine:
    name = "sequential"

    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        results = []
        for job in task.jobs:
            ctx.model.load_state_dict(task.start_state)
            on_step = (lambda done, i=job.index: progress(i, done)) if progress else None
            results.append(train_steps(
                ctx.model, task.mask, ctx.data.train, ctx.schedule, ctx.settings,
                start=task.start_step, stop=ctx.schedule.total, order_seed=job.order_seed,
                augment=ctx.data.augment, augment_seed=job.augment_seed, subset=job.subset,
                on_step=on_step, label=f"level {task.level}, particle {job.index}"))
        return results
