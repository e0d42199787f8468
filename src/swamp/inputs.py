"""Fingerprints of a model and data passed through the Python API.

Built-in models and datasets are named by the settings (and the run seed); a user's own
`nn.Module` or tensors are not, so without a fingerprint two different models would share a
run directory and the second call would silently get the first one's results. The run name's
hash covers these fingerprints, and a run directory refuses to resume with a different
architecture or different data. The initial weights enter the run name but not the resume
check: a resumed run reads its initial weights from `init.safetensors`, and post-hoc tools
only need the architecture.
"""

from __future__ import annotations

from torch import nn

from swamp.core.digest import digest as _digest
from swamp.data import DataBundle

RESUME_KEYS = ("model", "data")   # must match to resume; "model_init" only names the run


def model_fingerprints(model: nn.Module) -> dict[str, str]:
    """{"model": architecture, "model_init": initial weights} of a user's module."""
    state = model.state_dict()
    layout = [(k, str(v.dtype), tuple(v.shape)) for k, v in state.items()]
    return {"model": _digest([repr(model), layout]),
            "model_init": _digest([t for _, t in sorted(state.items())])}


def data_fingerprint(data: DataBundle) -> dict[str, str]:
    """{"data": splits' tensors, classes and input shape} of a user's data bundle."""
    return {"data": _digest([data.num_classes, data.input_shape,
                             *(t for split in (data.train, data.val, data.test)
                               for t in (split.x, split.y))])}


def differences(saved: dict[str, str], mine: dict[str, str]) -> list[str]:
    """The fingerprints that must match to resume and do not."""
    return [k for k in RESUME_KEYS if saved.get(k) != mine.get(k)]
