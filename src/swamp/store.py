"""The run directory: layout, atomic writes, and reading back what a run produced.

    <out>/<method>-<hash>/
        settings.json            resolved settings (written once; a resume must match it)
        init.safetensors         weights at initialisation
        rewind.safetensors       weights at the rewind point T0
        rewind_optimizer.safetensors  optimiser state at T0 (with `rewind_optimizer`)
        metrics.csv              one row per finished level
        engine.json              how `--engine auto` trains the particles (kept on resume)
        inputs.json              fingerprints of a model / data given through the Python API
        checksums.json           SHA-256 of every weight, mask and record file (settings,
                                 metrics, engine), with a digest of itself; checked by every
                                 command that reads the run
        posthoc.json             only in post-hoc output (Lottery Pools, ensembles): its method
        exports/level_<n>.safetensors   `swamp export` output (default place; other formats:
                                 level_<n>-dense.safetensors, level_<n>-torch-prune.safetensors,
                                 level_<n>.onnx)
        bench/                   `swamp bench` output (default place): bench.json, .md, .png
        connectivity/            `swamp connectivity` output (default place)
        level_<n>/
            mask.safetensors     bool mask per prunable tensor used to train this level
            particle_<i>.safetensors   each particle's solution (optional)
            solution.safetensors the level's solution, zero wherever the mask is off
            next_mask.safetensors   the next level's mask, for methods that combine masks
                                 (slt: the candidates of the next level, all weights)
            samples.png          generators: samples of the level's solution vs real data
            metrics.json         written last: its presence marks the level finished
            checkpoint_<i>.safetensors  particles in training or trained before a stop (a
                                 resume continues them; removed when the level finishes)

    <out>/<method>-<hash>-pools/ Lottery Pools over the run (default place; same layout)

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written artefact under its real name. Records (JSON and CSV) are checksummed before they
are published (`RunStore.write_record`), so a published record always has its checksum; a
record rewritten in place (metrics.csv) accepts the old or the new bytes until the new ones
are published, so a stop between the two writes never reads as damage.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from swamp.errors import SwampError

StateDict = dict[str, torch.Tensor]

METRICS_COLUMNS = [
    "level", "density", "sparsity", "target_density", "test_acc", "test_nll", "val_acc",
    "val_nll", "particle_acc_mean", "particle_acc_std", "particle_nll_mean", "ensemble_acc",
    "ensemble_nll", "particles", "train_seconds",
    # calibration (evaluation.py); runs made before have these columns empty
    "test_ece", "test_nll_ts", "temperature", "ensemble_ece", "ensemble_nll_ts",
]
# generators (issue 16): their levels' metrics, written when a run's rows have them
GENERATIVE_COLUMNS = ["test_mmd", "test_frechet", "val_mmd", "particle_mmd_mean",
                      "particle_mmd_std"]
LEVEL_DIR = re.compile(r"^level_(\d+)$")
# checksums.json's digest of its own entries; its presence also says that every record of the
# run was checksummed when written (runs made before that check only their weights and masks)
SELF_KEY = "__self__"
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: Path) -> None:
    """Rename a finished temporary file to its real name, with the permissions a plain
    `open` would have given it (mkstemp makes files private, 0600)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it: `path` holds the old
    bytes or the new ones, never a part. A full disk is one SwampError line (the temporary
    file is removed, so nothing half-written is left)."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise SwampError(f"no space left on the device while writing {path}; free some "
                             f"space and re-run the same command (finished work is kept and "
                             f"the run resumes)") from None
        raise


def is_temporary(path: Path) -> bool:
    """A file `atomic_write_bytes` was writing when its process stopped."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()


def remove_temporary(folder: Path) -> None:
    """Remove stale temporary files of interrupted writes in `folder` and its level folders
    (call only while holding the run: a write in progress also has one)."""
    if folder.is_dir():
        for path in [*folder.glob(".*.tmp"), *folder.glob("level_*/.*.tmp")]:
            if is_temporary(path):
                path.unlink(missing_ok=True)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode()


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode())
    except FileNotFoundError:
        raise SwampError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SwampError(f"{path} is corrupted (not valid JSON); delete it to recompute "
                         f"that artefact") from None


def safetensors_bytes(state: StateDict, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file of `state` whose bytes depend on its content alone.

    safetensors writes its header's metadata in hash-map order, which varies between
    processes: identical runs would write byte-different files with different checksums.
    The header is re-serialised with sorted keys (the data offsets do not change) and padded
    to a multiple of 8 bytes with spaces, as the format asks.
    """
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    raw = save(cpu, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":"))
    encoded = header.encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + raw[8 + n:]


def save_state(path: Path, state: StateDict, metadata: dict[str, str] | None = None) -> None:
    """Save a state dict with safetensors (copies to CPU; the live tensors are untouched),
    atomically, with optional string `metadata` in the file's header, byte-reproducibly."""
    atomic_write_bytes(path, safetensors_bytes(state, metadata))


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _self_digest(sums: dict[str, Any]) -> str:
    body = {k: v for k, v in sums.items() if k != SELF_KEY}
    return bytes_sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state(path: Path, device: str | torch.device = "cpu") -> StateDict:
    if not path.is_file():
        raise SwampError(f"{path} does not exist; the run directory is incomplete")
    try:
        return load_file(str(path), device=str(device))
    except Exception:  # safetensors raises several error types for damaged files
        raise SwampError(f"{path} is corrupted and cannot be read; delete it (or its level "
                         f"folder) and re-run the same command to recompute it") from None


def hold(lock_path: Path, what: str, holder_kind: str) -> Any:
    """An OS file lock on `lock_path` held by this process until the returned handle is
    closed (or the process ends: the OS releases the lock of a process that died, and the
    next one takes it over). Held by another process: one line naming it (pid and host).
    On systems without `fcntl` nothing is locked (None)."""
    import socket

    try:
        import fcntl
    except ImportError:        # not POSIX: runs are not protected from each other
        return None
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise SwampError(f"{what} is in use by {holder}; wait for {holder_kind} to end (or "
                         f"stop it), or use another directory") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    fh.flush()
    return fh


class RunStore:
    """Paths and artefacts of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock: Any = None

    @property
    def lock_path(self) -> Path:
        """Held (an OS file lock) by the process that runs this directory."""
        return self.root / "run.lock"

    def lock(self) -> None:
        """Hold the run directory for this process until `unlock` (see `hold`)."""
        if self._lock is None:
            self._lock = hold(self.lock_path, str(self.root), "that run")

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()          # closing the file releases the lock
            self._lock = None

    # paths
    @property
    def settings_path(self) -> Path:
        return self.root / "settings.json"

    @property
    def init_path(self) -> Path:
        return self.root / "init.safetensors"

    @property
    def rewind_path(self) -> Path:
        return self.root / "rewind.safetensors"

    @property
    def rewind_optimizer_path(self) -> Path:
        """The optimiser state at T0 (written with `rewind_optimizer`)."""
        return self.root / "rewind_optimizer.safetensors"

    @property
    def rewind_checkpoint_path(self) -> Path:
        """The dense training to T0 in progress (removed once rewind.safetensors exists)."""
        return self.root / "checkpoint_rewind.safetensors"

    @property
    def inputs_path(self) -> Path:
        """Fingerprints of a model or data passed through the Python API (inputs.py)."""
        return self.root / "inputs.json"

    @property
    def engine_path(self) -> Path:
        """How `--engine auto` chose to train this run's particles (followed on resume)."""
        return self.root / "engine.json"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def posthoc_path(self) -> Path:
        """What a post-hoc directory is (`{"method": ...}`); absent in a run."""
        return self.root / "posthoc.json"

    @property
    def connectivity_dir(self) -> Path:
        return self.root / "connectivity"

    @property
    def pools_root(self) -> Path:
        """Where Lottery Pools over this run go by default: a sibling directory."""
        return self.root.with_name(self.root.name + "-pools")

    def export_path(self, level: int, format: str = "swamp") -> Path:
        """Where `swamp export --format FORMAT` writes a level by default."""
        names = {"swamp": f"level_{level}.safetensors", "onnx": f"level_{level}.onnx"}
        return self.root / "exports" / names.get(format, f"level_{level}-{format}.safetensors")

    @property
    def bench_dir(self) -> Path:
        """`swamp bench` output (default place): bench.json, bench.md, bench.png."""
        return self.root / "bench"

    def level_dir(self, level: int) -> Path:
        return self.root / f"level_{level}"

    def mask_path(self, level: int) -> Path:
        return self.level_dir(level) / "mask.safetensors"

    def next_mask_path(self, level: int) -> Path:
        """The mask of level + 1, made at the end of `level` (a mask combination needs the
        particles' states, which are only in memory then)."""
        return self.level_dir(level) / "next_mask.safetensors"

    def solution_path(self, level: int) -> Path:
        return self.level_dir(level) / "solution.safetensors"

    def samples_path(self, level: int) -> Path:       # generators (issue 16)
        return self.level_dir(level) / "samples.png"

    def particle_path(self, level: int, index: int) -> Path:
        return self.level_dir(level) / f"particle_{index}.safetensors"

    def partial_dir(self, level: int) -> Path:
        return self.level_dir(level) / "partial"

    def level_metrics_path(self, level: int) -> Path:
        return self.level_dir(level) / "metrics.json"

    @property
    def checksums_path(self) -> Path:
        return self.root / "checksums.json"

    # checksums: a file damaged after it was written (disk, copy, sync, hand edits) is found
    # by every command that reads the run
    def _fix_checksums(self) -> str:
        if self.posthoc_path.is_file():
            return "run again the post-hoc command that made this directory"
        return (f"re-run the run's `swamp run` command, which records the checksums anew from "
                f"the files as they are now (or restore {self.checksums_path})")

    def checksums_missing(self) -> bool:
        """A run directory whose checksums.json was lost (deleted, or never copied)."""
        return self.settings_path.is_file() and not self.checksums_path.is_file()

    def _checksums(self) -> dict[str, Any]:
        if not self.checksums_path.is_file():
            if self.settings_path.is_file():   # a run directory always has one
                raise SwampError(f"{self.checksums_path} is missing, so the run's files cannot "
                                 f"be checked; {self._fix_checksums()}")
            return {}
        try:
            sums = dict(read_json(self.checksums_path))
        except (SwampError, TypeError, ValueError):
            sums = None
        if sums is None or (SELF_KEY in sums and sums[SELF_KEY] != _self_digest(sums)):
            raise SwampError(f"{self.checksums_path} is damaged; delete it and "
                             f"{self._fix_checksums()}")
        return sums

    def _write_checksums(self, sums: dict[str, Any]) -> None:
        sums = {k: v for k, v in sums.items() if k != SELF_KEY}
        sums[SELF_KEY] = _self_digest(sums)
        write_json(self.checksums_path, sums)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def record_checksums(self, *paths: Path) -> None:
        """Remember the SHA-256 of freshly written files (relative to the run directory)."""
        sums = self._checksums()
        for path in paths:
            sums[self._rel(path)] = file_sha256(path)
        self._write_checksums(sums)

    def rebuild_checksums(self) -> int:
        """Record anew the checksums of every file of the run as it is now (after
        checksums.json was lost: the files are trusted, so say so). Returns how many."""
        sums: dict[str, Any] = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not is_temporary(path) and path not in (
                    self.checksums_path, self.lock_path):
                sums[self._rel(path)] = file_sha256(path)
        self._write_checksums(sums)
        return len(sums)

    def write_record(self, path: Path, data: bytes | Any) -> None:
        """Publish a record (JSON object, or bytes) with its checksum recorded first: while
        the new bytes are not yet published, the old ones are accepted too."""
        data = data if isinstance(data, bytes) else json_bytes(data)
        rel, new = self._rel(path), bytes_sha256(data)
        sums = self._checksums()
        old = sums.get(rel)
        if old != new:
            sums[rel] = sorted({*_accepted(old), new}) if path.is_file() and old else new
            self._write_checksums(sums)
        atomic_write_bytes(path, data)
        if isinstance(sums[rel], list):
            sums[rel] = new
            self._write_checksums(sums)

    def copy_record(self, source: Path, path: Path) -> None:
        self.write_record(path, source.read_bytes())

    def verify_record(self, path: Path, fix: str | None = None) -> None:
        """A record a command relies on is checked against its recorded checksum; one the run
        did not record (a run made before records were checksummed) is read unchecked."""
        sums = self._checksums()
        expected = sums.get(self._rel(path))
        if expected is None:
            if SELF_KEY in sums and path.is_file():
                raise SwampError(f"{path} has no recorded checksum, so it was not written by "
                                 f"this run; {fix or self._record_fix(path)}")
            return
        if path.is_file():
            self._verify(path, expected, fix or self._record_fix(path), recompute=False)

    def read_record(self, path: Path, fix: str | None = None) -> Any:
        """A JSON record, checked (see `verify_record`)."""
        if not path.is_file():
            raise SwampError(f"{path} does not exist; the run directory is incomplete")
        self.verify_record(path, fix)
        return read_json(path)

    def _record_fix(self, path: Path) -> str:
        if path == self.settings_path:
            return ("the run cannot be resumed or read without it (it cannot be recomputed: "
                    "the run is checked against it); restore it, or start the run again in "
                    "another `out`")
        if self.posthoc_path.is_file():
            return "run again the post-hoc command that made this directory"
        if path == self.metrics_csv:
            return ("delete it and re-run the run's `swamp run` command, which writes it "
                    "again from the level records")
        top = self._rel(path).split("/", 1)[0]
        where = (f"{self.root / top} and every later level folder" if LEVEL_DIR.match(top)
                 else str(path))
        return f"delete {where} and re-run the run's `swamp run` command to recompute it"

    def checkpoint_paths(self, level: int) -> list[Path]:
        """Checkpoints of the level's particles in training or trained (train/checkpoint.py)."""
        return sorted(self.level_dir(level).glob("checkpoint_*.safetensors"))

    def remove_checkpoints(self, level: int) -> None:
        """Drop a finished level's particle checkpoints (and an earlier version's
        `partial/` folder with its checksums)."""
        for path in self.checkpoint_paths(level):
            path.unlink(missing_ok=True)
        folder = self.partial_dir(level)
        if not folder.exists():
            return
        prefix = folder.relative_to(self.root).as_posix() + "/"
        sums = self._checksums()
        kept = {k: v for k, v in sums.items() if not k.startswith(prefix)}
        if kept != sums:
            self._write_checksums(kept)
        shutil.rmtree(folder, ignore_errors=True)

    def verify_checksums(self) -> int:
        """Check every recorded file of the run's start and finished levels; returns how many
        were checked. A mismatch is one SwampError line naming the file and the fix."""
        finished = {f"level_{n}" for n in self.finished_levels()}
        checked = 0
        for rel, expected in sorted(self._checksums().items()):
            if rel == SELF_KEY or rel == self._rel(self.metrics_csv):
                continue                 # (metrics.csv: rewritten from the level records)
            top = rel.split("/", 1)[0]
            if "/" in rel and top not in finished:
                continue                 # a level still in progress: it is made again
            path = self.root / rel
            if not path.is_file():
                continue                 # optional files (particles) may be deleted
            # the smallest deletion that recovers: a level is retrained from the one before
            # it; the start files are made again, identically, from the settings and seed
            where = (f"delete {self.root / top} and every later level folder"
                     if "/" in rel else f"delete {path}")
            self._verify(path, expected, where)
            checked += 1
        return checked

    def verify_file(self, path: Path, fix: str) -> None:
        """Check one file against its recorded checksum, if it has one."""
        expected = self._checksums().get(self._rel(path))
        if expected is not None:
            self._verify(path, expected, fix)

    @staticmethod
    def _verify(path: Path, expected: Any, fix: str, recompute: bool = True) -> None:
        if file_sha256(path) not in _accepted(expected):
            then = " and re-run the same command to recompute it" if recompute else ""
            raise SwampError(f"{path} changed after it was written (checksum mismatch); "
                             f"{fix}{then}")

    # queries
    def exists(self) -> bool:
        return self.settings_path.is_file()

    def is_level_done(self, level: int) -> bool:
        return (self.level_metrics_path(level).is_file() and self.solution_path(level).is_file()
                and self.mask_path(level).is_file())

    def finished_levels(self, strict: bool = False) -> list[int]:
        """Levels 0..k that are finished, in order (stops at the first gap).

        `strict` (commands that read a run): a level whose record exists without its weights,
        or a finished level after a gap, is damage, not a run that stopped earlier: a stop
        leaves neither (a level's record is written last, and levels in order).
        """
        done = []
        while self.is_level_done(len(done)):
            done.append(len(done))
        if strict:
            for folder in sorted(self.root.glob("level_*")):
                match = LEVEL_DIR.match(folder.name)
                level = int(match.group(1)) if match else -1
                if level < len(done) or not self.level_metrics_path(level).is_file():
                    continue
                missing = [p.name for p in (self.mask_path(level), self.solution_path(level))
                           if not p.is_file()]
                what = (f"its {' and '.join(missing)} is missing" if missing else
                        f"level {len(done)} before it is not finished")
                raise SwampError(f"{folder} is incomplete ({what}); delete "
                                 f"{self.level_dir(len(done))} and every later level folder "
                                 f"and re-run the run's `swamp run` command to recompute them")
        return done

    def level_metrics(self) -> list[dict[str, Any]]:
        """The finished levels' records, each checked against its checksum."""
        return [self.read_record(self.level_metrics_path(level))
                for level in self.finished_levels()]

    def write_metrics_csv(self, rows: list[dict[str, Any]] | None = None) -> None:
        """metrics.csv from the (checked) level records, or from `rows` (post-hoc output)."""
        rows = self.level_metrics() if rows is None else rows
        self.write_record(self.metrics_csv, metrics_csv_bytes(rows))


def metrics_csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    columns = METRICS_COLUMNS + (GENERATIVE_COLUMNS if any("test_mmd" in r for r in rows)
                                 else [])
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue().encode()


def _accepted(expected: Any) -> list[str]:
    """The checksums a file may have: one, or the old and new ones of a record being
    rewritten."""
    if expected is None:
        return []
    return list(expected) if isinstance(expected, list) else [expected]
