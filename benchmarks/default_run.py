"""Time the default `swamp run` end to end and record its level table.

    python benchmarks/default_run.py [--out DIR] [extra swamp run flags]

Runs `swamp run` (SWAMP on MNIST-1D, conv1d, 4 particles) in a fresh output directory,
measures the wall time of the whole command (data generation included unless cached), and
writes `benchmarks/results/default_run.md` with the command, the machine, the time, the
level table, and the two targets of the issue: under 10 minutes, at least 95% sparsity, and
at 90% sparsity within 1 point of the dense level's test accuracy.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_file import publish  # benchmarks/ is on the path of its own scripts

RESULTS = Path(__file__).parent / "results" / "default_run.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    args, extra = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="swamp-bench-"))
    command = [sys.executable, "-m", "swamp", "run", "--out", str(out), *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))

    dense = float(rows[0]["test_acc"])
    at90 = [r for r in rows if float(r["sparsity"]) >= 0.9]
    first90 = at90[0] if at90 else None
    final_sparsity = float(rows[-1]["sparsity"])
    lines = [
        "# Default `swamp run`: time and level table",
        "",
        f"Command: `python benchmarks/default_run.py {' '.join(map(shlex.quote, extra))}`"
        f" (runs `swamp run{' ' + ' '.join(extra) if extra else ''}`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        "",
        f"Wall time of the whole command: **{seconds / 60:.1f} min** ({seconds:.0f} s); "
        f"target < 10 min: {'met' if seconds < 600 else 'NOT met'}",
        "",
        f"Final sparsity: **{100 * final_sparsity:.2f}%**; target >= 95%: "
        f"{'met' if final_sparsity >= 0.95 else 'NOT met'}",
        "",
    ]
    if first90:
        gap = 100 * (dense - float(first90["test_acc"]))
        lines.append(f"First level at >= 90% sparsity: level {first90['level']} "
                     f"({100 * float(first90['sparsity']):.2f}%), test accuracy "
                     f"{100 * float(first90['test_acc']):.2f}% vs dense {100 * dense:.2f}% "
                     f"(drop {gap:.2f} points; target <= 1 point: "
                     f"{'met' if gap <= 1 else 'NOT met'})")
        lines.append("")
    lines += [
        "| level | sparsity | solution acc | solution NLL | particle mean acc | ensemble acc "
        "| level time |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['level']} | {100 * float(r['sparsity']):.2f}% | "
            f"{100 * float(r['test_acc']):.2f}% | {float(r['test_nll']):.3f} | "
            f"{100 * float(r['particle_acc_mean']):.2f}% | "
            f"{100 * float(r['ensemble_acc']):.2f}% | {float(r['train_seconds']):.0f} s |")
    publish(lines, RESULTS)


if __name__ == "__main__":
    main()
