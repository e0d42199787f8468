"""`swamp run`: one pruning study, drawn on the terminal as it goes."""

from __future__ import annotations

import argparse

from swamp.app.flags import add_settings_flags, settings_from_args
from swamp.app.tracking import add_tracking_flags, attach_tracker
from swamp.methods import METHODS


def add_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run (or resume) a pruning study",
                         description="Run a pruning study; re-running the same command "
                                     "resumes it. Methods: " + ", ".join(METHODS) + ".")
    add_settings_flags(run)
    run.add_argument("--run-dir", metavar="DIR",
                     help="exact run directory (default: <out>/<method>-<settings hash>)")
    run.add_argument("--quiet", action="store_true", help="print nothing while running")
    add_tracking_flags(run)
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from swamp import cpu, world
    from swamp.app.display import RunDisplay, make_console
    from swamp.events import Events
    from swamp.loop import LevelLoop, serve

    settings = settings_from_args(args)
    # Threads matched to the usable cores (never more than torch's current setting).
    cpu.set_process_threads(settings.run.threads)
    if not world.is_leader():
        # A torchrun rank above 0: it serves rank 0's levels before any level loop exists,
        # prints nothing and never opens the run directory.
        serve(settings)
        return 0
    display = RunDisplay(make_console(), quiet=args.quiet, announce=True)
    events = Events()
    events.subscribe(display)
    tracker = attach_tracker(args, events, settings)
    try:
        LevelLoop(settings, run_dir=args.run_dir, events=events).run()
    finally:
        display.close()   # a live progress bar must not outlive an error
        if tracker is not None:
            tracker.close()
    return 0
