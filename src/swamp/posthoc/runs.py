"""What the tools over finished runs share: output directories, method labels, and the check
that runs belong to one task. Reading a run is `swamp.reader`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swamp.config import Settings
from swamp.errors import SwampError


def check_out_dir(path: str | Path, what: str = "`out`") -> Path:
    """`path` as a directory to write into: refused in one line if it, or the first of its
    parents that exists, is a file (mkdir would raise FileExistsError/NotADirectoryError)."""
    root = Path(path)
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                raise SwampError(f"{p} is a file; {what} needs a directory")
            break
    return root


def method_label(settings: Settings, posthoc: dict[str, Any]) -> str:
    if posthoc.get("method"):
        return str(posthoc["method"])
    return " / ".join([settings.method.method, *variant_parts(settings)])


# Settings of fine-tuning and transfer (issue 12) that make a run a variant of its method:
# runs that differ in them are rows of their own in `compare` and `report`.
VARIANT_SETTINGS = ("prune_schedule", "ramp", "prune_start", "prune_end", "prune_every",
                    "mask_from", "distill", "distill_weight", "task_weight", "kd_temperature",
                    "distill_layers", "teacher")


def variant_parts(settings: Settings) -> list[str]:
    """What sets a run apart from its plain method: 'gradual cubic', 'squarehead',
    'ticket imp-0123456789:3' (the source run's directory name and level)."""
    p, t = settings.prune, settings.train
    parts = []
    if p.prune_schedule == "gradual":
        parts.append(f"gradual {p.ramp}")
    if t.distill != "none":
        parts.append(t.distill)
    if p.mask_from is not None:
        from swamp.finetune import parse_mask_from

        root, level = parse_mask_from(p.mask_from)
        parts.append(f"ticket {root.name}" + ("" if level is None else f":{level}"))
    return parts


def check_same_task(runs: list[tuple[Path, Settings]], what: str) -> None:
    """Runs compared or ensembled together must share dataset, data size and model."""
    first_path, first = runs[0]
    keys = [("dataset", lambda s: s.data.dataset), ("data size", lambda s: s.data.data_size),
            ("model", lambda s: s.model.model)]
    for path, s in runs[1:]:
        for name, get in keys:
            if get(s) != get(first):
                raise SwampError(f"{what}: {path} uses {name} {get(s)} but {first_path} uses "
                                 f"{get(first)}; pass runs of one dataset and model")
