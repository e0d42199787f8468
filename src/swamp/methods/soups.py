"""Greedy model soups (Wortsman et al. 2022): a selection among a level's particles."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

StateDict = dict[str, torch.Tensor]


def greedy_soup(particles: Sequence[StateDict], val_acc: Sequence[float],
                make: Callable[[list[int]], StateDict], score_val: Callable[[StateDict], float]
                ) -> tuple[StateDict, list[int], float]:
    """Model-soup greedy selection (Wortsman et al. 2022) on validation accuracy only.

    Particles are tried from the best validation accuracy down; one joins the soup only if
    the soup's validation accuracy does not drop with it (after `make`: average, mask, BN
    recompute), i.e. if it is >= the current soup's (ties join, as in Wortsman et al.).
    `val_acc` are the particles' own validation accuracies.
    Returns (soup state, chosen particle indices in order of joining, soup val accuracy).
    """
    order = sorted(range(len(particles)), key=lambda i: (-val_acc[i], i))
    chosen = [order[0]]
    soup, best = particles[order[0]], val_acc[order[0]]
    for i in order[1:]:
        candidate = make(chosen + [i])
        acc = score_val(candidate)
        if acc >= best:
            chosen.append(i)
            soup, best = candidate, acc
    return soup, chosen, best
