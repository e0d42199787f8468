"""Dense work done once (issue 14): runs that differ only in settings the dense work does not
depend on share it instead of each training it again.

Two kinds of entries, in `<folder of the run directories>/.dense/`:

- `start-<key>`: the initial weights and the rewind point (and its optimiser state), which
  depend on the data, the model, the training settings (but the SWA ones: the dense segment
  trains without SWA), the seed and the model/data passed through the Python API: shared by
  every method and every pruning schedule;
- `level0-<key>`: level 0's trained particles (weights, SWA snapshot count, training loss),
  which depend on the same and on the method and its settings, but not on the pruning
  schedule (`levels`, `prune_fraction`, `scorer`, `scope`) or the settings read only after
  level 0 (`vote_share`, `target_sparsity`): shared by runs of one method that prune
  differently. Everything after training (BatchNorm, evaluation, the solution and the next
  mask, with the run's own pruning settings) is computed by the run as always.

The key is a SHA-256 of exactly those settings (resolved, as JSON). Each entry holds a
manifest with the settings it depends on and the SHA-256 of every file; an entry whose
settings differ (a hash collision) or whose file does not match its checksum is not used
(the run says so, trains, and replaces it). Entries are written to a temporary folder and
renamed, so a reader sees a whole entry or none. `--no-share-dense` turns this off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from swamp.store import file_sha256, read_json, write_json

# Settings the start (init + rewind point) does not depend on.
_START_SECTIONS = ("data", "model", "train")
_START_IGNORES = {"swa_start", "swa_lr", "swa_freq"}
# Settings level 0's particles do not depend on (besides those of `run` but the seed).
_LEVEL0_IGNORES = {"levels", "prune_fraction", "scorer", "scope", "vote_share",
                   "target_sparsity"}
FORMAT = 1


def start_depends(settings: dict[str, dict[str, Any]], unhashed: set[str],
                  inputs: dict[str, str]) -> dict[str, Any]:
    out = {f"{sec}.{k}": v for sec in _START_SECTIONS for k, v in settings[sec].items()
           if k not in unhashed and k not in _START_IGNORES}
    return {"format": FORMAT, "seed": settings["run"]["seed"], "inputs": inputs, **out}


def level0_depends(settings: dict[str, dict[str, Any]], unhashed: set[str],
                   inputs: dict[str, str]) -> dict[str, Any]:
    out = {f"{sec}.{k}": v for sec, values in settings.items() if sec != "run"
           for k, v in values.items() if k not in unhashed and k not in _LEVEL0_IGNORES}
    return {"format": FORMAT, "seed": settings["run"]["seed"], "inputs": inputs, **out}


def _key(depends: dict[str, Any]) -> str:
    blob = json.dumps(depends, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class DenseCache:
    def __init__(self, root: Path, info: Callable[[str], None] = lambda message: None):
        self.root = Path(root)
        self.info = info

    def entry(self, kind: str, depends: dict[str, Any]) -> Path:
        return self.root / f"{kind}-{_key(depends)}"

    def load(self, kind: str, depends: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
        """(entry folder, manifest extra) of a whole, matching entry, else None."""
        folder = self.entry(kind, depends)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            return None
        try:
            manifest = read_json(manifest_path)
            if manifest.get("depends") != json.loads(json.dumps(depends, default=str)):
                self.info(f"{folder} was made for other settings (a hash collision); "
                          f"training instead")
                return None
            for name, digest in manifest["files"].items():
                if file_sha256(folder / name) != digest:
                    self.info(f"[bold yellow]warning[/]: {folder / name} changed after it was "
                              f"written (checksum mismatch); training instead, and replacing "
                              f"it")
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.info(f"[bold yellow]warning[/]: {folder} is damaged; training instead, and "
                      f"replacing it")
            return None
        except Exception as exc:   # SwampError from read_json: unreadable JSON
            self.info(f"[bold yellow]warning[/]: {folder} is damaged ({exc}); training "
                      f"instead, and replacing it")
            return None
        return folder, manifest.get("extra", {})

    def save(self, kind: str, depends: dict[str, Any], files: dict[str, Path | bytes],
             extra: dict[str, Any] | None = None) -> None:
        """Publish an entry (replacing a damaged one); a whole entry already there stays."""
        folder = self.entry(kind, depends)
        if self.load(kind, depends) is not None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{folder.name}.", suffix=".tmp"))
        except OSError:
            return                    # a cache that cannot be written is no cache
        try:
            sums = {}
            for name, source in files.items():
                target = tmp / name
                if isinstance(source, bytes):
                    target.write_bytes(source)
                else:
                    shutil.copyfile(source, target)
                sums[name] = file_sha256(target)
            write_json(tmp / "manifest.json", {"depends": depends, "files": sums,
                                               "extra": extra or {}})
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)   # damaged: replaced
            os.replace(tmp, folder)
        except OSError:
            pass                      # another run published it first, or the disk is full
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
