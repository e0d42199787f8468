"""The loss the training loop calls.

Every objective sees the outputs of all replicas at once, replica-major: logits of shape
(N, B, ...) for N replicas (N = 1 for one module), the module outputs it asked for in
`captures` (by module name, same leading dims) and the batch. It returns one mean loss per
replica, shape (N,). Later objectives (language-model loss, distillation against a teacher,
moment matching) are new classes here; the loop does not change.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from swamp.errors import SwampError


class Outputs:
    """The outputs of all replicas: `logits` (N, B, ...) and the captured `features`.

    One module's outputs are kept as they are (`one`, no replica dim): objectives that can,
    compute its loss straight from them, so the loop adds no autograd nodes to a plain
    PyTorch step; `logits` adds the dim when asked.
    """

    def __init__(self, logits: torch.Tensor | None = None,
                 features: dict[str, torch.Tensor] | None = None, *,
                 one: torch.Tensor | None = None):
        self._logits = logits
        self.features = features or {}
        self.one = one

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            assert self.one is not None
            self._logits = self.one.unsqueeze(0)
        return self._logits


class Objective(Protocol):
    # Names of modules (as in `model.named_modules()`) whose outputs the objective reads.
    captures: tuple[str, ...]

    def __call__(self, outputs: Outputs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-replica mean loss, shape (N,); x: (N, B, ...), y: (N, B)."""
        ...


class CrossEntropy:
    """Classification cross-entropy of logits (N, B, C) against labels (N, B)."""

    captures: tuple[str, ...] = ()

    def __call__(self, outputs: Outputs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if outputs.one is not None:
            # One module: exactly the loss a plain PyTorch loop computes (same reduction).
            return F.cross_entropy(outputs.one, y[0]).reshape(1)
        logits = outputs.logits
        n = logits.shape[0]
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                               reduction="none").view(n, -1).mean(1)

    def __repr__(self) -> str:
        return "CrossEntropy()"


# ---- distillation against the dense starting model (issue 12) ------------------------------

DISTILL = ("none", "squarehead", "kd")


def _first_tensor(out: object) -> torch.Tensor:
    """A module's output as one tensor: transformer blocks return (hidden, ...) tuples."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    assert isinstance(out, torch.Tensor)
    return out


def squarehead_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """SquareHead (Kurtic et al. 2023, arXiv 2310.06927): the sum over layers of the mean
    squared error between the student's and the teacher's outputs of a layer, normalised by
    the mean square of the teacher's; per replica. Tensors are (N, B, ...); returns (N,).
    (A floor of 1e-12 under the normaliser keeps an all-zero teacher output finite.)"""
    total = None
    for s, t in zip(student, teacher):
        s, t = s.float().flatten(1), t.float().flatten(1)
        term = (s - t).pow(2).mean(1) / t.pow(2).mean(1).clamp_min(1e-12)
        total = term if total is None else total + term
    assert total is not None
    return total


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s knowledge distillation: KL(softmax(t/T) || softmax(s/T)) summed over
    classes, averaged over the batch, times T^2 (so gradients keep their scale as T changes);
    logits (N, B, C) -> (N,)."""
    T = float(temperature)
    log_s = F.log_softmax(student.float() / T, dim=-1)
    log_t = F.log_softmax(teacher.float() / T, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    return kl.flatten(1).mean(1) * (T * T)


class Distill:
    """`task_weight` x the task loss + `distill_weight` x a distillation loss against a
    frozen teacher in eval mode: `squarehead` (normalised per-layer feature MSE of the
    modules named in `layers`) or `kd` (KL of the logits at `temperature`, T^2-scaled).

    The teacher is bound per level (`with_teacher`): without one (level 0 of a run whose
    teacher is its dense level-0 solution) the loss is the task loss alone.
    """

    def __init__(self, kind: str, *, task: Objective | None = None, task_weight: float = 1.0,
                 distill_weight: float = 1.0, temperature: float = 2.0,
                 layers: tuple[str, ...] = ()):
        if kind not in ("squarehead", "kd"):
            raise SwampError(f"unknown `distill` {kind!r}; use {', '.join(DISTILL)}")
        if kind == "squarehead" and not layers:
            raise SwampError("`distill` squarehead needs layers to match (`distill_layers`)")
        self.kind = kind
        self.task = task or CrossEntropy()
        self.task_weight, self.distill_weight = float(task_weight), float(distill_weight)
        self.temperature = float(temperature)
        self.layers = tuple(layers) if kind == "squarehead" else ()
        self.captures = tuple(dict.fromkeys((*self.task.captures, *self.layers)))
        self.teacher: torch.nn.Module | None = None
        self._teacher_out: dict[str, torch.Tensor] = {}

    def with_teacher(self, template: torch.nn.Module, state: dict[str, torch.Tensor]
                     ) -> "Distill":
        """A copy of this objective whose teacher is `template` with the weights `state`,
        frozen and in eval mode (BatchNorm uses its running statistics; no dropout)."""
        import copy

        out = copy.copy(self)
        teacher = copy.deepcopy(template)
        for m in teacher.modules():            # hooks a replica registered on the template
            m._forward_hooks.clear()
        teacher.load_state_dict(state)
        teacher.eval().requires_grad_(False)
        out._teacher_out = {}
        modules = dict(teacher.named_modules())
        for name in self.layers:
            modules[name].register_forward_hook(out._keeper(name))
        out.teacher = teacher
        return out

    def _keeper(self, name: str):
        def hook(module: torch.nn.Module, args: object, output: object) -> None:
            self._teacher_out[name] = _first_tensor(output)
        return hook

    def __call__(self, outputs: Outputs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        task = self.task(outputs, x, y)
        if self.teacher is None:
            return task
        n, b = x.shape[0], x.shape[1]
        with torch.no_grad():
            t_logits = self.teacher(x.flatten(0, 1))
            t_feats = [self._teacher_out.pop(k) for k in self.layers]
        if self.kind == "kd":
            extra = kd_loss(outputs.logits, t_logits.view(n, b, *t_logits.shape[1:]),
                            self.temperature)
        else:
            student = [_first_tensor(outputs.features[k]) for k in self.layers]
            extra = squarehead_loss(student, [t.view(n, b, *t.shape[1:]) for t in t_feats])
        return self.task_weight * task + self.distill_weight * extra.to(task.dtype)

    def __repr__(self) -> str:
        return (f"Distill({self.kind!r}, task={self.task!r}, task_weight={self.task_weight}, "
                f"distill_weight={self.distill_weight}, temperature={self.temperature}, "
                f"layers={self.layers})")


def default_distill_layers(model: torch.nn.Module, prunable: list[str]) -> tuple[str, ...]:
    """SquareHead's layers when none are named: the blocks of the model's largest
    `nn.ModuleList` (a transformer's layers), else the output of every prunable module but
    the last (the head, whose output the task loss and KD already see)."""
    lists = [(len(m), name) for name, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) >= 2]
    if lists:
        size, name = max(lists)
        return tuple(f"{name}.{i}" for i in range(size))
    modules = list(dict.fromkeys(p.rsplit(".", 1)[0] for p in prunable if "." in p))
    return tuple(modules[:-1])
