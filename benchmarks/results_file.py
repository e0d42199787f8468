"""The shared last step of every benchmark: print its table and write it to a results file."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path


def spread(values: list[float], unit: str = " s") -> str:
    """Median with its min-max range: the cell every paired benchmark table shows."""
    return (f"{statistics.median(values):.1f}{unit} "
            f"({min(values):.1f}-{max(values):.1f})")


def machine_line(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    """What the numbers were measured on, and how loaded it was."""
    import torch

    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, Python {platform.python_version()}; load average (1 min) "
            f"before {load_before[0]:.2f}, after {load_after[0]:.2f}.")


def publish(lines: list[str], out: str | Path) -> str:
    """Join `lines`, print them, write them to `out` (its folder made if missing); the text."""
    text = "\n".join(lines) + "\n"
    print(text)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
