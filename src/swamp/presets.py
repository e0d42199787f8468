"""Standard IMP training recipes per model (`swamp run --preset NAME`).

A preset is a set of settings applied before a settings file and the flags, so anything it
sets can still be overridden. The table in docs/presets.md states where each value comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swamp.errors import SwampError


@dataclass(frozen=True)
class Preset:
    name: str
    values: dict[str, Any]
    source: str


# CIFAR ResNets and VGGs: the recipe of Frankle et al., "Linear Mode Connectivity and the
# Lottery Ticket Hypothesis" (ICML 2020) and its OpenLTH code: SGD, momentum 0.9, lr 0.1,
# batch 128, 160 epochs (62.5k iterations) with the lr divided by 10 at 50% and 75%,
# weight decay 1e-4; rewinding to iteration 2000 (about 3% of training), the early point from
# which that paper finds stable, matching IMP tickets for ResNet-20 and VGG-16.
_LTH = dict(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=128, epochs=160,
            schedule="step", weight_decay=1e-4, rewind_iters=2000)
# Wide ResNets: Zagoruyko & Komodakis (BMVC 2016) use lr 0.1, momentum 0.9, weight decay 5e-4,
# batch 128; SWAMP (Choi et al., ICLR 2024) trains its WRN/VGG tickets with a cosine schedule
# that anneals into SWA over the last 25% of training; we pair that with 160 epochs and the
# same 2000-iteration rewind point as the LTH recipe.
_WRN = dict(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=128, epochs=160,
            schedule="cosine", weight_decay=5e-4, rewind_iters=2000, swa_start=0.75,
            swa_lr=0.05)
# MNIST-1D: this project's own default (see benchmarks/results/default_run.md).
_MNIST1D = dict(dataset="mnist1d", model="conv1d", optimizer="sgd", lr=0.1, momentum=0.9,
                batch_size=128, epochs=20, schedule="cosine", weight_decay=5e-4)

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("conv1d", _MNIST1D, "this project's default for MNIST-1D"),
    *[Preset(m, {"model": m, **_LTH}, "Frankle et al. 2020 (LMC), OpenLTH cifar_resnet")
      for m in ("resnet20", "resnet32", "resnet56")],
    *[Preset(m, {"model": m, **_LTH}, "Frankle et al. 2020 (LMC), OpenLTH cifar_vgg")
      for m in ("vgg11", "vgg13", "vgg16", "vgg19")],
    Preset("resnet18", {"model": "resnet18", **_LTH, "weight_decay": 5e-4},
           "LTH recipe with ResNet-18's usual weight decay 5e-4"),
    Preset("wrn-28-2", {"model": "wrn-28-2", **_WRN}, "Zagoruyko & Komodakis 2016; SWAMP 2024"),
    Preset("wrn-32-4", {"model": "wrn-32-4", **_WRN}, "Zagoruyko & Komodakis 2016; SWAMP 2024"),
]}


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise SwampError(f"unknown preset '{name}'; known: {', '.join(PRESETS)} "
                         f"(see `swamp list`)")
    return dict(PRESETS[name].values)
