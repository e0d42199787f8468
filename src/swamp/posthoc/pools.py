"""Lottery Pools (Yin et al., 2023): interpolate a level's solution with its neighbours'.

For every finished level ℓ of a run, with no retraining:

    current <- solution of ℓ;  best <- its validation accuracy
    for each neighbouring level k (every other level, or |k - ℓ| <= window; nearest first,
                                   the denser one first):
        for each coefficient c of the grid:
            θ <- (1 - c) · current + c · solution_k
            re-prune θ by magnitude to exactly the number of weights level ℓ keeps
              (globally, or per layer for runs with the layerwise scope)
            recompute BatchNorm statistics; score on the validation split
        if the best candidate's validation accuracy is higher than `best`: it becomes current

so a pooled level keeps its level's density exactly and its validation accuracy never drops.

The default search is the authors' (coefficients 0.05, 0.10, ..., 0.95 over all levels of the
run); `NARROW` (0.1 ... 0.5 over the two nearest levels on each side) is the cheaper search
this module used before, kept as an option (`swamp lottery-pools --narrow`).
The test split is evaluated for the report only. The pooled levels are written in the same
per-level layout as a run (mask, solution, metrics.json, metrics.csv), plus `posthoc.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from swamp.assemble import bn_augment
from swamp.core.averaging import interpolate, recompute_batchnorm
from swamp.errors import SwampError
from swamp.evaluation import calibrate, evaluate, log_probs
from swamp.core.masks import Mask
from swamp.core.patterns import Pattern, pattern_of
from swamp.core.pruning import counts_like, keep_exactly, score
from swamp.posthoc.runs import check_out_dir
from swamp.reader import RunReader, read_settings
from swamp.store import RunStore, save_state

StateDict = dict[str, torch.Tensor]
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))   # 0.05 ... 0.95
ALL_LEVELS = 0                                                    # window: every other level
NARROW = {"window": 2, "grid": (0.1, 0.2, 0.3, 0.4, 0.5)}


def neighbours(level: int, levels: Sequence[int], window: int) -> list[int]:
    """The pool of `level`: levels within `window` of it (0: all), nearest first, denser first."""
    out = []
    reach = window if window > 0 else max((abs(k - level) for k in levels), default=0)
    for d in range(1, reach + 1):
        out += [k for k in (level - d, level + d) if k in levels]
    return out


def reprune(state: StateDict, like: Mask, scope: str, pattern: Pattern = None
            ) -> tuple[StateDict, Mask]:
    """Keep the largest |w| with exactly `like`'s count (per layer for the layerwise scope;
    `like`'s tiles or per-group count with a structured `pattern`)."""
    ones = Mask({n: torch.ones_like(like[n]) for n in like.names})
    counts = counts_like(like, pattern)
    mask = keep_exactly(score(state, ones, "magnitude", pattern=pattern), ones, counts, scope,
                        pattern=pattern)
    return mask.apply_to_state_dict(state), mask


def pool_level(base: StateDict, base_mask: Mask, pool: dict[int, StateDict], grid: Sequence[float],
               scope: str, fit: Callable[[StateDict], StateDict],
               val_acc: Callable[[StateDict], float], pattern: Pattern = None
               ) -> tuple[StateDict, Mask, float, list]:
    """Greedy interpolation of one level (see the module docstring).

    `fit` recomputes BatchNorm statistics; `val_acc` scores on the validation split only.
    Returns (state, mask, validation accuracy, accepted [level, coefficient, val acc] steps).
    """
    current, mask, best = base, base_mask, val_acc(base)
    accepted = []
    for k, other in pool.items():
        choice = None
        for c in grid:
            state, m = reprune(interpolate(current, other, float(c)), base_mask, scope,
                               pattern)
            state = fit(state)
            acc = val_acc(state)
            if acc > best and (choice is None or acc > choice[0]):
                choice = (acc, c, state, m)
        if choice is not None:
            best, c, current, mask = choice[0], choice[1], choice[2], choice[3]
            accepted.append([k, c, best])
    return current, mask, best, accepted


def _check_validation_split(root: Path, size: float) -> None:
    """Lottery Pools select on the validation split: a run without one is refused (scores on
    an empty split are NaN, so every candidate would silently be rejected)."""
    if not size:
        raise SwampError(f"{root} has no validation split (`val_fraction` 0): Lottery Pools "
                         f"select on it; use a run made with `val_fraction` > 0")


def lottery_pools(run: str | Path | RunReader, out: str | Path | None = None, *,
                  window: int = ALL_LEVELS, grid: Sequence[float] = DEFAULT_GRID,
                  device: str = "cpu", data_dir: str | None = None) -> Path:
    """Pool every finished level of `run` into `out` (default `<run>-pools`); resumable."""
    if window < 0:
        raise SwampError(f"`window` must be 0 (all levels) or more (got {window})")
    if not grid or any(not 0.0 < float(c) < 1.0 for c in grid):
        raise SwampError(f"`grid` coefficients must lie in (0, 1) (got {list(grid)})")
    if out is not None:
        check_out_dir(out)
    if not isinstance(run, RunReader):
        _check_validation_split(Path(run), read_settings(run)[0].data.val_fraction)
    loaded = (run if isinstance(run, RunReader)
              else RunReader(run, device=device, data_dir=data_dir))
    _check_validation_split(loaded.root, len(loaded.data.val))
    loaded.require_classifier("Lottery Pools")
    root = Path(out) if out is not None else loaded.store.pools_root
    check_out_dir(root)
    if root.resolve() == loaded.root.resolve():
        raise SwampError("`out` must differ from the run directory")
    record = {"method": "lottery-pools", "source": str(loaded.root), "window": window,
              "grid": [float(c) for c in grid], "source_method": loaded.label}
    store = RunStore(root)
    marker = store.posthoc_path
    if marker.is_file():
        old = store.read_record(marker)
        keys = ("window", "grid")
        if {k: old.get(k) for k in keys} != {k: record[k] for k in keys}:
            raise SwampError(f"{root} holds Lottery Pools made with other settings "
                             f"({old.get('window')}, {old.get('grid')}); choose another `out`")
    elif root.exists() and any(root.iterdir()):
        raise SwampError(f"{root} exists and is not a Lottery Pools directory; choose another "
                         f"`out`")
    root.mkdir(parents=True, exist_ok=True)
    if store.checksums_missing():      # made by an earlier version: its files are re-made
        store.rebuild_checksums()
    store.copy_record(loaded.store.settings_path, store.settings_path)
    store.write_record(marker, record)

    model, data = loaded.model, loaded.data

    def fit(state: StateDict) -> StateDict:
        model.load_state_dict(state)
        recompute_batchnorm(model, data.train, augment=bn_augment(loaded.settings, data))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def val_acc(state: StateDict) -> float:
        model.load_state_dict(state)
        return evaluate(model, data.val).acc

    solutions: dict[int, StateDict] = {}

    def solution(level: int) -> StateDict:
        if level not in solutions:
            solutions[level] = loaded.solution(level)
        return solutions[level]

    scope = loaded.settings.prune.scope
    for level in loaded.levels:
        if store.is_level_done(level):
            continue
        base_mask = loaded.mask(level)
        pool = {k: solution(k) for k in neighbours(level, loaded.levels, window)}
        base_val = val_acc(solution(level))
        state, mask, best, accepted = pool_level(solution(level), base_mask, pool, grid, scope,
                                                 fit, val_acc, pattern_of(loaded.settings.prune))
        model.load_state_dict(solution(level))
        base_test = evaluate(model, data.test)
        model.load_state_dict(state)
        test, val = evaluate(model, data.test), evaluate(model, data.val)
        # calibration as a run records it: temperature from the validation split only
        cal = calibrate(log_probs(model, data.val), data.val.y, log_probs(model, data.test),
                        data.test.y)
        source = loaded.metrics(level)
        row: dict[str, Any] = {
            "level": level, "density": mask.density, "sparsity": 1.0 - mask.density,
            "target_density": source.get("target_density", base_mask.density),
            "test_acc": test.acc, "test_nll": test.nll, "val_acc": val.acc, "val_nll": val.nll,
            "base_test_acc": base_test.acc, "base_test_nll": base_test.nll,
            "base_val_acc": base_val, "pool": neighbours(level, loaded.levels, window),
            "accepted": accepted,
            "test_ece": test.ece, "test_nll_ts": cal.nll, "temperature": cal.temperature,
        }
        store.level_dir(level).mkdir(parents=True, exist_ok=True)
        mask.save(store.mask_path(level))
        save_state(store.solution_path(level), state)
        store.record_checksums(store.mask_path(level), store.solution_path(level))
        store.write_record(store.level_metrics_path(level), row)
        store.write_metrics_csv()
        if window > 0:
            solutions.pop(level - window, None)   # no longer a neighbour of any later level
    store.write_metrics_csv()
    return root
