"""`swamp compare` and `swamp report`: studies over several runs."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from swamp.app.flags import add_settings_flags, settings_from_args
from swamp.app.tracking import add_tracking_flags, attach_tracker
from swamp.errors import SwampError


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, for reports to quote."""
    argv = getattr(args, "argv", None)
    return "swamp " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from swamp.methods import METHODS
    from swamp.posthoc.methods import POSTHOC

    known = ", ".join([*METHODS, *POSTHOC])
    p = sub.add_parser("compare", help="run methods x seeds (reusing finished runs) and report",
                       description="Run every method for every seed on the same run settings "
                                   "(finished runs are reused by their settings hash), then "
                                   "write summary.csv, paired.csv (each method minus "
                                   "--baseline, seed by seed, with a 95% interval), "
                                   "accuracy_vs_sparsity.png and report.md into --out (the "
                                   "runs go to --out/runs unless --runs-dir is given). The run "
                                   "settings below apply to every method that reads them. "
                                   "Methods: " + known + ".")
    p.add_argument("--methods", required=True, metavar="A,B",
                   help="comma-separated methods, e.g. imp,imp-swa,swamp")
    p.add_argument("--seeds", default="0,1,2", metavar="0,1,2", help="run seeds (default 0,1,2)")
    p.add_argument("--runs-dir", metavar="DIR", help="where the runs live (default: <out>/runs)")
    p.add_argument("--quiet", action="store_true", help="print nothing while running")
    p.add_argument("--command-text", help=argparse.SUPPRESS)
    add_study_flags(p)
    _add_launch_flags(p)
    add_tracking_flags(p)
    # --methods and --seeds instead; SWA is each method's own (refused with a clear line)
    add_settings_flags(p, hidden=("method", "seed", "swa"))
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("report", help="summary table, plot and report.md from finished runs",
                       description="Build summary.csv, paired.csv (each method minus "
                                   "--baseline, seed by seed, with a 95% interval), "
                                   "accuracy_vs_sparsity.png and report.md from finished runs "
                                   "(and Lottery Pools / ensemble dirs).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the report")
    add_study_flags(p)
    p.set_defaults(handler=cmd_report)


def add_study_flags(p: argparse.ArgumentParser) -> None:
    """How a report states differences and writes its figure (not run settings)."""
    p.add_argument("--baseline", metavar="METHOD",
                   help="the method every other is paired with, seed by seed (default: imp "
                        "where reported)")
    p.add_argument("--format", default="png", metavar="png|pdf|svg",
                   help="figure format, or a list (e.g. pdf,svg); default png")


def study_options(args: argparse.Namespace) -> dict:
    from swamp.studies.compare import parse_list

    return {"baseline": args.baseline, "formats": parse_list(args.format, "format")}


def cmd_compare(args: argparse.Namespace) -> int:
    from swamp.app.display import RunDisplay, make_console
    from swamp.events import Events
    from swamp.methods import METHODS
    from swamp.studies.compare import compare, parse_list

    for given, name in (("method", "--methods"), ("seed", "--seeds")):
        if given in vars(args):
            raise SwampError(f"compare takes {name} (a list), not --{given}")
    if "out" not in vars(args):
        raise SwampError("compare needs --out DIR for its report (runs go to DIR/runs unless "
                         "--runs-dir is given)")
    methods = parse_list(args.methods, "methods")
    try:
        seeds = [int(s) for s in parse_list(args.seeds, "seeds")]
    except ValueError:
        raise SwampError(f"--seeds must be integers, e.g. 0,1,2 (got {args.seeds})") from None
    base = settings_from_args(args)
    # A preset's training recipe can depend on whether the method keeps an SWA average.
    # (every method: a post-hoc method trains its source method too)
    bases = {m: settings_from_args(args, method=m) for m in METHODS}
    if args.print_commands or args.launcher != "local":
        return _launch(args, methods, seeds, base, bases)
    display = RunDisplay(make_console(), quiet=args.quiet)
    events = Events()
    events.subscribe(display)
    tracker = attach_tracker(args, events, base)
    try:
        out = compare(methods, seeds, base, base.run.out, runs_dir=args.runs_dir,
                      method_bases=bases,
                      command=args.command_text or command_line(args), events=events,
                      **study_options(args))
    finally:
        display.close()   # a live progress bar must not outlive an error
        if tracker is not None:
            tracker.close()
    display.info(f"report: {out / 'report.md'}")
    return 0


# ---- sweeps beyond one machine (issue 14): --print-commands, --launcher submitit ----------
def _add_launch_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sweeps on a scheduler")
    g.add_argument("--print-commands", action="store_true",
                   help="print one `swamp run` command per run (for a SLURM job array or "
                        "`xargs -P`) and train nothing; afterwards the same compare only "
                        "writes the report")
    g.add_argument("--launcher", choices=("local", "submitit"), default="local",
                   help="local: train the runs here, one after another; submitit: submit "
                        "each run as a job (needs swamp[submitit]), wait, then write the "
                        "report (default: local)")
    g.add_argument("--cluster", default="auto", metavar="NAME",
                   help="submitit executor: auto (SLURM where available, else local) | slurm "
                        "| local | debug (default: auto)")
    g.add_argument("--partition", metavar="NAME", help="SLURM partition of the jobs")
    g.add_argument("--time-min", type=int, default=60, metavar="MIN",
                   help="time limit of each job in minutes (default: 60)")
    g.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="GPUs per job (default: 0)")
    g.add_argument("--cpus", type=int, default=1, metavar="N",
                   help="CPUs per job (default: 1)")
    g.add_argument("--parallel", type=int, default=0, metavar="N",
                   help="at most N jobs at once on SLURM (default: 0, no limit)")


def _launch(args: argparse.Namespace, methods: list[str], seeds: list[int], base,
            bases) -> int:
    from swamp.app.display import make_console
    from swamp.posthoc.runs import check_out_dir
    from swamp.studies import launch
    from swamp.studies.compare import check_study, planned_runs

    check_study(methods, seeds, base)
    out = check_out_dir(base.run.out)
    runs_root = check_out_dir(args.runs_dir or out / "runs", "`runs_dir`").absolute()
    tracking = ["--log", args.log, "--log-dir",
                str(Path(args.log_dir or out / args.log).absolute())] if args.log else []
    commands = launch.run_commands(planned_runs(methods, seeds, base, bases), runs_root,
                                   tracking)
    if args.print_commands:
        for command in commands:
            print(command.text())
        return 0
    settings = launch.LauncherSettings(
        folder=out.absolute() / "submitit", cluster=args.cluster, partition=args.partition,
        time_min=args.time_min, gpus=args.gpus, cpus=args.cpus, parallel=args.parallel)
    launch.check_launcher(settings)          # before a job or a folder is made
    console = make_console()
    info = (lambda message: None) if args.quiet else console.print
    launch.submit(commands, settings, info=info)
    # every run is finished now: the compare trains nothing, builds the post-hoc
    # pseudo-methods and writes the report
    args.launcher, args.print_commands = "local", False
    return cmd_compare(args)


def cmd_report(args: argparse.Namespace) -> int:
    from swamp.studies.report import build_report

    out = build_report(args.runs, args.out, command=command_line(args), **study_options(args))
    print(f"report: {Path(out) / 'report.md'}")
    return 0
