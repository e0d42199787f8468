"""The method-specific decisions of one run: a `Method`'s strategies bound to its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from swamp.core.masks import Mask
from swamp.core.seeds import derive_seed

if TYPE_CHECKING:
    from swamp.methods import Method

StateDict = dict[str, torch.Tensor]
DenseLoader = Callable[[], StateDict]


class MethodPlan:
    """The method-specific decisions of one run (see the module docstring)."""

    def __init__(self, method: Method, settings: Any, n_train: int,
                 device: torch.device | str = "cpu"):
        self.method = method
        self.settings = settings
        self.n_train = n_train
        self.device = torch.device(device)
        self.one_target = ("target_sparsity" in method.reads
                           and settings.method.target_sparsity)
        self.levels = 1 if self.one_target else settings.prune.levels
        self._segments: list[torch.Tensor] | None = None

    def particles_at(self, level: int) -> int:
        return self.method.particle_plan.count(self.settings, level)

    def target_density(self, level: int) -> float:
        if self.one_target and level >= 1:
            return 1.0 - float(self.settings.method.target_sparsity)
        from swamp.core.patterns import NM, nm_counts, pattern_of   # N:M: k/M per group

        if isinstance(nm := pattern_of(self.settings.prune), NM):
            return nm_counts(nm, self.settings.prune.prune_fraction, level)[level] / nm.m
        return (1 - self.settings.prune.prune_fraction) ** level

    def segments(self) -> list[torch.Tensor]:
        """Disjoint, seeded segments of the training split (fixed for the run)."""
        if self._segments is None:
            n = int(self.settings.method.particles or 1)
            g = torch.Generator().manual_seed(derive_seed(self.settings.run.seed, "segments"))
            perm = torch.randperm(self.n_train, generator=g)
            self._segments = [c.sort().values.to(self.device) for c in perm.chunk(n)]
        return self._segments

    def subsets(self, level: int) -> list[torch.Tensor | None]:
        """The training subset of each particle of a level (None: the whole split)."""
        if self.method.particle_plan.disjoint:
            return [*self.segments(), None]
        return [None] * self.particles_at(level)

    def members(self, n_trained: int) -> list[int]:
        """Indices of the particles that form the level (output ensemble, mask votes):
        all of them, except the ticket particle of disjoint-data methods."""
        return list(range(n_trained - 1 if self.method.particle_plan.disjoint else n_trained))

    def start_state(self, rewind: StateDict, previous: StateDict | None) -> StateDict:
        return self.method.start.state(rewind, previous)

    def solution(self, particles: Sequence[StateDict], val_acc: Sequence[float], mask: Mask,
                 refit: Callable[[StateDict], StateDict],
                 score_val: Callable[[StateDict], float]) -> tuple[StateDict, dict]:
        """The level's solution and a record of how it was made.

        `refit` masks nothing: it loads a state, recomputes BatchNorm and returns the state.
        """
        return self.method.solution.make(self.settings, particles, val_acc, mask, refit,
                                         score_val)

    def next_mask(self, level: int, solution: StateDict,
                  members: Sequence[StateDict] | None, mask: Mask, dense: DenseLoader
                  ) -> tuple[Mask, dict | None]:
        """The mask of level + 1 and a record of a mask combination (None otherwise).
        `members` are the member particles' states, None when they are not in memory."""
        return self.method.next_mask.make(self.settings, level, solution, members, mask,
                                          dense)

