"""Small models for vector and 1-D signal data: mlp and conv1d (the MNIST-1D default)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from swamp.errors import SwampError


class MLP(nn.Sequential):
    """Flatten, then `hidden` ReLU layers, then a linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 hidden: tuple[int, ...] = (256, 256)) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class _Skip(nn.Module):
    """x + f(x): the residual form of one hidden layer."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualMLP(nn.Sequential):
    """The MLP with a skip connection around each hidden layer whose input and output widths
    match (the first layer changes the width, so it has none)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 hidden: tuple[int, ...] = (256, 256)) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            block = nn.Sequential(nn.Linear(width, h), nn.ReLU())
            layers.append(_Skip(block) if h == width else block)
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def conv1d_strides(layers: int) -> tuple[int, ...]:
    """Stride 1 in the first convolution, 2 in the others (the default's 1, 2, 2)."""
    return (1,) + (2,) * (layers - 1)


class Conv1dNet(nn.Module):
    """1-D conv-BN-ReLU stack, then flatten and one linear classifier.

    Default for MNIST-1D (1, 40): 32 channels x 3 layers, kernel 5, strides 1, 2, 2
    (length 40 -> 40 -> 20 -> 10), flatten 32*10 -> linear: 13,802 parameters. Measured on
    MNIST-1D (8000 train, 20 epochs SGD): ~98% test accuracy dense and still ~98% after IMP
    to 91% sparsity (speed: benchmarks/results/default_vs_untuned.md). Wider stacks
    (32-64-64) were no more accurate and 2x slower. Flatten keeps *where* a feature occurred,
    which matters on MNIST-1D.

    Each convolution is an nn.Conv2d with kernel (1, k) over a (C, 1, L) view of the signal:
    the same function, parameter count and initial values (the weights are (C_out, C_in, 1, k)
    instead of (C_out, C_in, k)), but in channels_last, which PyTorch offers for 4-D tensors
    only, oneDNN's kernels and BatchNorm run this net 1.3-1.4x faster on CPU than its 1-D
    ones (benchmarks/results/particles.md, "channels_last" rows). The product switches
    channels_last on by itself (swamp.cpu); in the default contiguous layout the 2-D form is as
    fast as Conv1d.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 channels: tuple[int, ...] = (32, 32, 32), strides: tuple[int, ...] = (1, 2, 2),
                 kernel: int = 5) -> None:
        super().__init__()
        if len(input_shape) == 1:  # plain vectors: treat as one channel
            input_shape = (1, input_shape[0])
        if len(input_shape) != 2:
            raise SwampError(f"model 'conv1d' needs 1-D signals of shape (C, L) or (L,), got "
                             f"{tuple(input_shape)}; use a 2-D model (resnet20, vgg11, ...) or 'mlp'")
        c_in, length = input_shape
        self.in_shape = (c_in, length)
        layers: list[nn.Module] = []
        for c, s in zip(channels, strides):
            layers += [nn.Conv2d(c_in, c, (1, kernel), stride=(1, s), padding=(0, kernel // 2),
                                 bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
            length = (length + 2 * (kernel // 2) - kernel) // s + 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_shape[0], 1, self.in_shape[1])
        return self.classifier(self.features(x).flatten(1))   # (C, 1, L) flattens as (C, L)


# ---- token models for the text datasets of data/files.py (issue 12) ------------------------

class BagOfWords(nn.Module):
    """Text classification: the mean embedding of an example's tokens (padding left out by
    its attention mask), one hidden ReLU layer, a linear classifier.

    Input (B, 2, L) int64 as data/files.py makes it: [:, 0] token ids, [:, 1] attention mask.
    The embedding stays dense (prunable tensors are conv and linear weights).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, vocab_size: int,
                 dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        if len(input_shape) != 2 or input_shape[0] != 2:
            raise SwampError(f"model 'bow' takes token ids and attention masks (2, L), got "
                             f"inputs {tuple(input_shape)}; use a text dataset (csv:FILE, "
                             f"jsonl:FILE)")
        self.embedding = nn.Embedding(vocab_size, dim)
        self.hidden = nn.Linear(dim, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1].unsqueeze(-1).to(self.embedding.weight.dtype)
        mean = (self.embedding(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.classifier(torch.relu(self.hidden(mean)))


class CausalConvLM(nn.Module):
    """Causal language model: token embedding, residual causal 1-D convolutions (each
    position sees itself and the `kernel - 1` before it, by left padding), a linear head
    over the vocabulary. Input (B, T) int64 ids, output (B, T, V) logits."""

    def __init__(self, input_shape: tuple[int, ...], vocab_size: int, dim: int = 64,
                 layers: int = 2, kernel: int = 3) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise SwampError(f"model 'causal-conv' takes blocks of token ids (T,), got inputs "
                             f"{tuple(input_shape)}; use a text:FILE dataset")
        self.kernel = kernel
        self.embedding = nn.Embedding(vocab_size, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel) for _ in range(layers))
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x).transpose(1, 2)                   # (B, D, T)
        for conv in self.convs:
            h = h + torch.relu(conv(nn.functional.pad(h, (self.kernel - 1, 0))))
        return self.head(h.transpose(1, 2))                     # (B, T, V)
