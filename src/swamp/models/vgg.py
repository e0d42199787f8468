"""VGG with BatchNorm, CIFAR variant (as in the IMP literature, e.g. OpenLTH): 3x3 conv-BN-ReLU
stack with 2x2 max-pools, global average pooling, one linear classifier (512 -> classes)."""

from __future__ import annotations

import torch
import torch.nn as nn

M = 0  # marks a max-pool in a plan
VGG_PLANS: dict[int, list[int]] = {
    11: [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512],
    13: [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512],
    16: [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512],
    19: [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in VGG_PLANS[depth]:
            if v == M:
                # ceil_mode: a 1-pixel map stays 1 pixel, so tiny test images pass too;
                # identical to floor mode on the even sizes of 32x32 CIFAR.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                # No conv bias: the following BN's shift makes it redundant.
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))
