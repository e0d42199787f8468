"""`swamp prune`: one-shot pruning of a model one already has (no training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from swamp.errors import SwampError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="prune a model once to a target sparsity (no training)",
        description="One-shot pruning of a built-in model or of a timm / torchvision / "
                    "transformers model, with pretrained weights from a file: an overall "
                    "sparsity or one per group of tensors (by name pattern), exact counts. "
                    "Writes the pruned weights as a plain safetensors state dict and the "
                    "mask; prints the realised sparsity per tensor and per group; evaluates "
                    "before and after when a dataset is given. Nothing is downloaded.")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="built-in name (see `swamp list`), timm:NAME, torchvision:NAME or "
                        "hf:DIR (a local transformers directory)")
    p.add_argument("--weights", metavar="FILE",
                   help="weights to prune (safetensors, or a torch state dict read with "
                        "weights_only=True); default: the model's own initialisation or the "
                        "hf directory's weights")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--sparsity", type=float, metavar="S",
                        help="fraction of the prunable weights to remove, in [0, 1)")
    target.add_argument("--group", action="append", metavar="PATTERN=S",
                        help="target sparsity of the prunable tensors whose names match "
                             "PATTERN (fnmatch; repeatable; a tensor belongs to the first "
                             "matching group; tensors in no group stay dense), e.g. "
                             "--group 'text_encoder.*=0.475' --group 'unet.*=0.35'")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="pruned weights (safetensors state dict); the mask goes to "
                        "FILE.mask.safetensors unless --mask-out says otherwise")
    p.add_argument("--mask-out", metavar="FILE", help="where to write the mask")
    p.add_argument("--scorer", default="magnitude", choices=["magnitude", "lamp", "random"],
                   help="pruning score (default magnitude)")
    p.add_argument("--scope", default="global", choices=["global", "layerwise"],
                   help="rank all tensors of a group together, or remove the same fraction "
                        "of each tensor (default global)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random scorer and of a model built without weights")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="also prune parameters matching PATTERN (e.g. the head, "
                        "'classifier.weight'); repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="keep parameters matching PATTERN dense; repeatable")
    p.add_argument("--dataset", "--data", dest="dataset", metavar="NAME",
                   help="evaluate before and after pruning on this dataset's test split "
                        "(see `swamp list`); also gives a built-in model its input shape")
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the dataset files")
    p.add_argument("--data-size", type=int, metavar="N",
                   help="number of samples of a generated dataset")
    p.add_argument("--input-shape", metavar="C,L", help="input shape of a built-in model "
                                                         "without --dataset, e.g. 1,40")
    p.add_argument("--num-classes", type=int, metavar="K",
                   help="classes of the model's head (without --dataset)")
    p.add_argument("--device", default="cpu", help="torch device: cpu | cuda | cuda:N | mps "
                                                    "| auto (default cpu)")
    p.set_defaults(handler=cmd_prune)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise SwampError(f"`input_shape` {text!r} is not a list of positive sizes; e.g. 1,40")
    return shape


def _check_out(path: str) -> None:
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise SwampError(f"cannot write {path}: the folder {parent} does not exist; create it "
                         f"or give another `out`")


def cmd_prune(args: argparse.Namespace) -> int:
    from swamp.assemble import check_model_fits, resolve_device
    from swamp.data import load_dataset
    from swamp.evaluation import evaluate
    from swamp.models.sources import LogitsOf
    from swamp.oneshot import (Group, load_model, mask_path_for, parse_group, prune_oneshot,
                               save_pruned, select_tensors)

    # Everything is checked before anything is written.
    groups = ([parse_group(g) for g in args.group] if args.group
              else [Group("*", args.sparsity)])
    _check_out(args.out)
    mask_out = args.mask_out or str(mask_path_for(args.out))
    _check_out(mask_out)
    device = resolve_device(args.device)
    shape, classes = _shape(args.input_shape), args.num_classes
    data = None
    if args.dataset:
        data = load_dataset(args.dataset, data_dir=args.data_dir, size=args.data_size,
                            augment=False)
        shape, classes = tuple(data.input_shape), data.num_classes
    model, family = load_model(args.model, args.weights, input_shape=shape,
                               num_classes=classes, seed=args.seed)
    model = model.to(device).eval()
    names = select_tensors(model, family, args.include, args.exclude)
    scored = LogitsOf(model) if family == "hf" else model
    before = None
    if data is not None:
        data = data.to(device)
        check_model_fits(scored, data)
        before = evaluate(scored, data.test)

    result = prune_oneshot(model, groups, names=names, family=family, scorer=args.scorer,
                           scope=args.scope, seed=args.seed)
    after = evaluate(scored, data.test) if data is not None else None
    out, mask_file = save_pruned(model, result.mask, args.out, mask_out, metadata={
        "swamp_model": args.model, "swamp_scorer": args.scorer, "swamp_scope": args.scope,
        "swamp_sparsity": f"{result.sparsity:.6f}"})

    print(f"{args.model} ({family}): {len(names)} prunable tensors, {result.total:,} weights; "
          f"{args.scorer} scores, {args.scope} scope")
    _print_layers(result)
    _print_groups(result)
    if before is not None and after is not None:
        print(f"test accuracy {100 * before.acc:.2f}% dense -> {100 * after.acc:.2f}% pruned "
              f"(nll {before.nll:.4f} -> {after.nll:.4f}) on {data.name}")
    print(f"pruned weights written to {out}; mask to {mask_file}")
    return 0


def _print_layers(result) -> None:
    width = max(len("prunable tensor"), *(len(r.name) for r in result.layers))
    gw = max(len("group"), *(len(r.group or "-") for r in result.layers))
    print(f"{'prunable tensor':<{width}}  {'shape':>16}  {'group':<{gw}}  {'target':>7}  "
          f"{'kept':>11}  {'total':>11}  {'sparsity':>8}")
    for r in result.layers:
        shape = "x".join(map(str, r.shape))
        print(f"{r.name:<{width}}  {shape:>16}  {r.group or '-':<{gw}}  "
              f"{100 * r.target:6.2f}%  {r.kept:>11,}  {r.total:>11,}  {100 * r.sparsity:7.2f}%")
    if result.dense:
        by_kind: dict[str, list[tuple[str, int]]] = {}
        for name, numel, kind in result.dense:
            by_kind.setdefault(kind, []).append((name, numel))
        print("kept dense: " + "; ".join(
            f"{kind} {len(items)} tensors, {sum(k for _, k in items):,} weights"
            f" ({_names(items)})" for kind, items in by_kind.items())
            + " (prune one with --include PATTERN)")


def _names(items: list[tuple[str, int]]) -> str:
    shown = ", ".join(n for n, _ in items[:3])
    return shown + (f", ... {len(items) - 3} more" if len(items) > 3 else "")


def _print_groups(result) -> None:
    width = max(len("group"), *(len(g.pattern) for g in result.groups))
    print(f"{'group':<{width}}  {'tensors':>7}  {'target':>7}  {'kept':>11}  {'total':>11}  "
          f"{'sparsity':>8}")
    for g in result.groups:
        print(f"{g.pattern:<{width}}  {g.tensors:>7}  {100 * g.target:6.2f}%  {g.kept:>11,}  "
              f"{g.total:>11,}  {100 * g.sparsity:7.2f}%")
    print(f"{'all prunable':<{width}}  {len(result.layers):>7}  {'':>7}  {result.kept:>11,}  "
          f"{result.total:>11,}  {100 * result.sparsity:7.2f}%")
