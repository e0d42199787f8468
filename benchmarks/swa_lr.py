"""Choose the default SWA learning rate on the validation split (never the test split).

    python benchmarks/swa_lr.py

Dense level only (levels=0) of the default conv1d on MNIST-1D, 20 epochs, rewind 1 epoch,
3 seeds: IMP (no SWA) against imp-swa with swa_lr in {lr/20, lr/5, lr/2}. Prints and writes
benchmarks/results/swa_lr.md with validation accuracy, mean ± std over seeds.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from swamp.config import Settings
from swamp.loop import run

RESULTS = Path(__file__).parent / "results" / "swa_lr.md"


def main() -> None:
    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="swamp-swa-lr-")
    lines = ["# Default SWA learning rate, selected on validation accuracy", "",
             "Command: `python benchmarks/swa_lr.py` (conv1d, MNIST-1D, dense level, 20 epochs, "
             "rewind 1 epoch, lr 0.1, seeds 0-2)", "",
             "| method | swa_lr | val acc (mean ± std) |", "|---|---:|---:|"]
    for method, swa_lr in [("imp", None), ("imp-swa", 0.005), ("imp-swa", 0.02),
                           ("imp-swa", 0.05)]:
        vals = []
        for seed in range(3):
            values = dict(method=method, levels=0, epochs=20, rewind_epochs=1.0, seed=seed,
                          device="cpu", out=out)
            if swa_lr is not None:
                values["swa_lr"] = swa_lr
            vals.append(run(Settings.from_dict(values)).levels[0]["val_acc"])
        lines.append(f"| {method} | {swa_lr if swa_lr is not None else '-'} | "
                     f"{100 * statistics.fmean(vals):.2f} ± {100 * statistics.pstdev(vals):.2f} |")
        print(lines[-1], flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
