"""Seeds derived from the run seed: one independent stream per purpose, level and particle."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from (run seed, purpose, level, particle ...), independent per tuple."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode()[:8].ljust(8, b"\0"), "little")
             for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))
