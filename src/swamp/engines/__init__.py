"""How the particles of one level are trained.

An engine receives one `LevelTask` (the ticket every particle starts from, the mask and one
`ParticleJob` per particle) and returns one `ParticleResult` per job, in job order. Engines
differ only in how they schedule the work; `sequential` is the reference the others are
tested against.
"""

from __future__ import annotations

from swamp.engines.base import Engine, LevelTask, ParticleJob, TrainContext
from swamp.engines.sequential import SequentialEngine
from swamp.errors import SwampError

__all__ = ["Engine", "LevelTask", "ParticleJob", "TrainContext", "SequentialEngine",
           "make_engine"]


def make_engine(name: str) -> Engine:
    if name == "sequential":
        return SequentialEngine()
    raise SwampError(f"unknown engine '{name}'; use sequential")
