"""The one step loop every engine trains with.

`fit(replicas, plan)` trains one module (`SingleReplica`) or N stacked copies
(`StackedReplicas`) from iteration `plan.start` to `plan.stop` of the schedule: per step it
draws each replica's own batch (its seeded order and augmentation), sets the learning rate,
runs forward and loss under the precision's autocast, steps one optimiser (clipping each
replica's gradient norm first when asked) and then runs the callbacks: re-masking, the loss
check, SWA, progress and checkpoints. A feature of training is added here once and holds in
every engine.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from swamp.config import TrainSettings
from swamp.data import Augment, Split
from swamp.data.stream import StepStream, is_lazy
from swamp.train import stop as stops
from swamp.train.callbacks import (SWA, Callback, Checkpoint, LossCheck, Progress, ReMask,
                                   overrides)
from swamp.train.gradual import GradualPrune
from swamp.train.objective import CrossEntropy, Objective
from swamp.train.precision import Precision
from swamp.train.replicas import SingleReplica
from swamp.train.schedule import BatchOrder, Schedule
from swamp.train.state import LoopState

StateDict = dict[str, torch.Tensor]


@dataclass
class ParticleResult:
    """What one trained particle hands back to the level loop."""

    state: StateDict            # its solution: SWA average if it kept one, else final weights
    averaged: int               # number of snapshots in the SWA average (0: none)
    train_loss: float           # mean loss of its last epoch


def make_optimizer(params: Sequence[torch.Tensor], t: TrainSettings) -> torch.optim.Optimizer:
    params = list(params)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                               weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, betas=(t.momentum or 0.9, 0.999),
                            weight_decay=t.weight_decay)


@dataclass
class TrainPlan:
    """What one call of `fit` trains: each replica's batches and a segment of the schedule."""

    data: Split
    schedule: Schedule
    settings: TrainSettings
    start: int
    stop: int
    order_seeds: list[int]
    augment_seeds: list[int]
    subsets: list[torch.Tensor | None]
    labels: list[str]                        # named in errors: "level 3, particle 1"
    augment: Augment | None = None
    objective: Objective = field(default_factory=CrossEntropy)
    swa: bool = False
    mask: Any = None                         # a core.masks.Mask, or None (dense)
    rng_seed: int = 0                        # torch's global RNG (dropout) during training
    gradual: Any = None                      # a train.gradual.GradualStep: prune `mask` in
                                             # training (issue 12), else the mask is fixed

    @property
    def n(self) -> int:
        return len(self.order_seeds)


class Batches:
    """Each replica's mini-batch at iteration t, stacked replica-major: (N, B, ...)."""

    def __init__(self, plan: TrainPlan, device: torch.device):
        self.x, self.y = plan.data.x, plan.data.y
        self.orders = [BatchOrder(len(plan.data), plan.settings.batch_size, seed, device, sub)
                       for seed, sub in zip(plan.order_seeds, plan.subsets)]
        self.generators = [torch.Generator().manual_seed(s) for s in plan.augment_seeds]
        self.augment = plan.augment
        self.steps_per_epoch = self.orders[0].steps_per_epoch
        # images streamed from files (data/stream.py): the same seeded batch indices, decoded
        # ahead by DataLoader workers; normalised and augmented here, on the device
        self.stream = (StepStream(self.x, self._index, plan.stop) if is_lazy(self.x)
                       else None)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def _index(self, step: int) -> torch.Tensor:
        if len(self.orders) == 1:
            return self.orders[0].batch(step)
        return torch.stack([order.batch(step) for order in self.orders])       # (N, B)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stream is not None:
            idx, x = self.stream.next(step)
        else:
            idx = self._index(step)
            x = self.x[idx]
        y = self.y[idx]
        if len(self.orders) == 1:
            if self.augment is not None:
                x = self.augment(x, self.generators[0])
            return x.unsqueeze(0), y.unsqueeze(0)
        if self.augment is not None:
            x = torch.stack([self.augment(x[i], g) for i, g in enumerate(self.generators)])
        return x, y


def fit(replicas: Any, plan: TrainPlan, *, precision: str = "fp32",
        clip_grad_norm: float | None = None, checkpoint: Any = None,
        resume: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
        progress: Callable[[int], None] | None = None,
        optimizer_state: dict[str, torch.Tensor] | None = None,
        callbacks: Sequence[Callback] = ()) -> tuple[list[ParticleResult], torch.optim.Optimizer]:
    """Train `replicas` over `plan` (see the module docstring); one result per replica and
    the optimiser (its state is what `--rewind-optimizer` keeps at the rewind point).

    `optimizer_state`: per-replica optimiser state by parameter name (`optimizer_state_by_name`)
    to start from, e.g. the rewind point's momentum; `checkpoint`: a CheckpointFile to write
    to; `resume`: what `CheckpointFile.load` gave back, to continue from.
    """
    params = replicas.parameters()
    device = params[0].device
    optimizer = make_optimizer(params, plan.settings)
    if optimizer_state:
        load_optimizer_state(optimizer, replicas, optimizer_state)
    amp = Precision(precision, device)
    batches = Batches(plan, device)
    loss_check = LossCheck(plan.labels, batches.steps_per_epoch, plan.stop)
    swa = SWA(plan.schedule.averages_after) if plan.swa else None
    chain: list[Callback] = [
        *([_masking(plan)] if plan.mask is not None else []), loss_check,
        *([swa] if swa is not None else []), *callbacks,
        *([Progress(progress)] if progress is not None else []),
        *([Checkpoint(checkpoint, plan.stop)] if checkpoint is not None else [])]
    # closing: streamed images' loader workers stop with the loop, also on a stop or an error
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            contextlib.closing(batches):
        torch.manual_seed(plan.rng_seed)
        loop = LoopState(replicas, optimizer, amp, batches, chain, plan.start, plan.stop)
        if resume is not None:
            loop.restore(*resume)
        for cb in chain:
            cb.on_start(loop)
        after_step = [cb.on_step_end for cb in chain if overrides(cb, "on_step_end")]
        objective, schedule, clip = plan.objective, plan.schedule, clip_grad_norm
        # d(sum of the replicas' losses)/d(each loss) = 1, without a sum node in the graph
        ones = torch.ones(replicas.n, device=device)
        replicas.train()
        for step in range(loop.step, plan.stop):
            if stops.requested() is not None:
                for cb in chain:
                    cb.on_stop(loop)
                stops.raise_if_requested()
            x, y = batches(step)
            lr = schedule.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with amp.autocast():
                losses = objective(replicas.forward(x), x, y)
            optimizer.zero_grad(set_to_none=True)
            amp.backward(losses, ones)
            if clip:
                amp.unscale_(optimizer)
                replicas.clip_grad_norm_(clip)
            amp.step(optimizer)
            loop.step = step + 1
            loop.losses = losses.detach().float()
            for hook in after_step:
                hook(loop)
    if swa is not None and swa.average.count > 0:
        states, count = replicas.split(swa.average.mean), swa.average.count
    else:
        states, count = replicas.split(replicas.state()), 0
    results = [ParticleResult(s, count, loss) for s, loss in zip(states, loss_check.last)]
    return results, optimizer


def _masking(plan: TrainPlan) -> Callback:
    """Re-masking after every step: of the fixed mask, or of the gradually pruned one."""
    if plan.gradual is None:
        return ReMask(plan.mask)
    return GradualPrune(plan.mask, plan.gradual)


def train_steps(model: torch.nn.Module, mask: Any, train: Split, schedule: Schedule,
                settings: TrainSettings, *, start: int, stop: int, order_seed: int,
                augment: Augment | None = None, augment_seed: int = 0,
                subset: torch.Tensor | None = None,
                on_step: Callable[[int], None] | None = None,
                label: str = "training", objective: Objective | None = None,
                callbacks: Sequence[Callback] = (), gradual: Any = None) -> ParticleResult:
    """Train one module in place from iteration `start` to `stop` of the schedule: `fit` on a
    `SingleReplica`, for callers with one model and no checkpoints (tests, notebooks)."""
    plan = TrainPlan(train, schedule, settings, start, stop, [order_seed], [augment_seed],
                     [subset], [label], augment=augment, swa=schedule.swa, mask=mask,
                     rng_seed=order_seed, objective=objective or CrossEntropy(),
                     gradual=gradual)

    def report(done: int) -> None:
        if done > start:                 # the first report is the start itself
            on_step(done)
    replica = SingleReplica(model, captures=plan.objective.captures)
    (result,), _ = fit(replica, plan, precision=settings.precision,
                       clip_grad_norm=settings.clip_grad_norm,
                       progress=report if on_step is not None else None, callbacks=callbacks)
    return result


# ---- optimiser state by parameter name (the rewind point's momentum) -----------------------

def optimizer_state_by_name(optimizer: torch.optim.Optimizer, replicas: Any
                            ) -> dict[str, torch.Tensor]:
    """The optimiser's state of a single replica as `{"<param name>::<key>": tensor}`."""
    ids = {id(p): name for name, p in replicas.named_parameters().items()}
    out = {}
    for p, entries in optimizer.state.items():
        name = ids.get(id(p))
        for key, value in entries.items():
            if name is not None and isinstance(value, torch.Tensor):
                out[f"{name}::{key}"] = value.detach().clone()
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, replicas: Any,
                         state: dict[str, torch.Tensor]) -> None:
    """Start `optimizer` from per-replica state saved by `optimizer_state_by_name`; tensors
    shaped like one replica's parameter are expanded to every replica."""
    params = replicas.named_parameters()
    for key, value in state.items():
        name, entry = key.rsplit("::", 1)
        p = params[name]
        per_replica = p.shape[1:] if replicas.n > 1 else p.shape
        t = replicas.expand(value) if value.dim() and value.shape == per_replica else value.clone()
        optimizer.state[p][entry] = t.to(p.device)
