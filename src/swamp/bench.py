"""How fast a pruned model runs in each form: dense, sparse CSR/BSR, ONNX Runtime.

A *form* is one way to run the same function: the masked dense model ("dense"), the model
from `swamp.sparse.sparsify` with CSR or BSR Linear layers ("csr", "bsr"; "csr+conv" also
runs the convolutions as im2col + CSR), and the ONNX graph in onnxruntime ("ort", with the
extra `swamp[onnx]`; it runs the dense graph, zeros included: ONNX Runtime has no sparse
kernels for a standard MatMul or Conv). Each form is checked to give the dense form's outputs
before it is timed.

Timing is paired: after a warm-up, every round runs each form `repeats` times (in an order
that rotates from round to round) and keeps the median; a form's speed-up in a round is the
dense median of that round over its own, so a change of machine load between rounds moves
both. Reported: the median over rounds of the latency and of the speed-up, and the speed-up's
range over rounds (its spread). `swamp bench` and benchmarks/inference.py both time here.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from swamp.formats import FORMATS, FORMS, SAFETENSORS
from swamp.errors import SwampError
from swamp.sparse import sparsify

RTOL, ATOL = 1e-4, 1e-5          # every form against the dense one, float32


@dataclass
class Form:
    name: str
    run: Callable[[Any], Any]
    prepare: Callable[[Tensor], Any]       # the input as this form takes it (outside timing)
    output: Callable[[Any], Tensor]        # its output as a CPU tensor (for the check)


def masked_dense(model: nn.Module, mask: Mapping[str, Tensor]) -> nn.Module:
    """An eval-mode copy of `model` with its pruned weights set to zero."""
    out = copy.deepcopy(model).eval()
    params = dict(out.named_parameters())
    with torch.no_grad():
        for name, keep in mask.items():
            params[name].mul_(keep.to(params[name].device, params[name].dtype))
    return out


def _has_masked_conv(model: nn.Module, mask: Mapping[str, Tensor]) -> bool:
    mods = dict(model.named_modules())
    return any(isinstance(mods.get(k.rpartition(".")[0]), (nn.Conv1d, nn.Conv2d)) for k in mask)


def onnx_available() -> bool:
    try:
        from swamp.export import require_onnx

        require_onnx()
        return True
    except SwampError:
        return False


def make_forms(model: nn.Module, mask: Mapping[str, Tensor], example: Tensor, *,
               forms: Sequence[str] = FORMS, threads: int | None = None,
               blocksize: int | None = None, onnx_bytes: bytes | None = None) -> list[Form]:
    """The forms of `model` under `mask` among `forms` that apply: "csr+conv" only for a
    model with pruned convolutions, "ort" only with the onnx extra and on CPU (of
    `onnx_bytes` if given: the masked model's ONNX graph, else exported here)."""
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        raise SwampError(f"unknown form {unknown[0]!r}; choose among {', '.join(FORMS)}")
    dense = masked_dense(model, mask)
    device = example.device
    same = (lambda x: x.to(device)), (lambda y: y.detach().cpu())
    out: list[Form] = []
    for name in forms:
        if name == "dense":
            out.append(Form(name, dense, *same))
        elif name in ("csr", "bsr"):
            out.append(Form(name, sparsify(dense, mask, layout=name, blocksize=blocksize).eval(),
                            *same))
        elif name == "csr+conv" and _has_masked_conv(model, mask):
            out.append(Form(name, sparsify(dense, mask, convs=True).eval(), *same))
        elif name == "ort" and device.type == "cpu" and onnx_available():
            from swamp.export import onnx_model, onnx_session

            graph = onnx_bytes or onnx_model(dense, example[:1].cpu()).SerializeToString()
            session = onnx_session(graph, threads)
            out.append(Form(name, lambda feed, s=session: s.run(None, feed),
                            lambda x: {"input": x.detach().cpu().float().numpy()},
                            lambda y: torch.from_numpy(y[0])))
    return out


def check_forms(forms: Sequence[Form], x: Tensor) -> dict[str, float]:
    """Max |difference| of each form's output to the first (dense) form's on `x`; a form
    outside RTOL/ATOL is an error (it would be timing another function). ATOL is scaled by
    the outputs' largest magnitude (when above 1): a trained model's logits reach tens, and
    float32 summed in another order (onnxruntime's convolutions) then differs by a few 1e-5
    on the outputs near zero."""
    with torch.inference_mode():
        ref = forms[0].output(forms[0].run(forms[0].prepare(x)))
        atol = ATOL * max(1.0, float(ref.abs().max()))
        diffs = {}
        for form in forms[1:]:
            got = form.output(form.run(form.prepare(x)))
            diffs[form.name] = float((got - ref).abs().max())
            if not torch.allclose(got, ref, rtol=RTOL, atol=atol):
                raise SwampError(f"form {form.name} gives other outputs than the dense model "
                                 f"(max |diff| {diffs[form.name]:.3g}); not timed")
    return diffs


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def time_forms(forms: Sequence[Form], x: Tensor, *, rounds: int = 7, repeats: int = 20,
               warmup: int = 5) -> dict[str, dict[str, float]]:
    """Paired medians (module doc): per form, `median_s` (latency), `throughput` (samples
    per second), and `speedup`, `speedup_min`, `speedup_max` against forms[0] over rounds."""
    if rounds < 1 or repeats < 1 or warmup < 0:
        raise SwampError("`rounds` and `repeats` must be >= 1 and `warmup` >= 0")
    sync = _sync(x.device)
    args = [f.prepare(x) for f in forms]
    per_round: list[list[float]] = [[] for _ in forms]
    with torch.inference_mode():
        for form, a in zip(forms, args):
            for _ in range(warmup):
                form.run(a)
        sync()
        n = len(forms)
        for r in range(rounds):
            order = [(r + i) % n for i in range(n)]
            if r % 2:
                order.reverse()
            for i in order:
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    forms[i].run(args[i])
                    sync()
                    times.append(time.perf_counter() - start)
                per_round[i].append(statistics.median(times))
    out = {}
    for form, rows in zip(forms, per_round):
        ratios = [d / t for d, t in zip(per_round[0], rows)]
        median = statistics.median(rows)
        out[form.name] = {"median_s": median, "throughput": len(x) / median,
                          "speedup": statistics.median(ratios), "speedup_min": min(ratios),
                          "speedup_max": max(ratios)}
    return out


def bench_model(model: nn.Module, mask: Mapping[str, Tensor], input_shape: Sequence[int], *,
                batches: Sequence[int] = (1, 256), forms: Sequence[str] = FORMS,
                rounds: int = 7, repeats: int = 20, warmup: int = 5,
                threads: int | None = None, device: str | torch.device = "cpu",
                seed: int = 0, onnx_bytes: bytes | None = None,
                blocksize: int | None = None) -> list[dict[str, Any]]:
    """One row per (batch, form): the timing of `time_forms` and the form's max |diff|."""
    device = torch.device(device)
    model = model.to(device)
    g = torch.Generator().manual_seed(seed)
    example = torch.randn(2, *input_shape, generator=g).to(device)
    made = make_forms(model, mask, example, forms=forms, threads=threads,
                      onnx_bytes=onnx_bytes, blocksize=blocksize)
    if not made or made[0].name != "dense":
        raise SwampError("the forms timed must start with dense (the reference)")
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    rows = []
    for batch in batches:
        x = torch.randn(batch, *input_shape, generator=g).to(device)
        diffs = check_forms(made, x)
        timing = time_forms(made, x, rounds=rounds, repeats=repeats, warmup=warmup)
        for name, t in timing.items():
            rows.append({"batch": batch, "form": name, "sparsity": 1 - kept / max(1, total),
                         "max_abs_diff": diffs.get(name, 0.0), **t})
    return rows


class threads_set:
    """`torch.set_num_threads(n)` for a block (n None: unchanged)."""

    def __init__(self, n: int | None):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.before)


# ---- a finished run ------------------------------------------------------------------------

def bench_run(run_dir: str | Path, *, level: int | None = None, out: str | Path | None = None,
              batch: int = 256, forms: Sequence[str] = FORMS, rounds: int = 7,
              repeats: int = 20, warmup: int = 5, threads: int | None = 1,
              device: str = "cpu") -> dict[str, Any]:
    """Time every finished level (or `level`) of a run in each form at batch 1 and `batch`,
    with each format's file size (onnx: when the "ort" form is timed, from the graph it
    times); writes bench.json, bench.md and bench.png into `out`
    (default: the run's bench folder) and returns the results."""
    from swamp.export import DTYPES, format_bytes
    from swamp.reader import RunReader
    from swamp.store import atomic_write_bytes, write_json

    if batch < 1:
        raise SwampError(f"`batch` must be >= 1, got {batch}")
    if threads is not None and threads < 1:
        raise SwampError(f"`threads` must be >= 1, got {threads}")
    reader = RunReader(run_dir, device=device)      # checks the run's checksums
    if level is not None and level not in reader.levels:
        raise SwampError(f"level {level} of {reader.root} is not finished (finished: "
                         f"0..{reader.levels[-1]}); choose one of those")
    folder = Path(out) if out is not None else reader.store.bench_dir
    if folder.exists() and not folder.is_dir():
        raise SwampError(f"{folder} is a file; `out` names a folder for bench.json, .md, .png")
    levels = [level] if level is not None else reader.levels
    model = reader.model.eval()
    shape = tuple(reader.data.input_shape)
    rows, sizes = [], []
    with threads_set(threads):
        for lv in levels:
            solution, mask = reader.solution(lv), reader.mask(lv)
            model.load_state_dict(solution)
            files = {fmt: format_bytes(fmt, solution, mask, DTYPES["float32"])
                     for fmt in SAFETENSORS}
            if "ort" in forms and reader.device.type == "cpu" and onnx_available():
                # the graph timed is the file's (one export serves both)
                files["onnx"] = format_bytes("onnx", solution, mask, DTYPES["float32"],
                                             model=model, input_shape=shape)
            for row in bench_model(model, mask, shape, batches=(1, batch), forms=forms,
                                   rounds=rounds, repeats=repeats, warmup=warmup,
                                   threads=threads, device=reader.device,
                                   onnx_bytes=files.get("onnx")):
                rows.append({"level": lv, **row})
            sizes.append({"level": lv, "sparsity": 1 - mask.density,
                          **{fmt: len(data) for fmt, data in files.items()}})
    results = {"run": reader.root.name, "model": reader.settings.model.model,
               "device": str(reader.device), "threads": threads, "batch": batch,
               "rounds": rounds, "repeats": repeats, "warmup": warmup,
               "versions": versions(), "rows": rows, "sizes": sizes}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "bench.json", results)
    atomic_write_bytes(folder / "bench.md", (table(rows) + "\n\n" + size_table(sizes)
                                             + "\n").encode())
    plot(rows, folder / "bench.png", title=f"{results['model']} ({results['run']})")
    results["paths"] = [str(folder / n) for n in ("bench.json", "bench.md", "bench.png")]
    return results


def versions() -> dict[str, str | None]:
    import platform

    out: dict[str, str | None] = {"torch": torch.__version__, "python": platform.python_version(),
                                  "onnxruntime": None}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


# ---- tables and the plot -------------------------------------------------------------------

def table(rows: Sequence[Mapping[str, Any]], key: str = "level") -> str:
    """A markdown table: one line per (key, batch, form) with latency, throughput and the
    paired speed-up against dense (median, and range over rounds)."""
    head = (f"| {key} | sparsity | batch | form | median latency | throughput | speed-up vs "
            f"dense (median, range over rounds) |\n|---:|---:|---:|---|---:|---:|---|")
    lines = [head]
    for r in rows:
        latency = r["median_s"] * 1e6
        shown = f"{latency:,.1f} us" if latency < 10_000 else f"{latency / 1000:,.1f} ms"
        lines.append(f"| {r.get(key, '')} | {100 * r['sparsity']:.1f}% | {r['batch']} | "
                     f"{r['form']} | {shown} | {r['throughput']:,.0f}/s | "
                     f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) |")
    return "\n".join(lines)


def size_table(sizes: Sequence[Mapping[str, Any]], key: str = "level") -> str:
    formats = [f for f in FORMATS if sizes and f in sizes[0]]
    lines = [f"| {key} | sparsity | " + " | ".join(f"{f} file" for f in formats) + " |",
             "|---:|---:|" + "---:|" * len(formats)]
    for s in sizes:
        lines.append(f"| {s.get(key, '')} | {100 * s['sparsity']:.1f}% | "
                     + " | ".join(f"{s[f] / 1024:,.1f} KiB" for f in formats) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "",
         group: str | None = None) -> None:
    """Speed-up against dense over sparsity, one panel per batch size, one line per form
    (and `group`, e.g. the model), with the range over rounds shaded."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from swamp.store import atomic_write_bytes

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False,
                             sharey=True)
    for ax, batch in zip(axes[0], batches):
        keys = sorted({(str(r.get(group, "")) if group else "", r["form"]) for r in rows
                       if r["form"] != "dense" and r["batch"] == batch})
        colours = plt.cm.tab20.colors if len(keys) > 10 else plt.cm.tab10.colors
        for i, (g, form) in enumerate(keys):
            pts = sorted((r["sparsity"], r["speedup"], r["speedup_min"], r["speedup_max"])
                         for r in rows if r["form"] == form and r["batch"] == batch
                         and (not group or str(r.get(group, "")) == g))
            xs = [100 * p[0] for p in pts]
            line, = ax.plot(xs, [p[1] for p in pts], marker="o", markersize=3,
                            color=colours[i % len(colours)],
                            label=f"{g + ': ' if g else ''}{form}")
            ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], alpha=0.12,
                            color=line.get_color())
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity of the pruned layers (%)")
        ax.set_title(f"batch {batch}")
        ax.legend(fontsize=6, loc="upper left")
    axes[0][0].set_ylabel("speed-up against the masked dense model")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
