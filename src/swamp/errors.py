"""User-facing errors: one line saying what was wrong and what to do.

The CLI prints `SwampError` messages without a traceback and exits non-zero; every other
exception is a bug and keeps its traceback.
"""


class SwampError(Exception):
    """A problem with the user's input or environment (not a bug in swamp)."""

    def __init__(self, message: object = "", *args: object):
        # One line, whatever a message quotes (a file's key or value may hold line breaks).
        text = str(message)
        if "\n" in text or "\r" in text:
            text = text.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(text, *args)
