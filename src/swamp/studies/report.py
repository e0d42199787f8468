"""Tables and plots of finished runs: accuracy vs sparsity per method, mean and spread over seeds.

    build_report([run_dir, ...], out)   ->  out/summary.csv
                                            out/accuracy_vs_sparsity.png
                                            out/report.md

A "result" is any directory with `settings.json` and `metrics.csv`: a run, a Lottery Pools
directory or an ensemble (their `posthoc.json` names the method). Results are grouped by
method; within a method, one result per seed. Runs of one method may differ only in their
seed; runs of different methods also in the method's own settings (`METHOD_SETTINGS`), never
in the shared ones (data, model, training, pruning). Settings that do not change a run
(device, engine, out, ...) are ignored. Levels are matched by index; their densities agree
across seeds because pruning counts are exact. Numbers are test accuracy and NLL of the
level solutions; nothing here selects anything.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from swamp.config import UNHASHED, Settings
from swamp.errors import SwampError
from swamp.methods import METHODS
from swamp.posthoc.methods import POSTHOC, describe_ensemble
from swamp.store import RunStore, atomic_write_bytes

SUMMARY_COLUMNS = ["method", "level", "density", "sparsity", "seeds", "test_acc_mean",
                   "test_acc_std", "test_nll_mean", "test_nll_std"]
# Methods in the order tables and legends show them (others follow alphabetically).
# `ensemble` labels `swamp ensemble` output.
ORDER = [*METHODS, *POSTHOC, "ensemble"]


@dataclass
class Result:
    path: Path
    method: str
    seed: int
    settings: Settings
    rows: list[dict[str, float]]
    posthoc: dict[str, Any] = field(default_factory=dict)   # posthoc.json of post-hoc dirs


@dataclass
class SummaryRow:
    method: str
    level: int
    density: float
    seeds: int
    acc: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    mmd: list[float] = field(default_factory=list)       # generators (issue 16)
    frechet: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "level": self.level, "density": self.density,
                "sparsity": 1.0 - self.density, "seeds": self.seeds,
                "test_acc_mean": _mean(self.acc), "test_acc_std": _std(self.acc),
                "test_nll_mean": _mean(self.nll), "test_nll_std": _std(self.nll)}


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


REQUIRED = ("level", "density", "test_acc", "test_nll")
GENERATIVE = ("test_mmd", "test_frechet")     # generator runs' levels (issue 16)


def _float(v: str | None, csv_path: Path, column: str, line: int) -> float:
    if v in ("", None):
        return math.nan
    try:
        return float(v)
    except ValueError:
        raise SwampError(f"{csv_path}: column {column} holds {v!r} (line {line}), not a "
                         f"number; rewrite or remove that metrics.csv") from None


def read_result(path: str | Path) -> Result:
    from swamp.posthoc.runs import method_label
    from swamp.reader import read_settings

    root = Path(path)
    settings, posthoc = read_settings(root)
    store = RunStore(root)
    if store.finished_levels(strict=True):
        # A run (or Lottery Pools) summarised from its checked level records, never from
        # metrics.csv, which is a copy for people: a changed or stale table changes nothing.
        records = store.level_metrics()
        rows = [{k: _record_float(r.get(k)) for k in REQUIRED}
                | {k: float(r[k]) for k in GENERATIVE if k in r} for r in records]
    else:
        rows = _csv_rows(root, store)    # an ensemble's output: its table is its record
    return Result(root, method_label(settings, posthoc), settings.run.seed, settings, rows,
                  posthoc)


def _record_float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _csv_rows(root: Path, store: RunStore) -> list[dict[str, float]]:
    csv_path = store.metrics_csv
    if not csv_path.is_file():
        raise SwampError(f"{root} has no finished level (no metrics.csv); run it first")
    store.verify_record(csv_path)      # a changed or truncated table is refused
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        raw = [(reader.line_num, row) for row in reader]
        header = reader.fieldnames or []
    if not raw:
        raise SwampError(f"{root} has no finished level (metrics.csv is empty); run it first")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise SwampError(f"{csv_path} lacks the column {missing[0]} (needs "
                         f"{', '.join(REQUIRED)}); it is not a swamp metrics file")
    rows = []
    for line, row in raw:
        values = {k: _float(row[k], csv_path, k, line) for k in REQUIRED}
        for k in ("level", "density"):
            if math.isnan(values[k]):
                raise SwampError(f"{csv_path}: column {k} is empty (line {line}); rewrite or "
                                 f"remove that metrics.csv")
        rows.append(values)
    return rows


# Settings in which runs of different methods may differ: what makes the method, and
# settings that do not change what a run computes (UNHASHED: device, engine, out, ...).
METHOD_SETTINGS = {"method", "swa", *(r for m in METHODS.values() for r in m.reads)}


def _comparable(s: Settings) -> dict[str, Any]:
    skip = UNHASHED | {"seed"}
    return {f"{sec}.{n}": v for sec, n, v in s.items() if n not in skip}


def _shared(s: Settings) -> dict[str, Any]:
    """The settings every run of one report shares, whatever its method. The SWA learning
    rate is written out only for runs that use SWA; it counts only between two such runs."""
    out = {k: v for k, v in _comparable(s).items() if k.split(".")[1] not in METHOD_SETTINGS}
    if not s.method.swa:
        out.pop("train.swa_lr")
    return out


def check_results(results: Sequence[Result]) -> None:
    from swamp.posthoc.runs import check_same_task

    if not results:
        raise SwampError("no runs to report; pass run directories")
    check_same_task([(r.path, r.settings) for r in results], "report")
    by_method: dict[str, list[Result]] = {}
    for r in results:
        by_method.setdefault(r.method, []).append(r)
    for method, group in by_method.items():
        seeds = [r.seed for r in group]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            raise SwampError(f"report: method {method} has several runs with seed {dup[0]}; "
                             f"pass one run per method and seed")
        first = _comparable(group[0].settings)
        for r in group[1:]:
            mine = _comparable(r.settings)
            diff = sorted(k for k in first if first[k] != mine.get(k))
            if diff:
                raise SwampError(f"report: runs of method {method} differ in {diff[0]} "
                                 f"({group[0].path} vs {r.path}); pass runs that differ only "
                                 f"in their seed")
    # Across methods: the same shared settings (post-hoc dirs carry their source's).
    ref = results[0]
    first = _shared(ref.settings)
    for r in results[1:]:
        mine = _shared(r.settings)
        diff = [k for k in first if k in mine and first[k] != mine[k]]
        if diff:
            k = diff[0]
            raise SwampError(f"report: runs differ in {k} ({ref.path}: {first[k]!r} vs "
                             f"{r.path}: {mine[k]!r}); pass runs trained with the same "
                             f"settings apart from the method's own and the seed")


def summarise(results: Sequence[Result]) -> list[SummaryRow]:
    """Mean and spread over seeds of every (method, level)."""
    table: dict[tuple[str, int], SummaryRow] = {}
    densities: dict[tuple[str, int], list[float]] = {}
    for r in results:
        for row in r.rows:
            key = (r.method, int(row["level"]))
            s = table.setdefault(key, SummaryRow(r.method, key[1], 0.0, 0))
            s.seeds += 1
            s.acc.append(row["test_acc"])
            s.nll.append(row["test_nll"])
            if "test_mmd" in row:
                s.mmd.append(row["test_mmd"])
                s.frechet.append(row["test_frechet"])
            densities.setdefault(key, []).append(row["density"])
    for key, s in table.items():
        s.density = statistics.fmean(densities[key])
    return sorted(table.values(), key=lambda s: (_rank(s.method), s.level))


def _rank(method: str) -> tuple[int, str]:
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def summary_csv(rows: Sequence[SummaryRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for s in rows:
        d = s.as_dict()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in d.items()})
    return buf.getvalue()


def _key(density: float) -> float:
    """Rows are grouped by density rounded to 4 digits; labels use the realised density."""
    return round(density, 4)


def _labels(rows: Sequence[SummaryRow]) -> dict[float, float]:
    """Grouping key -> the mean realised (unrounded) density of the rows it groups, so a
    label is rounded once (density 0.17851 shows as 82.1%, not 82.2% via 0.1785)."""
    groups: dict[float, list[float]] = {}
    for s in rows:
        groups.setdefault(_key(s.density), []).append(s.density)
    return {k: statistics.fmean(v) for k, v in groups.items()}


def _sparsity(density: float) -> str:
    return f"{100 * (1 - density):.1f}%"


def _cell(xs: list[float], scale: float, digits: int) -> str:
    if not xs:
        return "–"
    m = _mean(xs) * scale
    return f"{m:.{digits}f} ± {_std(xs) * scale:.{digits}f}" if len(xs) > 1 else f"{m:.{digits}f}"


def markdown_table(rows: Sequence[SummaryRow], metric: str = "acc") -> str:
    """Rows: densities (sparsity %); columns: methods; cells: mean ± std over seeds."""
    methods = sorted({s.method for s in rows}, key=_rank)
    dens = sorted({_key(s.density) for s in rows}, reverse=True)
    cells = {(s.method, _key(s.density)): s for s in rows}
    label = _labels(rows)
    scale, digits = (100.0, 2) if metric == "acc" else (1.0, 3)
    head = "| sparsity | density | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---:|" * (len(methods) + 2)]
    for d in dens:
        vals = []
        for m in methods:
            s = cells.get((m, d))
            vals.append(_cell(getattr(s, metric), scale, digits) if s else "–")
        lines.append(f"| {_sparsity(label[d])} | {100 * label[d]:.2f}% | " + " | ".join(vals)
                     + " |")
    return "\n".join(lines)


def head_to_head(rows: Sequence[SummaryRow], a: str = "swamp", b: str = "imp") -> str:
    """Per density: mean test accuracy of `a` minus `b`, and where `a` does not beat `b`."""
    cells = {(s.method, _key(s.density)): s for s in rows}
    dens = sorted({d for (m, d) in cells if m == a} & {d for (m, d) in cells if m == b},
                  reverse=True)
    if not dens:
        return ""
    label = _labels([cells[(m, d)] for d in dens for m in (a, b)])
    lines = [f"| sparsity | {a} − {b} (points, mean) | {a} beats {b} |", "|---:|---:|:---:|"]
    losses = []
    for d in dens:
        diff = 100 * (_mean(cells[(a, d)].acc) - _mean(cells[(b, d)].acc))
        win = diff > 0
        if not win:
            losses.append(_sparsity(label[d]))
        lines.append(f"| {_sparsity(label[d])} | {diff:+.2f} | {'yes' if win else '**no**'} |")
    verdict = (f"{a} has a higher mean test accuracy than {b} at every density."
               if not losses else
               f"{a} does **not** beat {b} (mean test accuracy) at sparsity "
               f"{', '.join(losses)}.")
    return "\n".join(lines) + "\n\n" + verdict


# Baselines far below the rest squash the y axis; the second panel leaves them out.
BASELINES = ("random",)


def plot(rows: Sequence[SummaryRow], path: Path, title: str = "") -> None:
    """Test accuracy vs density (log axis, decreasing to the right), mean ± std bands; with a
    random-mask baseline, a second panel zooms on the other methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    methods = sorted({s.method for s in rows}, key=_rank)
    zoomed = [m for m in methods if m not in BASELINES]
    panels = [methods] + ([zoomed] if zoomed and len(zoomed) < len(methods) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.8), squeeze=False)
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    ticks = sorted({s.density for s in rows}, reverse=True)
    if len(ticks) > 9:
        ticks = ticks[::math.ceil(len(ticks) / 9)]
    for k, (ax, shown) in enumerate(zip(axes[0], panels)):
        for m in shown:
            pts = sorted((s for s in rows if s.method == m), key=lambda s: -s.density)
            x = [s.density for s in pts]
            mean = [100 * _mean(s.acc) for s in pts]
            std = [100 * _std(s.acc) for s in pts]
            # output ensembles (imp-ensemble, `swamp ensemble`) cost several models: dashed
            style = "--" if m.endswith("ensemble") else "-"
            ax.plot(x, mean, style, marker="o", ms=3, label=m, lw=1.4, color=colours[m])
            ax.fill_between(x, [u - v for u, v in zip(mean, std)],
                            [u + v for u, v in zip(mean, std)], color=colours[m], alpha=0.15,
                            lw=0)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{100 * (1 - d):.1f}" for d in ticks], fontsize=8)
        ax.set_xlabel("sparsity (%) — log density axis")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        name = title if k == 0 else f"without {', '.join(BASELINES)}"
        if name:
            ax.set_title(name, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def settings_lines(results: Sequence[Result]) -> list[str]:
    s = results[0].settings
    seeds = sorted({r.seed for r in results})
    return [
        f"- data: {s.data.dataset} (size {s.data.data_size or 'default'}, validation fraction "
        f"{s.data.val_fraction}, augment {s.data.augment}); model: {s.model.model}",
        f"- training per level: {s.train.epochs} epochs, batch {s.train.batch_size}, "
        f"{s.train.optimizer} lr {s.train.lr} ({s.train.schedule}), momentum "
        f"{s.train.momentum}, weight decay {s.train.weight_decay}, rewind "
        f"{s.train.rewind_iters or s.train.rewind_epochs} "
        f"{'iterations' if s.train.rewind_iters else 'epochs'}, SWA from {s.train.swa_start}",
        f"- pruning: {s.prune.levels} levels of {s.prune.prune_fraction} ({s.prune.scorer}, "
        f"{s.prune.scope}); seeds {', '.join(map(str, seeds))}",
        "- methods: " + "; ".join(
            f"{r.method} ({describe(r)})"
            for r in {r.method: r for r in sorted(results, key=lambda x: _rank(x.method))
                      }.values()),
    ]


def describe(r: Result) -> str:
    """What a result's method is, for the report's methods line."""
    m = r.settings.method
    if not r.posthoc:
        if m.method in METHODS and METHODS[m.method].scores is not None:   # strong tickets
            return (f"{m.particles} score particle(s), frozen weights {m.slt_init}, "
                    f"combined by {m.slt_combine}")
        return f"{m.particles} particle(s), SWA {m.swa}"
    source = r.posthoc.get("source_method") or m.method
    kind = POSTHOC.get(r.posthoc.get("method"))
    if kind is not None:
        return kind.describe(r.posthoc, source)
    if "members" in r.posthoc or "ensemble" in r.method:     # `swamp ensemble` output
        return describe_ensemble(r.posthoc, source)
    return f"post-hoc over {source}"


def build_report(paths: Sequence[str | Path], out: str | Path, *, command: str | None = None,
                 title: str | None = None, notes: str = "") -> Path:
    """Write summary.csv, accuracy_vs_sparsity.png and report.md into `out`."""
    from swamp.posthoc.runs import check_out_dir

    check_out_dir(out)
    results = [read_result(p) for p in paths]
    check_results(results)
    return write_report(results, Path(out), command=command, title=title, notes=notes)


def write_report(results: Sequence[Result], out: Path, *, command: str | None = None,
                 title: str | None = None, notes: str = "") -> Path:
    from swamp.posthoc.runs import check_out_dir

    rows = summarise(results)
    check_out_dir(out).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "summary.csv", summary_csv(rows).encode())
    s = results[0].settings
    title = title or f"Accuracy vs sparsity: {s.model.model} on {s.data.dataset}"
    plot(rows, out / "accuracy_vs_sparsity.png", title)
    parts = [f"# {title}", ""]
    if command:
        parts += ["Command:", "", "```", command, "```", ""]
    parts += ["Settings:", "", *settings_lines(results), ""]
    if notes:
        parts += [notes.strip(), ""]
    parts += ["![accuracy vs sparsity](accuracy_vs_sparsity.png)", "",
              "## Test accuracy (%), mean ± std over seeds", "", markdown_table(rows, "acc"), "",
              "## Test NLL, mean ± std over seeds", "", markdown_table(rows, "nll"), ""]
    if any(s.mmd for s in rows):      # generators: lower is better
        parts += ["## Test MMD² (generators; lower is better), mean ± std over seeds", "",
                  markdown_table(rows, "mmd"), "",
                  "## Frechet distance of classifier features (lower is better)", "",
                  markdown_table(rows, "frechet"), ""]
    h2h = head_to_head(rows)
    if h2h:
        parts += ["## SWAMP vs IMP", "", h2h, ""]
    parts += ["Selections (greedy soups, Lottery Pools) use the validation split carved from "
              "the training data by seed; test numbers are reported, never selected on. "
              "Per-run numbers: `summary.csv` aggregates each run's `metrics.csv`.", ""]
    runs = sorted(results, key=lambda r: (_rank(r.method), r.seed))
    parts += ["Runs:", ""] + [f"- {r.method} seed {r.seed}: `{r.path}`" for r in runs] + [""]
    atomic_write_bytes(out / "report.md", "\n".join(parts).encode())
    return out
