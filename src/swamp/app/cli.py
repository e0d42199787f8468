"""The `swamp` command: the parser, `swamp list`, and how errors reach the terminal.

Each command family registers its own sub-commands (run, export, studies, posthoc); only
this package knows about the command line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from swamp import __version__
from swamp.app import completion, export, posthoc, run, show, studies
from swamp.app import prune as prune_cmd   # one-shot pruning (issue 12)
from swamp.app.flags import render_error
from swamp.methods import METHODS
from swamp.errors import SwampError, did_you_mean
from swamp.presets import PRESETS


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (and exit status 2), with a "did you
    mean" for a misspelt flag, command or choice."""

    _argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = self._suggestion(message)
        prog = self._command().prog
        raise SwampError(f"{message};{hint} see `{prog} --help`" if hint else
                         f"{message} (see `{prog} --help`)")

    def _suggestion(self, message: str) -> str:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [w.split("=")[0] for w in unknown.group(1).split() if w.startswith("-")]
            # compared without the dashes, which every flag shares
            return (did_you_mean(flags[0].lstrip("-"), [o[2:] for o in self._options()], "--")
                    if flags else "")
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            choices = [c.strip().strip("'") for c in choice.group(2).split(",")]
            return did_you_mean(choice.group(1), choices)
        return ""

    def _command(self) -> argparse.ArgumentParser:
        """The parser of the sub-command being parsed (unknown flags are reported by the
        top-level parser), or this parser."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                command = next((a for a in self._argv if a in action.choices), None)
                if command is not None:
                    return action.choices[command]
        return self

    def _options(self) -> list[str]:
        return [o for a in self._command()._actions for o in a.option_strings
                if a.help is not argparse.SUPPRESS and o.startswith("--")]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swamp", description="SWAMP and the IMP family of pruning methods.")
    parser.add_argument("--version", action="version", version=f"swamp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run.add_parser(sub)
    sub.add_parser("list", help="list datasets, models, methods and presets"
                   ).set_defaults(handler=cmd_list)
    export.add_parser(sub)
    studies.add_parsers(sub)
    posthoc.add_parsers(sub)
    prune_cmd.add_parser(sub)
    show.add_parser(sub)          # issue 14: swamp show RUN
    completion.add_parser(sub)    # issue 14: swamp completion bash|zsh
    parser.set_defaults(root_parser=parser)   # the completion script is made from it
    return parser


def command_options(parser: argparse.ArgumentParser, command: str | None) -> set[str]:
    """The names (dests) of a sub-command's options, e.g. `max_val_drop` of export."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return {a.dest for a in action.choices[command]._actions if a.option_strings}
    return set()


def cmd_list(args: argparse.Namespace) -> int:
    from swamp.data import FILE_DATASETS, list_datasets
    from swamp.models import list_models
    from swamp.posthoc.methods import POSTHOC

    print("datasets: " + ", ".join(list_datasets()))
    print("your own files (--dataset KIND:PATH): " + ", ".join(FILE_DATASETS))
    print("models:   " + ", ".join(list_models()))
    print("          timm:NAME, torchvision:NAME, hf:DIR (extras swamp[timm], "
          "swamp[torchvision], swamp[hf]); --weights FILE for any model")
    print("methods:")
    for spec in METHODS.values():
        print(f"  {spec.name:<9} {spec.summary}")
    print("post-hoc methods (`swamp compare --methods`; no training of their own):")
    for method in POSTHOC.values():
        print(f"  {method.name:<13} {method.summary}")
    print("presets (--preset NAME):")
    for preset in PRESETS.values():
        shown = ", ".join(f"{k}={v}" for k, v in preset.values.items() if k != "model")
        swa = ", ".join(f"{k}={v}" for k, v in preset.swa_values.items())
        print(f"  {preset.name:<9} {shown}" + (f"; with SWA: {swa}" if swa else "")
              + f"  [{preset.source}]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from swamp.cpu import allocator_wanted, tune_allocator

    if allocator_wanted():   # opt-in glibc thresholds (see cpu.py for why not by default)
        tune_allocator()
    parser = build_parser()
    command = None
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)   # reports quote the command
        command = args.command
        if args.command is None:
            parser.print_help()
            return 2
        return args.handler(args)
    except SwampError as exc:   # the library names settings; the user typed flags
        message = render_error(str(exc), command_options(parser, command))
        print(f"swamp: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # the reader went away (`swamp list | head -1`): stop quietly
        # Python's documented recipe: point stdout at devnull so the flush at exit is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141   # what the shell reports for a tool ended by SIGPIPE
    except OSError as exc:   # a path that cannot be read or written: one line, not a traceback
        print(f"swamp: error: {exc}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:   # Ctrl-C, or SIGTERM (train/stop.py): work is kept
        print("swamp: interrupted; re-run the same command to resume", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
