"""This checkout's default `swamp run` against an earlier commit's, in paired rounds.

    python benchmarks/against_release.py --base REV [--rounds 3] [--levels 14] [--out PATH]

The earlier commit is checked out into a temporary git worktree; both run the same command
(`swamp run --levels L`, the default MNIST-1D CNN with 4 particles) as fresh processes in
fresh output directories, alternating which goes first, with PYTHONPATH pointing at each
source tree. The verdict is the median over rounds of this checkout's wall time over the
base's in the same round (the machine's load drifts over minutes). The test accuracy of
the last level is shown too: the same settings must give the same results up to
floating-point rounding. Writes benchmarks/results/against_release.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import machine_line, publish, spread  # benchmarks/ is on the path of its own scripts

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "against_release.md"


def one_run(src: Path, levels: int) -> tuple[float, float]:
    """(wall seconds, last level's test accuracy) of one fresh `swamp run` from `src`."""
    out = Path(tempfile.mkdtemp(prefix="swamp-release-"))
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "swamp", "run", "--levels", str(levels), "--quiet",
                    "--out", str(out)], check=True, env=env, cwd=out)
    wall = time.perf_counter() - start
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    return wall, float(rows[-1]["test_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier commit (e.g. a release)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, default=14)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="swamp-base-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                    args.base], check=True, capture_output=True)
    trees = {"this checkout": ROOT / "src", f"base {args.base}": base / "src"}
    walls: dict[str, list[float]] = {name: [] for name in trees}
    accs: dict[str, list[float]] = {name: [] for name in trees}
    load = [os.getloadavg()]
    try:
        for r in range(args.rounds):
            order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
            for name, src in order:
                wall, acc = one_run(src, args.levels)
                walls[name].append(wall)
                accs[name].append(acc)
                print(f"round {r + 1}: {name:<20} {wall:6.1f} s, test acc {acc:.4f}",
                      flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                       capture_output=True)
    load.append(os.getloadavg())
    mine, theirs = walls["this checkout"], walls[f"base {args.base}"]
    paired = [a / b for a, b in zip(mine, theirs)]
    ratio = statistics.median(paired)
    cmd = " ".join(map(shlex.quote, ["python", "benchmarks/against_release.py", *sys.argv[1:]]))
    lines = [
        f"# The default run: this checkout against {args.base}",
        "",
        f"Command: `{cmd}`",
        "",
        f"`swamp run --levels {args.levels}` (MNIST-1D CNN, 4 particles), {args.rounds} "
        f"alternated rounds, each a fresh process and output directory.",
        "",
        "| code | wall time, median (min-max) | last level's test accuracy |",
        "|---|---:|---:|",
    ]
    for name in trees:
        w = walls[name]
        lines.append(f"| {name} | {spread(w)} | "
                     f"{', '.join(f'{a:.4f}' for a in sorted(set(accs[name])))} |")
    lines += [
        "",
        f"This checkout / base, paired per round: {', '.join(f'{p:.3f}' for p in paired)}; "
        f"median **{ratio:.3f}** (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}).",
        "",
        machine_line(*load),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
