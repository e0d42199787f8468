"""Issue 4's GPU target: `vectorised` against `sequential` on one GPU, N = 1, 2, 4, 8.

    python benchmarks/gpu_particles.py [--device cuda] [--rounds 3] [--models mlp,conv1d,resnet20]
                                       [--particles 1,2,4,8] [--out PATH]

The target: on a GPU, the vectorised engine (torch.func: all particles in one forward and
backward) with N = 4 at least 2.5x the throughput of the sequential engine on the small
models. Same tasks as benchmarks/particles.py (batch 128, SGD with momentum, weight decay,
a 50%-dense mask, SWA; mlp and conv1d on MNIST-1D, resnet20 on CIFAR-shaped random images
with crop/flip), on the device given, both engines timed with the device synchronised,
alternated round by round; samples/s as medians over rounds, the ratio measured in this run,
and the peak GPU memory of each. Without a GPU it says so and writes nothing (the GPU rows of
benchmarks/results/particles.md stay "not measured"); `--device cpu` runs the same code on
the CPU, to check the script itself.

Writes benchmarks/results/gpu_particles.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from particles import bench_schedule, build, make_task  # noqa: E402  (the same tasks)
from results_file import publish  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu_particles.md"
# steps per particle per measurement, sized for about a second on a recent GPU
STEPS = {"mlp": 400, "conv1d": 300, "resnet20": 60}
TARGET = 2.5


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return float("nan")


def measure(engine, task, ctx, device) -> tuple[float, float]:
    """(seconds, peak MiB) of one level's particles trained by `engine`."""
    peak_reset(device)
    sync(device)
    start = time.perf_counter()
    engine.train_particles(task, ctx)
    sync(device)
    return time.perf_counter() - start, peak_mib(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="mlp,conv1d,resnet20")
    parser.add_argument("--particles", default="1,2,4,8")
    parser.add_argument("--steps", type=float, default=1.0,
                        help="scale the steps per measurement (e.g. 0.05 for a quick check)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import torch

    from swamp.engines import SequentialEngine, VectorisedEngine

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: the GPU rows stay 'not measured'; run this on a GPU "
              "machine (or pass --device cpu to check the script)")
        sys.exit(1)
    rows = []
    for model_name in args.models.split(","):
        kind = "mnist1d" if model_name in ("mlp", "conv1d") else "image"
        data, model, tsettings, TrainContext = build(model_name, kind)
        model = model.to(device=device, memory_format=torch.contiguous_format)
        data = data.to(device)
        steps = max(1, int(STEPS.get(model_name, 20) * args.steps))
        ctx = TrainContext(model, data, bench_schedule(steps), tsettings)
        for n in [int(v) for v in args.particles.split(",")]:
            task = make_task(model, n, steps)
            engines = {"sequential": SequentialEngine()}
            if n > 1:
                engines["vectorised"] = VectorisedEngine()
            warm = TrainContext(model, data, bench_schedule(1), tsettings)
            for engine in engines.values():                 # kernels, cuDNN plans, pools
                engine.train_particles(make_task(model, n, 1), warm)
            seconds: dict[str, list[float]] = {k: [] for k in engines}
            peaks: dict[str, float] = {k: 0.0 for k in engines}
            for r in range(args.rounds):
                order = list(engines.items())
                for name, engine in (order if r % 2 == 0 else order[::-1]):
                    s, mib = measure(engine, task, ctx, device)
                    seconds[name].append(s)
                    peaks[name] = max(peaks[name], mib)
            sps = {k: n * steps * 128 / statistics.median(v) for k, v in seconds.items()}
            row = {"model": model_name, "n": n, "seq": sps["sequential"],
                   "vec": sps.get("vectorised", float("nan")),
                   "seq_mib": peaks["sequential"], "vec_mib": peaks.get("vectorised", 0.0)}
            rows.append(row)
            print(f"{model_name} N={n}: sequential {row['seq']:,.0f} samples/s, vectorised "
                  f"{row['vec']:,.0f} ({row['vec'] / row['seq']:.2f}x)", flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    cmd = " ".join(map(shlex.quote, ["python", "benchmarks/gpu_particles.py", *sys.argv[1:]]))
    lines = [
        "# Particle engines on one GPU: vectorised vs sequential",
        "",
        f"Command: `{cmd}`",
        "",
        f"Device: {device} ({name}), torch {torch.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores.",
        "",
        f"Batch 128, SGD momentum 0.9, weight decay 5e-4, 50%-dense mask, SWA; medians over "
        f"{args.rounds} alternated rounds. Peak MiB: torch's peak allocated GPU memory.",
        "",
        "| model | N | sequential samples/s | vectorised samples/s | vectorised / sequential "
        "| peak MiB seq / vec |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["vec"] / r["seq"]
        lines.append(f"| {r['model']} | {r['n']} | {r['seq']:,.0f} | "
                     + (f"{r['vec']:,.0f} | {ratio:.2f}x" if ratio == ratio else "- | -")
                     + (f" | {r['seq_mib']:.0f} / {r['vec_mib']:.0f} |" if device.type == "cuda"
                        else " | - |"))
    four = [r for r in rows if r["n"] == 4]
    if four:
        verdicts = ", ".join(f"{r['model']} {r['vec'] / r['seq']:.2f}x" for r in four)
        met = all(r["vec"] / r["seq"] >= TARGET for r in four)
        lines += ["", f"Target: vectorised >= {TARGET}x sequential at N = 4 on the small "
                      f"models: {verdicts}: **{'met' if met else 'NOT met'}**"
                      + ("" if device.type == "cuda" else " (not a GPU: a check of the "
                         "script only)") + "."]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
