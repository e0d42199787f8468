"""`swamp export`: a level's solution as a compact sparse file or a standard format;
`swamp bench`: how fast each form of a level's solution runs."""

from __future__ import annotations

import argparse

from swamp.formats import COMPACT, FORMATS, FORMS


def add_parser(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("export", help="write a level's solution as a compact sparse file "
                                        "or in a standard format",
                         description="Write the solution of one level of a finished run as "
                                     "a sparse safetensors file (kept values plus a bitmap "
                                     "or indices per pruned tensor; load it with "
                                     "swamp.load_exported(PATH)), or with --format as a "
                                     "plain state dict, in torch.nn.utils.prune's layout, or "
                                     "as ONNX; print its per-layer density and size.")
    exp.add_argument("run", metavar="RUN", help="run directory (or Lottery Pools output)")
    which = exp.add_mutually_exclusive_group()
    which.add_argument("--level", type=int, help="level to export (default: the last one)")
    which.add_argument("--max-val-drop", type=float, metavar="FRACTION",
                       help="export the sparsest level whose validation accuracy is at most "
                            "this much below the dense level's (0.01 = one point)")
    exp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                     help="storage type of floating-point values (default float32)")
    exp.add_argument("--format", default=COMPACT, choices=list(FORMATS),
                     help="swamp: compact (default); dense: plain safetensors state dict; "
                          "torch-prune: weight_orig + weight_mask as torch.nn.utils.prune "
                          "saves them; onnx: the graph, checked with onnxruntime (needs "
                          "pip install 'swamp[onnx]')")
    exp.add_argument("--out", metavar="FILE",
                     help="output file (default: RUN/exports/level_<n>.safetensors, "
                          "level_<n>-dense.safetensors, level_<n>-torch-prune.safetensors "
                          "or level_<n>.onnx)")
    exp.set_defaults(handler=cmd_export)
    add_bench_parser(sub)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:

    bench = sub.add_parser("bench", help="time a run's levels dense against sparse forms",
                           description="Time each finished level of a run (or --level) at "
                                       "batch 1 and a large batch in each form: the masked "
                                       "dense model, swamp.sparsify's CSR and BSR layers, "
                                       "and ONNX Runtime (with pip install 'swamp[onnx]'); "
                                       "warm-up, paired rounds, medians; file size per "
                                       "export format. Prints a table and writes "
                                       "bench.json, bench.md and bench.png (speed-up "
                                       "against sparsity).")
    bench.add_argument("run", metavar="RUN", help="run directory (or Lottery Pools output)")
    bench.add_argument("--level", type=int, help="level to time (default: every level)")
    bench.add_argument("--batch", type=int, default=256,
                       help="the large batch for throughput (default 256)")
    bench.add_argument("--forms", default=",".join(FORMS), metavar="A,B",
                       help=f"forms to time, dense first (default {','.join(FORMS)})")
    bench.add_argument("--rounds", type=int, default=7, help="paired rounds (default 7)")
    bench.add_argument("--repeats", type=int, default=20,
                       help="calls per form and round, of which the median (default 20)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    bench.add_argument("--threads", type=int, default=1,
                       help="CPU threads of torch and onnxruntime (default 1)")
    bench.add_argument("--device", default="cpu", help="device of the torch forms (default cpu)")
    bench.add_argument("--out", metavar="DIR", help="output folder (default: RUN/bench)")
    bench.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from swamp.bench import bench_run, size_table, table

    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    results = bench_run(args.run, level=args.level, out=args.out, batch=args.batch,
                        forms=forms, rounds=args.rounds, repeats=args.repeats,
                        warmup=args.warmup, threads=args.threads, device=args.device)
    print(f"{results['model']} of {args.run} on {results['device']} ({results['threads']} "
          f"thread(s)); {results['rounds']} paired rounds of {results['repeats']} calls")
    print(table(results["rows"]))
    print(size_table(results["sizes"]))
    if results["versions"]["onnxruntime"] is None and "ort" in forms:
        print("ort: not timed; it needs the extra: pip install 'swamp[onnx]'")
    print("written: " + ", ".join(results["paths"]))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from swamp.export import export_level

    summary = export_level(args.run, args.out, level=args.level,
                           max_val_drop=args.max_val_drop, dtype=args.dtype,
                           format=args.format)
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
    if summary.check:
        print(f"onnxruntime gives PyTorch's outputs on validation inputs: max |diff| "
              f"{summary.check['max_abs_diff']:.2g} (tolerance rtol {summary.check['rtol']:g}, "
              f"atol {summary.check['atol']:g})")
    kind = "sparse" if summary.format == COMPACT else summary.format
    dtype = "float32" if summary.format == "onnx" else args.dtype
    print(f"{summary.dense_bytes / 1024:,.1f} KiB dense -> {summary.file_bytes / 1024:,.1f} KiB "
          f"{kind} ({summary.file_bytes / max(1, summary.dense_bytes):.0%} of the dense size, "
          f"{dtype}); written to {summary.path}")
    return 0
