"""Tables and plots of finished runs: accuracy, NLL and calibration vs sparsity per method, mean
and spread over seeds, and each method's paired difference from a baseline (studies/paired.py).

    build_report([run_dir, ...], out)   ->  out/summary.csv
                                            out/paired.csv       (method - baseline, by seed)
                                            out/accuracy_vs_sparsity.png  (or .pdf, .svg)
                                            out/report.md

A "result" is any directory with `settings.json` and `metrics.csv`: a run, a Lottery Pools
directory or an ensemble (their `posthoc.json` names the method). Results are grouped by
method; within a method, one result per seed. Runs of one method may differ only in their
seed; runs of different methods also in the method's own settings (`METHOD_SETTINGS`), never
in the shared ones (data, model, training, pruning). Settings that do not change a run
(device, engine, out, ...) are ignored. Levels are matched by index; their densities agree
across seeds because pruning counts are exact. Numbers are test accuracy and NLL of the
level solutions (and their ECE and temperature-scaled NLL where the run recorded them:
runs made before have none, shown as "–"); nothing here selects anything.
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
from swamp.evaluation import ECE_BINS
from swamp.methods import METHODS
from swamp.posthoc.runs import VARIANT_SETTINGS
from swamp.posthoc.methods import POSTHOC, describe_ensemble
from swamp.store import RunStore, atomic_write_bytes
from swamp.studies.paired import (DIRECTION, NO_DIFFERENCE, TOO_FEW, Paired, mean_interval,
                                  paired_difference)

SUMMARY_COLUMNS = ["method", "level", "density", "sparsity", "seeds", "test_acc_mean",
                   "test_acc_std", "test_nll_mean", "test_nll_std",
                   # calibration; empty where no run of the row recorded it
                   "test_ece_mean", "test_ece_std", "test_nll_ts_mean", "test_nll_ts_std"]
# generator runs only (issue 16): appended to SUMMARY_COLUMNS when the runs have them
GENERATIVE_COLUMNS = ["test_mmd_mean", "test_mmd_std", "test_frechet_mean", "test_frechet_std"]
PAIRED_COLUMNS = ["metric", "method", "baseline", "density", "sparsity", "n", "mean_diff",
                  "ci_low", "ci_high", "p_value", "verdict", "seeds", "unpaired_seeds"]
FORMATS = ("png", "pdf", "svg")
# The method the others are paired with unless `baseline` names another: the papers' reference.
DEFAULT_BASELINE = "imp"
# metric -> (record key, its name in tables, scale, digits, unit of a difference)
METRICS = {"acc": ("test_acc", "test accuracy (%)", 100.0, 2, "points"),
           "nll": ("test_nll", "test NLL", 1.0, 3, "nats"),
           "ece": ("test_ece", "test ECE (%)", 100.0, 2, "points"),
           "nll_ts": ("test_nll_ts", "temperature-scaled test NLL", 1.0, 3, "nats"),
           # generators (issue 16); lower is better, as for NLL
           "mmd": ("test_mmd", "test MMD²", 1.0, 4, ""),
           "frechet": ("test_frechet", "Frechet distance", 1.0, 3, "")}
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
    ece: list[float] = field(default_factory=list)      # NaN for runs made before ECE
    nll_ts: list[float] = field(default_factory=list)   # NaN likewise (or without validation)
    seed_ids: list[int] = field(default_factory=list)   # the seed of each value above

    def by_seed(self, metric: str) -> dict[int, float]:
        return dict(zip(self.seed_ids, getattr(self, metric)))
    mmd: list[float] = field(default_factory=list)       # generators (issue 16)
    frechet: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "level": self.level, "density": self.density,
                "sparsity": 1.0 - self.density, "seeds": self.seeds,
                "test_acc_mean": _mean(self.acc), "test_acc_std": _std(self.acc),
                "test_nll_mean": _mean(self.nll), "test_nll_std": _std(self.nll),
                "test_ece_mean": _mean(self.ece), "test_ece_std": _std(self.ece),
                "test_nll_ts_mean": _mean(self.nll_ts), "test_nll_ts_std": _std(self.nll_ts)}


def _known(xs: list[float]) -> list[float]:
    return [x for x in xs if not math.isnan(x)]


def _mean(xs: list[float]) -> float:
    """Mean over the seeds that have the value (NaN when none has it)."""
    xs = _known(xs)
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    """Sample standard deviation over seeds (0 for a single seed, NaN for none)."""
    xs = _known(xs)
    return statistics.stdev(xs) if len(xs) > 1 else (0.0 if xs else math.nan)


REQUIRED = ("level", "density", "test_acc", "test_nll")
# Read when present; runs made before calibration was recorded lack them (NaN, shown "–").
OPTIONAL = ("test_ece", "test_nll_ts")
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
        rows = [{k: _record_float(r.get(k)) for k in (*REQUIRED, *OPTIONAL)}
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
        values = {k: _float(row.get(k), csv_path, k, line) for k in (*REQUIRED, *OPTIONAL)}
        for k in ("level", "density"):
            if math.isnan(values[k]):
                raise SwampError(f"{csv_path}: column {k} is empty (line {line}); rewrite or "
                                 f"remove that metrics.csv")
        rows.append(values)
    return rows


# Settings in which runs of different methods may differ: what makes the method, and
# settings that do not change what a run computes (UNHASHED: device, engine, out, ...).
METHOD_SETTINGS = {"method", "swa", *(r for m in METHODS.values() for r in m.reads),
                   *VARIANT_SETTINGS}   # issue 12: variants are labelled apart (method_label)


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
            s.ece.append(row.get("test_ece", math.nan))
            s.nll_ts.append(row.get("test_nll_ts", math.nan))
            s.seed_ids.append(r.seed)
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
    """One line per (method, level); generator runs add their MMD² and Frechet columns (as
    their metrics.csv does), classifier summaries keep SUMMARY_COLUMNS."""
    generative = _has(rows, "mmd")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS + (GENERATIVE_COLUMNS if generative
                                                               else []), lineterminator="\n")
    writer.writeheader()
    for s in rows:
        d = s.as_dict()
        if generative:
            d |= {"test_mmd_mean": _mean(s.mmd), "test_mmd_std": _std(s.mmd),
                  "test_frechet_mean": _mean(s.frechet), "test_frechet_std": _std(s.frechet)}
        writer.writerow({k: _csv_value(v) for k, v in d.items()})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    """Floats to 6 significant digits; a value no run recorded (NaN) as an empty field."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


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
    xs = _known(xs)
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
    scale, digits = METRICS[metric][2:4]
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


def _has(rows: Sequence[SummaryRow], metric: str) -> bool:
    return any(_known(getattr(s, metric)) for s in rows)


def resolve_baseline(rows: Sequence[SummaryRow] | Sequence[str],
                     baseline: str | None) -> str | None:
    """The method every other is paired with: `baseline` (refused if no run has it), else
    imp where present, else none (no paired differences)."""
    methods = {s if isinstance(s, str) else s.method for s in rows}
    if baseline is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in methods else None
    if baseline not in methods:
        raise SwampError(f"`baseline` {baseline} is not among the methods reported "
                         f"({', '.join(sorted(methods, key=_rank))}); pick one of them")
    return baseline


def paired_rows(rows: Sequence[SummaryRow], baseline: str, metric: str
                ) -> list[tuple[str, float, Paired]]:
    """(method, density, method - baseline paired by seed) at every density both have."""
    cells = {(s.method, _key(s.density)): s for s in rows}
    label = _labels(rows)
    out = []
    for m in sorted({s.method for s in rows} - {baseline}, key=_rank):
        for d in sorted({d for (mm, d) in cells if mm == m}, reverse=True):
            ref = cells.get((baseline, d))
            if ref is None:
                continue
            out.append((m, label[d], paired_difference(cells[(m, d)].by_seed(metric),
                                                       ref.by_seed(metric), DIRECTION[metric])))
    return out


def _seeds(seeds: Sequence[int]) -> str:
    return " ".join(map(str, seeds))


def paired_csv(rows: Sequence[SummaryRow], baseline: str | None) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PAIRED_COLUMNS, lineterminator="\n")
    writer.writeheader()
    if baseline is None:
        return buf.getvalue()
    for metric in METRICS:
        if not _has(rows, metric):
            continue
        for m, d, p in paired_rows(rows, baseline, metric):
            writer.writerow({k: _csv_value(v) for k, v in {
                "metric": METRICS[metric][0], "method": m, "baseline": baseline,
                "density": d, "sparsity": 1.0 - d, "n": p.n, "mean_diff": p.mean,
                "ci_low": p.low, "ci_high": p.high, "p_value": p.p, "verdict": p.verdict,
                "seeds": _seeds(p.seeds), "unpaired_seeds": _seeds(p.dropped)}.items()})
    return buf.getvalue()


def _signed(x: float, scale: float, digits: int) -> str:
    return "–" if math.isnan(x) else f"{x * scale:+.{digits}f}"


def paired_table(rows: Sequence[SummaryRow], baseline: str, metric: str) -> str:
    """One row per (method, density): n, mean difference, 95% interval, p, verdict; then one
    line per method counting its verdicts."""
    _, name, scale, digits, unit = METRICS[metric]
    found = paired_rows(rows, baseline, metric)
    if not found:
        return ""
    lines = [f"| sparsity | method | n | − {baseline} ({unit}) | 95% interval | p | verdict | "
             f"unpaired seeds |", "|---:|:---|---:|---:|:---:|---:|:---|:---|"]
    tally: dict[str, dict[str, int]] = {}
    for m, d, p in found:
        interval = (f"[{_signed(p.low, scale, digits)}, {_signed(p.high, scale, digits)}]"
                    if p.judged else "–")
        pv = "–" if math.isnan(p.p) else f"{p.p:.3f}"
        verdict = p.verdict if p.verdict in (NO_DIFFERENCE, TOO_FEW) else f"**{p.verdict}**"
        lines.append(f"| {_sparsity(d)} | {m} | {p.n} | {_signed(p.mean, scale, digits)} | "
                     f"{interval} | {pv} | {verdict} | {_seeds(p.dropped) or '–'} |")
        t = tally.setdefault(m, {})
        t[p.verdict] = t.get(p.verdict, 0) + 1
    summary = []
    for m, t in tally.items():
        total = sum(t.values())
        parts = [f"{t[v]} {v}" for v in ("better", "worse", NO_DIFFERENCE, TOO_FEW) if t.get(v)]
        summary.append(f"- {m} vs {baseline}: {', '.join(parts)} (of {total} densities)")
    return "\n".join(lines) + "\n\n" + "\n".join(summary)


def paired_section(rows: Sequence[SummaryRow], baseline: str | None) -> list[str]:
    if baseline is None:
        return ["## Paired differences", "",
                "No imp runs to pair with: pass `--baseline METHOD` to state each method's "
                "difference from another.", ""]
    parts = [f"## Paired differences from {baseline}", "",
             f"Each method minus {baseline}, run by run with the same seed (runs of one seed "
             f"share initialisation and data split); n counts the seeds both have (a seed only "
             f"one has is listed as unpaired and left out). Interval: 95% Student-t interval of "
             f"the mean difference; p: two-sided paired t-test. Verdict: *better* or *worse* "
             f"when the interval leaves out 0 (accuracy: higher is better; NLL, ECE: lower), "
             f"*{NO_DIFFERENCE}* when it covers 0, *{TOO_FEW}* with fewer than two paired "
             f"seeds. Densities are tested one by one, with no correction for multiple "
             f"comparisons.", ""]
    for metric in METRICS:
        if not _has(rows, metric):
            continue
        table = paired_table(rows, baseline, metric)
        if table:
            parts += [f"### {METRICS[metric][1]}", "", table, ""]
    return parts


# Baselines far below the rest squash the y axis; the second row of panels leaves them out.
BASELINES = ("random",)
# One colour per method in every figure, whichever methods it shows: matplotlib's tab10,
# then Dark2, by the method's place in ORDER (methods outside it by a hash of their name).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#1b9e77", "#d95f02", "#7570b3", "#e7298a",
           "#66a61e", "#e6ab02", "#a6761d", "#666666"]


def colour(method: str) -> str:
    import zlib

    i = ORDER.index(method) if method in ORDER else zlib.crc32(method.encode())
    return PALETTE[i % len(PALETTE)]


def check_formats(formats: Sequence[str]) -> list[str]:
    if not formats:
        raise SwampError("`format` is empty; give png, pdf or svg (or a list: pdf,svg)")
    for f in formats:
        if f not in FORMATS:
            raise SwampError(f"unknown figure format '{f}'; use {', '.join(FORMATS)} "
                             f"(or a list: pdf,svg)")
    return list(dict.fromkeys(formats))


def plot(rows: Sequence[SummaryRow], path: Path, title: str = "",
         formats: Sequence[str] = ("png",)) -> list[Path]:
    """Test accuracy, NLL and (where recorded) ECE vs density, one panel each: log density
    axis decreasing to the right (labelled in sparsity), a line per method at the mean over
    seeds and a band for the 95% t-interval of that mean. With a random-mask baseline, a
    second row zooms on the other methods. Written as `path` with each format's suffix;
    returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    formats = check_formats(formats)
    methods = sorted({s.method for s in rows}, key=_rank)
    metrics = ["acc", "nll"] + (["ece"] if _has(rows, "ece") else [])
    if _has(rows, "mmd") and not _has(rows, "acc"):    # generators (issue 16)
        metrics = ["mmd", "frechet"]
    zoomed = [m for m in methods if m not in BASELINES]
    groups = [methods] + ([zoomed] if zoomed and len(zoomed) < len(methods) else [])
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(5.2 * len(metrics),
                             4.4 * len(groups) + 0.6), squeeze=False)
    ticks = sorted({s.density for s in rows}, reverse=True)
    if len(ticks) > 9:
        ticks = ticks[::math.ceil(len(ticks) / 9)]
    for g, shown in enumerate(groups):
        for k, metric in enumerate(metrics):
            ax = axes[g][k]
            _, name, scale, _, _ = METRICS[metric]
            for m in shown:
                pts = sorted((s for s in rows if s.method == m and _known(getattr(s, metric))),
                             key=lambda s: -s.density)
                if not pts:
                    continue
                values = [getattr(s, metric) for s in pts]
                x = [s.density for s in pts]
                mean = [scale * _mean(v) for v in values]
                band = [mean_interval(v) for v in values]
                n = sorted({len(_known(v)) for v in values})
                seeds = f"n={n[0]}" if len(n) == 1 else f"n={n[0]}–{n[-1]}"
                # output ensembles (imp-ensemble, `swamp ensemble`) cost several models: dashed
                style = "--" if m.endswith("ensemble") else "-"
                ax.plot(x, mean, style, marker="o", ms=3, label=f"{m} ({seeds})", lw=1.4,
                        color=colour(m))
                ax.fill_between(x, [scale * lo for lo, _ in band],
                                [scale * hi for _, hi in band], color=colour(m), alpha=0.15,
                                lw=0)
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{100 * (1 - d):.1f}" for d in ticks], fontsize=8)
            ax.set_xlabel("sparsity (%) — log density axis")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            if k == 0:
                ax.legend(fontsize=7, ncol=2)
            if g > 0 and k == 0:
                ax.set_title(f"without {', '.join(BASELINES)}", fontsize=9)
    caption = ("line: mean over seeds (n per method in the legend); band: 95% t-interval of "
               "that mean (none for n=1)")
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        tmp = path.with_name(f".{path.stem}.tmp.{fmt}")
        # no creation dates: the same runs give the same bytes of PDF and SVG
        meta = {"CreationDate": None} if fmt == "pdf" else {"Date": None} if fmt == "svg" \
            else {}
        with matplotlib.rc_context({"svg.hashsalt": "swamp"}):
            fig.savefig(tmp, format=fmt, dpi=110, metadata=meta)
        tmp.replace(target)
        written.append(target)
    plt.close(fig)
    return written


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
        f"{s.prune.scope}{_pattern(s.prune)}); seeds {', '.join(map(str, seeds))}",
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
                 title: str | None = None, notes: str = "", baseline: str | None = None,
                 formats: Sequence[str] = ("png",)) -> Path:
    """Write summary.csv, paired.csv, accuracy_vs_sparsity.<format> and report.md into
    `out`. `baseline`: the method the others are paired with (default imp where present)."""
    from swamp.posthoc.runs import check_out_dir

    check_out_dir(out)
    formats = check_formats(formats)
    results = [read_result(p) for p in paths]
    check_results(results)
    resolve_baseline([r.method for r in results], baseline)   # refused before any write
    return write_report(results, Path(out), command=command, title=title, notes=notes,
                        baseline=baseline, formats=formats)


def write_report(results: Sequence[Result], out: Path, *, command: str | None = None,
                 title: str | None = None, notes: str = "", baseline: str | None = None,
                 formats: Sequence[str] = ("png",)) -> Path:
    from swamp.posthoc.runs import check_out_dir

    formats = check_formats(formats)
    rows = summarise(results)
    baseline = resolve_baseline(rows, baseline)
    check_out_dir(out).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "summary.csv", summary_csv(rows).encode())
    atomic_write_bytes(out / "paired.csv", paired_csv(rows, baseline).encode())
    s = results[0].settings
    generators = _has(rows, "mmd") and not _has(rows, "acc")    # issue 16: what is plotted
    what = "MMD² and Frechet distance" if generators else "Accuracy"
    title = title or f"{what} vs sparsity: {s.model.model} on {s.data.dataset}"
    figures = plot(rows, out / "accuracy_vs_sparsity.png", title, formats)
    parts = [f"# {title}", ""]
    if command:
        parts += ["Command:", "", "```", command, "```", ""]
    parts += ["Settings:", "", *settings_lines(results), ""]
    if notes:
        parts += [notes.strip(), ""]
    shown = [f for f in figures if f.suffix in (".png", ".svg")]
    if shown:
        alt = "MMD² and Frechet distance" if generators else "accuracy, NLL and calibration"
        parts += [f"![{alt} vs sparsity]({shown[0].name})", ""]
    others = [f for f in figures if not shown or f != shown[0]]
    if others:
        parts += ["Figure: " + ", ".join(f"[{f.name}]({f.name})" for f in others), ""]
    parts += ["Figures: line = mean over seeds, band = 95% t-interval of that mean (n seeds "
              "per method in the legend; no band for one seed).", "",
              "## Test accuracy (%), mean ± std over seeds", "", markdown_table(rows, "acc"), "",
              "## Test NLL, mean ± std over seeds", "", markdown_table(rows, "nll"), ""]
    if _has(rows, "ece"):
        parts += [f"## Test ECE (%, top-label, {ECE_BINS} equal-width bins), mean ± std over "
                  f"seeds", "", markdown_table(rows, "ece"), ""]
    if _has(rows, "nll_ts"):
        parts += ["## Temperature-scaled test NLL (temperature fitted on the validation "
                  "split), mean ± std over seeds", "", markdown_table(rows, "nll_ts"), ""]
    if any(s.mmd for s in rows):      # generators: lower is better
        parts += ["## Test MMD² (generators; lower is better), mean ± std over seeds", "",
                  markdown_table(rows, "mmd"), "",
                  "## Frechet distance of classifier features (lower is better)", "",
                  markdown_table(rows, "frechet"), ""]
    parts += paired_section(rows, baseline)
    parts += ["Selections (greedy soups, Lottery Pools, the temperature of the scaled NLL) use "
              "the validation split carved from the training data by seed; test numbers are "
              "reported, never selected on. Runs made before ECE and the scaled NLL were "
              "recorded show \"–\" there. Per-run numbers: `summary.csv` aggregates each run's "
              "`metrics.csv`; `paired.csv` holds the paired differences (in the units of "
              "`summary.csv`).", ""]
    runs = sorted(results, key=lambda r: (_rank(r.method), r.seed))
    parts += ["Runs:", ""] + [f"- {r.method} seed {r.seed}: `{r.path}`" for r in runs] + [""]
    atomic_write_bytes(out / "report.md", "\n".join(parts).encode())
    return out


def _pattern(prune) -> str:
    """The structured pattern of a run's pruning, for its description (issue 13)."""
    if getattr(prune, "block", None):
        return f", {prune.block} blocks"
    return f" {prune.nm}" if getattr(prune, "nm", None) else ""
