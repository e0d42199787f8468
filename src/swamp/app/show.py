"""`swamp show RUN`: a finished (or stopped) run's settings, level table, files and
integrity, read from its directory; nothing is trained or written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from swamp.errors import SwampError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a run's settings, level table, files and integrity",
                       description="Print what a run directory holds: the settings that "
                                   "differ from the defaults, the engine, how far it got, "
                                   "the level table (as `swamp run` printed it), its files "
                                   "and whether they match their checksums. Reads only.")
    p.add_argument("run", metavar="RUN", help="a run directory made by `swamp run`")
    p.add_argument("--json", action="store_true",
                   help="print the same as one JSON object (settings, levels, files, status)")
    p.set_defaults(handler=cmd_show)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _files(root: Path) -> list[dict[str, Any]]:
    """Top-level files one by one; each folder as a count and a total size."""
    out = []
    for path in sorted(root.iterdir()):
        if path.is_dir():
            inside = [p for p in path.rglob("*") if p.is_file()]
            out.append({"path": path.name + "/", "files": len(inside),
                        "bytes": sum(p.stat().st_size for p in inside)})
        elif path.is_file():
            out.append({"path": path.name, "files": 1, "bytes": path.stat().st_size})
    return out


def _changed(saved: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from swamp.config import Settings

    defaults = Settings().to_dict()
    return {f"{section}.{k}": v for section, values in saved.items() for k, v in values.items()
            if defaults.get(section, {}).get(k, object()) != v}


def inspect(run: str | Path) -> dict[str, Any]:
    """What `swamp show` prints, as data."""
    from swamp.reader import run_store
    from swamp.store import read_json

    root = Path(run)
    store = run_store(root)
    info: dict[str, Any] = {"run": str(root)}
    try:
        checked = store.verify_checksums()
        store.verify_record(store.settings_path)
        info["integrity"] = f"ok: {checked} file(s) match their checksums"
        info["damaged"] = False
    except SwampError as exc:
        info["integrity"] = f"DAMAGED: {exc}"
        info["damaged"] = True
    saved = read_json(store.settings_path)
    info["settings"] = saved
    info["changed"] = _changed(saved)
    if store.posthoc_path.is_file():
        info["posthoc"] = read_json(store.posthoc_path)
    if store.engine_path.is_file():
        info["engine"] = read_json(store.engine_path)
    finished = store.finished_levels()
    levels = int(saved.get("prune", {}).get("levels", 0))
    rows = []
    for level in finished:
        try:
            rows.append(read_json(store.level_metrics_path(level)))
        except SwampError:
            break
    info["levels"] = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))}
                      for r in rows]
    if "posthoc" in info:
        info["status"] = f"post-hoc results ({info['posthoc'].get('method', 'unknown')})"
    elif len(finished) > levels:
        info["status"] = f"finished: levels 0..{levels}"
    elif finished:
        info["status"] = (f"stopped after level {finished[-1]} of {levels}; re-run its "
                          f"`swamp run` command to resume")
    else:
        info["status"] = "no level finished yet; re-run its `swamp run` command to resume"
    info["files"] = _files(root)
    return info


def cmd_show(args: argparse.Namespace) -> int:
    from swamp.progress import HEADER, level_row

    info = inspect(args.run)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True, default=str))
        return 1 if info["damaged"] else 0
    s = info["settings"]
    method, model = s["method"]["method"], s["model"]["model"]
    print(f"run {info['run']}: method {method}, {model} on {s['data']['dataset']}, "
          f"seed {s['run']['seed']}, {s['method']['particles']} particle(s), "
          f"{s['prune']['levels']} levels of {s['prune']['prune_fraction']:g}")
    changed = info["changed"]
    print("settings (not default): " + (", ".join(f"{k.split('.', 1)[1]}={v!r}"
                                                   for k, v in sorted(changed.items()))
                                         if changed else "none"))
    if "engine" in info:
        print("engine: " + "; ".join(
            f"{k} particle(s): " + ", ".join(f"{a} {b}" for a, b in v.items())
            if isinstance(v, dict) else f"{k} {v}" for k, v in info["engine"].items()))
    print(f"status: {info['status']}")
    print(f"integrity: {info['integrity']}")
    if info["levels"]:
        print(HEADER)
        for row in info["levels"]:
            try:
                print(level_row(row))
            except KeyError:      # a post-hoc row holds other columns
                print(f"{row.get('level', '?'):>5}  test accuracy {row.get('test_acc')}")
    print("files:")
    for f in info["files"]:
        count = f" ({f['files']} files)" if f["path"].endswith("/") else ""
        print(f"  {f['path']:<28} {_size(f['bytes']):>10}{count}")
    return 1 if info["damaged"] else 0
