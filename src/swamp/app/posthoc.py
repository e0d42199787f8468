"""`swamp lottery-pools`, `swamp ensemble` and `swamp connectivity`: methods on finished
runs, with no training."""

from __future__ import annotations

import argparse
from pathlib import Path

from swamp.errors import SwampError


DATA_DIR_HELP = ("directory of the run's dataset files (CIFAR, MNIST); a directory named by the "
                 "run's own settings.json is not read unless given here")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lottery-pools", help="Lottery Pools over a finished run (no training)",
                       description="For each level, interpolate its solution with the other "
                                   "levels' solutions, re-prune to the level's density, "
                                   "recompute BatchNorm, and keep a candidate only if "
                                   "validation accuracy improves.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--out", metavar="DIR", help="output directory (default: <RUN>-pools)")
    p.add_argument("--window", type=int, default=None,
                   help="neighbouring levels on each side in the pool (default 0: every "
                        "level of the run, as the authors' code searches)")
    p.add_argument("--grid", default=None,
                   help="interpolation coefficients of the neighbour (default "
                        "0.05,0.10,...,0.95, the authors' grid)")
    p.add_argument("--narrow", action="store_true",
                   help="the cheaper search: coefficients 0.1,...,0.5 over the 2 nearest "
                        "levels on each side (--window and --grid override it)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.set_defaults(handler=cmd_pools)

    p = sub.add_parser("ensemble", help="output ensemble of several runs at shared densities",
                       description="Evaluate the output ensemble (mean predicted probability) "
                                   "of several runs' level solutions at every density they "
                                   "share, on the test split.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories")
    p.add_argument("--out", metavar="DIR", help="write metrics.csv there (readable by report)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
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
    p.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    p.set_defaults(handler=cmd_connectivity)


def cmd_pools(args: argparse.Namespace) -> int:
    from swamp.posthoc.pools import ALL_LEVELS, DEFAULT_GRID, NARROW, lottery_pools
    from swamp.studies.report import read_result

    grid = list(NARROW["grid"] if args.narrow else DEFAULT_GRID)
    window = NARROW["window"] if args.narrow else ALL_LEVELS
    if args.grid is not None:
        try:
            grid = [float(c) for c in args.grid.split(",") if c.strip()]
        except ValueError:
            raise SwampError(f"--grid must be comma-separated numbers (got {args.grid})") from None
    if args.window is not None:
        window = args.window
    out = lottery_pools(args.run, args.out, window=window, grid=grid, device=args.device,
                       data_dir=args.data_dir)
    for row in read_result(out).rows:
        print(f"level {int(row['level']):>2}  density {100 * row['density']:6.2f}%  "
              f"test accuracy {100 * row['test_acc']:.2f}%")
    print(f"pooled solutions: {out}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from swamp.posthoc.ensemble import ensemble_runs

    rows = ensemble_runs(args.runs, args.out, device=args.device, data_dir=args.data_dir)
    print(f"{'level':>5}  {'density':>8}  {'ensemble':>9}  {'member mean':>11}")
    for r in rows:
        print(f"{r['level']:>5}  {100 * r['density']:7.2f}%  {100 * r['test_acc']:8.2f}%  "
              f"{100 * r['member_acc_mean']:10.2f}%")
    if args.out:
        print(f"written to {Path(args.out) / 'metrics.csv'}")
    return 0


def cmd_connectivity(args: argparse.Namespace) -> int:
    from swamp.posthoc.lmc import connectivity
    from swamp.store import RunStore

    out = args.out or str(RunStore(args.run).connectivity_dir)
    result = connectivity(args.run, level=args.level,
                          particles=tuple(args.particles) if args.particles else None,
                          levels=tuple(args.levels) if args.levels else None,
                          points=args.points, out=out, device=args.device,
                          data_dir=args.data_dir)
    for r in result["points"]:
        print(f"t={r['t']:.2f}  test accuracy {100 * r['test_acc']:.2f}%  "
              f"test NLL {r['test_nll']:.4f}")
    print(f"loss barrier (test) {result['test_loss_barrier']:.4f}, error barrier (test) "
          f"{100 * result['test_error_barrier']:.2f} points, against the line between the "
          f"ends")
    print(f"against the mean of the ends: loss {result['test_loss_barrier_mean_ends']:.4f}, "
          f"error {100 * result['test_error_barrier_mean_ends']:.2f} points; written to {out}")
    return 0
