"""Reading a finished run directory back, read-only: no level loop, no engine, no process
group.

`RunReader` serves the post-hoc methods, `report` and `export`. Its settings come from the
run's `settings.json` (validated), and its model and data are built on first use from those
settings through `swamp.assemble`, exactly as the run built them (same seeded initialisation
and validation split).

Directories made by post-hoc commands (Lottery Pools, ensembles) hold a copy of their source
run's `settings.json` and a `posthoc.json` naming what they are (`{"method": ...}`).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from swamp.assemble import prepare_data, prepare_model, resolve_device
from swamp.config import Settings
from swamp.data import DATASETS, DataBundle, is_file_dataset
from swamp.inputs import data_fingerprint
from swamp.errors import SwampError
from swamp.core.masks import Mask
from swamp.store import RunStore, load_state

StateDict = dict[str, torch.Tensor]


def run_store(path: str | Path) -> RunStore:
    """The store of an existing run (or post-hoc) directory; one line if `path` is none."""
    root = Path(path)
    store = RunStore(root)
    if not root.is_dir():
        raise SwampError(f"{root} is not a directory; pass a run directory made by `swamp run`")
    if not store.exists():
        raise SwampError(f"{root} is not a swamp run directory (no settings.json); pass a "
                         f"directory made by `swamp run`")
    return store


def read_settings(path: str | Path) -> tuple[Settings, dict[str, Any]]:
    """(settings, posthoc record or {}) of a run or post-hoc directory."""
    store = run_store(path)
    try:
        settings = Settings.from_dict(store.read_record(store.settings_path),
                                      str(store.settings_path))
    except AttributeError:
        raise SwampError(f"{store.settings_path} is not a swamp settings file") from None
    return settings, (store.read_record(store.posthoc_path) if store.posthoc_path.is_file()
                      else {})


class RunReader:
    """A run directory with at least one finished level, opened for reading on `device`.

    Opening checks the recorded checksums of the run's files. `model` and `data` stand in
    for the ones a run made through the Python API was given (needed only to evaluate).
    """

    def __init__(self, path: str | Path, *, device: str = "cpu",
                 model: nn.Module | None = None, data: DataBundle | None = None,
                 data_dir: str | None = None):
        self.root = Path(path)
        self.settings, self.posthoc = read_settings(self.root)
        # A run directory may come from someone else: the data directory its settings name
        # is not read unless the caller names it (`data_dir`, or SWAMP_DATA_DIR).
        self.named_data_dir = self.settings.data.data_dir
        self.settings.data.data_dir = data_dir
        self.store = RunStore(self.root)
        self.levels = self.store.finished_levels(strict=True)
        if not self.levels:
            raise SwampError(f"{self.root} has no finished level; run it first (re-running its "
                             f"`swamp run` command resumes it)")
        self.settings.run.device = device
        self.settings = self.settings.resolved()
        self.device = resolve_device(device)
        self.store.verify_checksums()
        self._model, self._data = model, data

    @property
    def label(self) -> str:
        """The method of the run's training (a post-hoc directory: of its source run)."""
        return self.settings.method.method

    def _check_buildable(self) -> None:
        """The settings name the model and data only where they are registered ones."""
        dataset = self.settings.data.dataset
        own_files = self._data is None and is_file_dataset(dataset)
        if own_files and self.settings.data.data_dir is None:
            # the user's files (data/files.py): read only where the caller says, as data_dir
            raise SwampError(f"{self.root} was trained on the files of {dataset}; pass "
                             f"`data_dir` to say where to read them ('.' for the paths as "
                             f"recorded; a path named by a run directory is not read "
                             f"without your say-so)")
        if (self.settings.model.model == "custom" and self._model is None) or \
                (self._data is None and not own_files and dataset not in DATASETS):
            raise SwampError(f"{self.root} was made with a model or data passed through the "
                             f"Python API; pass the same model= and data= to load it")
        info = DATASETS.get(self.settings.data.dataset)
        if self._data is None and info is not None and info.needs_files and \
                self.settings.data.data_dir is None and not os.environ.get("SWAMP_DATA_DIR"):
            named = f" (its settings name {self.named_data_dir})" if self.named_data_dir else ""
            raise SwampError(f"{self.root} was trained on {info.name} read from local "
                             f"files{named}; pass `data_dir` to say where to read them (a "
                             f"path named by a run directory is not read without your say-so)")

    @cached_property
    def data(self) -> DataBundle:
        """The run's data and validation split, on the reader's device."""
        self._check_buildable()
        data = prepare_data(self.settings, self._data, self.device)
        if self._data is None and is_file_dataset(self.settings.data.dataset):
            saved = (self.store.read_record(self.store.inputs_path)
                     if self.store.inputs_path.is_file() else {})
            if saved.get("data") != data_fingerprint(data)["data"]:
                raise SwampError(f"the files of {self.settings.data.dataset} read from "
                                 f"{self.settings.data.data_dir} are not the ones {self.root} "
                                 f"was trained on (fingerprints differ); restore them, or "
                                 f"point `data_dir` at the original files")
        return data

    @cached_property
    def model(self) -> nn.Module:
        """The run's architecture on the reader's device; load a state into it to evaluate."""
        self._check_buildable()
        # The run's own files hold every state a reader loads: the weights file it began
        # from need not exist any more.
        return prepare_model(self.settings, self.data, self._model, self.device,
                             pretrained=False)

    def require_classifier(self, what: str) -> None:
        """One line if the run's model is a generator (issue 16): `what` scores accuracy."""
        from swamp.generative import is_generative

        if is_generative(self.model):
            raise SwampError(f"{what} scores classifiers by accuracy; {self.root} trained a "
                             f"generator ({self.settings.model.model})")

    def solution(self, level: int) -> StateDict:
        return load_state(self.store.solution_path(level), self.device)

    def mask(self, level: int) -> Mask:
        return Mask.load(self.store.mask_path(level), self.device)

    def particle(self, level: int, index: int) -> StateDict:
        path = self.store.particle_path(level, index)
        if not path.is_file():
            raise SwampError(f"{path} does not exist: the run has no saved particle {index} at "
                             f"level {level} (was it run without `save_particles`, or with "
                             f"fewer particles?)")
        return load_state(path, self.device)

    def metrics(self, level: int) -> dict[str, Any]:
        return self.store.read_record(self.store.level_metrics_path(level))


def load_run(path: str | Path, *, device: str = "cpu", model: nn.Module | None = None,
             data: DataBundle | None = None, data_dir: str | None = None) -> RunReader:
    """Open a finished run for reading (see `RunReader`)."""
    return RunReader(path, device=device, model=model, data=data, data_dir=data_dir)
