"""The process engine (`--engine distributed`): ranks own particles; rank 0 runs the level loop.

Rank 0 runs the whole level loop (rewind point, evaluation, averaging, pruning, every
write to the run directory). For each level it sends the ticket (start weights and mask)
to the other ranks; every rank then trains the particles it owns (particle k belongs to rank
k mod K) with the sequential engine, and the trained particles are summed into rank 0 with
one `reduce` over a zero-padded buffer (a value plus zeros is that value exactly). Rank 0
thus holds every particle bit for bit as if it had trained it itself, so averaging,
evaluation and pruning run the same code as with `--engine sequential`, and the masks are
the same ones. The other ranks never open the run directory, so several machines need no
shared filesystem.

A rank whose training fails (e.g. the loss becomes NaN, or CUDA runs out of memory) reports
its error to all ranks at the end of the level: rank 0 raises it as one line and every rank
stops. A rank that dies is noticed at once (its gloo sockets close), and the others stop
with a message naming it instead of hanging.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from swamp.core.masks import Mask
from swamp.engines.base import LevelTask, ParticleJob, ProgressFn, TrainContext
from swamp.engines.sequential import SequentialEngine
from swamp.errors import SwampError
from swamp.train import ParticleResult
from swamp.train.stop import stop_on_signals
from swamp.world import Group

StateDict = dict[str, torch.Tensor]
Info = Callable[[str], None]
Layout = list[tuple[str, str, tuple[int, ...]]]   # (name, dtype, shape)

# gloo cannot reduce bool tensors; they travel as uint8.
_CARRIER = {torch.bool: torch.uint8}


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def layout_of(state: StateDict) -> Layout:
    return [(k, str(v.dtype), tuple(v.shape)) for k, v in state.items()]


def _groups_by_dtype(layout: Layout) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, dtype, shape in layout:
        groups.setdefault(dtype, []).append((name, shape))
    return groups


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class RunStopped(SwampError):
    """Rank 0 ended the run with an error (it reports it; the other ranks just stop)."""


class DistributedEngine:
    """Particles spread over the ranks of a process group (see the module docstring)."""

    name = "distributed"

    def __init__(self, group: Group, *, threads: int = 1, info: Info | None = None):
        self.group = group
        self.threads = threads
        self.info = info or (lambda message: None)
        self.local = SequentialEngine(threads=threads, info=self.info)
        self._mid_level = False
        self._stopped = False

    @property
    def is_worker(self) -> bool:
        return self.group.rank != 0

    @property
    def record(self) -> dict[str, Any]:
        return {"engine": "distributed", "processes": self.group.world,
                "threads": self.threads}

    @property
    def description(self) -> str:
        backend = "NCCL" if self.group.device.type == "cuda" else "gloo"
        return (f"distributed ({self.group.world} processes x {self.threads} thread(s), "
                f"{backend}, device {self.group.device})")

    # ---- collectives (wrapped: a dead peer becomes one clear line) -------------------------
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (RuntimeError, ValueError, ConnectionError) as exc:
            self._stopped = True
            detail = self.group.worker_failure(wait=2.0)
            reason = detail or str(exc).strip().splitlines()[0][:200]
            raise SwampError(f"another rank stopped while {what} ({reason}); this rank "
                             f"stops too; re-run the same command to resume") from None

    def _broadcast_object(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        self._call("waiting for the next level",
                   lambda: dist.broadcast_object_list(box, src=0, group=self.group.control))
        return box[0]

    def _broadcast_state(self, state: StateDict | None, layout: Layout) -> StateDict:
        """Rank 0's tensors to every rank, one flat buffer per dtype."""
        import torch.distributed as dist

        device = self.group.device
        out: StateDict = {}
        for dtype_name, entries in _groups_by_dtype(layout).items():
            dtype = _dtype(dtype_name)
            carrier = _CARRIER.get(dtype, dtype)
            if state is not None:
                flat = torch.cat([state[n].detach().reshape(-1).to(device, carrier)
                                  for n, _ in entries])
            else:
                flat = torch.empty(sum(_numel(s) for _, s in entries), dtype=carrier,
                                   device=device)
            self._call("receiving a ticket",
                       lambda: dist.broadcast(flat, src=0, group=self.group.data))
            offset = 0
            for name, shape in entries:
                n = _numel(shape)
                out[name] = flat[offset:offset + n].view(shape).to(dtype).clone()
                offset += n
        return {name: out[name] for name, _, _ in layout}     # the state dict's own order

    # ---- rank 0 ------------------------------------------------------------------------------
    def train_particles(self, task: LevelTask, ctx: TrainContext,
                        progress: ProgressFn | None = None) -> list[ParticleResult]:
        if self.is_worker:
            raise RuntimeError("train_particles is called on rank 0 only; ranks > 0 serve()")
        if self._stopped:
            raise SwampError("the other training processes have stopped; re-run the same "
                             "command to resume")
        self.group.connect()
        self._mid_level = True
        state_layout = layout_of(task.start_state)
        mask_layout = layout_of(dict(task.mask.items())) if task.mask is not None else None
        optim_layout = layout_of(task.optimizer_state) if task.optimizer_state else None
        teacher_layout = layout_of(task.teacher_state) if task.teacher_state else None
        header = {"op": "train", "level": task.level, "start_step": task.start_step,
                  "jobs": [(j.level, j.index, j.order_seed, j.augment_seed,
                            None if j.subset is None else j.subset.cpu()) for j in task.jobs],
                  "state": state_layout, "mask": mask_layout, "optimizer": optim_layout,
                  "teacher": teacher_layout, "gradual": task.gradual,
                  # each rank checkpoints its own particles into the level's folder (the
                  # same path on its machine)
                  "checkpoint_dir": None if task.checkpoint_dir is None
                  else str(task.checkpoint_dir), "checkpoint_every": task.checkpoint_every,
                  # the schedule and training settings travel too: rank 0's ctx decides
                  "schedule": ctx.schedule, "settings": ctx.settings}
        self._broadcast_object(header)
        self._broadcast_state(task.start_state, state_layout)
        if mask_layout is not None:
            self._broadcast_state(dict(task.mask.items()), mask_layout)
        if optim_layout is not None:
            self._broadcast_state(task.optimizer_state, optim_layout)
        if teacher_layout is not None:
            self._broadcast_state(task.teacher_state, teacher_layout)
        results = self._train_and_gather(task, ctx, progress)
        self._mid_level = False
        assert results is not None
        return results

    def close(self, rows: Sequence[dict[str, Any]] = ()) -> None:
        """Tell the other ranks to stop (rank 0), and release the processes this one started."""
        if self.group.closed:
            return
        # Called from the level loop's `finally`: an exception in flight means a failed run.
        failure = sys.exc_info()[1]
        if not self.group.connected:          # never used: the ranks are still starting
            self.group.close(kill=True)
            return
        if not self.is_worker and not self._mid_level and not self._stopped:
            try:
                self._broadcast_object({"op": "stop", "rows": list(rows),
                                        "error": None if failure is None else
                                        str(failure).splitlines()[0] if str(failure)
                                        else type(failure).__name__})
            except SwampError:
                pass
        self.group.close(kill=self._mid_level or self._stopped)

    # ---- ranks > 0 -----------------------------------------------------------------------------
    def serve(self, ctx: TrainContext) -> list[dict[str, Any]]:
        """Train what rank 0 sends until it says stop; returns rank 0's level rows."""
        while True:
            header = self._broadcast_object(None)
            if header["op"] == "stop":
                if header.get("error"):
                    raise RunStopped(f"rank 0 stopped the run: {header['error']}")
                return header["rows"]
            state = self._broadcast_state(None, header["state"])
            mask = (Mask(self._broadcast_state(None, header["mask"]))
                    if header["mask"] is not None else None)
            optim = (self._broadcast_state(None, header["optimizer"])
                     if header["optimizer"] is not None else None)
            teacher = (self._broadcast_state(None, header["teacher"])
                       if header.get("teacher") is not None else None)
            jobs = [ParticleJob(level, index, order, augment,
                                None if subset is None else subset.to(self.group.device))
                    for level, index, order, augment, subset in header["jobs"]]
            folder = header["checkpoint_dir"]
            task = LevelTask(header["level"], state, mask, header["start_step"], jobs,
                             checkpoint_dir=None if folder is None else Path(folder),
                             checkpoint_every=header["checkpoint_every"],
                             optimizer_state=optim, gradual=header.get("gradual"),
                             teacher_state=teacher)
            level_ctx = TrainContext(ctx.model, ctx.data, header["schedule"], header["settings"],
                                     ctx.objective)
            try:
                self._train_and_gather(task, level_ctx, None)
            except SwampError:
                if self._stopped:       # the group is broken: nothing more to wait for
                    raise
                # a training error: rank 0 reports it, then tells every rank to stop

    # ---- every rank ------------------------------------------------------------------------------
    def _train_and_gather(self, task: LevelTask, ctx: TrainContext,
                          progress: ProgressFn | None) -> list[ParticleResult] | None:
        import torch.distributed as dist

        g = self.group
        n = len(task.jobs)
        mine = [pos for pos in range(n) if pos % g.world == g.rank]
        results: dict[int, ParticleResult] = {}
        error = ""
        if progress is not None:        # particles of other ranks: started now, shown when back
            for pos in range(n):
                if pos % g.world != g.rank:
                    progress(task.jobs[pos].index, task.start_step)
        try:
            if sorted(layout_of(task.start_state)) != sorted(layout_of(ctx.model.state_dict())):
                raise SwampError(f"rank {g.rank}'s model differs from rank 0's (another "
                                 f"state-dict layout); start every rank with the same "
                                 f"`model` and data")
            if mine:
                local = LevelTask(task.level, task.start_state, task.mask, task.start_step,
                                  [task.jobs[pos] for pos in mine], task.checkpoint_dir,
                                  task.checkpoint_every, task.optimizer_state,
                                  gradual=task.gradual, teacher_state=task.teacher_state)
                if g.rank == 0:       # the level loop already turns signals into stops
                    trained = self.local.train_particles(local, ctx, progress)
                else:
                    # A SIGTERM (rank 0 stopping) or Ctrl-C while training: checkpoint the
                    # particle, then stop. Outside training the default action stands, so
                    # an idle rank waiting in a collective ends at once.
                    with stop_on_signals():
                        trained = self.local.train_particles(local, ctx, progress)
                results = dict(zip(mine, trained))
        except SwampError as exc:
            error = str(exc)
        except Exception as exc:  # report, don't hang the others; the traceback stays here
            traceback.print_exc(file=sys.stderr)
            error = f"rank {g.rank} failed: {type(exc).__name__}: {exc}".splitlines()[0]

        # Everyone learns whether anyone failed (the wait for the slowest rank is here).
        failed = torch.zeros(g.world, dtype=torch.float64)
        failed[g.rank] = 1.0 if error else 0.0
        self._call("training its particles",
                   lambda: dist.all_reduce(failed, group=g.control))
        if failed.any():
            messages: list[Any] = [None] * g.world
            self._call("reporting an error",
                       lambda: dist.all_gather_object(messages, error, group=g.control))
            first = next(m for m in messages if m)
            self._mid_level = False
            raise SwampError(first)

        # The particles, summed into rank 0 (each row is non-zero on its owner only).
        layout = layout_of(task.start_state)
        device = g.device
        buffers: dict[str, torch.Tensor] = {}
        for dtype_name, entries in _groups_by_dtype(layout).items():
            dtype = _dtype(dtype_name)
            carrier = _CARRIER.get(dtype, dtype)
            size = sum(_numel(s) for _, s in entries)
            buf = torch.zeros(n, size, dtype=carrier, device=device)
            for pos, result in results.items():
                buf[pos] = torch.cat([result.state[name].detach().reshape(-1).to(device, carrier)
                                      for name, _ in entries])
            self._call("collecting the particles",
                       lambda buf=buf: dist.reduce(buf, dst=0, group=g.data))
            buffers[dtype_name] = buf
        meta = torch.zeros(n, 2, dtype=torch.float64)
        for pos, result in results.items():
            meta[pos, 0] = result.averaged
            meta[pos, 1] = result.train_loss
        self._call("collecting the particles", lambda: dist.reduce(meta, dst=0, group=g.control))
        if g.rank != 0:
            return None

        out: list[ParticleResult] = []
        for pos in range(n):
            if pos in results:                      # trained here: keep the exact tensors
                out.append(results[pos])
                continue
            state: StateDict = {}
            for dtype_name, entries in _groups_by_dtype(layout).items():
                row, offset = buffers[dtype_name][pos], 0
                for name, shape in entries:
                    size = _numel(shape)
                    state[name] = row[offset:offset + size].view(shape).to(_dtype(dtype_name))
                    offset += size
            out.append(ParticleResult({k: state[k] for k, _, _ in layout},
                                      int(meta[pos, 0]), float(meta[pos, 1])))
            if progress is not None:
                progress(task.jobs[pos].index, ctx.schedule.total)
        return out


# ---- ranks started by this process (`--processes K`, `--engine auto` on CPU) -----------------

def start_processes(processes: int, ctx: TrainContext, threads: int,
                    info: Callable[[str], None] | None = None,
                    wait: bool = True) -> DistributedEngine:
    """Spawn ranks 1..K-1 on this machine (rank 0 is this process) and return the engine;
    with `wait=False` they go on starting until the engine first needs them."""
    from swamp.world import start_local

    group = start_local(processes, _to_cpu(ctx), ctx.model_device, threads, _worker_main,
                        wait=wait)
    return DistributedEngine(group, threads=threads, info=info)


def _to_cpu(ctx: TrainContext) -> TrainContext:
    """The training context to pickle to other processes: CPU tensors, a copy of the model.

    Pickling moves tensors to shared memory, so the data is shared read-only; the model
    template must not be: each rank trains in its own copy (see `_worker_main`).
    """
    import copy

    return TrainContext(copy.deepcopy(ctx.model).cpu(), ctx.data.to("cpu"), ctx.schedule,
                        ctx.settings, ctx.objective)


def _worker_main(index: int, port: int, processes: int, ctx: TrainContext, device_name: str,
                 threads: int, parent: int) -> None:
    """Entry point of a spawned rank (index 0 is rank 1)."""
    import copy
    import os

    import torch.distributed as dist

    from swamp import cpu
    from swamp.world import open_groups, timeout, watch_parent

    rank = index + 1
    watch_parent(parent)
    if cpu.allocator_wanted():
        cpu.tune_allocator()
    torch.set_num_threads(max(1, threads))
    device = torch.device(device_name)
    if device.type == "cuda":
        count = max(1, torch.cuda.device_count())
        device = torch.device("cuda", ((device.index or 0) + rank) % count)
        torch.cuda.set_device(device)
    # The unpickled model lives in memory shared with the other ranks: train in a copy.
    ctx = TrainContext(copy.deepcopy(ctx.model).to(device), ctx.data.to(device), ctx.schedule,
                       ctx.settings, ctx.objective)
    try:
        store = dist.TCPStore("127.0.0.1", port, processes, is_master=False, timeout=timeout())
        store.set(f"swamp/ready/{rank}", "1")
        dist.init_process_group("gloo", store=store, rank=rank, world_size=processes,
                                timeout=timeout())
        group = Group(rank, processes, device, owns_default=True)
        open_groups(group)
        engine = DistributedEngine(group, threads=threads)
        engine.serve(ctx)
        group.close()
        # Nothing is left to do: skip interpreter teardown (and the C++ destructors of the
        # process group's threads, which can race at exit).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except KeyboardInterrupt:
        os._exit(130)
    except SwampError as exc:
        if isinstance(exc, RunStopped):     # rank 0 reports the error itself
            raise SystemExit(1) from None
        print(f"swamp: rank {rank}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except Exception:
        traceback.print_exc()
        raise
