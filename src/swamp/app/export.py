"""`swamp export`: a level's solution as a compact sparse file."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    exp.set_defaults(handler=cmd_export)


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
