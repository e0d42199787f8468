"""Standard IMP training recipes per model (`swamp run --preset NAME`).

A preset is a set of settings applied before a settings file and the flags, so anything it
sets can still be overridden. docs/presets.md states where each value comes from and
marks the values that are this project's choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swamp.errors import SwampError, did_you_mean


@dataclass(frozen=True)
class Preset:
    name: str
    values: dict[str, Any]
    source: str
    # Applied on top of `values` when the run's method keeps an SWA average, for each key
    # that a settings file or flag does not set: the recipe the SWA papers train with.
    swa_values: dict[str, Any] = field(default_factory=dict)


# CIFAR ResNets and VGGs: the recipe of Frankle et al., "Linear Mode Connectivity and the
# Lottery Ticket Hypothesis" (ICML 2020) and its OpenLTH code: SGD, momentum 0.9, lr 0.1,
# batch 128, 160 epochs with the lr divided by 10 at 50% and 75%, weight decay 1e-4; rewinding
# to iteration 2000, the early point from which that paper finds stable, matching IMP tickets
# for ResNet-20 and VGG-16. On their 50k training images that is 62.5k iterations and 2000 is
# about 3% of them; with swamp's default 10% validation hold-out, 160 epochs are 56,160
# iterations (2000 is about 3.6%); --val-fraction 0 matches the paper's training set.
# With an SWA method the step schedule would drop the lr to 0.01 at 50% and jump back up to
# swa_lr at swa_start; the SWAMP paper instead anneals a cosine schedule into SWA at 0.05 over
# the last 25%, so SWA methods get that (`_SWA_RECIPE`) unless a flag or file says otherwise.
_LTH = dict(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=128, epochs=160,
            schedule="step", weight_decay=1e-4, rewind_iters=2000)
_SWA_RECIPE = dict(schedule="cosine", swa_lr=0.05)
# Wide ResNets: Zagoruyko & Komodakis (BMVC 2016) use lr 0.1, momentum 0.9, weight decay 5e-4,
# batch 128; SWAMP (Choi et al., ICLR 2024) trains its WRN/VGG tickets with a cosine schedule
# that anneals into SWA over the tail of training. Our choices, not from a cited source:
# 160 epochs, swa_lr 0.05 and the LTH recipe's 2000-iteration rewind point.
_WRN = dict(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=128, epochs=160,
            schedule="cosine", weight_decay=5e-4, rewind_iters=2000, swa_start=0.75,
            swa_lr=0.05)
# MNIST-1D: this project's own default (see benchmarks/results/default_run.md). The rewind
# point (epoch 1) and SWA values come from the project defaults, not from the preset.
_MNIST1D = dict(dataset="mnist1d", model="conv1d", optimizer="sgd", lr=0.1, momentum=0.9,
                batch_size=128, epochs=20, schedule="cosine", weight_decay=5e-4)

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("conv1d", _MNIST1D, "this project's default for MNIST-1D"),
    *[Preset(m, {"model": m, **_LTH}, "Frankle et al. 2020 (LMC), OpenLTH cifar_resnet",
             _SWA_RECIPE) for m in ("resnet20", "resnet32", "resnet56")],
    *[Preset(m, {"model": m, **_LTH}, "Frankle et al. 2020 (LMC), OpenLTH cifar_vgg",
             _SWA_RECIPE) for m in ("vgg11", "vgg13", "vgg16", "vgg19")],
    Preset("resnet18", {"model": "resnet18", **_LTH, "weight_decay": 5e-4},
           "LTH recipe; weight decay 5e-4 is our choice (usual for CIFAR ResNet-18, uncited)",
           _SWA_RECIPE),
    Preset("wrn-28-2", {"model": "wrn-28-2", **_WRN}, "Zagoruyko & Komodakis 2016; SWAMP 2024; 160 epochs, swa_lr, rewind: our choice"),
    Preset("wrn-32-4", {"model": "wrn-32-4", **_WRN}, "Zagoruyko & Komodakis 2016; SWAMP 2024; 160 epochs, swa_lr, rewind: our choice"),
]}


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise SwampError(f"unknown preset '{name}';{did_you_mean(name, PRESETS)} known: "
                         f"{', '.join(PRESETS)} "
                         f"(see `swamp list`)")
    return dict(PRESETS[name].values)


def swa_preset_values(name: str) -> dict[str, Any]:
    """What preset `name` sets on top of its values for a method with SWA."""
    preset_values(name)                                  # the same error for an unknown name
    return dict(PRESETS[name].swa_values)
