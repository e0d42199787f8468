"""`--log tensorboard|wandb|mlflow` of `swamp run` and `swamp compare` (swamp.trackers)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_tracking_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("experiment tracking")
    g.add_argument("--log", metavar="TRACKER", choices=("tensorboard", "wandb", "mlflow"),
                   help="also log levels and progress to tensorboard | wandb | mlflow "
                        "(extras swamp[tensorboard], swamp[wandb], swamp[mlflow]; W&B follows "
                        "WANDB_MODE, e.g. offline)")
    g.add_argument("--log-dir", metavar="DIR",
                   help="where the tracker writes (default: <out>/<tracker>; MLflow: a file: "
                        "tracking folder)")


def attach_tracker(args: argparse.Namespace, events, settings):
    """The tracker subscribed to `events`, or None without --log; checked (a missing extra is
    one line) before anything is trained."""
    if not getattr(args, "log", None):
        return None
    from swamp.trackers import Tracker

    folder = Path(args.log_dir) if args.log_dir else Path(settings.run.out) / args.log
    tracker = Tracker(args.log, folder)
    events.subscribe(tracker)
    return tracker
