"""Speed and temporary memory of pruning an 11.7M-weight model (ResNet-18 conv/fc shapes).

Usage:  python benchmarks/pruning_speed.py [--repeats 7] [--threads 1,2] [--out PATH]

Times (median and min of `--repeats` runs after one warm-up, for each torch thread count in
`--threads`) each pruning call on random
weights with the shapes of torchvision's ResNet-18 prunable tensors (built by hand: no
torchvision needed). Memory: the peak of torch CPU tensor bytes allocated during one call and
still live at that moment, relative to before the call, read from the torch profiler's
memory events ("Total Allocated"). It counts tensors only (not allocator caching or Python
objects), and it includes the result mask (1 byte per weight), which is not a temporary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from swamp.core import pruning
from swamp.core.masks import Mask


def resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of ResNet-18's conv and fc weights (ImageNet head)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            first_in = cin if block == 0 else cout
            shapes[f"{p}.conv1.weight"] = (cout, first_in, 3, 3)
            shapes[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            if block == 0 and (stage > 1):
                shapes[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
        cin = cout
    shapes["fc.weight"] = (1000, 512)
    return shapes


def make_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, s in resnet18_shapes().items():
        fan_in = 1
        for d in s[1:]:
            fan_in *= d
        out[n] = torch.randn(s, generator=g) * (2.0 / fan_in) ** 0.5  # He init scale
    return out


def time_call(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def peak_alloc_bytes(fn: Callable[[], object]) -> int:
    """Peak live torch CPU tensor bytes allocated during fn (relative to before it)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    mem = sorted(
        (e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0),
        key=lambda e: e["ts"],
    )
    del result
    if not mem:
        return 0
    # The counter carries over from earlier profiler sessions: measure from its value just
    # before the first allocation of this call.
    base = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - base


def naive_threshold(ws: dict[str, torch.Tensor], mask: Mask, fraction: float) -> Mask:
    """The common shortcut, for comparison: concatenate |w|, kthvalue, threshold (ties all go)."""
    flat = torch.cat([(w.abs() * mask[n]).flatten() for n, w in ws.items()])
    k = pruning.n_to_remove(fraction, mask.nnz) + (mask.numel - mask.nnz)
    thr = torch.kthvalue(flat, k).values
    return Mask({n: (w.abs() > thr) & mask[n] for n, w in ws.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--threads",
        default=f"1,{torch.get_num_threads()}",
        help="comma-separated torch thread counts to time with (default: 1 and torch's default)",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "pruning_speed.md"))
    args = ap.parse_args()
    threads = sorted({int(t) for t in args.threads.split(",")})

    ws = make_weights()
    dense = Mask({n: torch.ones_like(w, dtype=torch.bool) for n, w in ws.items()})
    level1 = pruning.prune(ws, dense, 0.2)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    names = dense.names
    flat_dense = [dense[n].flatten() for n in names]
    k1 = pruning.n_to_remove(0.2, dense.nnz)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("global magnitude, level 0 -> 1 (radix select)", lambda: pruning.prune(ws, dense, 0.2)),
        ("global magnitude, level 1 -> 2 (radix select)", lambda: pruning.prune(ws, level1, 0.2)),
        (
            "layerwise magnitude, level 0 -> 1",
            lambda: pruning.prune(ws, dense, 0.2, scope="layerwise"),
        ),
        ("global LAMP, level 0 -> 1", lambda: pruning.prune(ws, dense, 0.2, scorer="lamp")),
        (
            "global random, level 0 -> 1",
            lambda: pruning.prune(ws, dense, 0.2, scorer="random", generator=gen()),
        ),
        (
            "reference: global magnitude via concat + stable sort (same mask)",
            lambda: pruning._remove_lowest_sort(
                lambda i: ws[names[i]].abs(), flat_dense, k1
            ),
        ),
        (
            "naive: concat + kthvalue threshold (not tie-exact)",
            lambda: naive_threshold(ws, dense, 0.2),
        ),
    ]

    # The fast path must agree with the reference before its speed means anything.
    ref = pruning._remove_lowest_sort(lambda i: ws[names[i]].abs(), flat_dense, k1)
    fast = pruning.prune(ws, dense, 0.2)
    assert all(torch.equal(fast[n].flatten(), r) for n, r in zip(names, ref)), "paths disagree"

    numel = dense.numel
    load0 = os.getloadavg()
    times: dict[tuple[str, int], tuple[float, float]] = {}
    for t in threads:
        torch.set_num_threads(t)
        for name, fn in cases:
            times[name, t] = med, best = time_call(fn, args.repeats)
            print(f"{t} thread(s)  {name:66s} {med:7.3f} s  (min {best:.3f})", flush=True)
    load1 = os.getloadavg()
    peaks = {name: peak_alloc_bytes(fn) for name, fn in cases}
    for name, _ in cases:
        print(f"peak extra  {name:66s} {peaks[name] / 2**20:7.1f} MiB")

    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    lines = [
        "# Pruning speed: ResNet-18-shaped weights",
        "",
        f"Command: `{cmd}`",
        "",
        f"- prunable weights: {numel:,} in {len(ws)} tensors (float32, {numel * 4 / 2**20:.1f} MiB)"
        f"; fraction 0.2 (removes {k1:,} at level 0 -> 1)",
        f"- torch {torch.__version__}, {os.cpu_count()} CPU(s), "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        f"- load average (1 min) before / after timing: {load0[0]:.2f} / {load1[0]:.2f} "
        f"(other processes share this machine; timings are wall-clock)",
        f"- time: median (min) of {args.repeats} runs after one warm-up, per torch thread count",
        "- peak extra: the highest live torch CPU tensor bytes allocated during one call, from "
        "the profiler's memory events; includes the result mask "
        f"({numel / 2**20:.1f} MiB, 1 byte per weight); allocator caching and Python objects "
        "are not counted",
        "- magnitude scores are recomputed per pass (per-layer temporaries only); LAMP and random "
        "scores are stored once (one float32 copy of the weights), as the table shows",
        "- if other processes keep the cores busy, multi-thread timings become erratic (OpenMP "
        "threads wait for a descheduled peer); the 1-thread column is the stable one then",
        "",
        "| case | " + " | ".join(f"{t} thread(s): median (min) s" for t in threads)
        + " | peak extra (MiB) |",
        "|---|" + "---:|" * (len(threads) + 1),
    ]
    for name, _ in cases:
        cells = [f"{times[name, t][0]:.3f} ({times[name, t][1]:.3f})" for t in threads]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {peaks[name] / 2**20:.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
