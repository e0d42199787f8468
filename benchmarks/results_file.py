"""The shared last step of every benchmark: print its table and write it to a results file."""

from __future__ import annotations

from pathlib import Path


def publish(lines: list[str], out: str | Path) -> str:
    """Join `lines`, print them, write them to `out` (its folder made if missing); the text."""
    text = "\n".join(lines) + "\n"
    print(text)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
