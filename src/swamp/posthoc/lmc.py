"""Linear mode connectivity: accuracy and loss along the straight line between two solutions.

    θ(t) = (1 - t) · θ_a + t · θ_b,   t on an even grid over [0, 1]

BatchNorm statistics are recomputed at every point (an interpolation's running statistics are
meaningless). The barrier height is the largest gap between the path and the straight line
between its ends: for the loss max_t [L(θ(t)) - ((1 - t) L(θ_a) + t L(θ_b))], for the error
max_t [((1 - t) acc_a + t acc_b) - acc(θ(t))] (Frankle et al., 2020). The other form in common
use is written beside it (`*_barrier_mean_ends`): the worst point of the path against the mean
of its ends, max_t L(θ(t)) - (L(θ_a) + L(θ_b)) / 2 for the loss, and (acc_a + acc_b) / 2 -
min_t acc(θ(t)) for the error (Entezari et al., 2022); both are 0 or more, and on the evenly
spaced grid here the two agree when the ends score alike. Interpolating two levels with
different masks gives points that are dense on the union of the masks.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from swamp.assemble import bn_augment
from swamp.core.averaging import interpolate, recompute_batchnorm
from swamp.errors import SwampError
from swamp.evaluation import evaluate
from swamp.posthoc.runs import check_out_dir
from swamp.reader import RunReader
from swamp.store import atomic_write_bytes, write_json

COLUMNS = ["t", "val_acc", "val_nll", "test_acc", "test_nll"]


def _barrier(values: list[float], ts: list[float], higher_is_worse: bool) -> float:
    a, b = values[0], values[-1]
    gaps = [(v - ((1 - t) * a + t * b)) if higher_is_worse else (((1 - t) * a + t * b) - v)
            for t, v in zip(ts, values)]
    return max(0.0, max(gaps))


def _barrier_mean_ends(values: list[float], higher_is_worse: bool) -> float:
    mean_ends = (values[0] + values[-1]) / 2
    worst = max(values) - mean_ends if higher_is_worse else mean_ends - min(values)
    return max(0.0, worst)


def connectivity(run: str | Path | RunReader, *, level: int | None = None,
                 particles: tuple[int, int] | None = None,
                 levels: tuple[int, int] | None = None, points: int = 11,
                 out: str | Path | None = None, device: str = "cpu",
                 data_dir: str | None = None) -> dict[str, Any]:
    """Interpolate two particles of one level (default: particles 0 and 1 of the last
    finished level) or the solutions of two levels (`levels`). With `out`, writes
    `connectivity.csv`, `connectivity.json` and `connectivity.png` there."""
    if points < 2:
        raise SwampError(f"`points` must be at least 2 (got {points})")
    if out is not None:
        check_out_dir(out)
    if particles is not None and levels is not None:
        raise SwampError("give `particles` I J (within one level) or `levels` A B, not both")
    loaded = (run if isinstance(run, RunReader)
              else RunReader(run, device=device, data_dir=data_dir))
    loaded.require_classifier("connectivity")
    if levels is not None:
        for lv in levels:
            if lv not in loaded.levels:
                raise SwampError(f"level {lv} is not finished in {loaded.root} (finished: "
                                 f"{loaded.levels[0]}..{loaded.levels[-1]})")
        a, b = loaded.solution(levels[0]), loaded.solution(levels[1])
        what = {"kind": "levels", "levels": list(levels)}
    else:
        level = loaded.levels[-1] if level is None else level
        if level not in loaded.levels:
            raise SwampError(f"level {level} is not finished in {loaded.root} (finished: "
                             f"{loaded.levels[0]}..{loaded.levels[-1]})")
        i, j = particles if particles is not None else (0, 1)
        a, b = loaded.particle(level, i), loaded.particle(level, j)
        what = {"kind": "particles", "level": level, "particles": [i, j]}
    model, data = loaded.model, loaded.data
    ts = [k / (points - 1) for k in range(points)]
    rows = []
    for t in ts:
        model.load_state_dict(interpolate(a, b, t))
        recompute_batchnorm(model, data.train, augment=bn_augment(loaded.settings, data))
        val, test = evaluate(model, data.val), evaluate(model, data.test)
        rows.append({"t": t, "val_acc": val.acc, "val_nll": val.nll, "test_acc": test.acc,
                     "test_nll": test.nll})
    result: dict[str, Any] = {"run": str(loaded.root), **what, "points": rows}
    for split in ("val", "test"):
        result[f"{split}_loss_barrier"] = _barrier([r[f"{split}_nll"] for r in rows], ts, True)
        result[f"{split}_error_barrier"] = _barrier([r[f"{split}_acc"] for r in rows], ts, False)
        result[f"{split}_loss_barrier_mean_ends"] = _barrier_mean_ends(
            [r[f"{split}_nll"] for r in rows], True)
        result[f"{split}_error_barrier_mean_ends"] = _barrier_mean_ends(
            [r[f"{split}_acc"] for r in rows], False)
    if out is not None:
        write_connectivity(Path(out), result)
    return result


def write_connectivity(root: Path, result: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(result["points"])
    atomic_write_bytes(root / "connectivity.csv", buf.getvalue().encode())
    write_json(root / "connectivity.json", result)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [r["t"] for r in result["points"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for split, style in (("test", "-"), ("val", "--")):
        ax1.plot(ts, [100 * r[f"{split}_acc"] for r in result["points"]], style, marker="o",
                 ms=3, label=split)
        ax2.plot(ts, [r[f"{split}_nll"] for r in result["points"]], style, marker="o", ms=3,
                 label=split)
    ax1.set(xlabel="t", ylabel="accuracy (%)",
            title=f"error barrier (test) {100 * result['test_error_barrier']:.2f} pts")
    ax2.set(xlabel="t", ylabel="NLL", title=f"loss barrier (test) "
                                            f"{result['test_loss_barrier']:.3f}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    ends = (f"level {result['level']}, particles {result['particles'][0]} - "
            f"{result['particles'][1]}" if result["kind"] == "particles"
            else f"levels {result['levels'][0]} - {result['levels'][1]}")
    fig.suptitle(f"{Path(result['run']).name}: {ends}", fontsize=10)
    fig.tight_layout()
    tmp = root / ".connectivity.png.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(root / "connectivity.png")
