"""The distributed engine: ranks own particles; rank 0 runs the level loop.

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
from typing import Any, Callable

import torch

from swamp.distributed import Group
from swamp.engines.base import LevelTask, ParticleJob, ProgressFn, TrainContext
from swamp.engines.sequential import SequentialEngine
from swamp.errors import SwampError
from swamp.core.masks import Mask
from swamp.training import ParticleResult

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
        self.local = SequentialEngine(threads=threads)
        self._mid_level = False
        self._stopped = False

    @property
    def is_worker(self) -> bool:
        return self.group.rank != 0

    @property
    def decision(self) -> dict:
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
        self._mid_level = True
        state_layout = layout_of(task.start_state)
        mask_layout = layout_of(dict(task.mask.items()))
        header = {"op": "train", "level": task.level, "start_step": task.start_step,
                  "jobs": [(j.level, j.index, j.order_seed, j.augment_seed,
                            None if j.subset is None else j.subset.cpu()) for j in task.jobs],
                  "state": state_layout, "mask": mask_layout,
                  # the schedule and training settings travel too: rank 0's ctx decides
                  "schedule": ctx.schedule, "settings": ctx.settings}
        self._broadcast_object(header)
        self._broadcast_state(task.start_state, state_layout)
        self._broadcast_state(dict(task.mask.items()), mask_layout)
        results = self._train_and_gather(task, ctx, progress)
        self._mid_level = False
        assert results is not None
        return results

    def close(self, rows: list[dict[str, Any]] | None = None) -> None:
        """Tell the other ranks to stop (rank 0), and release the processes this one started."""
        if self.group.closed:
            return
        # Called from the level loop's `finally`: an exception in flight means a failed run.
        failure = sys.exc_info()[1]
        if not self.is_worker and not self._mid_level and not self._stopped:
            try:
                self._broadcast_object({"op": "stop", "rows": rows or [],
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
            mask = Mask(self._broadcast_state(None, header["mask"]))
            jobs = [ParticleJob(level, index, order, augment,
                                None if subset is None else subset.to(self.group.device))
                    for level, index, order, augment, subset in header["jobs"]]
            task = LevelTask(header["level"], state, mask, header["start_step"], jobs)
            level_ctx = TrainContext(ctx.model, ctx.data, header["schedule"], header["settings"])
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
                                 f"--model and data")
            if mine:
                local = LevelTask(task.level, task.start_state, task.mask, task.start_step,
                                  [task.jobs[pos] for pos in mine], task.on_particle_done)
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
