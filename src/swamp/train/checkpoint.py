"""The file one training call (a particle, a stack of particles, the rewind segment) is
checkpointed to, and resumed from.

One safetensors file holds everything a resumed call needs to continue bit for bit: the
replicas' weights and buffers, the optimiser and gradient-scaler state, each callback's
state (SWA average, loss sums), the augmentation generators and the torch RNG, and the
iteration reached. A checkpoint at the last iteration is a finished particle: resuming it
trains nothing and gives back the same result.

Checkpoints are written by whichever process trains the particles (ranks of the process
engine included), so they carry their own integrity check instead of an entry in the run's
checksums.json: a SHA-256 over every tensor and the metadata, checked on load. They also
carry the fingerprint of the task (ticket, mask, seeds, schedule): a checkpoint of another
task is stale and ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from swamp.core.digest import update
from swamp.errors import SwampError
from swamp.store import save_state

FORMAT = "swamp-checkpoint/1"


def _payload_hash(tensors: dict[str, torch.Tensor], meta: str) -> str:
    h = hashlib.sha256(meta.encode())
    for key in sorted(tensors):
        h.update(key.encode())
        update(h, tensors[key])
    return h.hexdigest()


class CheckpointFile:
    """One checkpoint path, for one task fingerprint."""

    def __init__(self, path: Path, fingerprint: str, every: int = 0):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.every = every          # iterations between checkpoints; 0: only at stops and the end

    def save(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        text = json.dumps({**meta, "step": step, "fingerprint": self.fingerprint},
                          sort_keys=True)
        save_state(self.path, cpu, {"format": FORMAT, "meta": text,
                                    "sha256": _payload_hash(cpu, text)})

    def load(self, device: torch.device | str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, metadata) of a checkpoint of this task; None if there is none (or only
        a stale one of another task). A damaged file is one line naming it."""
        if not self.path.is_file():
            return None
        fix = f"delete {self.path} to train those particles from the start of the level"
        try:
            with safe_open(str(self.path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            text = header["meta"]
            meta = json.loads(text)
            ok = header.get("format") == FORMAT and header.get("sha256") == \
                _payload_hash(tensors, text)
        except Exception:  # safetensors and json raise several kinds for damaged files
            ok = False
        if not ok:
            raise SwampError(f"{self.path} is damaged (it fails its integrity check); {fix}")
        if meta.get("fingerprint") != self.fingerprint:
            return None
        return {k: v.to(device) for k, v in tensors.items()}, meta

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
