"""`swamp compare`: every method x seed on one set of run settings, then one report.

For each method and seed the run settings are completed with the method and the seed; the
run lives in `<runs>/<method>-<settings hash>` (default `<out>/runs`), so a finished run is
found again by its settings and never trained twice (the level loop resumes unfinished ones).

Two pseudo-methods are built from `imp` runs with no training of their own:

- `lottery-pools`: Lottery Pools over each seed's imp run (`<imp run>-pools`);
- `imp-ensemble`: the output ensemble of two imp runs with different seeds; with seeds
  s_1..s_n the pairs are (s_1, s_2), (s_2, s_3), ..., (s_n, s_1), so n seeds give n
  ensembles from the same n imp runs (at least two seeds are needed).

Run settings that only some methods use are given to those methods only: `--particles` and
`--soup` to the methods that average several particles, `--vote-share` to mask-vote,
`--swamp-plus-level` to swamp+, `--target-sparsity` to oneshot, `--slt-init` and
`--slt-combine` to slt (strong tickets at the same densities as the other methods' levels). `--swa/--no-swa` is refused:
each method defines it (imp-swa, swamp and swamp+ use SWA; the others do not).
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from swamp.config import MethodSettings, Settings
from swamp.errors import SwampError, did_you_mean
from swamp.events import Events
from swamp.methods import METHODS, get_method
from swamp.posthoc.methods import POSTHOC

def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise SwampError(f"`{what}` is empty; give a comma-separated list")
    return items


def check_methods(methods: Sequence[str]) -> None:
    for m in methods:
        if m not in METHODS and m not in POSTHOC:
            raise SwampError(f"unknown method '{m}';{did_you_mean(m, [*METHODS, *POSTHOC])} "
                             f"known: "
                             f"{', '.join([*METHODS, *POSTHOC])}")
    if len(set(methods)) != len(methods):
        raise SwampError("a method is listed twice in `methods`; list each once")


def method_settings(base: Settings, method: str, seed: int) -> Settings:
    """`base` for one method and seed: settings the method does not use are reset.

    `--swa/--no-swa` is refused rather than reset: each method defines it."""
    if base.method.swa is not None:
        raise SwampError(f"compare: `{'' if base.method.swa else 'no_'}swa` does not apply; "
                         f"each method defines SWA (imp-swa, swamp and swamp+ use it), so "
                         f"leave it out")
    s = copy.deepcopy(base)
    reads = get_method(method).reads
    s.method.method = method
    s.run.seed = seed
    for f in fields(MethodSettings):
        if f.name != "method" and f.name not in reads:   # swa: each method decides
            setattr(s.method, f.name, f.default)
    s.resolved()   # one clear line if the combination is impossible
    return s


def check_study(methods: Sequence[str], seeds: Sequence[int], base: Settings) -> None:
    """Refuse a study that cannot run, in one line, before anything is written."""
    check_methods(methods)
    if not seeds:
        raise SwampError("`seeds` is empty; give e.g. `seeds` 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise SwampError("a seed is listed twice in `seeds`; list each once")
    for p in (POSTHOC[m] for m in methods if m in POSTHOC):
        if len(seeds) < p.min_seeds:
            raise SwampError(f"{p.name} {p.seeds_hint}")
        if p.needs_validation and base.data.val_fraction == 0:
            raise SwampError(f"{p.name} selects on the validation split and `val_fraction` 0 "
                             f"leaves none; use `val_fraction` > 0 or leave {p.name} out")


def planned_runs(methods: Sequence[str], seeds: Sequence[int], base: Settings,
                 method_bases: dict[str, Settings] | None = None
                 ) -> dict[tuple[str, int], Settings]:
    """(method, seed) -> the settings of every run a compare trains (the pseudo-methods'
    source runs included), in the order it trains them. `method_bases` replaces `base` for
    the methods it names (a preset's SWA recipe)."""
    trained = [m for m in methods if m in METHODS]
    for p in methods:
        source = POSTHOC[p].source if p in POSTHOC else None
        if source is not None and source not in trained:
            trained.append(source)        # the pseudo-methods are made from its runs
    bases = method_bases or {}
    return {(m, seed): method_settings(bases.get(m, base), m, seed)
            for m in trained for seed in seeds}


def compare(methods: Sequence[str], seeds: Sequence[int], base: Settings, out: str | Path, *,
            runs_dir: str | Path | None = None, command: str | None = None,
            title: str | None = None, notes: str = "",
            events: Events | None = None, baseline: str | None = None,
            formats: Sequence[str] = ("png",),
            method_bases: dict[str, Settings] | None = None) -> Path:
    """Run what is missing, then write summary.csv, paired.csv, the figure and report.md
    into `out`. `baseline`: the method each other is paired with, seed by seed (default imp
    where listed); `formats`: of the figure (png, pdf, svg).

    `method_bases` replaces `base` for the methods it names (a preset's SWA recipe).

    Every run reports on `events`, and so does compare itself (Info events)."""
    from swamp.assemble import resolve_device
    from swamp.loop import LevelLoop
    from swamp.posthoc.runs import check_out_dir
    from swamp.store import hold
    from swamp.studies.report import build_report, check_formats, resolve_baseline

    events = events or Events()
    info = events.info

    check_study(methods, seeds, base)
    formats = check_formats(formats)
    resolve_baseline(list(methods), baseline)   # before any training
    posthoc = [POSTHOC[m] for m in methods if m in POSTHOC]
    out = check_out_dir(out)
    runs_root = (check_out_dir(runs_dir, "`runs_dir`") if runs_dir is not None
                 else check_out_dir(out / "runs"))
    settings = planned_runs(methods, seeds, base, method_bases)
    run_dirs = {key: runs_root / s.run_name() for key, s in settings.items()}

    # One compare per report directory (each run is locked on its own as well).
    lock = hold(out / "compare.lock", str(out), "that compare")
    try:
        total = len(settings)
        for k, ((m, seed), s) in enumerate(settings.items(), 1):
            info(f"[{k}/{total}] {m}, seed {seed}: {run_dirs[(m, seed)]}")
            LevelLoop(s, run_dir=run_dirs[(m, seed)], events=events).run()

        report_dirs = [run_dirs[(m, seed)] for m in methods if m in METHODS for seed in seeds]
        device = str(resolve_device(base.run.device))
        for p in posthoc:
            report_dirs += p.build(seeds, lambda seed, p=p: run_dirs[(p.source, seed)],
                                   runs_root, device, info)
        info(f"writing the report to {out}")
        return build_report(report_dirs, out, command=command, title=title, notes=notes,
                            baseline=baseline, formats=formats)
    finally:
        if lock is not None:
            lock.close()
