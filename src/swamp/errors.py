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


def did_you_mean(word: str, choices, prefix: str = "") -> str:
    """' did you mean X?' for the closest of `choices` to a misspelt `word` (difflib's
    ratio, the standard library's; cutoff 0.6), else ''. Written into messages as
    f"unknown method 'swmp';{did_you_mean('swmp', METHODS)} known: ..."."""
    import difflib

    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    if not close:   # a case slip ('SWAMP') or dashes for underscores
        folded = {n.lower().replace("_", "-"): n for n in names}
        hit = folded.get(str(word).lower().replace("_", "-"))
        close = [hit] if hit else []
    return f" did you mean '{prefix}{close[0]}'?" if close else ""
