"""The lower floor: masks, pruning (scorers x scopes, exact counts, mask combination),
averaging and seeds. Nothing here knows about training, levels or the command line."""
