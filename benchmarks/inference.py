"""Does a pruned model run faster? Dense against CSR, BSR and ONNX Runtime, on this CPU.

Usage:  OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/inference.py [--rounds 7]
            [--repeats 20] [--threads 1] [--out benchmarks/results/inference.md]
            [--run RUN ...] [--runs-dir DIR] [--parts runs,fixed]

Two parts.

1. "runs": every level of a finished run, timed by `swamp.bench.bench_run` (the code of
   `swamp bench RUN`): the trained solutions and the masks the method found (global
   magnitude, so each layer has its own sparsity). Given `--run RUN` (repeatable), those
   runs; otherwise it makes its own short ones first (RUN_SETTINGS: `imp` on MNIST-1D, the
   MLP and the conv1d model, 5 epochs a level, 6 levels of alpha = 0.5: 0 to 98.4%; about
   half a minute on one core), in `--runs-dir` (default: a temporary folder; an existing
   finished run there is reused).
2. "fixed": freshly initialised models pruned to fixed sparsities, as below.

Models of the fixed part (built from the registry, He-initialised, no training: speed
depends on where the zeros are, not on what the kept weights learnt):
- `mlp`: swamp's MLP for MNIST-1D, 40 -> 256 -> 256 -> 10 (78k weights);
- `conv1d`: swamp's default CNN (3 conv layers of 32 channels, kernel 5; 13.8k weights);
- `mlp-wide`: 40 -> 1024 -> 1024 -> 10, to show how the answer moves with the layer size.
Masks: layerwise magnitude pruning to each sparsity (every layer at the same sparsity, exact
counts, through swamp.core.pruning). The "block" rows prune `mlp-wide` by 16x16 blocks
(whole blocks of the smallest L1 norm, per layer; written here, since a block scope is not
part of the pruning code yet) to show what BSR needs.

Forms and timing: swamp.bench (the code behind `swamp bench`): each form is checked to give
the dense form's outputs, then timed in paired rounds (forms alternate within a round;
speed-up = the round's dense median / the form's median; median and range over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import machine_line, publish  # noqa: E402

from swamp.bench import FORMS, bench_model, onnx_available, plot, table, threads_set  # noqa: E402
from swamp.core.masks import Mask  # noqa: E402
from swamp.core.pruning import counts_at_density, keep_exactly  # noqa: E402
from swamp.export import DTYPES, format_bytes  # noqa: E402
from swamp.models import build_model  # noqa: E402
from swamp.models.small import MLP  # noqa: E402

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98)
# the runs part: short IMP runs made here when no --run is given (part 1 of the module doc)
RUN_SETTINGS = dict(dataset="mnist1d", method="imp", epochs=5, levels=6, prune_fraction=0.5,
                    rewind_epochs=0.0, device="cpu", threads=1, seed=0, save_particles=False)
RUN_MODELS = ("mlp", "conv1d")


def model_of(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "mlp-wide":
        from swamp.models.common import init_weights

        return init_weights(MLP((40,), 10, hidden=(1024, 1024))).eval(), (40,)
    shape = (40,) if name == "mlp" else (1, 40)
    return build_model(name, shape, 10).eval(), shape


def magnitude_mask(model: torch.nn.Module, sparsity: float) -> Mask:
    full = Mask.ones(model)
    if sparsity == 0:
        return full
    params = dict(model.named_parameters())
    scores = {n: params[n].detach().abs() for n in full.names}
    return keep_exactly(scores, full, counts_at_density(full, 1 - sparsity, "layerwise"),
                        "layerwise")


def block_mask(model: torch.nn.Module, sparsity: float, block: int = 16) -> Mask:
    """Per layer, keep the whole `block`x`block` blocks of largest L1 norm (a layer whose
    sides `block` does not divide stays dense)."""
    params = dict(model.named_parameters())
    out = {}
    for name in Mask.ones(model).names:
        w = params[name].detach()
        rows, cols = w.shape
        if sparsity == 0 or rows % block or cols % block:
            out[name] = torch.ones_like(w, dtype=torch.bool)
            continue
        norms = w.abs().reshape(rows // block, block, cols // block, block).sum((1, 3))
        keep = max(1, round((1 - sparsity) * norms.numel()))
        kept = torch.zeros(norms.numel(), dtype=torch.bool)
        kept[norms.flatten().argsort(descending=True, stable=True)[:keep]] = True
        out[name] = kept.reshape(norms.shape).repeat_interleave(block, 0) \
            .repeat_interleave(block, 1)
    return Mask(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="mlp,conv1d,mlp-wide")
    p.add_argument("--out", default="benchmarks/results/inference.md")
    p.add_argument("--run", action="append", default=[], metavar="RUN",
                   help="a finished run to time at every level (repeatable; default: make "
                        "short imp runs of the MLP and conv1d)")
    p.add_argument("--runs-dir", default=None,
                   help="where the short runs are made (default: a temporary folder)")
    p.add_argument("--parts", default="runs,fixed",
                   help="runs (every level of finished runs), fixed (fixed sparsities)")
    args = p.parse_args()
    parts = args.parts.split(",")
    if not parts or any(x not in ("runs", "fixed") for x in parts):
        p.error("--parts takes runs, fixed or runs,fixed")
    out = Path(args.out)
    load_before = os.getloadavg()
    run_rows, run_info = (time_runs(args) if "runs" in parts else ([], []))
    rows, sizes = [], []
    if "fixed" not in parts:
        args.models = ""
    cases = [(m, "magnitude") for m in args.models.split(",") if m]
    if "mlp-wide" in args.models.split(","):
        cases.append(("mlp-wide", "block 16x16"))
    with threads_set(args.threads):
        for name, pattern in cases:
            model, shape = model_of(name)
            for sparsity in SPARSITIES:
                mask = (magnitude_mask(model, sparsity) if pattern == "magnitude"
                        else block_mask(model, sparsity))
                forms = FORMS if pattern == "magnitude" else ("dense", "csr", "bsr")
                state = model.state_dict()
                state = {k: v * mask[k] if k in mask else v for k, v in state.items()}
                graph = (format_bytes("onnx", state, mask, DTYPES["float32"], model=model,
                                      input_shape=shape)
                         if "ort" in forms and onnx_available() else None)
                blocksize = 16 if pattern != "magnitude" else None
                for row in bench_model(model, mask, shape, batches=(1, 256), forms=forms,
                                       rounds=args.rounds, repeats=args.repeats,
                                       threads=args.threads, onnx_bytes=graph,
                                       blocksize=blocksize):
                    rows.append({"model": f"{name} ({pattern})", **row})
                    print(f"{name:9} {pattern:11} {100 * sparsity:4.0f}% batch "
                          f"{row['batch']:3} {row['form']:8} {row['median_s'] * 1e6:10.1f} us"
                          f"  {row['speedup']:.2f}x", flush=True)
                if pattern == "magnitude":
                    sizes.append({"model": name, "sparsity": sparsity, **{
                        f: len(format_bytes(f, state, mask, DTYPES["float32"]))
                        for f in ("swamp", "dense", "torch-prune")},
                        **({"onnx": len(graph)} if graph else {})})
    load_after = os.getloadavg()
    write(rows, sizes, args, out, load_before, load_after, run_rows, run_info)
    return 0


def make_runs(folder: Path) -> list[Path]:
    """The short runs of RUN_SETTINGS, one per model of RUN_MODELS (reused if finished)."""
    from swamp import Settings, run

    dirs = []
    for model in RUN_MODELS:
        settings = Settings.from_dict({**RUN_SETTINGS, "model": model, "out": str(folder)})
        dirs.append(Path(run(settings).run_dir))
        print(f"run {dirs[-1]} finished", flush=True)
    return dirs


def time_runs(args) -> tuple[list[dict], list[dict]]:
    """Every level of each run through swamp.bench.bench_run: its rows (with "model" =
    "<model> (<run>)") and per run its levels' sparsity and accuracy."""
    import tempfile

    from swamp.bench import bench_run
    from swamp.reader import RunReader

    if args.run:
        dirs = [Path(r) for r in args.run]
    else:
        dirs = make_runs(Path(args.runs_dir or tempfile.mkdtemp(prefix="swamp-inference-")))
    rows, info = [], []
    for run_dir in dirs:
        reader = RunReader(run_dir)
        label = f"{reader.settings.model.model} (trained, {reader.settings.method.method})"
        with tempfile.TemporaryDirectory() as tmp:
            result = bench_run(run_dir, out=tmp, batch=256, rounds=args.rounds,
                               repeats=args.repeats, threads=args.threads)
        for row in result["rows"]:
            rows.append({"model": label, **row})
            print(f"{label:24} level {row['level']} {100 * row['sparsity']:5.1f}% batch "
                  f"{row['batch']:3} {row['form']:8} {row['median_s'] * 1e6:10.1f} us  "
                  f"{row['speedup']:.2f}x", flush=True)
        metrics = reader.store.level_metrics()
        info.append({"model": label, "run": run_dir.name, "settings": {
            k: v for k, v in RUN_SETTINGS.items() if not args.run},
            "levels": [{"level": m["level"], "sparsity": m["sparsity"],
                        "test_acc": m.get("test_acc")} for m in metrics
                       if m["level"] in reader.levels],
            "sizes": result["sizes"]})
    return rows, info


def crossover(rows: list[dict], model: str, form: str, batch: int, key: str) -> str:
    """The lowest sparsity from which `form` beats dense at `batch` at every sparsity
    measured from there on: by its median speed-up (key "speedup") or in every round
    ("speedup_min"); else 'never'."""
    pts = sorted((r["sparsity"], r[key]) for r in rows
                 if r["model"] == model and r["form"] == form and r["batch"] == batch)
    if not pts:
        return "not measured"
    for i, (sp, _) in enumerate(pts):
        if all(s > 1.0 for _, s in pts[i:]):
            return f"from {100 * sp:.0f}%"
    return f"never (to {100 * pts[-1][0]:.0f}%)"


def where_table(rows: list[dict], models: list[str]) -> list[str]:
    lines = ["| model | form | batch 1: median | batch 1: every round | batch 256: median | "
             "batch 256: every round |", "|---|---|---|---|---|---|"]
    for m in models:
        for form in ("csr", "csr+conv", "bsr", "ort"):
            cells = [crossover(rows, m, form, b, k) for b in (1, 256)
                     for k in ("speedup", "speedup_min")]
            if cells[0] != "not measured":
                lines.append(f"| {m} | {form} | " + " | ".join(cells) + " |")
    return lines


def goal_lines(rows: list[dict], model: str) -> list[str]:
    """The MLP's batch-1 speed-ups at 95% sparsity or more, each with its range over rounds."""
    lines = []
    # (a realised sparsity is exact counts per layer: 95% may read 94.99%)
    for sp in sorted({r["sparsity"] for r in rows if round(r["sparsity"], 3) >= 0.95
                      and r["model"] == model}):
        got = {r["form"]: r for r in rows if r["model"] == model
               and r["batch"] == 1 and abs(r["sparsity"] - sp) < 1e-9 and r["form"] != "dense"}
        lines.append(f"- {model}, {100 * sp:.1f}%: " + "; ".join(
            f"{f} {r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
            f"{' - reached' if r['speedup_min'] >= 2 else ''}" for f, r in got.items()))
    dense0 = {r["form"]: r for r in rows if r["model"] == model
              and r["batch"] == 1 and r["sparsity"] == 0.0}
    if "ort" in dense0:
        r = dense0["ort"]
        lines.append(f"- {model}, 0%: ort {r['speedup']:.2f}x ({r['speedup_min']:.2f}-"
                     f"{r['speedup_max']:.2f})")
    return lines


def write(rows, sizes, args, out: Path, load_before, load_after, run_rows=(),
          run_info=()) -> None:
    from swamp.bench import size_table, versions

    command = ("OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/inference.py"
               + "".join(f" --{k} {v}" for k, v in (("rounds", args.rounds),
                                                     ("repeats", args.repeats),
                                                     ("threads", args.threads)))
               + "".join(f" --run {r}" for r in args.run)
               + (f" --parts {args.parts}" if args.parts != "runs,fixed" else ""))
    lines = ["# Inference speed of pruned models: dense against sparse forms (CPU)", "",
             f"Command: `{command}`", "",
             machine_line(load_before, load_after) + f" onnxruntime "
             f"{versions()['onnxruntime'] or 'not installed'}; {args.threads} thread(s) for "
             f"torch and onnxruntime; {args.rounds} paired rounds of {args.repeats} calls "
             f"after 5 warm-up calls. Shared machine: read ranges, not single figures.", "",
             "Forms: `dense` = the masked dense model (zeros multiplied like any weight); "
             "`csr`/`bsr` = `swamp.sparsify` (Linear layers as torch.sparse CSR / BSR); "
             "`csr+conv` = convolutions too, as im2col + CSR; `ort` = the ONNX graph "
             "(dense, zeros included) in onnxruntime. Speed-up > 1 = faster than dense.", "",
             "\"Where each form beats dense\": the sparsity from which a form is faster than "
             "the masked dense model at every higher sparsity measured, by the median of the "
             "paired speed-ups, and in every round (the range's low end above 1).", ""]
    run_models = list(dict.fromkeys(r["model"] for r in run_rows))
    if run_rows:
        lines += ["## Part 1: every level of a finished run", "",
                  "Timed by `swamp.bench.bench_run` (what `swamp bench RUN` runs) on the "
                  "levels' trained solutions and the masks the method found (for the runs made "
                  "here global magnitude masks: each layer at its own sparsity; the sparsity "
                  "shown is over all pruned layers)."]
        made = [i for i in run_info if i["settings"]]
        if made:
            settings = ", ".join(f"{k}={v}" for k, v in made[0]["settings"].items()
                                 if k not in ("device", "threads", "save_particles"))
            lines += [f"Runs made by this script ({settings}; models "
                      f"{', '.join(RUN_MODELS)}); their test accuracy, for reference (short "
                      f"training: speed does not depend on it):"]
        lines += ["", "| model | run | level: sparsity, test accuracy |", "|---|---|---|"]
        for i in run_info:      # runs given with --run may have other numbers of levels
            lines.append(f"| {i['model']} | {i['run']} | " + "; ".join(
                f"{lv['level']}: {100 * lv['sparsity']:.1f}%, "
                + (f"{100 * lv['test_acc']:.1f}%" if lv["test_acc"] is not None else "-")
                for lv in i["levels"]) + " |")
        lines += ["", "### Where each form beats dense (trained runs)", ""]
        lines += where_table(run_rows, run_models)
        lines += ["", "### The goal: MLP batch-1 latency at least 2x lower than dense at 95% "
                  "sparsity or more (trained run)", ""]
        for m in run_models:
            if m.startswith("mlp"):
                lines += goal_lines(run_rows, m)
        lines += [""]
        for m in run_models:
            lines += [f"### {m}: every level", "",
                      table([r for r in run_rows if r["model"] == m], key="level"), ""]
        lines += ["### File size per export format (float32), trained runs", ""]
        for i in run_info:
            lines += [f"{i['model']}:", "", size_table(i["sizes"], key="level"), ""]
    models = list(dict.fromkeys(r["model"] for r in rows))
    if rows:
        lines += ["## Part 2: fixed sparsities (freshly initialised models)", "",
                  "He-initialised models (no training), layerwise magnitude masks at each "
                  "sparsity (every layer at the same sparsity); `mlp-wide` (40-1024-1024-10) "
                  "shows how the answer moves with the layer size; the block rows prune it by "
                  "16x16 blocks, for BSR.", "",
                  "### Where each form beats dense (fixed sparsities)", ""]
        lines += where_table(rows, models)
        lines += ["", "### The goal at fixed sparsities: MLP batch-1 latency at least 2x lower "
                  "than dense at 95% or more", ""]
        lines += goal_lines(rows, "mlp (magnitude)")
        lines += ["", "ONNX Runtime's gain is there at 0% sparsity too: it runs the dense "
                  "graph with less overhead per call than PyTorch's eager modules, and the "
                  "zeros play no part in it. PyTorch's CSR kernel has a fixed cost per call "
                  "that the MLP's small layers (at most 256x256) do not earn back at batch 1; "
                  "the `mlp-wide` rows show it paying from larger layers and higher sparsity "
                  "on.", ""]
        for m in models:
            lines += [f"### {m}", "", table([r for r in rows if r["model"] == m],
                                            key="model"), ""]
        lines += ["### File size per export format (float32), fixed sparsities", "",
                  size_table(sizes, key="model"), ""]
    lines += ["GPU rows (2:4 semi-structured at fp16): not measured (no GPU was lent to "
              "this task).", ""]
    publish(lines, out)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "versions": versions(), "runs": list(run_info),
         "run_rows": list(run_rows), "rows": rows, "sizes": sizes}, indent=1) + "\n")
    sparse = ("csr", "ort", "bsr", "csr+conv")
    plot([r for r in [*run_rows, *rows] if r["form"] in sparse
          and (r["model"] in run_models or r["model"].startswith("mlp-wide"))],
         out.with_suffix(".png"), title="speed-up against dense, CPU, 1 thread: every level "
         "of the trained runs, and the wide MLP at fixed sparsities", group="model")


if __name__ == "__main__":
    sys.exit(main())
