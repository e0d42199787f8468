"""The `swamp` command. Only this module knows about the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import Any, Sequence

from swamp.config import SECTIONS, Settings, read_settings_file
from swamp.methods import METHODS
from swamp.errors import SwampError
from swamp.presets import PRESETS, preset_values


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SwampError(f"{message} (see `{self.prog} --help`)")


def _flag_type(kind: str):
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    return str


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, grouped by section, help text from the dataclass."""
    parser.add_argument("--preset", metavar="NAME",
                        help="standard training recipe of a model (see `swamp list`); a "
                             "settings file and flags override it")
    parser.add_argument("--config", metavar="FILE",
                        help="settings file (.toml, .yaml or .json); flags override it")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            help_text = f.metadata["help"]
            if "default" not in help_text:   # some helps explain their default themselves
                help_text += f" (default: {default})"
            kind = str(f.type)
            if kind.startswith("bool"):
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
            elif kind.startswith("list"):
                group.add_argument(flag, dest=f.name, metavar="A,B", default=argparse.SUPPRESS,
                                   help=help_text + "; comma-separated")
            else:
                group.add_argument(flag, dest=f.name, type=_flag_type(kind),
                                   default=argparse.SUPPRESS, help=help_text,
                                   metavar=f.name.upper())


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "preset", None):
        settings.update(preset_values(args.preset), source=f"preset {args.preset}")
    if args.config:
        settings.update(read_settings_file(args.config), source=args.config)
    owners = {f.name for cls in SECTIONS.values() for f in fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in owners}
    settings.update(flags, source="command line")
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swamp", description="SWAMP and the IMP family of pruning methods.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run (or resume) a pruning study",
                         description="Run a pruning study; re-running the same command "
                                     "resumes it. Methods: " + ", ".join(METHODS) + ".")
    add_settings_flags(run)
    run.add_argument("--run-dir", metavar="DIR",
                     help="exact run directory (default: <out>/<method>-<settings hash>)")
    run.add_argument("--quiet", action="store_true", help="print nothing while running")
    sub.add_parser("list", help="list datasets, models, methods and presets")
    exp = sub.add_parser("export", help="write a level's solution as a compact sparse file",
                         description="Write the solution of one level of a finished run as "
                                     "a sparse safetensors file (kept values plus a bitmap "
                                     "or indices per pruned tensor) and print its per-layer "
                                     "density and size. Load it with "
                                     "swamp.load_exported(PATH).")
    exp.add_argument("run", metavar="RUN", help="run directory (or Lottery Pools output)")
    which = exp.add_mutually_exclusive_group()
    which.add_argument("--level", type=int, help="level to export (default: the last one)")
    which.add_argument("--max-val-drop", type=float, metavar="FRACTION",
                       help="export the sparsest level whose validation accuracy is at most "
                            "this much below the dense level's (0.01 = one point)")
    exp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                     help="storage type of floating-point values (default float32)")
    exp.add_argument("--out", metavar="FILE",
                     help="output file (default: RUN/exports/level_<n>.safetensors)")
    from swamp.posthoc.commands import add_commands  # compare, report, post-hoc methods

    add_commands(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swamp.display import RunDisplay
    from swamp.loop import LevelLoop

    settings = settings_from_args(args)
    from swamp import cpu, distributed

    # Threads matched to the free cores (never more than torch's current setting).
    cpu.set_process_threads(settings.run.threads)
    # Under torchrun only rank 0 prints (and writes); the other ranks train particles.
    display = RunDisplay(Console(highlight=False),
                         quiet=args.quiet or not distributed.is_leader())
    loop = LevelLoop(settings, run_dir=args.run_dir, display=display)
    s = loop.settings
    engine = getattr(loop.engine, "description", loop.engine.name)
    display.info(f"[bold]swamp[/bold] {s.method.method}: {s.model.model} on {s.data.dataset}, "
                 f"{s.method.particles} particle(s), {s.prune.levels} levels of "
                 f"{s.prune.prune_fraction:g}, device {loop.device}, engine {engine}")
    display.info(f"run directory: {loop.store.root}")
    result = loop.run()
    if not distributed.is_leader():
        return 0
    last = result.levels[-1]
    display.info(f"done: level {last['level']} at {100 * last['sparsity']:.2f}% sparsity, "
                 f"test accuracy {100 * last['test_acc']:.2f}%; metrics in "
                 f"{loop.store.metrics_csv}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from swamp.data import list_datasets
    from swamp.models import list_models

    print("datasets: " + ", ".join(list_datasets()))
    print("models:   " + ", ".join(list_models()))
    print("methods:")
    for spec in METHODS.values():
        print(f"  {spec.name:<9} {spec.summary}")
    from swamp.compare import POSTHOC

    print("post-hoc methods (`swamp compare --methods`; no training of their own):")
    for posthoc in POSTHOC.values():
        print(f"  {posthoc.name:<13} {posthoc.summary}")
    print("presets (--preset NAME):")
    for preset in PRESETS.values():
        shown = ", ".join(f"{k}={v}" for k, v in preset.values.items() if k != "model")
        print(f"  {preset.name:<9} {shown}  [{preset.source}]")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from swamp.export import export_level

    summary = export_level(args.run, args.out, level=args.level,
                           max_val_drop=args.max_val_drop, dtype=args.dtype)
    src = summary.metadata
    print(f"level {summary.level} of {args.run} ({src.get('method')}, {src.get('model')} on "
          f"{src.get('dataset')}): density {100 * summary.density:.2f}%, test accuracy "
          f"{100 * (src.get('test_acc') or float('nan')):.2f}%")
    width = max(len(layer.name) for layer in summary.layers)
    print(f"{'prunable tensor':<{width}}  {'shape':>18}  {'kept':>10}  {'density':>8}  encoding")
    for layer in summary.layers:
        shape = "x".join(map(str, layer.shape))
        print(f"{layer.name:<{width}}  {shape:>18}  {layer.nnz:>10,}  "
              f"{100 * layer.density:7.2f}%  {layer.encoding}")
    print(f"{summary.dense_bytes / 1024:,.1f} KiB dense -> {summary.file_bytes / 1024:,.1f} KiB "
          f"sparse ({summary.file_bytes / max(1, summary.dense_bytes):.0%} of the dense size, "
          f"{args.dtype}); written to {summary.path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from swamp.cpu import tune_allocator

    tune_allocator()   # glibc thresholds: ~same effect as MALLOC_*_THRESHOLD_ (see cpu.py)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)   # reports quote the command
        if args.command is None:
            parser.print_help()
            return 2
        handler: Any = getattr(args, "handler", None) or {"run": cmd_run,
                                                           "list": cmd_list,
                                                           "export": cmd_export}[args.command]
        return handler(args)
    except SwampError as exc:
        print(f"swamp: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # a path that cannot be read or written: one line, not a traceback
        print(f"swamp: error: {exc}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("swamp: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
