"""What the level loop adds for fine-tuning and transfer (issue 12; docs/finetune.md).

- Gradual pruning (`prune_schedule` gradual): the `GradualStep` of a level (the ramp's
  window from the settings and the schedule), and the level's mask made from its particles
  (`gradual_level_mask`).
- Ticket transfer (`mask_from` RUN[:LEVEL]): another run's mask, read through `RunReader`
  (which checks the run's recorded checksums), fitted to this model: the same prunable
  tensors, kept exactly; the output head, if it has another number of classes here, is kept
  dense (its weights are this run's own initialisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from swamp.core.masks import Mask
from swamp.core.pruning import keep_exactly, score
from swamp.errors import SwampError
from swamp.train.gradual import GradualStep

StateDict = dict[str, torch.Tensor]


# ---- gradual pruning --------------------------------------------------------------------------
def gradual_window(settings: Any, schedule: Any) -> tuple[int, int, int]:
    """(start, end, every) of the ramp for this schedule; one line if it does not fit."""
    p = settings.prune
    start = schedule.rewind if p.prune_start is None else p.prune_start
    if p.prune_end is not None:
        end = p.prune_end
    else:
        end = schedule.swa_start if schedule.swa else round(0.75 * schedule.total)
    if start < schedule.rewind:
        raise SwampError(f"`prune_start` {start} is before the rewind point ({schedule.rewind} "
                         f"iterations), where every level starts; use {schedule.rewind} or "
                         f"later")
    if end > schedule.total or end <= start:
        raise SwampError(f"gradual pruning from iteration {start} to {end} does not fit in "
                         f"training ({schedule.total} iterations); set `prune_end` between "
                         f"{start + 1} and {schedule.total}")
    if schedule.swa and end > schedule.swa_start:
        raise SwampError(f"`prune_end` {end} is after the SWA start (iteration "
                         f"{schedule.swa_start}): the SWA average would mix masks; use "
                         f"`prune_end` <= {schedule.swa_start} or a later `swa_start`")
    every = p.prune_every or max(1, (end - start) // 10)
    return start, end, every


def gradual_step(settings: Any, schedule: Any, target_density: float, mask: Mask
                 ) -> GradualStep | None:
    """The level's gradual pruning, or None when it has nothing to prune."""
    if settings.prune.prune_schedule != "gradual":
        return None
    start, end, every = gradual_window(settings, schedule)
    step = GradualStep(settings.prune.ramp, start, end, every, target_density,
                       settings.prune.scorer, settings.prune.scope)
    final = step.counts_at(end, mask)
    now = {"": mask.nnz} if step.scope == "global" else {n: int(mask[n].sum())
                                                         for n in mask.names}
    if all(final[k] >= now[k] for k in final):
        return None                     # already at (or under) the level's density
    return step


def gradual_level_mask(particles: Sequence[StateDict], start: Mask, step: GradualStep
                       ) -> Mask:
    """The level's mask: the ramp's final counts kept from `start`, by the scores of the
    particles' average (one particle: its own final mask, up to ties among exact zeros,
    whose weights are zero either way). Each particle pruned its own weights (train/gradual.py);
    averaging particles whose masks differ gives their union support, pruned back here to
    the level's density: "average, then prune", as SWAMP does between levels."""
    from swamp.core.averaging import average_states

    state = particles[0] if len(particles) == 1 else average_states(list(particles))
    scores = score(state, start, step.scorer)
    return keep_exactly(scores, start, step.counts_at(step.end, start), step.scope)


# ---- ticket transfer --------------------------------------------------------------------------
def parse_mask_from(spec: str) -> tuple[Path, int | None]:
    """RUN[:LEVEL] -> (run directory, level or None for the last finished one)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.strip().isdigit() and head:
        return Path(head), int(tail)
    return Path(spec), None


def transferred_mask(spec: str, model: torch.nn.Module, prunable: Sequence[str],
                     device: torch.device | str = "cpu") -> tuple[Mask, str]:
    """The mask `spec` names, fitted to `model` (see the module docstring), and one line
    saying what was taken."""
    from swamp.reader import RunReader

    root, level = parse_mask_from(spec)
    try:
        reader = RunReader(root)        # refuses a damaged run (recorded checksums)
    except SwampError as e:
        raise SwampError(f"`mask_from` {spec}: {e}") from None
    if level is None:
        level = reader.levels[-1]
    if level not in reader.levels:
        raise SwampError(f"`mask_from` {spec}: {root} has no finished level {level} "
                         f"(finished: {', '.join(map(str, reader.levels))})")
    source = reader.mask(level)
    mine = Mask.ones(model, list(prunable))
    missing = [n for n in mine.names if n not in source.names]
    extra = [n for n in source.names if n not in mine.names]
    if missing or extra:
        name = (missing or extra)[0]
        where = "this model" if missing else root
        raise SwampError(f"`mask_from` {spec}: the prunable tensor {name!r} of {where} is "
                         f"not in the other; transfer needs the same architecture and "
                         f"prunable tensors (`include`/`exclude`)")
    head = mine.names[-1]
    out, dense = {}, []
    for n in mine.names:
        theirs, wanted = source[n], mine[n]
        if theirs.shape == wanted.shape:
            out[n] = theirs.to(wanted.device)
        elif n == head and theirs.dim() == wanted.dim() and theirs.shape[1:] == wanted.shape[1:]:
            out[n] = torch.ones_like(wanted)          # another number of classes: dense
            dense.append(n)
        else:
            raise SwampError(f"`mask_from` {spec}: {n!r} has shape {tuple(theirs.shape)} "
                             f"there and {tuple(wanted.shape)} here; transfer needs the same "
                             f"architecture (only the output head may differ in size)")
    mask = Mask(out).to(device)
    line = (f"mask from {root} level {level} (density {source.density:.4f})"
            + (f"; head {', '.join(dense)} has another size there: re-initialised and kept "
               f"dense" if dense else ""))
    return mask, line
