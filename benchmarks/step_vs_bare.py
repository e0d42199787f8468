"""Our training step against a bare PyTorch loop, in paired rounds (issue 10's 1.10x target).

    python benchmarks/step_vs_bare.py [--rounds 7] [--models mlp,conv1d,resnet20] [--out PATH]

One particle, batch 128, SGD with momentum and weight decay, a 50%-dense mask, in one process
with the product's defaults (threads matched to the cores, channels_last for 2-D convs, no
allocator setting). Three loops over the same model, batches and threads:

- `ours`: `swamp.train.train_steps`, the one training loop every engine uses (the mask
  re-applied to weights and momentum after every step, the loss check, SWA at the end, the
  cosine schedule);
- `bare`: forward, cross-entropy, backward and `optimizer.step()`, nothing else: a dense
  loop, the floor;
- `bare + mask`: `bare` with the weights multiplied by the mask after every step, the least
  any loop that trains a sparse network does.

Each round runs the three back to back, their order rotating, after one warm-up of each; the
verdict is the median over rounds of the per-round ratio (the machine is shared and its load
drifts, so like is compared with like), with the spread of the rounds. Writes
benchmarks/results/step_vs_bare.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from particles import BATCH, bench_schedule, build, make_task  # benchmarks/ is on the path
from results_file import machine_line, publish

RESULTS = Path(__file__).parent / "results" / "step_vs_bare.md"
# steps per measurement, sized so that one takes about a second here
STEPS = {"mlp": 800, "conv1d": 240, "resnet20": 8}


def loops(model_name: str):
    """The three loops of one model, each returning its wall seconds."""
    import torch
    import torch.nn.functional as F

    from swamp.train import BatchOrder, make_optimizer, train_steps

    data, model, settings, _ = build(model_name, "mnist1d" if model_name != "resnet20"
                                     else "image")
    steps = STEPS[model_name]
    task = make_task(model, 1, steps)
    schedule = bench_schedule(steps)
    pairs = [(p, task.mask[n].to(p.dtype)) for n, p in model.named_parameters()
             if n in task.mask]

    def ours() -> float:
        model.load_state_dict(task.start_state)
        start = time.perf_counter()
        train_steps(model, task.mask, data.train, schedule, settings, start=0, stop=steps,
                    order_seed=7, augment=data.augment, augment_seed=8)
        return time.perf_counter() - start

    def bare(mask: bool = False) -> float:
        model.load_state_dict(task.start_state)
        opt = make_optimizer(model.parameters(), settings)
        order = BatchOrder(len(data.train), BATCH, 7, torch.device("cpu"))
        gen = torch.Generator().manual_seed(8)
        model.train()
        start = time.perf_counter()
        for step in range(steps):
            idx = order.batch(step)
            x, y = data.train.x[idx], data.train.y[idx]
            if data.augment is not None:
                x = data.augment(x, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if mask:
                with torch.no_grad():
                    for p, m in pairs:
                        p.mul_(m)
        return time.perf_counter() - start

    return steps, {"ours": ours, "bare": bare, "bare + mask": lambda: bare(True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", default="mlp,conv1d,resnet20")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from swamp import cpu

    cpu.set_process_threads()
    import torch

    load_before = os.getloadavg()
    lines = ["# Our training step vs. a bare PyTorch loop (one particle)", "",
             f"Command: `python benchmarks/step_vs_bare.py --rounds {args.rounds} "
             f"--models {args.models}`", "",
             (__doc__ or "").split("\n\n", 2)[2].split("Each round")[0].strip(), "",
             f"Threads: {torch.get_num_threads()}. {args.rounds} rounds; samples/s are "
             f"medians over rounds, ratios are medians of the per-round ratios (min-max).", "",
             "| model | bare samples/s | bare + mask samples/s | ours samples/s | "
             "ours / bare | ours / (bare + mask) |", "|---|---:|---:|---:|---:|---:|"]
    vs: dict[str, list[tuple[float, str]]] = {"bare": [], "bare + mask": []}  # (ratio, model)
    for name in args.models.split(","):
        steps, fns = loops(name)
        for fn in fns.values():                  # warm-up: allocations, one-time imports
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        keys = list(fns)
        for r in range(args.rounds):
            for key in keys[r % 3:] + keys[:r % 3]:
                times[key].append(fns[key]())
            print(f"{name} round {r + 1}: " + ", ".join(
                f"{k} {steps * BATCH / times[k][-1]:,.0f}/s" for k in keys), flush=True)
        sps = {k: steps * BATCH / statistics.median(v) for k, v in times.items()}

        def ratio(other: str) -> tuple[float, float, float]:
            per = [o / t for o, t in zip(times[other], times["ours"])]  # speed ours / other
            return statistics.median(per), min(per), max(per)

        vs_bare, vs_masked = ratio("bare"), ratio("bare + mask")
        vs["bare"].append((vs_bare[0], name))
        vs["bare + mask"].append((vs_masked[0], name))
        lines.append(f"| {name} | {sps['bare']:,.0f} | {sps['bare + mask']:,.0f} | "
                     f"{sps['ours']:,.0f} | {vs_bare[0]:.3f} ({vs_bare[1]:.2f}-"
                     f"{vs_bare[2]:.2f}) | {vs_masked[0]:.3f} ({vs_masked[1]:.2f}-"
                     f"{vs_masked[2]:.2f}) |")
    low_bare, low_masked = min(vs["bare"]), min(vs["bare + mask"])
    lines += ["", "Target: our step within 1.10x of a bare loop, i.e. a speed ratio of at "
              f"least 0.909. Against the dense bare loop: worst {low_bare[0]:.3f} "
              f"({low_bare[1]}, against bare), "
              f"{'met' if low_bare[0] >= 1 / 1.1 else 'NOT met'}. Against the bare loop that "
              f"keeps the mask: worst {low_masked[0]:.3f} ({low_masked[1]}, against bare + "
              f"mask), {'met' if low_masked[0] >= 1 / 1.1 else 'NOT met'}.", "",
              machine_line(load_before, os.getloadavg())]
    publish(lines, Path(args.out))


if __name__ == "__main__":
    main()
