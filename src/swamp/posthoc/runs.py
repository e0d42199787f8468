"""Reading finished run directories back: settings, model, data and solutions, no training.

A run directory is rebuilt through the same code path as `swamp run` (`LevelLoop`): the
settings saved in `settings.json` give the same model, the same data and the same seeded
validation split the run used.

Directories made by post-hoc commands (Lottery Pools, ensembles) hold a copy of their source
run's `settings.json` and a `posthoc.json` naming what they are (`{"method": ...}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swamp.config import Settings
from swamp.data import DataBundle
from swamp.errors import SwampError
from swamp.core.masks import Mask
from swamp.store import RunStore, load_state, read_json

StateDict = dict[str, torch.Tensor]
POSTHOC_FILE = "posthoc.json"


def read_settings(path: str | Path) -> tuple[Settings, dict[str, Any]]:
    """(settings, posthoc record or {}) of a run or post-hoc directory."""
    root = Path(path)
    store = RunStore(root)
    if not root.is_dir():
        raise SwampError(f"{root} is not a directory; pass a run directory made by `swamp run`")
    if not store.exists():
        raise SwampError(f"{root} is not a swamp run directory (no settings.json); pass a "
                         f"directory made by `swamp run`")
    try:
        settings = Settings.from_dict(read_json(store.settings_path), str(store.settings_path))
    except AttributeError:
        raise SwampError(f"{store.settings_path} is not a swamp settings file") from None
    posthoc = root / POSTHOC_FILE
    return settings, (read_json(posthoc) if posthoc.is_file() else {})


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` as a directory to write into: refused in one line if it, or the first of its
    parents that exists, is a file (mkdir would raise FileExistsError/NotADirectoryError)."""
    root = Path(path)
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                raise SwampError(f"{p} is a file; {flag} needs a directory")
            break
    return root


def method_label(settings: Settings, posthoc: dict[str, Any]) -> str:
    return str(posthoc.get("method") or settings.method.method)


@dataclass
class LoadedRun:
    """A finished (or partly finished) run, ready for post-hoc work on `device`."""

    root: Path
    settings: Settings
    store: RunStore
    model: nn.Module          # the run's architecture; load a state into it to evaluate
    data: DataBundle          # the run's data and validation split
    levels: list[int]         # finished levels
    device: torch.device

    @property
    def label(self) -> str:
        return self.settings.method.method

    def solution(self, level: int) -> StateDict:
        return load_state(self.store.solution_path(level), self.device)

    def mask(self, level: int) -> Mask:
        return Mask.load(self.store.mask_path(level), self.device)

    def particle(self, level: int, index: int) -> StateDict:
        path = self.store.particle_path(level, index)
        if not path.is_file():
            raise SwampError(f"{path} does not exist: the run has no saved particle {index} at "
                             f"level {level} (was it run with --no-save-particles, or with "
                             f"fewer particles?)")
        return load_state(path, self.device)

    def metrics(self, level: int) -> dict[str, Any]:
        return read_json(self.store.level_metrics_path(level))


def load_run(path: str | Path, *, device: str = "cpu", model: nn.Module | None = None,
             data: DataBundle | None = None) -> LoadedRun:
    """Open a run directory with at least one finished level; builds model and data as the
    run did (`model`/`data` stand in for a run made with the Python API's own ones)."""
    from swamp.loop import LevelLoop  # the loop imports the engines; keep `swamp.posthoc` light

    root = Path(path)
    settings, posthoc = read_settings(root)
    store = RunStore(root)
    levels = store.finished_levels()
    if not levels:
        raise SwampError(f"{root} has no finished level; run it first (re-running its "
                         f"`swamp run` command resumes it)")
    if (settings.model.model == "custom" and model is None) or \
            (data is None and settings.data.dataset not in _registered_datasets()):
        raise SwampError(f"{root} was made with a model or data passed through the Python API; "
                         f"pass the same model= and data= to load it")
    settings.run.device = device
    store.verify_checksums()
    loop = LevelLoop(settings, model=model, data=data, run_dir=root)
    return LoadedRun(root, loop.settings, store, loop.model, loop.data, levels, loop.device)


def _registered_datasets() -> set[str]:
    from swamp.data import DATASETS

    return set(DATASETS)


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
