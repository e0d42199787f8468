"""The app layer: the `swamp` command line and the terminal display.

Only this package knows about flags, argparse and rich; the library below it reports through
`swamp.events` and names settings (`lr`) in its errors, which `flags.render_error` turns into
flags (`--lr`).
"""
