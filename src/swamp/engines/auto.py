"""`--engine auto`: the fastest way to train the particles on this device and model.

Decided before the run trains its rewind segment (for every number of particles its levels
have; a long CPU run starts its processes then and times its steps at the first level), from
measurements rather than rules of thumb, and said in one line:

- CPU: K = min(particles, cores) processes with cores // K threads each, where timed
  training steps estimate that they finish the run's remaining training sooner than this
  process alone, their start (a few seconds, overlapped with the rewind segment) included;
  otherwise the sequential engine with threads matched to the cores. Long runs start the
  processes at once and time the steps at the first level (`EARLY_START_STEPS`), stopping
  the processes again if the timing goes against them. With processes, this
  process also keeps cores // K threads for its own phases (rewind, evaluation, BatchNorm),
  so that nothing oversubscribes the cores. Measured here (2 cores,
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
from typing import Any, Callable, Sequence

import torch

from swamp import cpu
from swamp.config import Settings
from swamp.engines.base import LevelTask, ProgressFn, TrainContext
from swamp.engines.sequential import SequentialEngine
from swamp.engines.vectorised import VectorisedEngine, sync, probe
from swamp.errors import SwampError
from swamp.train import ParticleResult, SingleReplica, StackedReplicas, TrainPlan, fit

Info = Callable[[str], None]

# Starting K-1 processes (spawn, import torch, receive the model and data, join the group)
# took 2-4 s on the 2-core machine this was measured on; they start while this process
# trains the rewind segment, and are chosen where they save more than this.
PROCESS_START_SECONDS = 3.0
# The vectorised engine must beat sequential by this factor in the probe to be chosen.
VECTORISED_MARGIN = 1.05
# CPU runs with at least this many particle iterations still to train start their
# processes at once, as `--processes K` does, and time the steps that decide whether to keep
# them at the first level, after the rewind segment: timed before it, the decision delayed
# the processes' start by its own cost (about 1.3 s, most of it torch.optim's first import of
# torch._dynamo), and the timing competed with their start for the cores. The default run
# (4 particles, 2 levels of ~600 iterations) has ~4,700; processes won every such run
# measured on 2 cores (benchmarks/results/engine_policy.md). Shorter runs decide first and
# start nothing they do not use.
EARLY_START_STEPS = 2000


def _fit_seconds(replicas: Any, ctx: TrainContext, n: int, steps: int) -> float:
    """Seconds the one training loop (`fit`) takes for `steps` iterations of `replicas`."""
    plan = TrainPlan(ctx.data.train, ctx.schedule, ctx.settings, 0, steps,
                     order_seeds=list(range(n)), augment_seeds=list(range(n)),
                     subsets=[None] * n, labels=["probe"] * n, augment=ctx.data.augment,
                     objective=ctx.objective)
    device = ctx.model_device
    sync(device)
    start = time.perf_counter()
    fit(replicas, plan, precision=ctx.settings.precision,
        clip_grad_norm=ctx.settings.clip_grad_norm)
    sync(device)
    return time.perf_counter() - start


def _step_time(make: Callable[[], Any], ctx: TrainContext, n: int) -> float:
    """Seconds per iteration of the training loop: 4 iterations less 1 (which also pays the
    loop's set-up), after a warm-up; one iteration alone where a step is slow."""
    first = _fit_seconds(make(), ctx, n, 1)          # warm-up; also a first estimate
    if first > 0.5:
        # The first loop of a process also pays one-time costs (torch.optim imports
        # torch._dynamo: about 1.3 s here), which are not a step's: time it again.
        first = _fit_seconds(make(), ctx, n, 1)
    if first > 0.5:
        return first
    return max(1e-9, (_fit_seconds(make(), ctx, n, 4) - _fit_seconds(make(), ctx, n, 1)) / 3)


def step_seconds(ctx: TrainContext, threads: int) -> float:
    """Seconds per training step of one particle, measured through the training loop."""
    model = copy.deepcopy(ctx.model)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with cpu.torch_threads(threads):
        return _step_time(lambda: SingleReplica(model, start, ctx.objective.captures), ctx, 1)


def vectorised_speedup(n: int, state: dict[str, torch.Tensor], ctx: TrainContext) -> float:
    """Throughput of N stacked particles over N single ones, through the training loop, on
    this model and batch size."""
    saved = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    try:
        single = copy.deepcopy(ctx.model)
        t1 = _step_time(lambda: SingleReplica(single, state, ctx.objective.captures), ctx, 1)
        tn = _step_time(lambda: StackedReplicas(ctx.model, state, n, ctx.objective.captures),
                        ctx, n)
        return n * t1 / tn
    finally:
        ctx.model.load_state_dict(saved)


class AutoEngine:
    """Chooses and then delegates to sequential, vectorised or local processes."""

    name = "auto"

    def __init__(self, settings: Settings, info: Info | None = None,
                 requested: str = "auto", recorded: dict[str, dict[str, Any]] | None = None,
                 ctx: TrainContext | None = None, particles: Sequence[int] = ()):
        """With `ctx` and `particles` (the number of particles of every level still to
        train) the choice is made now, before the run trains its rewind segment: processes
        then start while it does, and the main process takes their thread policy."""
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
        self._threads_before: int | None = None  # this process's threads before processes
        self.description = f"{requested} (chosen at the first level)"
        self._levels = list(particles)
        self._early: tuple[int, int, int] | None = None   # (k, threads, here) started early
        if ctx is not None:
            state = ctx.model.state_dict()
            for n in sorted(set(self._levels), reverse=True):
                if self._start_early(n, ctx):
                    break                       # the rest is decided at the first level
                self.choose(n, ctx, state)

    def _start_early(self, n: int, ctx: TrainContext) -> bool:
        """Start the processes of a long CPU run now (see EARLY_START_STEPS); the timing
        that keeps or stops them runs when the first level asks for its engine."""
        if (ctx.model_device.type != "cpu" or n < 2 or self.processes != 0
                or self.requested != "auto" or str(n) in self.recorded
                or self._distributed is not None):
            return False
        cores = cpu.usable_cores()
        if cores < 2 or self._steps_left(n, ctx, 0) < EARLY_START_STEPS:
            return False
        k, threads = self._layout(n, cores)
        here = cpu.run_threads(self.threads)      # before the processes take their share
        try:
            self._start_processes(k, threads, ctx)
        except SwampError:
            return False                          # decided (and said) at the first level
        self._early = (k, threads, here)
        return True

    def _layout(self, n: int, cores: int) -> tuple[int, int]:
        """(K processes, threads each) for `n` particles on `cores` CPU cores."""
        k = min(n, self.processes if self.processes > 1 else cores)
        return k, self.threads or max(1, cores // k)

    # ---- the choice ---------------------------------------------------------------------
    def _start_processes(self, k: int, threads: int, ctx: TrainContext) -> Any:
        from swamp.engines.processes import start_processes

        self._distributed = start_processes(k, ctx, threads, self.info, wait=False)
        if ctx.model_device.type == "cpu" and self._threads_before is None:
            # the main process's own phases (rewind, evaluation, BatchNorm) run with the
            # workers' thread count too: more threads would oversubscribe the cores
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        return self._distributed

    def _stop_processes(self) -> None:
        """Release processes started early for a choice that went the other way."""
        self._distributed.close()
        self._distributed = None
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    @property
    def record(self) -> dict[str, dict[str, Any]]:
        """What was chosen per number of particles, to be recorded with the run."""
        return {**self.recorded,
                **{str(n): engine.record for n, engine in self._choice.items()}}

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
            return SequentialEngine(threads, self.info), why
        raise SwampError(f"the run's engine record {record} is not one this version can "
                         f"follow; pass `engine` sequential (or another engine) explicitly")

    def choose(self, n: int, ctx: TrainContext, state: dict[str, torch.Tensor],
               level: int = 0) -> Any:
        """The engine for levels of `n` particles (`state`: a ticket, for probes)."""
        if n in self._choice:
            return self._choice[n]
        record = self.recorded.get(str(n))
        engine, why = (self._from_record(record, ctx) if record is not None
                       else self._decide(n, ctx, state, level))
        self._choice[n] = engine
        name = engine.description
        self.description = f"{self.requested} -> {name}"
        self.info(f"engine {self.requested}: {name} for {n} particle(s) ({why})")
        return engine

    def _decide(self, n: int, ctx: TrainContext, state: dict[str, torch.Tensor],
                level: int) -> tuple[Any, str]:
        device = ctx.model_device
        if self._distributed is not None and n > 1 and self._early is None:
            return self._distributed, "the processes already running"
        if n == 1 and self.processes <= 1:
            threads = cpu.run_threads(self.threads) if device.type == "cpu" else 0
            return SequentialEngine(self.threads, self.info), (
                f"one particle; {threads} thread(s)" if threads else "one particle")
        if device.type == "cpu":
            return self._decide_cpu(n, ctx, level)
        if self.processes > 1 or self.requested == "distributed":
            gpus = torch.cuda.device_count() if device.type == "cuda" else 1
            if self.processes > gpus:
                raise SwampError(f"`processes` {self.processes} on {device.type} needs one "
                                 f"GPU per process; this machine has {gpus}")
            k = min(self.processes if self.processes > 1 else gpus, n)
            if k > 1:
                return self._start_processes(k, self.threads or 1, ctx), f"{k} processes"
            return SequentialEngine(self.threads, self.info), "one device"
        reason = probe(ctx.model, state, ctx.data.train.x[:2])
        if reason is not None:
            return SequentialEngine(self.threads, self.info), f"vmap cannot stack this model ({reason})"
        try:
            speedup = vectorised_speedup(n, state, ctx)
        except Exception as exc:  # e.g. out of memory with N stacked copies
            if device.type == "cuda":
                torch.cuda.empty_cache()
            text = str(exc).strip().splitlines()
            return SequentialEngine(self.threads, self.info), (
                f"stacking failed in the probe ({text[0][:120] if text else type(exc).__name__})")
        if speedup >= VECTORISED_MARGIN:
            return (VectorisedEngine(self.info, self.threads),
                    f"stacked steps measured {speedup:.2f}x the throughput of single ones")
        return SequentialEngine(self.threads, self.info), (
            f"stacked steps measured only {speedup:.2f}x single ones")

    def _steps_left(self, n: int, ctx: TrainContext, level: int) -> int:
        """Training iterations of all particles of the levels still to train."""
        per_particle = ctx.schedule.total - ctx.schedule.rewind
        if self._levels:
            return per_particle * sum(self._levels)
        return per_particle * n * max(1, self.settings.prune.levels - level + 1)

    def _decide_cpu(self, n: int, ctx: TrainContext, level: int) -> tuple[Any, str]:
        cores = cpu.usable_cores()
        forced = self.processes > 1 or self.requested == "distributed"
        if self.processes == 1 or cores == 1 and not forced:
            threads = cpu.run_threads(self.threads)
            return SequentialEngine(self.threads, self.info), (
                f"`processes` 1, {threads} thread(s)" if self.processes == 1
                else "one core")
        early, self._early = self._early, None   # the processes already starting, if any
        k, threads, here = early or (*self._layout(n, cores), cpu.run_threads(self.threads))
        if not forced:
            # Measured, not assumed: one step with the threads this process would use, and
            # one with a process's share of the cores; K processes run K such steps at once.
            steps = self._steps_left(n, ctx, level)
            alone = steps * step_seconds(ctx, here)
            spread = steps * step_seconds(ctx, threads) / k + PROCESS_START_SECONDS
            if alone <= spread:
                if early is not None:
                    self._stop_processes()
                return SequentialEngine(self.threads, self.info), (
                    f"about {alone:.0f} s of training here with {here} thread(s), against "
                    f"{spread:.0f} s in {k} processes with their start")
        if early is not None:
            return self._distributed, f"{cores} cores"
        try:
            engine = self._start_processes(k, threads, ctx)
        except SwampError as exc:
            if forced:
                raise
            return SequentialEngine(self.threads, self.info), f"processes unavailable ({exc})"
        return engine, f"{cores} cores"

    # ---- the engine interface ------------------------------------------------------------------
    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        engine = self.choose(len(task.jobs), ctx, task.start_state, task.level)
        return engine.train_particles(task, ctx, progress)

    def close(self, rows: Sequence[dict[str, Any]] = ()) -> None:
        if self._distributed is not None:
            self._distributed.close(rows)
            self._distributed = None
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
