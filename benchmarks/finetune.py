"""Sparse fine-tuning from a pretrained model, and ticket transfer (issue 12), on this CPU.

    python benchmarks/finetune.py [--runs-dir DIR] [--seeds 0,1,2] [--jobs 2]

Fine-tuning. A conv1d is pretrained once, dense, on MNIST-1D (20 epochs, seed 1000); every
method then starts from those weights (`--weights`, rewinding to them: `--rewind-epochs 0`)
and fine-tunes for 5 epochs per level (`EPOCHS`) at a fifth of the pretraining learning rate:

- one-shot:            the pretrained weights pruned by global magnitude, no training
                       (`swamp prune`);
- one-shot + FT:       `--method oneshot --target-sparsity S`, one fine-tuning level;
- gradual cubic / harmonic: `--prune-schedule gradual --ramp cubic|harmonic`, one level that
                       prunes while it trains, from dense to S;
- IMP FT:              `--method imp`, levels each rewound to the pretrained weights;
- SWAMP FT:            `--method swamp --particles 2`, the same levels;

each with and without SquareHead distillation against the pretrained model (`--distill
squarehead --teacher init`). Sparsities 50, 75, 90 and 95%. IMP and SWAMP reach each one
exactly at the end of a run of L levels of a constant fraction α = 1 - (1 - S)^(1/L), with L
the number of halvings nearest to it (`imp_plans`): one run of α = 0.5 for 50 and 75% (levels
1 and 2), α = 0.536 over 3 levels for 90%, α = 0.527 over 4 levels for 95%. Seeds vary the
fine-tuning (data order, and the random parts of pruning); the pretrained model is one.

Training cost differs, and the tables should be read with it: one-shot + FT and the gradual
runs train one pruned level (5 epochs) after the dense level; IMP reaches a sparsity after L
pruned levels (5 L epochs: L = 1, 2, 3, 4 for 50 ... 95%), SWAMP after the same with 2
particles (10 L epochs).

Transfer. IMP tickets (α = 0.5, trained from initialisation for 10 epochs a level) found on
`mnist1d-noisy` (a shifted distribution of the same task) are trained on `mnist1d` with
`--mask-from RUN:LEVEL`, against the ticket IMP finds on `mnist1d` itself at that level and a
random mask of the same density (`--method random`).

Statistics: mean test accuracy over seeds with a 95% t-interval (scipy), and for each method
the paired difference to one-shot + FT at the same sparsity (runs of one seed share the data
order of their fine-tuning) with its 95% t-interval; "no clear difference" where the interval
covers 0. Nothing is selected on the test split. Writes benchmarks/results/finetune.md,
finetune.json and finetune.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SPARSITIES = (0.5, 0.75, 0.9, 0.95)
EPOCHS = 5
PRETRAIN = ["--dataset", "mnist1d", "--model", "conv1d", "--method", "imp", "--levels", "0",
            "--epochs", "20", "--seed", "1000", "--device", "cpu", "--threads", "1"]
FT = ["--dataset", "mnist1d", "--model", "conv1d", "--rewind-epochs", "0", "--epochs",
      str(EPOCHS), "--lr", "0.02", "--device", "cpu", "--threads", "1",
      "--no-save-particles", "--quiet"]
SQUAREHEAD = ["--distill", "squarehead", "--teacher", "init"]
TRANSFER = ["--model", "conv1d", "--method", "imp", "--levels", "4",
            "--prune-fraction", "0.5", "--epochs", "10", "--rewind-epochs", "1",
            "--device", "cpu", "--threads", "1", "--no-save-particles", "--quiet"]
TRANSFER_LEVELS = (2, 4)


def imp_plans(sparsities=SPARSITIES) -> list[tuple[str, float, int, dict[int, float]]]:
    """The IMP/SWAMP runs that reach every sparsity exactly, as (name suffix, prune fraction,
    levels, {level: sparsity reached}): S is the last level of L levels of a constant fraction
    1 - (1 - S)^(1/L), L the number of halvings nearest to S; sparsities whose fractions agree
    (50 and 75%: 0.5) share one run."""
    plans: dict[str, tuple[float, int, dict[int, float]]] = {}
    for s in sparsities:
        levels = max(1, round(math.log(1 - s) / math.log(0.5)))
        fraction = 1 - (1 - s) ** (1 / levels)
        key = f"a{fraction:.4f}"
        _, most, reached = plans.get(key, (fraction, 0, {}))
        plans[key] = (fraction, max(most, levels), {**reached, levels: s})
    return [(key, fraction, levels, reached)
            for key, (fraction, levels, reached) in plans.items()]


def swamp(*args: str) -> list[str]:
    return [sys.executable, "-m", "swamp", *args]


def the_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    if len(runs) != 1:
        raise SystemExit(f"{out} should hold one run directory, holds {len(runs)}")
    return runs[0]


def run_all(commands: dict[str, list[str]], jobs: int, env: dict) -> None:
    """Run each command whose output directory has no finished run (re-running resumes)."""
    def one(item: tuple[str, list[str]]) -> None:
        name, cmd = item
        t = time.time()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        print(f"  {name}: {time.time() - t:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, commands.items()))


def level_acc(run_dir: Path) -> dict[int, tuple[float, float]]:
    """level -> (realised density, test accuracy), from the run's checked level records."""
    from swamp.studies.report import read_result

    return {int(r["level"]): (float(r["density"]), float(r["test_acc"]))
            for r in read_result(run_dir).rows}


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); half-width nan for fewer than 2 values."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half


def cell(values: list[float]) -> str:
    mean, half = t_interval(values)
    return f"{100 * mean:.2f} ± {100 * half:.2f}"


def verdict(diffs: list[float]) -> str:
    mean, half = t_interval(diffs)
    if math.isnan(half):
        return f"{100 * mean:+.2f} (n=1)"
    word = ("no clear difference" if abs(mean) <= half
            else "better" if mean > 0 else "worse")
    return f"{100 * mean:+.2f} ± {100 * half:.2f} ({word})"


def oneshot_acc(weights: Path, sparsity: float, out: Path, env: dict) -> float:
    """`swamp prune` of the pretrained weights, then its test accuracy (no training)."""
    import torch
    from safetensors.torch import load_file

    from swamp.data import load_dataset
    from swamp.evaluation import evaluate
    from swamp.models import build_model

    target = out / f"oneshot-{sparsity}.safetensors"
    if not target.is_file():
        subprocess.run(swamp("prune", "--model", "conv1d", "--weights", str(weights),
                             "--sparsity", str(sparsity), "--out", str(target),
                             "--dataset", "mnist1d"),
                       env=env, check=True, capture_output=True)
    data = load_dataset("mnist1d", data_dir=None, val_fraction=0.1, split_seed=0, size=None,
                        augment=False)
    model = build_model("conv1d", data.input_shape, data.num_classes)
    model.load_state_dict(load_file(target), strict=False)
    torch.set_num_threads(1)
    return evaluate(model.eval(), data.test).acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/swamp-finetune"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="a plumbing check: 1-2 epochs on 1000 examples (numbers mean "
                             "nothing; writes to --runs-dir only)")
    args = parser.parse_args()
    if args.quick:
        global RESULTS
        RESULTS = args.runs_dir / "results"
        small = ["--data-size", "1000"]
        for flags in (PRETRAIN, FT, TRANSFER):
            for i, f in enumerate(flags):
                if f == "--epochs":
                    flags[i + 1] = "2"
            flags += small
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = args.runs_dir
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started, load_before = time.time(), os.getloadavg()

    print("pretraining", flush=True)
    pre_out = runs / "pretrain"
    run_all({"pretrain": swamp("run", *PRETRAIN, "--out", str(pre_out), "--quiet")}, 1, env)
    pretrained = the_run(pre_out) / "level_0" / "solution.safetensors"
    pre_acc = level_acc(the_run(pre_out))[0][1]

    variants = {"": [], "+SquareHead": SQUAREHEAD}
    commands: dict[str, list[str]] = {}
    for seed in seeds:
        for tag, extra in variants.items():
            base = [*FT, "--weights", str(pretrained), "--seed", str(seed), *extra]

            def add(name: str, *flags: str) -> None:
                key = f"{name}{tag}/seed{seed}"
                commands[key] = swamp("run", *base, *flags, "--out", str(runs / key))

            for s in SPARSITIES:
                add(f"oneshot-ft-{s}", "--method", "oneshot", "--target-sparsity", str(s),
                    "--levels", "1")
                for ramp in ("cubic", "harmonic"):
                    add(f"gradual-{ramp}-{s}", "--method", "imp", "--prune-schedule",
                        "gradual", "--ramp", ramp, "--levels", "1", "--prune-fraction", str(s))
            for key, fraction, levels, _ in imp_plans():
                add(f"imp-ft-{key}", "--method", "imp", "--levels", str(levels),
                    "--prune-fraction", repr(fraction))
                add(f"swamp-ft-{key}", "--method", "swamp", "--particles", "2",
                    "--levels", str(levels), "--prune-fraction", repr(fraction))
    for seed in seeds:
        for data in ("mnist1d", "mnist1d-noisy"):
            key = f"ticket-{data}/seed{seed}"
            commands[key] = swamp("run", *TRANSFER, "--dataset", data, "--seed", str(seed),
                                  "--out", str(runs / key))
        key = f"random-mnist1d/seed{seed}"
        commands[key] = swamp("run", *TRANSFER, "--dataset", "mnist1d", "--seed", str(seed),
                              "--out", str(runs / key))
        commands[key][commands[key].index("imp")] = "random"
    todo = {k: v for k, v in commands.items()
            if not ((runs / k).is_dir() and any((runs / k).iterdir())
                    and _finished(the_run(runs / k)))}
    print(f"training {len(todo)} of {len(commands)} runs", flush=True)
    trained = bool(todo)
    run_all(todo, args.jobs, env)
    transfer_cmds = {}
    for seed in seeds:
        source = the_run(runs / f"ticket-mnist1d-noisy/seed{seed}")
        for level in TRANSFER_LEVELS:
            key = f"transferred-L{level}/seed{seed}"
            cmd = swamp("run", *TRANSFER, "--dataset", "mnist1d", "--seed", str(seed),
                        "--mask-from", f"{source}:{level}", "--levels", "0",
                        "--out", str(runs / key))
            transfer_cmds[key] = cmd
    todo = {k: v for k, v in transfer_cmds.items()
            if not ((runs / k).is_dir() and any((runs / k).iterdir()))}
    trained = trained or bool(todo)
    run_all(todo, args.jobs, env)

    # ---- tables -------------------------------------------------------------------------
    acc: dict[tuple[str, float], dict[int, float]] = {}
    for tag in variants:
        for seed in seeds:
            for s in SPARSITIES:
                for name in ("oneshot-ft", "gradual-cubic", "gradual-harmonic"):
                    levels = level_acc(the_run(runs / f"{name}-{s}{tag}/seed{seed}"))
                    acc.setdefault((name + tag, s), {})[seed] = levels[1][1]
            imp_accuracy(acc, runs, tag, seed)
    one = {s: oneshot_acc(pretrained, s, runs, env) for s in SPARSITIES}
    methods = ["oneshot-ft", "gradual-cubic", "gradual-harmonic", "imp-ft", "swamp-ft"]
    names = [m + tag for tag in variants for m in methods]
    lines = ["# Sparse fine-tuning from a pretrained conv1d, and ticket transfer (MNIST-1D, CPU)",
             "", "Reproduce (resumes; finished runs are reused):", "",
             "```", f"python benchmarks/finetune.py --seeds {args.seeds} --jobs {args.jobs}",
             "```", "", (__doc__ or "").split("\n\n", 1)[1].split("Statistics:")[0].strip(), "",
             f"Pretrained dense conv1d: test accuracy {100 * pre_acc:.2f}%. "
             f"Fine-tuning: {FT[FT.index('--epochs') + 1]} epochs per level at lr 0.02 (cosine), seeds "
             f"{args.seeds}.", "",
             "## Test accuracy (%), mean ± 95% t-interval over seeds", "",
             "| method | " + " | ".join(f"{100 * s:g}%" for s in SPARSITIES) + " |",
             "|---|" + "---:|" * len(SPARSITIES),
             "| one-shot (no training) | " + " | ".join(f"{100 * one[s]:.2f}"
                                                      for s in SPARSITIES) + " |"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cell([acc[(name, s)][k] for k in seeds])
                                                for s in SPARSITIES) + " |")
    lines += ["", "## Paired difference to one-shot + FT (points), 95% t-interval", "",
              "| method | " + " | ".join(f"{100 * s:g}%" for s in SPARSITIES) + " |",
              "|---|" + "---:|" * len(SPARSITIES)]
    for name in names:
        if name == "oneshot-ft":
            continue
        ref = "oneshot-ft"
        lines.append(f"| {name} | " + " | ".join(
            verdict([acc[(name, s)][k] - acc[(ref, s)][k] for k in seeds])
            for s in SPARSITIES) + " |")
    lines += ["", "## SquareHead against the task loss alone (paired, points)", "",
              "| method | " + " | ".join(f"{100 * s:g}%" for s in SPARSITIES) + " |",
              "|---|" + "---:|" * len(SPARSITIES)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(
            verdict([acc[(m + '+SquareHead', s)][k] - acc[(m, s)][k] for k in seeds])
            for s in SPARSITIES) + " |")

    lines += ["", "## SWAMP against IMP (paired, points)", "",
              "| loss | " + " | ".join(f"{100 * s:g}%" for s in SPARSITIES) + " |",
              "|---|" + "---:|" * len(SPARSITIES)]
    for tag in variants:
        lines.append(f"| task{tag} | " + " | ".join(
            verdict([acc[("swamp-ft" + tag, s)][k] - acc[("imp-ft" + tag, s)][k]
                     for k in seeds]) for s in SPARSITIES) + " |")

    # ---- transfer -------------------------------------------------------------------------
    lines += ["", "## Ticket transfer: mnist1d-noisy -> mnist1d (test accuracy %, 95% "
              "t-interval)", "",
              "| sparsity | ticket found on mnist1d | transferred from mnist1d-noisy | "
              "random mask | transferred − found (paired) |", "|---:|---:|---:|---:|---:|"]
    transfer_rows = {}
    for level in TRANSFER_LEVELS:
        found = [level_acc(the_run(runs / f"ticket-mnist1d/seed{k}"))[level][1] for k in seeds]
        moved = [level_acc(the_run(runs / f"transferred-L{level}/seed{k}"))[0][1]
                 for k in seeds]
        rand = [level_acc(the_run(runs / f"random-mnist1d/seed{k}"))[level][1] for k in seeds]
        transfer_rows[level] = {"found": found, "transferred": moved, "random": rand}
        lines.append(f"| {100 * (1 - 0.5 ** level):g}% | {cell(found)} | {cell(moved)} | "
                     f"{cell(rand)} | {verdict([a - b for a, b in zip(moved, found)])} |")
    spent = training_time(runs, trained, started, load_before[0], args.jobs)
    lines += ["", f"Wall time of the training: {spent['seconds'] / 60:.1f} min with "
              f"{spent.get('jobs', args.jobs)} jobs of 1 thread on a shared 2-core CPU (load "
              f"average before {spent.get('load_before', math.nan):.2f}, after "
              f"{spent.get('load_after', math.nan):.2f}). A GPU changes the time, not these "
              f"numbers' meaning; no GPU row was measured (none was lent)."]
    RESULTS.mkdir(exist_ok=True)
    text = "\n".join(lines) + "\n"
    (RESULTS / "finetune.md").write_text(text)
    (RESULTS / "finetune.json").write_text(json.dumps({
        "sparsities": SPARSITIES, "seeds": seeds, "oneshot": one,
        "accuracy": {f"{n}@{s}": acc[(n, s)] for n in names for s in SPARSITIES},
        "transfer": transfer_rows}, indent=1))
    plot(acc, one, names, seeds)
    print(text)


def imp_accuracy(acc: dict, runs: Path, tag: str, seed: int) -> None:
    """Into `acc[(name + tag, sparsity)][seed]`: the test accuracy of the IMP and SWAMP runs
    of `imp_plans` at the levels where they reach each sparsity (checked)."""
    for name in ("imp-ft", "swamp-ft"):
        for key, _, _, reached in imp_plans():
            levels = level_acc(the_run(runs / f"{name}-{key}{tag}/seed{seed}"))
            for lv, s in reached.items():
                assert abs(1 - levels[lv][0] - s) < 1e-3, (name, key, lv, levels[lv])
                acc.setdefault((name + tag, s), {})[seed] = levels[lv][1]


def training_time(runs: Path, trained: bool, started: float, load_before: float,
                  jobs: int) -> dict:
    """The wall time of the invocations that trained, kept beside the runs (`wall.json`): a
    re-render (all runs finished) must not report its own few seconds as the study's cost."""
    timing = runs / "wall.json"
    spent = json.loads(timing.read_text()) if timing.is_file() else {"seconds": 0.0}
    if trained:
        spent = {**spent, "seconds": spent["seconds"] + time.time() - started, "jobs": jobs,
                 "load_before": load_before, "load_after": os.getloadavg()[0]}
        timing.write_text(json.dumps(spent))
    return spent


def _finished(run_dir: Path) -> bool:
    settings = json.loads((run_dir / "settings.json").read_text())
    levels = settings["prune"]["levels"]
    return (run_dir / f"level_{levels}" / "metrics.json").is_file()


def plot(acc, one, names, seeds, title: str = "a pretrained conv1d on MNIST-1D",
         path: Path | None = None, sparsities=SPARSITIES) -> None:
    """Accuracy against sparsity, task loss alone and with SquareHead: mean and 95%
    t-interval over seeds, with the untrained one-shot line (finetune_transformer.py too,
    with its own `sparsities`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    xs = [100 * s for s in sparsities]
    for ax, tag in zip(axes, ("", "+SquareHead")):
        ax.plot(xs, [100 * one[s] for s in sparsities], "k:", marker="x", label="one-shot")
        for name in [n for n in names if n.endswith(tag) and (tag or "+" not in n)]:
            stats = [t_interval([acc[(name, s)][k] for k in seeds]) for s in sparsities]
            means = [100 * m for m, _ in stats]
            halves = [100 * h for _, h in stats]
            line, = ax.plot(xs, means, marker="o", ms=3, label=name.replace(tag, ""))
            ax.fill_between(xs, [m - h for m, h in zip(means, halves)],
                            [m + h for m, h in zip(means, halves)], color=line.get_color(),
                            alpha=0.15)
        ax.set(xlabel="sparsity (%)", title="task loss" + (" + SquareHead" if tag else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"fine-tuning {title}: mean and 95% t-interval, n = {len(seeds)} seeds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path or RESULTS / "finetune.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
