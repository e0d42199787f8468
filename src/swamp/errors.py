"""User-facing errors: one line saying what was wrong and what to do.

The CLI prints `SwampError` messages without a traceback and exits non-zero; every other
exception is a bug and keeps its traceback.
"""


class SwampError(Exception):
    """A problem with the user's input or environment (not a bug in swamp)."""
