"""The registry of methods: each named method is a setting of the one level loop (DESIGN.md 2).

A `Method` declares its defaults, the `MethodSettings` fields it reads and the checks of
settings that do not apply to it; it is composed of small strategies that answer, for one
run (`Method.plan`), the questions on which the methods differ:

- which particles a level trains (`Particles`): how many (swamp+: one until
  --swamp-plus-level), on which data (colt: disjoint segments of the training split, plus
  one *ticket particle* on the whole split that is the level's solution);
- where a level starts (`Start`): the rewind point, or (sms) the previous level's solution
  under the new mask, trained over the full T0..T schedule again;
- how the particles become the level's solution (`Solution`): their uniform average, a
  greedy soup chosen on the validation split only, or (colt) the ticket particle;
- how the next mask is made (`NextMask`): prune the solution; draw it at random with the
  same density; prune the dense level-0 solution straight to the level's density (oneshot);
  or let each particle prune its own weights and combine the masks (colt: overlap;
  mask-vote: a share of votes), see `swamp.core.combine`;
- whether the weights train at all (`ScoreTickets`, slt): strong lottery tickets train a
  score per weight with the weights frozen, each level at its own density
  (`swamp.methods.slt`); its next mask is the candidate set (`CandidateMask`).

Nothing here trains and nothing imports the settings module: settings are read duck-typed.
The registry imports no torch (`swamp --help` and `swamp list` read it): the strategies
import the lower floor when they run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from swamp.errors import SwampError, did_you_mean

if TYPE_CHECKING:
    import torch

    from swamp.core.masks import Mask
    from swamp.methods.plan import MethodPlan

__all__ = ["METHODS", "Method", "get_method", "readers"]

StateDict = "dict[str, torch.Tensor]"
DenseLoader = Callable[[], Any]

# Settings only some methods read, with the value that means "not set" (refused elsewhere:
# they would change the run hash without changing the run).
OPTIONAL = {"vote_share": 0.5, "swamp_plus_level": None, "target_sparsity": None,
            # strong lottery tickets (issue 16)
            "slt_init": "signed-constant", "slt_combine": "average"}
SLT_INITS = ("signed-constant", "kaiming", "model")    # train/scores.py: INITS + the model's
SLT_COMBINES = ("average", "vote", "overlap")


# ---- strategies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Particles:
    """How many particles a level trains and on which data."""

    single_until: bool = False   # swamp+: one particle before --swamp-plus-level
    disjoint: bool = False       # colt: one segment each, plus a ticket particle on all data
    single_dense: bool = False   # sms-paper: one dense model at level 0 (the pretrained one)

    def count(self, settings: Any, level: int) -> int:
        n = int(settings.method.particles or 1)
        if self.single_until and level < swamp_plus_level(settings):
            return 1
        if self.single_dense and level == 0:
            return 1
        return n


def swamp_plus_level(settings: Any) -> int:
    k = settings.method.swamp_plus_level
    return math.ceil(settings.prune.levels / 2) if k is None else k


@dataclass(frozen=True)
class Start:
    """Where a level starts: the rewind point, or the previous level's solution."""

    previous: bool = False

    def state(self, rewind: StateDict, previous: StateDict | None) -> StateDict:
        return previous if self.previous and previous is not None else rewind


class Solution:
    """The level's solution: the uniform average or a greedy soup of the particles."""

    def make(self, settings: Any, particles: Sequence[StateDict], val_acc: Sequence[float],
             mask: Mask, refit: Callable[[StateDict], StateDict],
             score_val: Callable[[StateDict], float]) -> tuple[StateDict, dict]:
        from swamp.core.averaging import average_states
        from swamp.methods.soups import greedy_soup

        if len(particles) == 1:
            return particles[0], {"solution": "single particle"}

        def make(indices: list[int]) -> StateDict:
            return refit(mask.apply_to_state_dict(average_states([particles[i]
                                                                  for i in indices])))

        if settings.method.soup == "greedy":
            soup, chosen, acc = greedy_soup(particles, val_acc, make, score_val)
            return soup, {"solution": "greedy soup", "soup": chosen, "soup_val_acc": acc}
        return make(list(range(len(particles)))), {"solution": "uniform average"}


class TicketSolution(Solution):
    """Disjoint data: the level's solution is the ticket particle on the whole split."""

    def make(self, settings, particles, val_acc, mask, refit, score_val):
        return particles[-1], {"solution": "ticket particle", "index": len(particles) - 1}


def _generator(settings: Any, level: int) -> "torch.Generator":
    import torch

    from swamp.core.seeds import derive_seed

    return torch.Generator().manual_seed(derive_seed(settings.run.seed, "prune", level))


@dataclass(frozen=True)
class NextMask:
    """Prune the level's solution (`random`: with random scores, at the same density)."""

    random: bool = False
    combines: bool = False     # needs the members' states (only while they are in memory)

    def make(self, settings: Any, level: int, solution: StateDict,
             members: Sequence[StateDict] | None, mask: Mask, dense: DenseLoader
             ) -> tuple[Mask, dict | None]:
        from swamp.core.patterns import pattern_of
        from swamp.core.pruning import prune

        p = settings.prune
        scorer = "random" if self.random else p.scorer
        return prune(solution, mask, p.prune_fraction, scorer=scorer, scope=p.scope,
                     generator=_generator(settings, level), pattern=pattern_of(p)), None

    def check(self, settings: Any, name: str) -> list[tuple[bool, str]]:
        scorer = settings.prune.scorer
        return [(self.random and scorer not in ("magnitude", "random"),
                 f"method {name} draws random masks; `scorer` {scorer} does not apply")]


@dataclass(frozen=True)
class OneshotMask(NextMask):
    """Prune the dense level-0 solution straight to the next level's density."""

    def make(self, settings, level, solution, members, mask, dense):
        import torch

        from swamp.core.masks import Mask
        from swamp.core.patterns import pattern_of
        from swamp.core.pruning import keep_exactly, score, target_counts

        p, target = settings.prune, settings.method.target_sparsity
        pattern = pattern_of(p)
        ones = Mask({n: torch.ones_like(mask[n]) for n in mask.names})
        scores = score(dense(), ones, p.scorer, _generator(settings, 0), pattern)
        if target:
            # One step from dense to the target sparsity: the same exact count rule as a
            # level, globally or per layer.
            counts = target_counts(ones, float(target), 1, p.scope, pattern)[1]
        else:
            counts = target_counts(ones, p.prune_fraction, level + 1, p.scope,
                                   pattern)[level + 1]
        return keep_exactly(scores, ones, counts, p.scope, pattern=pattern), None


@dataclass(frozen=True)
class CombinedMask(NextMask):
    """Each member prunes itself; the masks vote (share 1: overlap, else --vote-share)."""

    overlap: bool = False
    combines: bool = True

    def make(self, settings, level, solution, members, mask, dense):
        if members is None:
            raise SwampError("this run's next mask combines the particles' masks and its "
                             f"level {level} has no saved next_mask.safetensors; rerun "
                             f"level {level} (delete its folder)")
        from swamp.core.combine import combine_masks
        from swamp.core.patterns import pattern_of

        p = settings.prune
        share = 1.0 if self.overlap else settings.method.vote_share
        return combine_masks(members, mask, p.prune_fraction, share, scorer=p.scorer,
                             scope=p.scope, generator=_generator(settings, level),
                             pattern=pattern_of(p))


# ---- strong lottery tickets (issue 16) -----------------------------------------------------
@dataclass(frozen=True)
class CandidateMask(NextMask):
    """slt: every level chooses among all prunable weights (its own density), so the mask
    handed to the next level is the candidate set, all ones."""

    def make(self, settings, level, solution, members, mask, dense):
        from swamp.core.masks import Mask

        return Mask({n: mask[n] | ~mask[n] for n in mask.names}), None

    def check(self, settings: Any, name: str) -> list[tuple[bool, str]]:
        return []


@dataclass(frozen=True)
class ScoreTickets:
    """Strong lottery tickets (edge-popup): each particle trains one score per prunable
    weight with the weights frozen at `slt_init`; the level keeps the top weights by
    |score| at its density, with the exact counts of an IMP level (the loop trains a level
    with `methods/slt.py: ScoreLevel`, which this registry does not import: no torch here)."""

    def check(self, settings: Any, name: str) -> list[tuple[bool, str]]:
        m, p, run = settings.method, settings.prune, settings.run
        n = m.particles
        return [
            (m.slt_combine != "average" and n is not None and n < 2,
             f"`slt_combine` {m.slt_combine} combines the masks of several particles; use "
             f"`particles` 2 or more (got {n})"),
            (p.scorer != "magnitude",
             f"method {name} ranks trained scores; `scorer` {p.scorer} does not apply"),
            (run.engine == "distributed" or run.processes > 1,
             f"method {name} trains its score particles in this process; use `engine` auto, "
             f"sequential or vectorised (and no `processes`)"),
        ]


# ---- methods ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A named method: defaults, the settings it reads, its checks and its strategies."""

    name: str
    particles: int
    swa: bool
    summary: str
    fixed_particles: bool = False
    min_particles: int = 1
    reads: tuple[str, ...] = ()            # MethodSettings fields besides method and swa
    particle_plan: Particles = field(default_factory=Particles)
    start: Start = field(default_factory=Start)
    solution: Solution = field(default_factory=Solution)
    next_mask: NextMask = field(default_factory=NextMask)
    scores: "ScoreTickets | None" = None     # slt: scores are trained, weights frozen

    def check(self, settings: Any) -> None:
        """Raise SwampError for settings that do not apply to this method."""
        for bad, message in self.checks(settings):
            if bad:
                raise SwampError(message)

    def checks(self, settings: Any) -> list[tuple[bool, str]]:
        m, name, n = settings.method, self.name, settings.method.particles
        checks = [
            (n is not None and n < self.min_particles,
             f"method {name} combines the masks of several particles; use `particles` 2 or "
             f"more (got {n})"),
            (m.soup not in ("uniform", "greedy"),
             f"unknown soup '{m.soup}'; use uniform or greedy"),
            (m.soup == "greedy" and "soup" not in self.reads,
             f"`soup` greedy selects among averaged particles; method {name} does not "
             f"average particles (use {', '.join(readers('soup'))})"),
            (m.soup == "greedy" and settings.data.val_fraction == 0,
             "`soup` greedy selects on the validation split and `val_fraction` 0 leaves "
             "none; use `val_fraction` > 0 (e.g. 0.1) or `soup` uniform"),
        ]
        ranges = {
            "vote_share": (not 0.0 < m.vote_share <= 1.0,
                           f"`vote_share` must be in (0, 1] (got {m.vote_share})"),
            "swamp_plus_level": (m.swamp_plus_level is not None
                                 and not 0 <= m.swamp_plus_level <= settings.prune.levels,
                                 f"`swamp_plus_level` must be between 0 and `levels` "
                                 f"{settings.prune.levels} (got {m.swamp_plus_level})"),
            "target_sparsity": (m.target_sparsity is not None
                                and not 0.0 < m.target_sparsity < 1.0,
                                f"`target_sparsity` must be in (0, 1) (got "
                                f"{m.target_sparsity})"),
            "slt_init": (m.slt_init not in SLT_INITS,
                         f"unknown `slt_init` '{m.slt_init}'; use {', '.join(SLT_INITS)}"),
            "slt_combine": (m.slt_combine not in SLT_COMBINES,
                            f"unknown `slt_combine` '{m.slt_combine}'; use "
                            f"{', '.join(SLT_COMBINES)}"),
        }
        for setting, unset in OPTIONAL.items():
            checks.append((getattr(m, setting) != unset and setting not in self.reads,
                           f"`{setting}` applies to `method` {' or '.join(readers(setting))} "
                           f"only (got `method` {name})"))
            checks.append(ranges[setting])
        return (checks + self.next_mask.check(settings, name)
                + (self.scores.check(settings, name) if self.scores is not None else []))

    def plan(self, settings: Any, n_train: int, device: "torch.device | str" = "cpu"
             ) -> "MethodPlan":
        from swamp.methods.plan import MethodPlan

        return MethodPlan(self, settings, n_train, device)


_SHARED = ("particles", "soup")
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("imp", 1, False, "IMP with rewinding (T0=0: lottery ticket)", True),
    Method("imp-swa", 1, True, "IMP with SWA inside the single particle", True),
    Method("imp-wa", 4, False, "ablation: average N particles without SWA", reads=_SHARED),
    Method("swamp", 4, True, "SWAMP: average N particles, each with SWA", reads=_SHARED),
    Method("swamp+", 4, True, "SWAMP with one particle before --swamp-plus-level, N from it on",
           reads=(*_SHARED, "swamp_plus_level"), particle_plan=Particles(single_until=True)),
    Method("sms", 4, False, "Sparse Model Soups: no rewinding, each level retrains the last "
           "soup over the schedule T0..T (--soup uniform|greedy)", reads=_SHARED,
           start=Start(previous=True)),
    Method("sms-paper", 4, False, "Sparse Model Soups as published: one dense model, then each "
           "level retrains N copies of the pruned last soup (recipe: --schedule linear "
           "--warmup 0.1 --rewind-epochs 0)", reads=_SHARED, start=Start(previous=True),
           particle_plan=Particles(single_dense=True)),
    Method("colt", 2, False, "COLT: particles on disjoint data segments, next mask = overlap of "
           "their masks; a ticket particle on all data is the solution", min_particles=2,
           reads=("particles",), particle_plan=Particles(disjoint=True),
           solution=TicketSolution(), next_mask=CombinedMask(overlap=True)),
    Method("mask-vote", 4, False, "each particle prunes itself; a weight survives if >= "
           "--vote-share of particles keep it", min_particles=2,
           reads=(*_SHARED, "vote_share"), next_mask=CombinedMask()),
    Method("random", 1, False, "random masks at the same per-level densities", True,
           next_mask=NextMask(random=True)),
    Method("slt", 1, False, "strong lottery tickets: frozen weights (--slt-init), a trained "
           "score per weight, the top |score| at each level's density; N particles combined "
           "by --slt-combine", reads=("particles", "slt_init", "slt_combine"),
           next_mask=CandidateMask(), scores=ScoreTickets()),
    Method("oneshot", 1, False, "prune the dense solution straight to each level's density "
           "(or --target-sparsity), then train", True, reads=("target_sparsity",),
           next_mask=OneshotMask()),
]}


def readers(setting: str) -> list[str]:
    """The methods that read a MethodSettings field."""
    return [m.name for m in METHODS.values() if setting in m.reads]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise SwampError(f"unknown method '{name}';{did_you_mean(name, METHODS)} known: "
                         f"{', '.join(METHODS)} "
                         f"(see `swamp list`)")
    return METHODS[name]
