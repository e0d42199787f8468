"""Settings dataclasses as command-line flags, and back."""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, fields
from typing import Iterable

from swamp.config import SECTIONS, Settings, read_settings_file
from swamp.presets import preset_values, swa_preset_values

SETTING_NAMES = frozenset(f.name for cls in SECTIONS.values() for f in fields(cls))
_QUOTED = re.compile(r"`([a-z][a-z0-9_]*)`")


def flag(name: str) -> str:
    """The flag of a setting: `prune_fraction` -> `--prune-fraction`."""
    return "--" + name.replace("_", "-")


def render_error(message: str, options: Iterable[str] = ()) -> str:
    """A library message for the command line: a setting, or one of the command's `options`
    (argument names of the library call behind it), quoted as `name` becomes its flag;
    `no_name`, a setting switched off, becomes `--no-name`."""
    names = SETTING_NAMES | set(options)

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name in names or (name.startswith("no_") and name[3:] in SETTING_NAMES):
            return flag(name)
        return match.group(0)

    return _QUOTED.sub(replace, message)


def _flag_type(kind: str):
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    return str


def add_settings_flags(parser: argparse.ArgumentParser, hidden: Iterable[str] = ()) -> None:
    """One flag per setting, grouped by section, help text from the dataclass; the settings
    in `hidden` are accepted but left out of --help (a command that sets them itself)."""
    hidden = set(hidden)
    parser.add_argument("--preset", metavar="NAME",
                        help="standard training recipe of a model (see `swamp list`); a "
                             "settings file and flags override it")
    parser.add_argument("--config", metavar="FILE",
                        help="settings file (.toml, .yaml or .json); flags override it")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            help_text = f.metadata["help"]
            if "default" not in help_text:   # some helps explain their default themselves
                help_text += f" (default: {default})"
            if f.name in hidden:
                help_text = argparse.SUPPRESS
            kind = str(f.type)
            if kind.startswith("bool"):
                group.add_argument(flag(f.name), dest=f.name,
                                   action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
            elif kind.startswith("list"):
                group.add_argument(flag(f.name), dest=f.name, metavar="A,B",
                                   default=argparse.SUPPRESS,
                                   help=help_text if f.name in hidden
                                   else help_text + "; comma-separated")
            else:
                group.add_argument(flag(f.name), dest=f.name, type=_flag_type(kind),
                                   default=argparse.SUPPRESS, help=help_text,
                                   metavar=f.name.upper())


def settings_from_args(args: argparse.Namespace, method: str | None = None) -> Settings:
    """The settings of preset, file and flags, in that order; `method` (compare: each of its
    methods) decides whether a preset's SWA recipe applies, instead of the `method` setting."""
    settings = Settings()
    preset = getattr(args, "preset", None)
    if preset:
        settings.update(preset_values(preset), source=f"preset {preset}")
    chosen: set[str] = set()          # settings named by the file or a flag
    if args.config:
        values = read_settings_file(args.config)
        settings.update(values, source=args.config)
        chosen |= {k.replace("-", "_") for k, v in values.items() if not isinstance(v, dict)}
        chosen |= {k.replace("-", "_") for v in values.values() if isinstance(v, dict)
                   for k in v}
    given = {k: v for k, v in vars(args).items() if k in SETTING_NAMES}
    settings.update(given, source="command line")
    chosen |= set(given)
    if preset and _keeps_swa(settings, method):
        extra = {k: v for k, v in swa_preset_values(preset).items() if k not in chosen}
        settings.update(extra, source=f"preset {preset} (SWA recipe)")
    return settings


def _keeps_swa(settings: Settings, method: str | None) -> bool:
    from swamp.methods import get_method

    if settings.method.swa is not None:
        return settings.method.swa
    return get_method(method or settings.method.method).swa
