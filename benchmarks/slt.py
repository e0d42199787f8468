"""Strong lottery tickets on MNIST-1D through the product: `swamp compare` and `swamp run
--method slt`, classification and generation, 3 seeds.

Classification (MLP 40-256-256-10, SGD lr 0.1, 10 epochs per level, per-layer pruning,
prune fraction 0.45 over 5 levels: densities 100/55/30/17/9/5%):

    swamp compare --methods imp,slt                                  (1 score particle)
    swamp compare --methods imp,slt --particles 3                    (scores averaged)
    swamp compare --methods imp,slt --particles 3 --slt-combine vote (masks voted)

share one runs directory, so IMP is trained once; IMP's level 0 is the trained dense
network. Each compare pairs slt with IMP seed by seed (its paired.csv); the particle
variants are paired with the single particle here, with the same function
(`studies.paired.paired_difference`) on the runs' own level records.

Generation (MLP generator 16-256-256-40 from noise, the run's MMD objective): the dense
trained generator (`swamp run --method imp --levels 0`, Adam lr 1e-3) and strong tickets
(`swamp run --method slt --levels 4`, Adam lr 0.05 on the scores; densities
100/55/30/17/9%). They train at different learning rates (a generator's weights and a
ticket's scores need different steps), so `compare` (which keeps training settings shared)
does not fit; `swamp report` over the slt runs draws the MMD and Frechet panels, and the
pairing with the dense generator is done here, seed by seed, from the runs' records.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/slt.py [--runs DIR]

`--runs DIR` keeps the runs (a re-run reuses finished ones); default: a temporary folder.
Writes benchmarks/results/slt.md, slt.json, slt.png (the classification compare's figure),
slt_generation.png (the generator report's figure) and slt_samples.png (seed 0's samples).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import machine_line, publish  # noqa: E402

from swamp.store import RunStore  # noqa: E402
from swamp.studies.paired import DIRECTION, mean_interval, paired_difference  # noqa: E402

SEEDS = "0,1,2"
# SLT_SMOKE=1: a few seconds' check of this script (tiny data, 1 epoch), nothing to publish
SMOKE = os.environ.get("SLT_SMOKE") == "1"
RESULTS = Path(tempfile.mkdtemp()) if SMOKE else Path(__file__).parent / "results"
COMMON = ["--dataset", "mnist1d", "--data-size", "400" if SMOKE else "4000", "--no-augment",
          "--epochs", "1" if SMOKE else "10",
          "--batch-size", "128", "--scope", "layerwise", "--device", "cpu", "--threads", "1",
          "--no-save-particles"]
CLASSIFY = [*COMMON, "--model", "mlp", "--lr", "0.1", "--rewind-epochs", "0", "--levels", "5",
            "--prune-fraction", "0.45"]
VARIANTS = {"1 particle": ["--particles", "1"], "3 particles, mean score": ["--particles", "3"],
            "3 particles, mask vote": ["--particles", "3", "--slt-combine", "vote"]}
GENERATE = [*COMMON, "--model", "mlp-generator", "--optimizer", "adam", "--weight-decay", "0",
            "--rewind-epochs", "0", "--prune-fraction", "0.45"]
DENSE_GEN = ["--method", "imp", "--levels", "0", "--lr", "0.001"]
SLT_GEN = ["--method", "slt", "--levels", "4", "--lr", "0.05"]


def swamp(*args: str) -> None:
    cmd = [sys.executable, "-m", "swamp", *args]
    print("$ swamp " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def records(run_dir: Path) -> list[dict]:
    return RunStore(run_dir).level_metrics()


def one_run(runs: Path, prefix: str) -> dict[int, Path]:
    """seed -> the run directory of `prefix` (the method name of compare's runs)."""
    out = {}
    for d in sorted(runs.glob(f"{prefix}-*")):
        seed = json.loads((d / "settings.json").read_text())["run"]["seed"]
        out[seed] = d
    return out


def cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    lo, hi = mean_interval(values)
    m = statistics.fmean(values)
    return f"{scale * m:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def paired_cell(p, scale: float = 1.0, digits: int = 3) -> str:
    return (f"{scale * p.mean:+.{digits}f} [{scale * p.low:+.{digits}f}, "
            f"{scale * p.high:+.{digits}f}], p {p.p:.3f}: {p.verdict}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", help="keep the runs here (reused when re-run)")
    args = ap.parse_args()
    load0, t0 = os.getloadavg(), time.perf_counter()
    tmp = None
    if args.runs:
        root = Path(args.runs)
    else:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
    runs = root / "runs"
    data: dict = {"classification": {}, "generation": {}}
    commands = []

    # ---- classification: three compares over one runs directory ---------------------------
    slt_acc: dict[str, dict[int, dict[int, float]]] = {}   # variant -> level -> seed -> acc
    imp_acc: dict[int, dict[int, float]] = {}
    density: dict[int, float] = {}
    paired_imp: dict[str, list[dict]] = {}
    parts: dict[str, dict[str, dict[int, dict[int, float]]]] = {}
    for k, (variant, extra) in enumerate(VARIANTS.items()):
        report = root / f"compare-{k}"
        if report.exists():
            shutil.rmtree(report)
        flags = ["compare", "--methods", "imp,slt", "--seeds", SEEDS, *CLASSIFY, *extra,
                 "--runs-dir", str(runs), "--out", str(report), "--quiet"]
        commands.append("swamp " + " ".join(flags))
        swamp(*flags)
        print(f"  {variant}: {time.perf_counter() - t0:.0f} s", flush=True)
        with open(report / "paired.csv", newline="") as fh:
            paired_imp[variant] = [r for r in csv.DictReader(fh) if r["metric"] == "test_acc"]
        if k == 0:
            shutil.copyfile(report / "accuracy_vs_sparsity.png", RESULTS / "slt.png")
            for seed, d in one_run(runs, "imp").items():
                for r in records(d):
                    imp_acc.setdefault(r["level"], {})[seed] = r["test_acc"]
                    density[r["level"]] = r["density"]
        # this variant's slt runs: the newest directories not claimed by an earlier variant
        settings = {"particles": int(extra[1]),
                    "slt_combine": "vote" if "vote" in extra else "average"}
        acc: dict[int, dict[int, float]] = {}
        for d in sorted(runs.glob("slt-*")):
            s = json.loads((d / "settings.json").read_text())
            if all(s["method"][key] == v for key, v in settings.items()):
                for r in records(d):
                    acc.setdefault(r["level"], {})[s["run"]["seed"]] = r["test_acc"]
                    if settings["particles"] > 1:      # the particles' own tickets
                        for key in ("particle_acc_mean", "ensemble_acc"):
                            parts.setdefault(variant, {}).setdefault(key, {}).setdefault(
                                r["level"], {})[s["run"]["seed"]] = r[key]
        slt_acc[variant] = acc

    levels = sorted(density)
    cls = data["classification"]
    cls["density"] = {lvl: density[lvl] for lvl in levels}
    cls["imp"] = imp_acc
    cls["slt"] = slt_acc
    cls["slt_minus_imp"] = paired_imp
    single = slt_acc["1 particle"]
    cls["particles_own_tickets"] = parts
    cls["variant_minus_single"] = {}
    for variant in list(VARIANTS)[1:]:
        cls["variant_minus_single"][variant] = {
            lvl: paired_difference(slt_acc[variant][lvl], single[lvl], DIRECTION["acc"]).__dict__
            for lvl in levels}

    # ---- generation: swamp run, paired here -----------------------------------------------
    gen_runs = root / "gen"
    gen: dict[str, dict[int, dict[int, dict[str, float]]]] = {"dense": {}, "slt": {}}
    slt_dirs = []
    for seed in SEEDS.split(","):
        for name, extra in (("dense", DENSE_GEN), ("slt", SLT_GEN)):
            out = gen_runs / name
            flags = ["run", *GENERATE, *extra, "--seed", seed, "--out", str(out), "--quiet"]
            if seed == "0":
                commands.append("swamp " + " ".join(flags).replace("--seed 0", "--seed S"))
            swamp(*flags)
        print(f"  generators, seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    for name in ("dense", "slt"):
        for d in sorted((gen_runs / name).iterdir()):
            seed = json.loads((d / "settings.json").read_text())["run"]["seed"]
            if name == "slt":
                slt_dirs.append(d)
            for r in records(d):
                gen[name].setdefault(r["level"], {})[seed] = {
                    "mmd": r["test_mmd"], "frechet": r["test_frechet"], "density": r["density"]}
    gen_report = root / "gen-report"
    if gen_report.exists():
        shutil.rmtree(gen_report)
    flags = ["report", "--out", str(gen_report), *map(str, slt_dirs)]
    commands.append("swamp report --out DIR <the three slt generator runs>")
    swamp(*flags)
    shutil.copyfile(gen_report / "accuracy_vs_sparsity.png", RESULTS / "slt_generation.png")
    samples(gen_runs, [lvl for lvl in sorted(gen["slt"]) if lvl > 0])
    data["generation"] = gen

    # ---- the results file -----------------------------------------------------------------
    wall = time.perf_counter() - t0
    lines = ["# Strong lottery tickets on MNIST-1D", "",
             "Made by `OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/slt.py`, which runs "
             "only the product's commands (DIR: the runs folder, `--runs` or a temporary "
             "one):", "", "```", *(c.replace(str(root), "DIR") for c in commands), "```", "",
             "Scale: 4000 MNIST-1D signals (90% of the train split trained on, 10% "
             "validation), 10 epochs per level, batch 128, seeds 0, 1, 2, per-layer exact "
             "counts for every method. Strong tickets: signed-constant frozen weights "
             "(`--slt-init` default), top-|score| per layer. Cells: mean over the 3 seeds "
             "[95% t-interval]; differences: paired by seed (runs of one seed share data split "
             "and initialisation), mean [95% t-interval], two-sided paired t-test p, and the "
             "verdict of `studies/paired.py` (*no clear difference* when the interval covers "
             "0). With n = 3 the intervals are wide; densities are tested one by one.", "",
             "## Classification: test accuracy (%), MLP 40-256-256-10", "",
             "IMP's level 0 is the trained dense network; slt's level 0 keeps every frozen "
             "weight (an untrained random network: a floor, not a ticket).", "",
             "| density | IMP (trained) | " + " | ".join(f"slt, {v}" for v in VARIANTS) + " |",
             "|---:|---:|" + "---:|" * len(VARIANTS)]
    for lvl in levels:
        row = [cell(list(imp_acc[lvl].values()), 100, 1)]
        row += [cell(list(slt_acc[v][lvl].values()), 100, 1) for v in VARIANTS]
        lines.append(f"| {100 * density[lvl]:.1f}% | " + " | ".join(row) + " |")
    lines += ["", "### slt − IMP (points), from each compare's `paired.csv`", "",
              "| density | " + " | ".join(VARIANTS) + " |", "|---:|" + ":---|" * len(VARIANTS)]
    by = {v: {round(float(r["density"]), 4): r for r in rows} for v, rows in paired_imp.items()}
    for lvl in levels:
        key = round(density[lvl], 4)
        cells = []
        for v in VARIANTS:
            r = by[v].get(key)
            cells.append("–" if r is None else
                         f"{100 * float(r['mean_diff']):+.1f} [{100 * float(r['ci_low']):+.1f}, "
                         f"{100 * float(r['ci_high']):+.1f}], p {float(r['p_value']):.3f}: "
                         f"{r['verdict']}")
        lines.append(f"| {100 * density[lvl]:.1f}% | " + " | ".join(cells) + " |")
    lines += ["", "### Particles: variant − 1 particle (points), paired by seed", "",
              "| density | " + " | ".join(list(VARIANTS)[1:]) + " |",
              "|---:|" + ":---|" * (len(VARIANTS) - 1)]
    for lvl in levels[1:]:
        cells = []
        for v in list(VARIANTS)[1:]:
            p = paired_difference(slt_acc[v][lvl], single[lvl], DIRECTION["acc"])
            cells.append(paired_cell(p, 100, 1))
        lines.append(f"| {100 * density[lvl]:.1f}% | " + " | ".join(cells) + " |")
    mean_v, vote_v = list(VARIANTS)[1:]
    lines += ["", "The 3 particles' own tickets (each particle's top |score| alone; from the "
              "runs' level records, the same particles in both 3-particle variants: only the "
              "combination differs) next to the level's combined ticket: the mean over "
              "particles, and the output ensemble of the 3 particle tickets (3 models):", "",
              "| density | combined: mean score | combined: mask vote | particle mean | "
              "ensemble of 3 |", "|---:|---:|---:|---:|---:|"]
    for lvl in levels[1:]:
        cells = [cell(list(slt_acc[mean_v][lvl].values()), 100, 1),
                 cell(list(slt_acc[vote_v][lvl].values()), 100, 1),
                 cell(list(parts[mean_v]["particle_acc_mean"][lvl].values()), 100, 1),
                 cell(list(parts[mean_v]["ensemble_acc"][lvl].values()), 100, 1)]
        lines.append(f"| {100 * density[lvl]:.1f}% | " + " | ".join(cells) + " |")
    lines += ["", "Figure (the first compare's, IMP vs slt with 1 particle): "
              "`benchmarks/results/slt.png`.", "",
              "## Generation: MLP generator 16-256-256-40, MMD objective", "",
              "Metrics of the product (`evaluation.GenerativeScores`): unbiased MMD² to the test "
              "split with the run's kernel widths, and the Frechet distance of the penultimate "
              "features of the run's seeded feature classifier (the same for every run of a "
              "seed). Lower is better. Dense: the trained generator; slt level 0: the "
              "untrained frozen generator (every weight kept).", "",
              "| generator | density | test MMD² | Frechet distance |", "|---|---:|---:|---:|"]
    dense0 = gen["dense"][0]
    lines.append(f"| dense trained | 100.0% | {cell([v['mmd'] for v in dense0.values()], 1, 4)}"
                 f" | {cell([v['frechet'] for v in dense0.values()], 1, 2)} |")
    for lvl in sorted(gen["slt"]):
        g = gen["slt"][lvl]
        d = statistics.fmean(v["density"] for v in g.values())
        label = "untrained (all kept)" if lvl == 0 else "strong ticket"
        lines.append(f"| {label} | {100 * d:.1f}% | {cell([v['mmd'] for v in g.values()], 1, 4)}"
                     f" | {cell([v['frechet'] for v in g.values()], 1, 2)} |")
    lines += ["", "### strong ticket − dense trained generator, paired by seed", "",
              "| density | MMD² | Frechet distance |", "|---:|:---|:---|"]
    gen_paired = {}
    for lvl in sorted(gen["slt"]):
        g = gen["slt"][lvl]
        d = statistics.fmean(v["density"] for v in g.values())
        pm = paired_difference({s: v["mmd"] for s, v in g.items()},
                               {s: v["mmd"] for s, v in dense0.items()}, DIRECTION["mmd"])
        pf = paired_difference({s: v["frechet"] for s, v in g.items()},
                               {s: v["frechet"] for s, v in dense0.items()},
                               DIRECTION["frechet"])
        gen_paired[lvl] = {"mmd": pm.__dict__, "frechet": pf.__dict__}
        lines.append(f"| {100 * d:.1f}% | {paired_cell(pm, 1, 4)} | {paired_cell(pf, 1, 2)} |")
    data["generation_slt_minus_dense"] = gen_paired
    lines += ["", "Figures: `benchmarks/results/slt_generation.png` (`swamp report` of the slt "
              "generator runs: MMD² and Frechet panels), `benchmarks/results/slt_samples.png` "
              "(seed 0: the levels' `samples.png`).", "",
              f"Wall time {wall:.0f} s. " + machine_line(load0, os.getloadavg())]
    (RESULTS / "slt.json").write_text(json.dumps(data, indent=1, sort_keys=True,
                                                 default=str) + "\n")
    publish(lines, RESULTS / "slt.md")
    if tmp is not None:
        tmp.cleanup()


def samples(gen_runs: Path, levels: list[int]) -> None:
    """Seed 0's samples pictures (the product's `level_<n>/samples.png`), stacked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    def seed0(name: str) -> Path:
        for d in sorted((gen_runs / name).iterdir()):
            if json.loads((d / "settings.json").read_text())["run"]["seed"] == 0:
                return d
        raise FileNotFoundError(name)

    pics = [("dense trained", RunStore(seed0("dense")).samples_path(0))]
    store = RunStore(seed0("slt"))
    pics += [(f"strong ticket, level {lvl}", store.samples_path(lvl)) for lvl in levels]
    fig, axes = plt.subplots(len(pics), 1, figsize=(8, 2.6 * len(pics)))
    for ax, (name, path) in zip(axes, pics):
        ax.imshow(mpimg.imread(path))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(RESULTS / "slt_samples.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
