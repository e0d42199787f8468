"""`--engine auto` against each fixed engine, end to end, in paired rounds.

    python benchmarks/engine_policy.py [--rounds 3] [--levels 14,1] [--out PATH]

The target: `auto` within 5% of the best fixed engine, on the default run and on a short
(one-level) run. Each configuration is the default `swamp run` (MNIST-1D CNN, 4 particles,
20 epochs per level) with `--levels L` as a fresh process in a fresh output directory:

- `auto`: as shipped (it decides, says what, and records it in engine.json);
- `sequential`: `--engine sequential` (this process, threads matched to the cores);
- `processes`: `--processes 2` (two processes with one thread each).

The configurations run back to back in every round, their order alternating, and the
verdict is the median over rounds of auto's wall time over the best fixed engine's wall
time in the same round: the machine is shared and its load drifts over minutes, so like is
compared with like. Wall time is the whole command: start-up, data, the rewind segment,
starting processes, every level. Writes benchmarks/results/engine_policy.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import machine_line, publish, spread  # benchmarks/ is on the path of its own scripts

RESULTS = Path(__file__).parent / "results" / "engine_policy.md"
CONFIGS = {"auto": [], "sequential": ["--engine", "sequential"],
           "processes": ["--processes", "2"]}


def one_run(flags: list[str], levels: int) -> tuple[float, str]:
    """(wall seconds, what auto recorded) of one fresh `swamp run`."""
    out = Path(tempfile.mkdtemp(prefix="swamp-policy-"))
    command = [sys.executable, "-m", "swamp", "run", "--levels", str(levels), "--quiet",
               "--out", str(out), *flags]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    record = json.loads((run_dir / "engine.json").read_text())
    # auto records a choice per number of particles; a fixed engine records itself
    choices = record.items() if "engine" not in record else [("all", record)]
    chosen = ", ".join(f"{n} particles: {r['engine']}" + (f" x{r['processes']}"
                                                         if "processes" in r else "")
                       for n, r in choices)
    return wall, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="14,1",
                        help="comma-separated --levels values (14: the default run)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from swamp.data import load_dataset

    load_dataset("mnist1d")          # generates the cached data once, untimed
    load = [os.getloadavg()]
    cmd = " ".join(map(shlex.quote, ["python", "benchmarks/engine_policy.py", *sys.argv[1:]]))
    lines = [
        "# `--engine auto` against the fixed engines (MNIST-1D CNN, 4 particles)",
        "",
        f"Command: `{cmd}`",
        "",
    ]
    for levels in [int(v) for v in args.levels.split(",")]:
        walls: dict[str, list[float]] = {name: [] for name in CONFIGS}
        chosen = set()
        for r in range(args.rounds):
            order = list(CONFIGS.items())
            if r % 2:
                order.reverse()
            for name, flags in order:
                wall, record = one_run(flags, levels)
                walls[name].append(wall)
                if name == "auto":
                    chosen.add(record)
                print(f"levels {levels}, round {r + 1}: {name:<10} {wall:6.1f} s", flush=True)
        paired = [walls["auto"][r] / min(walls["sequential"][r], walls["processes"][r])
                  for r in range(args.rounds)]
        ratio = statistics.median(paired)
        lines += [
            f"## `swamp run --levels {levels}`",
            "",
            "| configuration | wall time, median (min-max) | vs auto |",
            "|---|---:|---:|",
        ]
        for name in CONFIGS:
            w = walls[name]
            lines.append(f"| {name} | {spread(w)} "
                         f"| {statistics.median(w) / statistics.median(walls['auto']):.2f}x |")
        lines += [
            "",
            f"auto chose: {'; '.join(sorted(chosen))}. auto / best fixed engine, paired per "
            f"round: {', '.join(f'{p:.3f}' for p in paired)}; median **{ratio:.3f}** "
            f"(target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}).",
            "",
        ]
    load.append(os.getloadavg())
    lines.append(f"{machine_line(*load)} {args.rounds} rounds, configurations alternated.")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
