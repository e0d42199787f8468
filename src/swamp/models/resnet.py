"""Residual networks for CIFAR-sized images (any (C, H, W) works: global average pooling).

- resnet20/32/56: He et al. 2016, section 4.2: 3 stages of n basic blocks, 16/32/64 channels,
  depth 6n+2, option-A shortcuts (identity; stride-2 subsampling + zero-padded channels),
  so shortcuts add no parameters (resnet20 = 269,722 params for 10 classes).
- resnet18: the usual CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, [2, 2, 2, 2] basic
  blocks of 64..512 channels, 1x1 conv + BN (option-B) shortcuts.
- wrn-D-K: Zagoruyko & Komodakis 2016, pre-activation blocks, widths 16K/32K/64K,
  n blocks per stage, 1x1 conv shortcuts where the shape changes, no dropout. Depth
  D = 6n + 4 (their convention, counting the shortcut convs: wrn-28-2 has n = 4) or
  D = 6n + 2 (CIFAR-ResNet convention, as in the SWAMP paper's wrn-32-4: n = 5).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN (+ shortcut) then ReLU. Shortcut: 'A' (parameter-free) or 'B' (1x1 conv)."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in
        self.option_a = shortcut == "A" and (stride != 1 or c_in != c_out)
        self.shortcut: nn.Module = nn.Identity()
        if shortcut == "B" and (stride != 1 or c_in != c_out):
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.option_a:  # subsample like the strided conv (ceil(H/2)), zero-pad new channels
            sc = x[:, :, ::self.stride, ::self.stride]
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            sc = self.shortcut(x)
        return F.relu(out + sc)


class ResNet(nn.Module):
    """3x3 stem, stages of BasicBlocks (first block of each later stage strides by 2), GAP, linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks: list[int],
                 shortcut: str) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1, shortcut))
                c = w
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def cifar_resnet(depth: int, in_channels: int, num_classes: int) -> ResNet:
    n = (depth - 2) // 6
    return ResNet(in_channels, num_classes, [16, 32, 64], [n, n, n], shortcut="A")


def resnet18(in_channels: int, num_classes: int) -> ResNet:
    return ResNet(in_channels, num_classes, [64, 128, 256, 512], [2, 2, 2, 2], shortcut="B")


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
                         if (stride != 1 or c_in != c_out) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        # A projection shortcut sees the pre-activated input, as in the reference code.
        return out + (self.shortcut(a) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 4) // 6 if (depth - 4) % 6 == 0 else (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = conv3x3(in_channels, 16)
        layers: list[nn.Module] = []
        c = 16
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(WideBlock(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
