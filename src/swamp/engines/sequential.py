"""The reference engine: particles one after another in this process."""

from __future__ import annotations

from typing import Any, Sequence

from swamp import cpu
from swamp.engines.base import Info, LevelTask, ProgressFn, TrainContext, train_group
from swamp.train import ParticleResult, SingleReplica


class SequentialEngine:
    """Trains the particles one after another, each as one module.

    `threads`: intra-op threads while training (0: the usable cores, never more than torch's
    current setting; see `swamp.cpu.run_threads`).
    """

    name = "sequential"

    def __init__(self, threads: int = 0, info: Info | None = None):
        self.threads = threads
        self.info = info

    @property
    def record(self) -> dict[str, Any]:
        return {"engine": "sequential", "threads": self.threads}

    @property
    def description(self) -> str:
        return "sequential" + (f", {self.threads} thread(s)" if self.threads else "")

    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        threads = cpu.run_threads(self.threads) if ctx.model_device.type == "cpu" else 0
        results = []
        with cpu.torch_threads(threads):
            for job in task.jobs:
                replicas = SingleReplica(ctx.model, task.start_state, ctx.objective.captures)
                results += train_group(replicas, task, ctx, [job], progress, self.info)
        return results

    def close(self, rows: Sequence[dict[str, Any]] = ()) -> None:
        pass
