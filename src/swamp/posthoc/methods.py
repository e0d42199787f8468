"""The pseudo-methods of `swamp compare`: made from finished runs, with no training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


Info = Callable[[str], None]


@dataclass(frozen=True)
class PosthocMethod:
    """A pseudo-method of `compare`: made from finished runs of `source`, no training."""

    name: str
    summary: str
    source: str
    min_seeds: int
    needs_validation: bool
    seeds_hint: str    # why it needs min_seeds (the error when fewer are given)
    # (seeds, run directory of (source, seed), runs root, device, info) -> report directories
    build: Callable[[Sequence[int], Callable[[int], Path], Path, str, Info], list[Path]]
    # (its posthoc.json record, source method) -> one line for the report
    describe: Callable[[dict, str], str]


def _pools(seeds, source_dir, runs_root, device, info):
    from swamp.posthoc.pools import lottery_pools
    from swamp.store import RunStore   # torch; `swamp --help` reads this registry without it

    out = []
    for seed in seeds:
        src = source_dir(seed)
        info(f"lottery pools over {src}")
        out.append(lottery_pools(src, RunStore(src).pools_root, device=device))
    return out


def _ensembles(seeds, source_dir, runs_root, device, info):
    from swamp.posthoc.ensemble import ensemble_runs
    from swamp.store import RunStore

    out = []
    for seed, other in ensemble_pairs(seeds):
        a, b = source_dir(seed), source_dir(other)
        target = runs_root / f"imp-ensemble-{a.name}-{b.name}"
        if not RunStore(target).metrics_csv.is_file():
            info(f"ensemble of {a.name} and {b.name}")
            ensemble_runs([a, b], target, label="imp-ensemble", device=device)
        out.append(target)
    return out


def describe_pools(record: dict, source: str) -> str:
    window, grid = record.get("window"), record.get("grid") or []
    reach = "all levels" if window == 0 else f"window {window}" if window else ""
    coefficients = f"coefficients {min(grid):g}-{max(grid):g}" if grid else ""
    return ", ".join(x for x in (f"Lottery Pools over {source}", reach, coefficients) if x)


def describe_ensemble(record: dict, source: str) -> str:
    n = len(record.get("members") or [])
    return f"output ensemble of {n or 'several'} {source} runs"


POSTHOC: dict[str, PosthocMethod] = {m.name: m for m in [
    PosthocMethod("lottery-pools", "Lottery Pools over each seed's imp run (post-hoc, no "
                  "training)", "imp", 1, True, "", _pools, describe_pools),
    PosthocMethod("imp-ensemble", "output ensemble of two imp runs with different seeds (2x "
                  "inference cost)", "imp", 2, False,
                  "pairs imp runs of different seeds; give at least two `seeds`", _ensembles,
                  describe_ensemble),
]}


def ensemble_pairs(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """(s_1, s_2), (s_2, s_3), ..., (s_n, s_1); two seeds give the one pair."""
    seeds = list(seeds)
    if len(seeds) == 2:
        return [(seeds[0], seeds[1])]
    return [(s, seeds[(i + 1) % len(seeds)]) for i, s in enumerate(seeds)]
