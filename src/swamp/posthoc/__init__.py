"""Methods on finished runs, with no retraining: Lottery Pools, output ensembles of runs,
and linear-mode-connectivity analysis. Every selection uses the validation split.

    from swamp.posthoc import lottery_pools, ensemble_runs, connectivity, load_run
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "connectivity": "swamp.posthoc.lmc",
    "ensemble_runs": "swamp.posthoc.ensemble",
    "lottery_pools": "swamp.posthoc.pools",
    "pool_level": "swamp.posthoc.pools",
    "RunReader": "swamp.reader",
    "load_run": "swamp.reader",
    "read_settings": "swamp.reader",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    # Lazy: `swamp --help` imports the command definitions without importing torch.
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'swamp.posthoc' has no attribute {name!r}")
