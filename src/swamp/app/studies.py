"""`swamp compare` and `swamp report`: studies over several runs."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from swamp.app.flags import add_settings_flags, settings_from_args
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
                                   "accuracy_vs_sparsity.png and report.md into --out. "
                                   "Methods: " + known + ".")
    p.add_argument("--methods", required=True, metavar="A,B",
                   help="comma-separated methods, e.g. imp,imp-swa,swamp")
    p.add_argument("--seeds", default="0,1,2", metavar="0,1,2", help="run seeds (default 0,1,2)")
    p.add_argument("--runs-dir", metavar="DIR", help="where the runs live (default: <out>/runs)")
    p.add_argument("--quiet", action="store_true", help="print nothing while running")
    p.add_argument("--command-text", help=argparse.SUPPRESS)
    add_study_flags(p)
    add_settings_flags(p)
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
    display = RunDisplay(make_console(), quiet=args.quiet)
    events = Events()
    events.subscribe(display)
    try:
        out = compare(methods, seeds, base, base.run.out, runs_dir=args.runs_dir,
                      method_bases=bases,
                      command=args.command_text or command_line(args), events=events,
                      **study_options(args))
    finally:
        display.close()   # a live progress bar must not outlive an error
    display.info(f"report: {out / 'report.md'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from swamp.studies.report import build_report

    out = build_report(args.runs, args.out, command=command_line(args), **study_options(args))
    print(f"report: {Path(out) / 'report.md'}")
    return 0
