"""The reference engine: particles one after another in this process."""

from __future__ import annotations

from swamp import cpu
from swamp.engines.base import LevelTask, ProgressFn, TrainContext
from swamp.training import ParticleResult, train_steps


class SequentialEngine:
    """Trains the particles one after another with `train_steps`.

    `threads`: intra-op threads while training (0: match the free cores, never more than
    torch's current setting; see `swamp.cpu.run_threads`).
    """

    name = "sequential"
    threads = 0          # class default: subclasses need not call __init__

    def __init__(self, threads: int = 0):
        self.threads = threads

    @property
    def decision(self) -> dict:
        """What a run records to train the same way when it is resumed."""
        return {"engine": "sequential", "threads": self.threads}

    @property
    def description(self) -> str:
        return "sequential" + (f", {self.threads} thread(s)" if self.threads else "")

    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        results = []
        threads = cpu.run_threads(self.threads) if ctx.model_device.type == "cpu" else 0
        with cpu.torch_threads(threads):
            for job in task.jobs:
                ctx.model.load_state_dict(task.start_state)
                on_step = (lambda done, i=job.index: progress(i, done)) if progress else None
                results.append(train_steps(
                    ctx.model, task.mask, ctx.data.train, ctx.schedule, ctx.settings,
                    start=task.start_step, stop=ctx.schedule.total, order_seed=job.order_seed,
                    augment=ctx.data.augment, augment_seed=job.augment_seed,
                    subset=job.subset, on_step=on_step,
                    label=f"level {task.level}, particle {job.index}"))
                if task.on_particle_done is not None:
                    task.on_particle_done(job, results[-1])
        return results
