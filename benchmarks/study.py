"""The comparison study of the SWAMP paper's claim, on MNIST-1D, reproducible on a CPU.

    python benchmarks/study.py [--runs-dir DIR] [--models conv1d,mlp] [--sequential]

For each model (the default CNN `conv1d` and an `mlp`) it runs one `swamp compare` over

    imp, imp-swa, imp-wa, swamp, sms, colt, random, lottery-pools (over imp), imp-ensemble

with 3 seeds, and writes the report (summary.csv, accuracy_vs_sparsity.png, report.md) to
`benchmarks/results/study/<model>/`, then `benchmarks/results/study/README.md` with the
commands, the wall time and SWAMP vs IMP at every density for both models.

Settings (chosen for 2 shared CPU cores, before any result was seen, and not tuned on
anything): MNIST-1D with its default size (10000: 7200 train / 800 validation / 2000 test),
10 epochs per level, batch 128, SGD lr 0.1 cosine, momentum 0.9, weight decay 5e-4, rewinding
to epoch 1 (T0 = 10% of training; from initialisation, two conv1d particles are not linearly
connected: a 2-point validation error barrier, against 0.1 from epoch 1, see the README), SWA
over the last 25% of training (lr/20), prune fraction 0.35 for 7 levels
(density 0.65^7 = 4.9%, i.e. 95.1% sparsity), 4 particles for imp-wa/swamp/sms, 2 data
segments (+ 1 ticket particle) for colt. The runs are reused by their settings hash, so
re-running the script resumes an interrupted study and re-renders the reports.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "study"
METHODS = "imp,imp-swa,imp-wa,swamp,sms,colt,random,lottery-pools,imp-ensemble"
SEEDS = "0,1,2"
SETTINGS = ["--dataset", "mnist1d", "--epochs", "10", "--rewind-epochs", "1",
            "--prune-fraction", "0.35", "--levels", "7", "--device", "cpu"]


def compare_command(model: str, runs_dir: Path) -> list[str]:
    return ["swamp", "compare", "--methods", METHODS, "--seeds", SEEDS, "--model", model,
            *SETTINGS, "--out", str(RESULTS.relative_to(ROOT.parent) / model),
            "--runs-dir", str(runs_dir / model)]


def read_summary(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    with open(path) as fh:
        return {(r["method"], int(r["level"])): r for r in csv.DictReader(fh)}


def pct(x: str) -> str:
    return f"{100 * float(x):.2f}"


def model_section(model: str) -> list[str]:
    rows = read_summary(RESULTS / model / "summary.csv")
    levels = sorted({lv for (m, lv) in rows if m == "imp"})
    head = ["imp", "swamp", "imp-ensemble", "lottery-pools", "sms", "colt", "random"]
    lines = [f"### {model}", "",
             f"Full report: [{model}/report.md]({model}/report.md) "
             f"(plot: [{model}/accuracy_vs_sparsity.png]({model}/accuracy_vs_sparsity.png)).",
             "", "Test accuracy (%), mean ± std over 3 seeds:", "",
             "| sparsity | " + " | ".join(head) + " | swamp − imp |",
             "|---:|" + "---:|" * (len(head) + 1)]
    behind = []
    for lv in levels:
        imp = rows[("imp", lv)]
        cells = []
        for m in head:
            r = rows.get((m, lv))
            cells.append(f"{pct(r['test_acc_mean'])} ± {pct(r['test_acc_std'])}" if r else "–")
        diff = 100 * (float(rows[("swamp", lv)]["test_acc_mean"]) - float(imp["test_acc_mean"]))
        if diff <= 0:
            behind.append(f"{100 * float(imp['sparsity']):.1f}%")
        lines.append(f"| {100 * float(imp['sparsity']):.1f}% | " + " | ".join(cells) +
                     f" | {diff:+.2f} |")
    lines += ["", ("SWAMP's mean test accuracy is above IMP's at every density."
                   if not behind else
                   f"SWAMP does **not** beat IMP (mean test accuracy) at sparsity "
                   f"{', '.join(behind)}."), ""]
    return lines


def stability_section(model: str, runs_dir: Path, env: dict) -> list[str]:
    """`swamp connectivity` between two swamp particles of seed 0, at level 0 and the last."""
    (run,) = [p for p in (runs_dir / model).glob("swamp-*")
              if json.loads((p / "settings.json").read_text())["run"]["seed"] == 0]
    lines = ["Linear mode connectivity of SWAMP's particles 0 and 1 (seed 0; barrier on the "
             "validation / test split, `swamp connectivity RUN --level L`):", "",
             "| level | sparsity | val error barrier (pts) | test error barrier (pts) | "
             "test loss barrier |", "|---:|---:|---:|---:|---:|"]
    for level in (0, int(SETTINGS[SETTINGS.index("--levels") + 1])):
        out = RESULTS / model / f"connectivity_level{level}"
        subprocess.run([sys.executable, "-m", "swamp", "connectivity", str(run), "--level",
                        str(level), "--points", "11", "--out", str(out)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        r = json.loads((out / "connectivity.json").read_text())
        (out / "connectivity.json").write_text(json.dumps({**r, "run": run.name}, indent=2))
        sparsity = json.loads((run / f"level_{level}" / "metrics.json").read_text())["sparsity"]
        lines.append(f"| {level} | {100 * sparsity:.1f}% | {100 * r['val_error_barrier']:.2f} | "
                     f"{100 * r['test_error_barrier']:.2f} | {r['test_loss_barrier']:.4f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=str(Path.home() / ".cache" / "swamp" / "study-runs"),
                        help="where the runs live (large; not committed)")
    parser.add_argument("--models", default="conv1d,mlp")
    parser.add_argument("--sequential", action="store_true",
                        help="one model after the other (default: both at once, 1 thread each)")
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir)
    models = [m for m in args.models.split(",") if m]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    commands = {m: compare_command(m, runs_dir) for m in models}
    logs = {}
    procs = {}
    for m, cmd in commands.items():
        RESULTS.joinpath(m).mkdir(parents=True, exist_ok=True)
        runs_dir.joinpath(m).mkdir(parents=True, exist_ok=True)
        logs[m] = open(runs_dir / m / "study.log", "a")
        print("$", " ".join(map(shlex.quote, cmd)), flush=True)
        full = [sys.executable, "-m", "swamp", *cmd[1:],
                "--command-text", " ".join(map(shlex.quote, cmd))]
        procs[m] = subprocess.Popen(full, cwd=ROOT.parent, env=env, stdout=logs[m],
                                    stderr=subprocess.STDOUT)
        if args.sequential:
            procs[m].wait()

    def stop(signum, frame):  # stop the runs with the script (they resume on the next call)
        for p in procs.values():
            p.terminate()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    seconds = {}
    for m, p in procs.items():
        if p.wait() != 0:
            sys.exit(f"swamp compare for {m} failed (exit {p.returncode}); see "
                     f"{logs[m].name}")
        seconds[m] = time.perf_counter() - start
    total = time.perf_counter() - start
    lines = [
        "# Study: SWAMP vs the IMP family on MNIST-1D (CPU)", "",
        "Reproduce (resumes; finished runs are reused by their settings hash):", "", "```",
        "python benchmarks/study.py --runs-dir DIR", "```", "",
        "which runs, with `OMP_NUM_THREADS=1`, for each model:", "", "```",
        *[" ".join(map(shlex.quote, c)) for c in commands.values()], "```", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} shared cores, Python "
        f"{platform.python_version()}; wall time of this invocation: {total / 60:.1f} min "
        f"({', '.join(f'{m} {s / 60:.1f} min' for m, s in seconds.items())}; "
        f"both models at once, 1 thread each; a re-run that finds every run finished takes "
        f"seconds).", "",
        "Settings (" + __doc__.split("Settings (", 1)[1].split("\n\n", 1)[0].replace("\n", " "),
        "",
        "Selections (the greedy soup is not used here; Lottery Pools' candidates) use the "
        "validation split only; test numbers are reported, never selected on.", "",
    ]
    for m in models:
        lines += model_section(m)
        lines += stability_section(m, runs_dir, env)
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")
    print(f"done in {total / 60:.1f} min; see {RESULTS / 'README.md'}")


if __name__ == "__main__":
    main()
