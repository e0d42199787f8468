"""The default `swamp run` against an untuned sequential loop, end to end, on this machine.

    python benchmarks/default_vs_untuned.py [--rounds 7] [--levels 2] [--out PATH]

The issue's CPU target: the MNIST-1D CNN with 4 particles, with the default settings, at
least 1.5x the throughput of an untuned sequential loop (allocator, threads and processes
together). Each configuration runs the same `swamp run` command (default model, data,
4 particles, 20 epochs, `--levels L`) as a fresh process in a fresh output directory, the
configurations alternated round by round so that load on the machine hits them alike:

- `untuned`: `--engine sequential`, torch's default thread count, glibc's default allocator,
  contiguous layout (SWAMP_NO_CHANNELS_LAST=1): what a plain PyTorch loop over the particles
  gets;
- `allocator`: untuned + the opt-in allocator setting (SWAMP_MALLOC_TUNING=1);
  `channels_last`: untuned + the memory format the `swamp` command applies itself;
  `sequential tuned`: with both;
- `default`: `swamp run` as shipped (`--engine auto`: processes, threads,
  channels_last).

Throughput counts the training samples of levels 1..L (particles x iterations x batch) over
the seconds those levels took (`train_seconds` in metrics.csv: training, averaging,
BatchNorm re-estimation, evaluation and saving): the steady state of a run. Level 0 is left
out because it also holds the one-off start of `auto`'s processes and its timing probe (a
default run has 15 levels to spread that over); the whole command's wall time, start-up,
data loading and rewind segment included, is shown too. The verdict is the median over
rounds of default / untuned, the two run back to back in each round: this machine is shared
and its load drifts over minutes (round-to-round spread of 1.4x in one configuration), so
like is compared with like. Writes a table and the verdict to
benchmarks/results/default_vs_untuned.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from results_file import publish  # benchmarks/ is on the path of its own scripts

RESULTS = Path(__file__).parent / "results" / "default_vs_untuned.md"


ALLOCATOR = {"SWAMP_MALLOC_TUNING": "1"}
NO_CHANNELS_LAST = {"SWAMP_NO_CHANNELS_LAST": "1"}
# name -> what it is, for the table's legend
LEGEND = {
    "untuned": "sequential engine, torch's default threads, glibc's default allocator, "
               "contiguous layout",
    "allocator": "untuned + the allocator setting",
    "channels_last": "untuned + channels_last",
    "sequential tuned": "sequential engine with both (`--engine sequential` with SWAMP_MALLOC_TUNING=1)",
    "default": "plain `swamp run` (`--engine auto`: processes, threads, "
               "channels_last)",
}


def configs(default_threads: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    sequential = ["--engine", "sequential", "--threads", str(default_threads)]
    # untuned and default run back to back in every round (the order alternates), so that
    # each round's pair sees about the same load on the machine
    return {
        "untuned": (sequential, NO_CHANNELS_LAST),   # the allocator setting is opt-in
        "default": ([], {}),
        "allocator": (sequential, {**ALLOCATOR, **NO_CHANNELS_LAST}),
        "channels_last": (sequential, {}),
        "sequential tuned": (sequential, ALLOCATOR),
    }


def one_run(flags: list[str], env: dict[str, str], levels: int,
            n_train: int) -> tuple[float, float, float]:
    """(training samples, seconds in levels >= 1, wall seconds) of one fresh `swamp run`."""
    out = Path(tempfile.mkdtemp(prefix="swamp-untuned-"))
    command = [sys.executable, "-m", "swamp", "run", "--levels", str(levels), "--quiet",
               "--out", str(out), *flags]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, **env})
    wall = time.perf_counter() - start
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))[1:]    # levels 1..L
    from swamp.config import Settings
    from swamp.train import Schedule

    settings = Settings.from_dict(json.loads((run_dir / "settings.json").read_text()))
    schedule = Schedule.build(settings.train, n_train, swa=True)
    iters = schedule.total - schedule.rewind
    samples = sum(int(r["particles"]) for r in rows) * iters * settings.train.batch_size
    seconds = sum(float(r["train_seconds"]) for r in rows)
    return samples, seconds, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import torch

    from swamp.data import load_dataset

    n_train = len(load_dataset("mnist1d").train)   # generates the cached data once, untimed
    default_threads = torch.get_num_threads()
    load = [os.getloadavg()]
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for r in range(args.rounds):
        order = list(configs(default_threads).items())
        if r % 2:
            order.reverse()                      # alternate: neither side always goes first
        for name, (flags, env) in order:
            result = one_run(flags, env, args.levels, n_train)
            runs.setdefault(name, []).append(result)
            print(f"round {r + 1}: {name:<16} {result[0] / result[1]:>9,.0f} samples/s "
                  f"({result[1]:.1f} s in levels, {result[2]:.1f} s wall)", flush=True)
    load.append(os.getloadavg())

    sps = {n: statistics.median(s / t for s, t, _ in v) for n, v in runs.items()}
    wall = {n: statistics.median(w for _, _, w in v) for n, v in runs.items()}
    # The verdict is paired: default / untuned within each round (the two ran back to back,
    # under about the same load), then the median over rounds. On a shared machine whose
    # load drifts over minutes, this compares like with like; the ratio of the two columns'
    # medians is shown as well.
    paired = [(sd / td) / (su / tu) for (sd, td, _), (su, tu, _)
              in zip(runs["default"], runs["untuned"])]
    ratio = statistics.median(paired)
    cmd = " ".join(map(shlex.quote, ["python", "benchmarks/default_vs_untuned.py",
                                     *sys.argv[1:]]))
    lines = [
        "# Default settings vs. an untuned sequential loop (MNIST-1D CNN, 4 particles)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}; load average (1 min) before "
        f"{load[0][0]:.2f}, after {load[1][0]:.2f}.",
        "",
        f"Each row: `swamp run --levels {args.levels}` (levels 0..{args.levels}, 4 particles, "
        f"20 epochs) as a fresh process, {args.rounds} alternated rounds, medians; samples/s "
        f"over levels 1..{args.levels} (level 0 also holds the start of processes). "
        f"Sequential rows run `--engine sequential --threads {default_threads}` (torch's "
        "default); the allocator setting is switched on with SWAMP_MALLOC_TUNING=1 (opt-in), "
        "channels_last off with SWAMP_NO_CHANNELS_LAST=1.",
        "",
        "| configuration | what it is | samples/s in levels >= 1 | vs untuned "
        "| wall time of the command |",
        "|---|---|---:|---:|---:|",
    ]
    for name in LEGEND:
        lines.append(f"| {name} | {LEGEND[name]} | {sps[name]:,.0f} | "
                     f"{sps[name] / sps['untuned']:.2f}x | {wall[name]:.1f} s |")
    lines += [
        "",
        f"Target: default >= 1.5x untuned, paired round by round (median over rounds): "
        f"**{ratio:.2f}x**, {'met' if ratio >= 1.5 else 'NOT met'}. Per round: "
        f"{', '.join(f'{p:.2f}x' for p in paired)}. Ratio of the medians above: "
        f"{sps['default'] / sps['untuned']:.2f}x; whole-command wall time: "
        f"{wall['untuned'] / wall['default']:.2f}x.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
