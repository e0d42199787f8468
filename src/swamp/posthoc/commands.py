"""Sub-commands `compare`, `report`, `lottery-pools`, `ensemble` and `connectivity`.

`swamp.cli` registers them with `add_commands`; each handler returns the exit status.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from swamp.errors import SwampError


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _command_line(args: argparse.Namespace) -> str:
    argv = getattr(args, "argv", None)
    return "swamp " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


# ---- compare -------------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    from swamp.cli import settings_from_args
    from swamp.compare import compare, parse_list
    from swamp.display import RunDisplay

    for flag, name in (("method", "--methods"), ("seed", "--seeds")):
        if flag in vars(args):
            raise SwampError(f"compare takes {name} (a list), not --{flag}")
    if "out" not in vars(args):
        raise SwampError("compare needs --out DIR for its report (runs go to DIR/runs unless "
                         "--runs-dir is given)")
    methods = parse_list(args.methods, "methods")
    try:
        seeds = [int(s) for s in parse_list(args.seeds, "seeds")]
    except ValueError:
        raise SwampError(f"--seeds must be integers, e.g. 0,1,2 (got {args.seeds})") from None
    base = settings_from_args(args)
    console = _console()
    display_for = (lambda m: RunDisplay(console, quiet=args.quiet))
    info = (lambda msg: None) if args.quiet else console.print
    out = compare(methods, seeds, base, base.run.out, runs_dir=args.runs_dir,
                  command=args.command_text or _command_line(args), display_for=display_for,
                  info=info)
    info(f"report: {out / 'report.md'}")
    return 0


# ---- report --------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from swamp.report import build_report

    out = build_report(args.runs, args.out, command=_command_line(args))
    print(f"report: {Path(out) / 'report.md'}")
    return 0


# ---- lottery pools -------------------------------------------------------------------------
def cmd_pools(args: argparse.Namespace) -> int:
    from swamp.posthoc.pools import lottery_pools

    try:
        grid = [float(c) for c in args.grid.split(",") if c.strip()]
    except ValueError:
        raise SwampError(f"--grid must be comma-separated numbers (got {args.grid})") from None
    out = lottery_pools(args.run, args.out, window=args.window, grid=grid, device=args.device)
    from swamp.report import read_result

    rows = read_result(out).rows
    for row in rows:
        print(f"level {int(row['level']):>2}  density {100 * row['density']:6.2f}%  "
              f"test accuracy {100 * row['test_acc']:.2f}%")
    print(f"pooled solutions: {out}")
    return 0


# ---- ensemble ------------------------------------------------------------------------------
def cmd_ensemble(args: argparse.Namespace) -> int:
    from swamp.posthoc.ensemble import ensemble_runs

    rows = ensemble_runs(args.runs, args.out, device=args.device)
    print(f"{'level':>5}  {'density':>8}  {'ensemble':>9}  {'member mean':>11}")
    for r in rows:
        print(f"{r['level']:>5}  {100 * r['density']:7.2f}%  {100 * r['test_acc']:8.2f}%  "
              f"{100 * r['member_acc_mean']:10.2f}%")
    if args.out:
        print(f"written to {Path(args.out) / 'metrics.csv'}")
    return 0


# ---- connectivity --------------------------------------------------------------------------
def cmd_connectivity(args: argparse.Namespace) -> int:
    from swamp.posthoc.lmc import connectivity

    out = args.out or str(Path(args.run) / "connectivity")
    result = connectivity(args.run, level=args.level,
                          particles=tuple(args.particles) if args.particles else None,
                          levels=tuple(args.levels) if args.levels else None,
                          points=args.points, out=out, device=args.device)
    for r in result["points"]:
        print(f"t={r['t']:.2f}  test accuracy {100 * r['test_acc']:.2f}%  "
              f"test NLL {r['test_nll']:.4f}")
    print(f"loss barrier (test) {result['test_loss_barrier']:.4f}, error barrier (test) "
          f"{100 * result['test_error_barrier']:.2f} points; written to {out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from swamp.cli import add_settings_flags
    from swamp.compare import POSTHOC
    from swamp.methods import METHODS

    known = ", ".join([*METHODS, *POSTHOC])
    p = sub.add_parser("compare", help="run methods x seeds (reusing finished runs) and report",
                       description="Run every method for every seed on the same run settings "
                                   "(finished runs are reused by their settings hash), then "
                                   "write summary.csv, accuracy_vs_sparsity.png and report.md "
                                   "into --out. Methods: " + known + ".")
    p.add_argument("--methods", required=True, metavar="A,B",
                   help="comma-separated methods, e.g. imp,imp-swa,swamp")
    p.add_argument("--seeds", default="0,1,2", metavar="0,1,2", help="run seeds (default 0,1,2)")
    p.add_argument("--runs-dir", metavar="DIR", help="where the runs live (default: <out>/runs)")
    p.add_argument("--quiet", action="store_true", help="print nothing while running")
    p.add_argument("--command-text", help=argparse.SUPPRESS)
    add_settings_flags(p)
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("report", help="summary table, plot and report.md from finished runs",
                       description="Build summary.csv, accuracy_vs_sparsity.png and report.md "
                                   "from finished runs (and Lottery Pools / ensemble dirs).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the report")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("lottery-pools", help="Lottery Pools over a finished run (no training)",
                       description="For each level, interpolate its solution with neighbouring "
                                   "levels' solutions, re-prune to the level's density, "
                                   "recompute BatchNorm, and keep a candidate only if "
                                   "validation accuracy improves.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <RUN>-pools)")
    p.add_argument("--window", type=int, default=2,
                   help="neighbouring levels on each side in the pool (default 2)")
    p.add_argument("--grid", default="0.1,0.2,0.3,0.4,0.5",
                   help="interpolation coefficients of the neighbour (default 0.1,...,0.5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(handler=cmd_pools)

    p = sub.add_parser("ensemble", help="output ensemble of several runs at shared densities",
                       description="Evaluate the output ensemble (mean predicted probability) "
                                   "of several runs' level solutions at every density they "
                                   "share, on the test split.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories")
    p.add_argument("--out", metavar="DIR", help="write metrics.csv there (readable by report)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(handler=cmd_ensemble)

    p = sub.add_parser("connectivity", help="accuracy/loss on the line between two solutions",
                       description="Linear mode connectivity: interpolate two particles of a "
                                   "level (default: 0 and 1 of the last level) or the "
                                   "solutions of two levels; writes numbers, barrier heights "
                                   "and a plot.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--level", type=int, help="level whose particles to connect (default: last)")
    p.add_argument("--particles", type=int, nargs=2, metavar=("I", "J"),
                   help="particle indices within the level (default 0 1)")
    p.add_argument("--levels", type=int, nargs=2, metavar=("A", "B"),
                   help="connect the solutions of two levels instead")
    p.add_argument("--points", type=int, default=11, help="points on the line (default 11)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <RUN>/connectivity)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(handler=cmd_connectivity)
