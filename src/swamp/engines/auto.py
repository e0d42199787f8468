"""`--engine auto`: the fastest way to train the particles on this device and model.

Decided at the first level (and again if a later level has another number of particles),
from measurements rather than rules of thumb, and said in one line:

- CPU: K = min(particles, cores) processes when there are at least two cores and two
  particles, each process with cores // K threads, provided the run's training is long
  enough to pay for starting them (a few seconds; estimated from timed training steps).
  Otherwise the sequential engine with threads matched to the cores. Measured here (2 cores,
  benchmarks/results/particles.md): two single-thread processes beat one two-thread process
  for the small models (about 1.3x) and match it for ResNet-20, and stay fast when another
  program takes a core, where two threads slow down many times over. vmap gives nothing on
  CPU.
- GPU: the vectorised engine where a timed probe (stacked step vs. N single steps on the
  model and batch of the run) shows it faster by at least 5%, else sequential.

The choice is recorded with the run (`engine.json`, written by the level loop) and followed
when the run is resumed, so that a resumed run trains as it began: results depend on the
engine and thread count at floating-point precision.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from swamp import cpu
from swamp.config import Settings
from swamp.engines.base import LevelTask, ProgressFn, TrainContext
from swamp.engines.sequential import SequentialEngine
from swamp.engines.vectorised import Stack, VectorisedEngine, probe, time_steps
from swamp.errors import SwampError
from swamp.training import ParticleResult, make_optimizer

Info = Callable[[str], None]

# Starting K-1 processes costs a few seconds once per run; below this much estimated
# training in the whole run, processes cannot win it back.
MIN_RUN_SECONDS = 20.0
# The vectorised engine must beat sequential by this factor in the probe to be chosen.
VECTORISED_MARGIN = 1.05


def step_seconds(ctx: TrainContext, threads: int) -> float:
    """Seconds per training step of one particle (forward, backward, SGD step)."""
    model = copy.deepcopy(ctx.model).train()
    optimizer = make_optimizer(model, ctx.settings)
    b = min(ctx.settings.batch_size, len(ctx.data.train))
    x, y = ctx.data.train.x[:b], ctx.data.train.y[:b]

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with cpu.torch_threads(threads):
        start = time.perf_counter()
        step()                                  # warm-up; also a first estimate
        first = time.perf_counter() - start
        if first > 0.5:                         # slow model: one step says enough
            return first
        return time_steps(step, 3, ctx.model_device)


def vectorised_speedup(task: LevelTask, ctx: TrainContext) -> float:
    """Throughput of a stacked step over N single steps, on this model and batch size."""
    n = task.particles
    b = min(ctx.settings.batch_size, len(ctx.data.train))
    x, y = ctx.data.train.x[:b], ctx.data.train.y[:b]
    saved = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    try:
        single = copy.deepcopy(ctx.model).train()
        opt1 = make_optimizer(single, ctx.settings)

        def one() -> None:
            for _ in range(n):
                loss = F.cross_entropy(single(x), y)
                opt1.zero_grad(set_to_none=True)
                loss.backward()
                opt1.step()

        stack = Stack(ctx.model.train(), task.start_state, n)
        optn = make_optimizer(stack.holder, ctx.settings)
        xs, ys = x.unsqueeze(0).expand(n, *x.shape).contiguous(), y.repeat(n)

        def stacked() -> None:
            logits = stack.forward(xs)
            loss = F.cross_entropy(logits.flatten(0, 1), ys)
            optn.zero_grad(set_to_none=True)
            loss.backward()
            optn.step()

        t1 = time_steps(one, 3, ctx.model_device)
        tn = time_steps(stacked, 3, ctx.model_device)
        return t1 / tn
    finally:
        ctx.model.load_state_dict(saved)


class AutoEngine:
    """Chooses and then delegates to sequential, vectorised or local processes."""

    name = "auto"

    def __init__(self, settings: Settings, info: Info | None = None,
                 requested: str = "auto", recorded: dict[str, dict[str, Any]] | None = None):
        self.settings = settings
        self.info = info or (lambda message: None)
        self.requested = requested              # "auto" or "distributed" (no torchrun)
        self.processes = settings.run.processes
        self.threads = settings.run.threads
        # Choices an earlier invocation of this run made (particles -> engine decision):
        # a resumed run trains as it began, since floating-point results depend on the engine.
        self.recorded = dict(recorded or {})
        self._choice: dict[int, Any] = {}       # particles -> engine
        self._distributed: Any = None
        self.description = f"{requested} (chosen at the first level)"

    # ---- the choice ---------------------------------------------------------------------
    def _start_processes(self, k: int, threads: int, ctx: TrainContext) -> Any:
        from swamp.local_ranks import start_local
        from swamp.engines.distributed import DistributedEngine

        group = start_local(k, ctx, ctx.model_device, threads)
        self._distributed = DistributedEngine(group, threads=threads, info=self.info)
        return self._distributed

    @property
    def decisions(self) -> dict[str, dict[str, Any]]:
        """What was chosen per number of particles, to be recorded with the run."""
        return {**self.recorded,
                **{str(n): engine.decision for n, engine in self._choice.items()}}

    def _from_record(self, record: dict[str, Any], ctx: TrainContext) -> tuple[Any, str]:
        kind, threads = record.get("engine"), int(record.get("threads", 0))
        why = "as recorded by this run's earlier levels"
        if kind == "distributed":
            if self._distributed is None:
                self._start_processes(int(record["processes"]), threads, ctx)
            return self._distributed, why
        if kind == "vectorised":
            return VectorisedEngine(self.info, threads), why
        if kind == "sequential":
            return SequentialEngine(threads), why
        raise SwampError(f"the run's engine record {record} is not one this version can "
                         f"follow; pass --engine sequential (or another engine) explicitly")

    def choose(self, task: LevelTask, ctx: TrainContext) -> Any:
        n = task.particles
        if n in self._choice:
            return self._choice[n]
        record = self.recorded.get(str(n))
        engine, why = (self._from_record(record, ctx) if record is not None
                       else self._decide(task, ctx))
        self._choice[n] = engine
        name = getattr(engine, "description", engine.name)
        self.description = f"{self.requested} -> {name}"
        self.info(f"engine {self.requested}: {name} for {n} particle(s) ({why})")
        return engine

    def _decide(self, task: LevelTask, ctx: TrainContext) -> tuple[Any, str]:
        n = task.particles
        device = ctx.model_device
        if self._distributed is not None and n > 1:
            return self._distributed, "the processes already running"
        if n == 1 and self.processes <= 1:
            threads = cpu.run_threads(self.threads) if device.type == "cpu" else 0
            return SequentialEngine(self.threads), (
                f"one particle; {threads} thread(s)" if threads else "one particle")
        if device.type == "cpu":
            return self._decide_cpu(task, ctx)
        if self.processes > 1 or self.requested == "distributed":
            gpus = torch.cuda.device_count() if device.type == "cuda" else 1
            if self.processes > gpus:
                raise SwampError(f"--processes {self.processes} on {device.type} needs one "
                                 f"GPU per process; this machine has {gpus}")
            k = min(self.processes if self.processes > 1 else gpus, n)
            if k > 1:
                return self._start_processes(k, self.threads or 1, ctx), f"{k} processes"
            return SequentialEngine(self.threads), "one device"
        reason = probe(ctx.model, task.start_state, ctx.data.train.x[:2])
        if reason is not None:
            return SequentialEngine(self.threads), f"vmap cannot stack this model ({reason})"
        try:
            speedup = vectorised_speedup(task, ctx)
        except Exception as exc:  # e.g. out of memory with N stacked copies
            if device.type == "cuda":
                torch.cuda.empty_cache()
            text = str(exc).strip().splitlines()
            return SequentialEngine(self.threads), (
                f"stacking failed in the probe ({text[0][:120] if text else type(exc).__name__})")
        if speedup >= VECTORISED_MARGIN:
            return (VectorisedEngine(self.info, self.threads),
                    f"stacked steps measured {speedup:.2f}x the throughput of single ones")
        return SequentialEngine(self.threads), (
            f"stacked steps measured only {speedup:.2f}x single ones")

    def _decide_cpu(self, task: LevelTask, ctx: TrainContext) -> tuple[Any, str]:
        n = task.particles
        cores = cpu.usable_cores()
        forced = self.processes > 1 or self.requested == "distributed"
        if self.processes == 1 or cores == 1 and not forced:
            threads = cpu.run_threads(self.threads)
            return SequentialEngine(self.threads), (
                f"--processes 1, {threads} thread(s)" if self.processes == 1
                else "one core")
        if not forced:
            levels_left = max(1, self.settings.prune.levels - task.level + 1)
            steps = n * (ctx.schedule.total - task.start_step) * levels_left
            estimate = steps * step_seconds(ctx, 1)
            if estimate < MIN_RUN_SECONDS:
                threads = cpu.run_threads(self.threads)
                return SequentialEngine(self.threads), (
                    f"about {estimate:.0f} s of training, too little to start processes; "
                    f"{threads} thread(s)")
        k = min(n, self.processes if self.processes > 1 else cores)
        threads = self.threads or max(1, cores // k)
        try:
            engine = self._start_processes(k, threads, ctx)
        except SwampError as exc:
            if forced:
                raise
            return SequentialEngine(self.threads), f"processes unavailable ({exc})"
        return engine, f"{cores} cores"

    # ---- the engine interface ------------------------------------------------------------------
    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        return self.choose(task, ctx).train_particles(task, ctx, progress)

    def close(self, rows: list[dict[str, Any]] | None = None) -> None:
        if self._distributed is not None:
            self._distributed.close(rows)
            self._distributed = None
