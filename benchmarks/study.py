"""The comparison study of the SWAMP paper's claim, on MNIST-1D, reproducible on a CPU.

    python benchmarks/study.py [--runs-dir DIR] [--models conv1d,mlp] [--sequential]

For each model (the default CNN `conv1d` and an `mlp`) it runs one `swamp compare` over

    imp, imp-swa, imp-wa, swamp, sms, colt, random, lottery-pools (over imp), imp-ensemble

with 3 seeds, and writes the report (summary.csv, accuracy_vs_sparsity.png, report.md) to
`benchmarks/results/study/<model>/`, then `benchmarks/results/study/README.md` with the
commands, the wall time and SWAMP vs IMP at every density for both models.

Settings (chosen for 2 shared CPU cores; nothing was selected on the test split):
MNIST-1D with its default size (10000: 7200 train / 800 validation / 2000 test), 10 epochs
per level, batch 128, SGD lr 0.1 cosine, momentum 0.9, weight decay 5e-4, rewinding to
epoch 1 (T0 = 10% of training; from initialisation, two conv1d particles are not linearly
connected: see "Rewind point" below, which this script also checks), SWA over the last 25%
of training at swa_lr = lr/2, prune fraction 0.35 for 7 levels (density 0.65^7 = 4.9%, i.e.
95.1% sparsity), 4 particles for imp-wa/swamp/sms, 2 data segments (+ 1 ticket particle) for
colt. History, stated plainly: a first run of this study used swa_lr = lr/20, and there SWA
(imp-swa, swamp) trailed IMP (kept in ../study-first-swa-lr20/). The default was then
changed to lr/2, the best of {lr/20, lr/5, lr/2} on the validation split of the dense level
(benchmarks/results/swa_lr.md), and the SWA methods were trained again; the other methods'
runs did not change. The runs are reused by their settings hash, so
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


READING = [
    "How to read the comparison (what each line costs and sees):", "",
    "- `imp`, `imp-swa`, `random`: one network trained per level; `imp-wa`, `swamp`: 4 "
    "particles per level averaged into one network (4x the training, 1x the inference);",
    "- `sms` never rewinds: level l retrains the previous level's soup, so by level l it has "
    "had l + 1 rounds of training where the rewinding methods have one; its edge grows with "
    "the level and is partly this extra training, not only averaging;",
    "- `colt`: 2 particles on disjoint halves of the training split make the mask (their "
    "overlap, topped up to the exact count by mean |w|); the reported network is a third "
    "particle trained on the whole split with that mask;",
    "- `lottery-pools`: imp's levels interpolated with the other levels (the authors' search: "
    "every level, coefficients 0.05..0.95), kept only where validation accuracy rises; no "
    "training;",
    "- `imp-ensemble`: output ensemble of two imp runs (seed pairs (0,1), (1,2), (2,0)): "
    "2x the inference cost, the reference SWAMP's claim is measured against;",
    "- std is over 3 seeds (the imp-ensemble pairs share runs, so their spread is not "
    "independent).",
]


def train_minutes(root: Path) -> float:
    total = 0.0
    for path in root.glob("*/metrics.csv"):
        with open(path) as fh:
            total += sum(float(r.get("train_seconds") or 0) for r in csv.DictReader(fh))
    return total / 60


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
        sparsity = f"{100 * (1 - round(float(imp['density']), 4)):.1f}%"
        if diff <= 0:
            behind.append(sparsity)
        lines.append(f"| {sparsity} | " + " | ".join(cells) + f" | {diff:+.2f} |")
    lines += ["", ("SWAMP's mean test accuracy is above IMP's at every density."
                   if not behind else
                   f"SWAMP does **not** beat IMP (mean test accuracy) at sparsity "
                   f"{', '.join(behind)}."), ""]
    return lines


def rewind_section(runs_dir: Path, env: dict) -> list[str]:
    """Why T0 = 1 epoch: imp-wa's level 0 rewound to initialisation vs to epoch 1 (seed 0)."""
    t0 = runs_dir / "rewind-check" / "conv1d-imp-wa-rewind0"
    values = SETTINGS[:]
    values[values.index("--rewind-epochs") + 1] = "0"
    values[values.index("--levels") + 1] = "0"
    subprocess.run([sys.executable, "-m", "swamp", "run", "--method", "imp-wa", "--seed", "0",
                    "--model", "conv1d", *values, "--run-dir", str(t0), "--quiet"],
                   check=True, env=env)
    (t1,) = [p for p in (runs_dir / "conv1d").glob("imp-wa-*")
             if json.loads((p / "settings.json").read_text())["run"]["seed"] == 0]
    lines = ["## Rewind point", "",
             "SWAMP averages particles that start from one ticket, which only works if they end "
             "in one linearly connected basin. Rewound to initialisation (T0 = 0), two conv1d "
             "particles are not (Frankle et al., 2020); rewound to epoch 1 they are, so the "
             "study rewinds to epoch 1. This was checked once, on level 0 of imp-wa (seed 0), "
             "before the comparison ran; a first start of the study with T0 = 0 was stopped "
             "at that point and none of its runs enters any table here.", "",
             "| rewind point | val error barrier (pts) | test error barrier (pts) | "
             "test loss barrier | averaged solution (test %) | particle mean (test %) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, run in (("initialisation (T0 = 0)", t0), ("epoch 1 (study)", t1)):
        out = RESULTS / "rewind_check" / ("t0_init" if run == t0 else "t0_epoch1")
        subprocess.run([sys.executable, "-m", "swamp", "connectivity", str(run), "--level",
                        "0", "--points", "11", "--out", str(out)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        r = json.loads((out / "connectivity.json").read_text())
        (out / "connectivity.json").write_text(json.dumps({**r, "run": run.name}, indent=2))
        m = json.loads((run / "level_0" / "metrics.json").read_text())
        lines.append(f"| {name} | {100 * r['val_error_barrier']:.2f} | "
                     f"{100 * r['test_error_barrier']:.2f} | {r['test_loss_barrier']:.4f} | "
                     f"{100 * m['test_acc']:.2f} | {100 * m['particle_acc_mean']:.2f} |")
    return lines + ["", "(particles 0 and 1, 11 points, BatchNorm recomputed at each; "
                        "`benchmarks/results/study/rewind_check/`)", ""]


def wall_minutes(runs_dir: Path, seconds: float) -> float:
    """Wall time of the invocation that trained the runs (a re-run only re-renders)."""
    path = runs_dir / "study-wall.json"
    if seconds > 120 or not path.is_file():
        path.write_text(json.dumps({"minutes": seconds / 60}))
    return json.loads(path.read_text())["minutes"]


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
    for m, p in procs.items():
        if p.wait() != 0:
            sys.exit(f"swamp compare for {m} failed (exit {p.returncode}); see "
                     f"{logs[m].name}")
    total = time.perf_counter() - start
    lines = [
        "# Study: SWAMP vs the IMP family on MNIST-1D (CPU)", "",
        "Reproduce (resumes; finished runs are reused by their settings hash):", "", "```",
        "python benchmarks/study.py --runs-dir DIR", "```", "",
        "which runs, with `OMP_NUM_THREADS=1`, for each model:", "", "```",
        *[" ".join(map(shlex.quote, c)) for c in commands.values()], "```", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} shared cores, Python "
        f"{platform.python_version()}; wall time of the invocation that trained the runs: "
        f"{wall_minutes(runs_dir, total):.1f} min (both models at once, 1 thread each; a "
        f"re-run that finds every run finished only re-renders, in seconds).", "",
        "Settings (" + __doc__.split("Settings (", 1)[1].split("\n\n", 1)[0].replace("\n", " "),
        "",
        "Selections (the greedy soup is not used here; Lottery Pools' candidates) use the "
        "validation split only; test numbers are reported, never selected on.", "",
        "Training time summed over the runs (each level's `train_seconds`, 1 thread, the two "
        "models sharing 2 cores with other work): " + ", ".join(
            f"{m} {train_minutes(runs_dir / m):.0f} min" for m in models) + ".", "",
        *READING, "",
    ]
    for m in models:
        lines += model_section(m)
        lines += stability_section(m, runs_dir, env)
    if "conv1d" in models:
        lines += rewind_section(runs_dir, env)
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")
    print(f"done in {total / 60:.1f} min; see {RESULTS / 'README.md'}")


if __name__ == "__main__":
    main()
