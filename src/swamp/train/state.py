"""What the callbacks of the training loop see, and how all of it is checkpointed."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from swamp.train.precision import Precision


class LoopState:
    """What the callbacks see: the replicas, the optimiser, the iteration reached, the last
    step's per-replica losses; and how to checkpoint all of it."""

    def __init__(self, replicas: Any, optimizer: torch.optim.Optimizer, precision: Precision,
                 batches: Any, callbacks: Sequence[Any], step: int, stop: int):
        self.replicas = replicas
        self.optimizer = optimizer
        self.precision = precision
        self.batches = batches
        self.callbacks = list(callbacks)
        self.step = step
        self.stop = stop
        self.losses = torch.zeros(0)

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self, file: Any) -> None:
        tensors: dict[str, torch.Tensor] = {f"replicas/{k}": v
                                            for k, v in self.replicas.state().items()}
        opt = self.optimizer.state_dict()
        for index, entries in opt["state"].items():
            for key, value in entries.items():
                tensors[f"optim/{index}/{key}"] = torch.as_tensor(value)
        meta: dict[str, Any] = {"param_groups": opt["param_groups"],
                                "scaler": self.precision.state_dict(), "callbacks": {}}
        for cb in self.callbacks:
            if cb.key:
                values, info = cb.state()
                tensors.update({f"{cb.key}/{k}": v for k, v in values.items()})
                meta["callbacks"][cb.key] = info
        for i, g in enumerate(self.batches.generators):
            tensors[f"generator/{i}"] = g.get_state()
        tensors["rng/cpu"] = torch.get_rng_state()
        file.save(self.step, tensors, meta)

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        # safetensors sorts keys; state dicts are given back in the model's own order
        order = {k: i for i, k in enumerate(self.replicas.state())}

        def group(prefix: str) -> dict[str, torch.Tensor]:
            found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)),
                                                              kv[0])))

        self.replicas.load(group("replicas/"))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in group("optim/").items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.precision.load_state_dict(meta["scaler"])
        for cb in self.callbacks:
            if cb.key:
                cb.load(group(f"{cb.key}/"), meta["callbacks"][cb.key])
        for i, g in enumerate(self.batches.generators):
            g.set_state(tensors[f"generator/{i}"].cpu())
        torch.set_rng_state(tensors["rng/cpu"].cpu())
        self.step = int(meta["step"])
