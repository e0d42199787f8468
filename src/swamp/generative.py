"""Moment matching for generators: MMD with a mixture of Gaussian kernels, and the Frechet
distance between feature statistics (the FID formula on any fixed network's features).

Both are small enough to write here in torch (no extra dependency): MMD is a few matrix
products, the Frechet distance's matrix square root goes through a symmetric eigen-
decomposition (`torch.linalg.eigh`), which is exact for the symmetric PSD product used.
"""

from __future__ import annotations

from typing import Sequence

import torch

BANDWIDTHS = (0.1, 0.5, 1.0, 2.0, 5.0)   # relative to the data's scale (median heuristic free)


def kernel(a: torch.Tensor, b: torch.Tensor, bandwidths: Sequence[float] = BANDWIDTHS
           ) -> torch.Tensor:
    """Sum over sigma of exp(-|a_i - b_j|^2 / (2 sigma^2)); a (..., n, d), b (..., m, d)."""
    d2 = (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)      # exact, no cancellation
    return sum(torch.exp(-d2 / (2.0 * s * s)) for s in bandwidths)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = BANDWIDTHS,
         unbiased: bool = True) -> torch.Tensor:
    """Squared MMD between samples x (..., n, d) and y (..., m, d) (leading dims batched).

    Unbiased: the U-statistic (diagonals of the within-sample kernels left out); else the
    V-statistic (mean of all kernel entries).
    """
    kxx, kyy, kxy = kernel(x, x, bandwidths), kernel(y, y, bandwidths), kernel(x, y, bandwidths)
    n, m = x.shape[-2], y.shape[-2]
    if unbiased:
        sxx = (kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
        syy = (kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean((-1, -2)), kyy.mean((-1, -2))
    return sxx + syy - 2.0 * kxy.mean((-1, -2))


# Kernel widths of a run, as multiples of the data's root-mean-square distance between two
# points (sqrt(2 * total variance)): scale-free, like the median heuristic, without a
# pass over pairs. The widest (8x) keeps a gradient for samples far from the data (a ticket
# whose samples drifted got none from narrow kernels: the first version of benchmarks/slt.py).
BANDWIDTH_FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0, 8.0)


def bandwidths_for(x: torch.Tensor) -> tuple[float, ...]:
    """The kernel widths of a run on data `x` (n, ...): BANDWIDTH_FACTORS times its RMS
    pairwise distance."""
    flat = x.flatten(1).double()
    scale = float((2.0 * flat.var(0).sum()).sqrt()) or 1.0
    return tuple(round(f * scale, 6) for f in BANDWIDTH_FACTORS)


def is_generative(model: torch.nn.Module) -> bool:
    """Whether a model is a generator (trained on MMD, scored by generative metrics)."""
    return bool(getattr(model, "generative", False))


class MMDObjective:
    """The training loss of a generator: MMD^2 between its outputs and the real batch.

    A generator in this project takes the real batch only for its size and shape (it draws
    its own noise), so the loop's usual (outputs, x, y) call carries both samples. Per
    replica, as every objective: outputs (N, B, ...) against x (N, B, ...).
    """

    captures: tuple[str, ...] = ()

    def __init__(self, bandwidths: Sequence[float] = BANDWIDTHS):
        self.bandwidths = tuple(bandwidths)

    def __call__(self, outputs, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fake = outputs.logits
        n, b = fake.shape[:2]
        return mmd2(fake.reshape(n, b, -1).float(), x.reshape(n, b, -1).float(),
                    self.bandwidths, unbiased=False)

    def __repr__(self) -> str:
        return f"MMDObjective(bandwidths={self.bandwidths})"


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(a)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r^1/2 S_f S_r^1/2)^1/2), features (n, d).
    (tr sqrt(S_r S_f) = tr sqrt(S_r^1/2 S_f S_r^1/2): a symmetric PSD root, so eigh.)"""
    r, f = real.double(), fake.double()
    mu_r, mu_f = r.mean(0), f.mean(0)
    s_r, s_f = torch.cov(r.T).reshape(r.shape[1], -1), torch.cov(f.T).reshape(f.shape[1], -1)
    root = _sqrtm_psd(s_r)
    cross = _sqrtm_psd(root @ s_f @ root)
    return float((mu_r - mu_f).pow(2).sum() + torch.trace(s_r + s_f - 2 * cross))


@torch.no_grad()
def sample(generator: torch.nn.Module, n: int, like: torch.Tensor, seed: int = 0
           ) -> torch.Tensor:
    """n samples from a generator (eval mode), its noise drawn from a seeded RNG."""
    was = generator.training
    generator.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = generator(like[:1].expand(n, *like.shape[1:]))
    generator.train(was)
    return out
