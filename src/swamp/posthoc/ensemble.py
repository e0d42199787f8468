"""Output ensembles of several runs' solutions at each density they share.

The "ensemble of two IMP solutions" reference of the SWAMP paper: the mean predicted
probability of independent runs' level solutions, at the cost of several networks at inference.
Densities are matched by the exact number of kept weights, so runs with one pruning schedule
line up level by level. Only the test split is evaluated (nothing is selected).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from swamp.errors import SwampError
from swamp.evaluation import ensemble_log_probs, log_probs, score_log_probs
from swamp.posthoc.runs import check_out_dir, check_same_task
from swamp.reader import RunReader, read_settings
from swamp.store import RunStore

COLUMNS = ["level", "density", "sparsity", "target_density", "test_acc", "test_nll",
           "member_acc_mean", "members", "test_ece"]


def _kept(store: RunStore, level: int) -> int:
    layers = store.read_record(store.level_metrics_path(level)).get("layers")
    if layers:
        return sum(int(v["nnz"]) for v in layers.values())
    from swamp.core.masks import Mask

    return Mask.load(store.mask_path(level)).nnz


def ensemble_runs(paths: Sequence[str | Path], out: str | Path | None = None, *,
                  label: str = "ensemble", device: str = "cpu",
                  data_dir: str | None = None) -> list[dict[str, Any]]:
    """One row per shared density: the members' levels, the ensemble's test accuracy/NLL.

    With `out`, writes `metrics.csv`, the first run's `settings.json` and `posthoc.json`
    there (a directory `swamp report` reads like a run).
    """
    paths = [Path(p) for p in paths]
    if out is not None:
        check_out_dir(out)
    if len(paths) < 2:
        raise SwampError("an ensemble needs at least two runs; pass two or more run directories")
    if len({p.resolve() for p in paths}) != len(paths):
        raise SwampError("the same run was passed twice; pass different runs")
    check_same_task([(p, read_settings(p)[0]) for p in paths], "ensemble")
    runs = [RunReader(p, device=device, data_dir=data_dir) for p in paths]
    first = runs[0]
    first.require_classifier("an output ensemble")
    for r in runs[1:]:
        if (r.data.test.y.shape != first.data.test.y.shape
                or not bool((r.data.test.y.cpu() == first.data.test.y.cpu()).all())):
            raise SwampError(f"{r.root} and {first.root} have different test data; pass runs "
                             f"of one dataset")
    by_count = [{_kept(r.store, lv): lv for lv in r.levels} for r in runs]
    shared = sorted(set(by_count[0]).intersection(*by_count[1:]), reverse=True)
    if not shared:
        raise SwampError("the runs share no density; ensemble runs of one pruning schedule")
    rows = []
    for count in shared:
        lps, accs = [], []
        for r, index in zip(runs, by_count):
            level = index[count]
            r.model.load_state_dict(r.solution(level))
            lp = log_probs(r.model, r.data.test)
            lps.append(lp)
            accs.append(score_log_probs(lp, r.data.test.y).acc)
        score = score_log_probs(ensemble_log_probs(lps), first.data.test.y)
        level = by_count[0][count]
        metrics = first.metrics(level)
        rows.append({
            "level": level, "density": metrics["density"], "sparsity": metrics["sparsity"],
            "target_density": metrics.get("target_density", metrics["density"]),
            "test_acc": score.acc, "test_nll": score.nll,
            "member_acc_mean": sum(accs) / len(accs),
            "members": ";".join(f"{r.root.name}:{idx[count]}" for r, idx in zip(runs, by_count)),
            # no temperature-scaled NLL: runs of other seeds carve other validation splits,
            # so one member's validation data may be another's training data
            "test_ece": score.ece,
        })
    if out is not None:
        write_ensemble(Path(out), rows, runs[0].store.settings_path, paths, label)
    return rows


def write_ensemble(root: Path, rows: list[dict[str, Any]], settings_path: Path,
                   members: Sequence[Path], label: str) -> None:
    store = RunStore(root)
    root.mkdir(parents=True, exist_ok=True)
    if store.checksums_missing():      # made by an earlier version: its files are re-made
        store.rebuild_checksums()
    store.copy_record(settings_path, store.settings_path)
    store.write_record(store.posthoc_path,
                       {"method": label, "members": [str(p) for p in members]})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    store.write_record(store.metrics_csv, buf.getvalue().encode())
