"""A study's runs as `swamp run` commands, for any scheduler, and their submission through
submitit.

`swamp compare --print-commands` prints one command per run, e.g. for a SLURM job array or
`xargs -P 4 -I{} sh -c {}`; each names its run directory (`--run-dir`, the one compare would
use), so a command run twice, or by two schedulers, resumes or reuses the same run, and
re-running the compare afterwards finds every run finished and only writes the report (and
builds the post-hoc pseudo-methods, which train nothing).

`swamp compare --launcher submitit` submits the same commands through submitit (SLURM where
it is available, else submitit's local executor), waits for them and writes the report.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from swamp.config import Settings
from swamp.errors import SwampError

# Settings that a run command never passes: the run directory is given exactly instead.
_NOT_PASSED = {"out"}
_ALWAYS = {"method", "seed"}    # shown even at their defaults: each command names its run


def settings_flags(settings: Settings) -> list[str]:
    """The flags that rebuild `settings` from the defaults, in section order (the `swamp
    run` flag of a setting is its name with dashes: `prune_fraction` -> `--prune-fraction`,
    which tests/test_launch.py checks against the parser)."""
    defaults = {name: value for _, name, value in Settings().items()}
    argv: list[str] = []
    for _, name, value in settings.items():
        if name in _NOT_PASSED or (value == defaults[name] and name not in _ALWAYS):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is None:
            raise SwampError(f"`{name}` cannot be unset by a flag; leave it at its default "
                             f"to print the commands")
        elif isinstance(value, list):
            if any("," in str(v) for v in value):
                raise SwampError(f"`{name}` holds a comma inside an item, which a flag cannot "
                                 f"pass; use a settings file")
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


@dataclass(frozen=True)
class RunCommand:
    method: str
    seed: int
    run_dir: Path
    argv: list[str]          # after the program: ["run", "--method", ...]

    def text(self, program: str = "swamp") -> str:
        return " ".join([program, *map(shlex.quote, self.argv)])


def run_commands(runs: dict[tuple[str, int], Settings], runs_root: str | Path,
                 extra: Sequence[str] = ()) -> list[RunCommand]:
    """One `swamp run` per planned run (`compare.planned_runs`), in its run directory under
    `runs_root` (hash-named: the same settings always land in the same directory), with the
    `extra` flags that change no result (e.g. `--log tensorboard`)."""
    root = Path(runs_root)
    out = []
    for (method, seed), s in runs.items():
        run_dir = root / s.run_name()
        out.append(RunCommand(method, seed, run_dir,
                              ["run", *settings_flags(s), "--run-dir", str(run_dir), *extra]))
    return out


# ---- submitit ---------------------------------------------------------------------------
CLUSTERS = ("auto", "slurm", "local", "debug")


@dataclass(frozen=True)
class LauncherSettings:
    """Where and how the jobs run (submitit's AutoExecutor parameters)."""

    folder: Path                 # submitit's job files and logs
    cluster: str = "auto"        # auto: SLURM where available, else local processes
    partition: str | None = None
    time_min: int = 60
    gpus: int = 0                # per job
    cpus: int = 1                # per job
    parallel: int = 0            # at most this many jobs at once (0: no limit; SLURM arrays)


def _submitit() -> Any:
    try:
        import submitit
    except ModuleNotFoundError:
        raise SwampError("the submitit launcher needs the extra: "
                         "pip install 'swamp[submitit]'") from None
    return submitit


def check_launcher(settings: LauncherSettings) -> None:
    """Refuse bad launcher settings (and a missing submitit) before anything is written."""
    checks = [
        (settings.cluster not in CLUSTERS,
         f"unknown `cluster` '{settings.cluster}'; use one of: {', '.join(CLUSTERS)}"),
        (settings.time_min < 1, f"`time_min` must be at least 1 (got {settings.time_min})"),
        (settings.gpus < 0, f"`gpus` must be 0 or more (got {settings.gpus})"),
        (settings.cpus < 1, f"`cpus` must be at least 1 (got {settings.cpus})"),
        (settings.parallel < 0, f"`parallel` must be 0 or more (got {settings.parallel})"),
    ]
    for bad, message in checks:
        if bad:
            raise SwampError(message)
    _submitit()


def make_executor(settings: LauncherSettings) -> Any:
    submitit = _submitit()
    cluster = None if settings.cluster == "auto" else settings.cluster
    executor = submitit.AutoExecutor(folder=str(settings.folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": settings.time_min, "name": "swamp",
                              "cpus_per_task": settings.cpus, "tasks_per_node": 1,
                              "nodes": 1}
    if settings.gpus:
        params["gpus_per_node"] = settings.gpus
    if settings.partition:
        params["slurm_partition"] = settings.partition
    if settings.parallel:
        params["slurm_array_parallelism"] = settings.parallel
    executor.update_parameters(**params)
    return executor


def submit(commands: Sequence[RunCommand], settings: LauncherSettings, *,
           info: Callable[[str], None] = lambda message: None, wait: bool = True) -> list[Any]:
    """Submit every command as one job (`python -m swamp ...` with this interpreter) and,
    with `wait`, wait for all of them; a failed job is one line naming its log.

    The job payload is a list of strings (submitit's CommandFunction). submitit keeps it
    in its own pickled job files in `folder`, written and read by this user's jobs only;
    swamp itself never reads them."""
    submitit = _submitit()
    check_launcher(settings)
    executor = make_executor(settings)
    functions = [submitit.helpers.CommandFunction([sys.executable, "-m", "swamp", *c.argv])
                 for c in commands]
    with executor.batch():        # one SLURM job array
        jobs = [executor.submit(f) for f in functions]
    info(f"submitted {len(jobs)} job(s) through submitit ({executor.cluster}); job files in "
         f"{settings.folder}")
    if not wait:
        return jobs
    failed = []
    for command, job in zip(commands, jobs):
        try:
            job.result()
        except Exception as exc:   # submitit raises its own failure types
            failed.append(f"{command.method} seed {command.seed} (job {job.job_id}: "
                          f"{_reason(job, exc)}; log {job.paths.stderr})")
    if failed:
        raise SwampError(f"{len(failed)} of {len(jobs)} job(s) failed: {failed[0]}; re-run "
                         f"the same command to resubmit (finished runs are reused)")
    info(f"{len(jobs)} job(s) finished")
    return jobs


def _reason(job: Any, exc: Exception) -> str:
    """The job's own one-line error (`swamp: error: ...` in its log), else submitit's."""
    try:
        lines = Path(job.paths.stderr).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    ours = [line for line in lines if line.startswith("swamp: error: ")]
    if ours:
        return ours[-1][len("swamp: error: "):]
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
