"""Dense work done once (issue 14): a run reuses the dense work of a run beside it (in the same
folder) whose settings that work depends on are equal, instead of training it again.

- the start (initial weights, rewind point and its optimiser state) depends on the data, the
  model, the training settings (but the SWA ones: the dense segment trains without SWA), the
  seed and the model/data passed through the Python API: shared by every method and every
  pruning schedule;
- level 0's trained particles depend on the same and on the method and its settings, but not
  on the pruning schedule (`levels`, `prune_fraction`, `scorer`, `scope`) or the settings
  read only after level 0 (`vote_share`, `target_sparsity`): shared by runs of one method
  that prune differently. Everything after training (BatchNorm, evaluation, the solution and
  the next mask, with the run's own pruning settings) is computed by the run as always.

Nothing new is written: the source is the other run's own files (`init.safetensors`,
`rewind.safetensors`, `level_0/particle_<i>.safetensors` and its `metrics.json`), each checked
against that run's checksums first; a file that does not match is not used (the run says so
and trains). A particle saved with an SWA average has its BatchNorm statistics recomputed,
which the reusing run recomputes again from the same data (the same values). The settings are
compared as written in each run's settings.json, exactly (a run of an older version that
lacks a newer setting is not a match). A run whose settings are all equal but for where and
how it trains (engine, device, threads: another directory of the same run) is no source: it
is kept for comparison. `--no-share-dense` turns this off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from swamp.errors import SwampError
from swamp.store import RunStore, read_json

# Settings the start (init + rewind point) does not depend on.
_START_SECTIONS = ("data", "model", "train")
_START_IGNORES = {"swa_start", "swa_lr", "swa_freq"}
# Settings level 0's particles do not depend on (besides those of `run` but the seed).
_LEVEL0_IGNORES = {"levels", "prune_fraction", "scorer", "scope", "vote_share",
                   "target_sparsity"}


def start_depends(settings: dict[str, dict[str, Any]], unhashed: set[str],
                  inputs: dict[str, str]) -> dict[str, Any]:
    out = {f"{sec}.{k}": v for sec in _START_SECTIONS for k, v in settings.get(sec, {}).items()
           if k not in unhashed and k not in _START_IGNORES}
    return {"seed": settings.get("run", {}).get("seed"), "inputs": inputs, **out}


def level0_depends(settings: dict[str, dict[str, Any]], unhashed: set[str],
                   inputs: dict[str, str]) -> dict[str, Any]:
    out = {f"{sec}.{k}": v for sec, values in settings.items() if sec != "run"
           for k, v in values.items() if k not in unhashed and k not in _LEVEL0_IGNORES}
    return {"seed": settings.get("run", {}).get("seed"), "inputs": inputs, **out}


class DenseSource:
    """Finds, among the run directories beside `me`, one whose dense work this run can use."""

    def __init__(self, me: Path, unhashed: set[str], settings: dict[str, dict[str, Any]],
                 info: Callable[[str], None] = lambda message: None):
        self.me = Path(me)
        self.unhashed = unhashed
        self.info = info
        self._mine = self._hashed(settings)

    def _hashed(self, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return json.loads(json.dumps(
            {f"{sec}.{k}": v for sec, values in settings.items() if isinstance(values, dict)
             for k, v in values.items() if k not in self.unhashed}, default=str))

    def _candidates(self):
        folder = self.me.parent
        if not folder.is_dir():
            return
        for path in sorted(folder.iterdir()):
            if path == self.me or not path.is_dir() or path.name.startswith("."):
                continue
            store = RunStore(path)
            if not store.exists() or store.posthoc_path.is_file():
                continue
            try:
                saved = read_json(store.settings_path)
                inputs = read_json(store.inputs_path) if store.inputs_path.is_file() else {}
            except (SwampError, OSError):
                continue
            if isinstance(saved, dict) and isinstance(inputs, dict):
                yield store, saved, inputs

    def find(self, kind: str, mine: dict[str, Any], files: Callable[[RunStore], list[Path]]
             ) -> RunStore | None:
        """A run beside this one whose `kind` ("start" | "level0") depends on the same
        settings and whose `files(store)` are all there and match its checksums."""
        make = start_depends if kind == "start" else level0_depends
        for store, saved, inputs in self._candidates():
            try:
                if make(saved, self.unhashed, inputs) != mine:
                    continue
                # The same run in another directory (settings equal but for where and how it
                # trains: engine, device, threads) is kept apart: it is there to be compared.
                if self._hashed(saved) == self._mine:
                    continue
            except AttributeError:     # not a settings mapping
                continue
            wanted = files(store)
            if not all(p.is_file() for p in wanted):
                continue
            try:
                for path in wanted:
                    store.verify_file(path, "")
            except SwampError:
                self.info(f"[bold yellow]warning[/]: {store.root} holds dense work this run "
                          f"could reuse, but a file changed after it was written (checksum "
                          f"mismatch); training it instead")
                continue
            return store
        return None
