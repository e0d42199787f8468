"""Strong lottery tickets (train/scores.py) and moment matching (generative.py)."""

from __future__ import annotations

import math

import pytest
import torch

from swamp.config import TrainSettings
from swamp.core.pruning import keep_exactly
from swamp.data.toy import gaussian_mixture
from swamp.generative import MMDObjective, frechet_distance, mmd2, sample
from swamp.models.generator import MLPGenerator
from swamp.models.small import MLP
from swamp.train.callbacks import Callback
from swamp.train.scores import ScoredNetwork, average_scores, train_scores

torch.set_num_threads(1)
ADAM = TrainSettings(optimizer="adam", lr=0.05, momentum=0.9, weight_decay=0.0,
                     batch_size=64, schedule="cosine")


class WeightsUnchanged(Callback):
    """Fails the fit on the first step at which any frozen tensor moved (bitwise)."""

    def __init__(self, net: ScoredNetwork):
        self.net = net
        self.frozen = {k: v.clone() for k, v in net.net.named_parameters()}
        self.steps = 0

    def on_step_end(self, loop) -> None:
        self.steps += 1
        for k, v in self.net.net.named_parameters():
            assert torch.equal(v, self.frozen[k]), f"{k} changed at step {loop.step}"


def _classifier_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    from swamp.data.bundle import Split
    return Split(x, y)


@pytest.mark.parametrize("init", ["kaiming", "signed-constant"])
def test_weights_never_change_and_scores_do(init):
    net = ScoredNetwork(MLP((8,), 2, hidden=(16,)), 0.3, init=init, seed=1)
    before = net.score_state()
    guard = WeightsUnchanged(net)
    train_scores(net, _classifier_data(), ADAM, order_seed=3, epochs=2, callbacks=[guard])
    assert guard.steps == 2 * (256 // 64)
    after = net.score_state()
    assert all(not torch.equal(before[n], after[n]) for n in net.names)
    if init == "signed-constant":
        w = net.net[1].weight
        assert torch.unique(w.abs()).numel() == 1       # one magnitude, two signs
    # the ticket is the frozen weights times the mask
    sol, mask = net.solution(), net.mask()
    for n in net.names:
        assert torch.equal(sol[n], dict(net.net.named_parameters())[n] * mask[n])


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.05])
def test_mask_has_exact_count(scope, density):
    net = ScoredNetwork(MLP((8,), 3, hidden=(17, 9)), density, scope=scope, seed=2)
    mask = net.mask()
    if scope == "global":
        assert mask.nnz == math.floor(density * mask.numel + 0.5)
    else:
        for n in net.names:
            assert int(mask[n].sum()) == max(1, math.floor(density * mask[n].numel() + 0.5))
    # it is the top |score|: every kept score is at least every pruned one (per group)
    groups = [net.names] if scope == "global" else [[n] for n in net.names]
    for group in groups:
        s = torch.cat([net.scores[n.replace('.', '__')].detach().abs().flatten() for n in group])
        m = torch.cat([mask[n].flatten() for n in group])
        assert s[m].min() >= s[~m].max()


def test_gradients_reach_scores_straight_through():
    net = ScoredNetwork(MLP((8,), 2, hidden=(16,)), 0.5, seed=0)
    x = torch.randn(5, 8)
    net(x).sum().backward()
    w = dict(net.net.named_parameters())
    for n in net.names:
        g = net.scores[n.replace('.', '__')].grad
        assert g is not None and g.abs().sum() > 0
        # pruned weights get gradient too (straight through), the signal edge-popup needs
        assert g[~net.mask()[n]].abs().sum() > 0
        assert w[n].grad is None                        # weights are frozen


def test_mmd_equals_hand_computation():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    bw = (1.0, 2.0)

    def k(a, b):
        d2 = sum((ai - bi) ** 2 for ai, bi in zip(a, b))
        return sum(math.exp(-d2 / (2 * s * s)) for s in bw)
    X, Y = x.tolist(), y.tolist()
    kxx = sum(k(a, b) for i, a in enumerate(X) for j, b in enumerate(X) if i != j) / 6
    kyy = sum(k(a, b) for i, a in enumerate(Y) for j, b in enumerate(Y) if i != j) / 2
    kxy = sum(k(a, b) for a in X for b in Y) / 6
    assert float(mmd2(x, y, bw)) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-6)
    vxx = sum(k(a, b) for a in X for b in X) / 9
    vyy = sum(k(a, b) for a in Y for b in Y) / 4
    assert float(mmd2(x, y, bw, unbiased=False)) == pytest.approx(vxx + vyy - 2 * kxy,
                                                                  rel=1e-6)
    assert float(mmd2(x, x, bw, unbiased=False)) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4000, 3, generator=g, dtype=torch.float64) * 2 + 1
    # closed form for N(0, I) vs N(1, 4I): 3 * 1 + 3 * (1 + 4 - 2 * 2) = 6
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_strong_ticket_generator_beats_random_mask_on_gaussian_mixture():
    train, held = gaussian_mixture(512, seed=0), gaussian_mixture(512, seed=1)
    density = 0.3
    net = ScoredNetwork(MLPGenerator((2,), latent=4, hidden=(64, 64)), density,
                        init="signed-constant", seed=0)
    # a random mask of the same density on the same frozen weights (the project's ranking)
    g = torch.Generator().manual_seed(5)
    random_mask = keep_exactly({n: torch.rand(net.ones[n].shape, generator=g)
                                for n in net.names}, net.ones, net.counts, "global")
    untrained = MLPGenerator((2,), latent=4, hidden=(64, 64))
    untrained.load_state_dict(net.solution(random_mask))
    guard = WeightsUnchanged(net)
    fast = TrainSettings(optimizer="adam", lr=0.1, weight_decay=0.0, batch_size=64)
    train_scores(net, train, fast, order_seed=0, epochs=40, objective=MMDObjective(),
                 callbacks=[guard])
    ticket = MLPGenerator((2,), latent=4, hidden=(64, 64))
    ticket.load_state_dict(net.solution())
    real = held.x
    m_ticket = float(mmd2(sample(ticket, 512, real, seed=9), real))
    m_random = float(mmd2(sample(untrained, 512, real, seed=9), real))
    assert net.mask().nnz == random_mask.nnz
    assert m_ticket < 0.7 * m_random, (m_ticket, m_random)


def test_score_average_is_the_mean():
    a = {"w": torch.tensor([1.0, -3.0])}
    b = {"w": torch.tensor([3.0, 1.0])}
    assert torch.equal(average_scores([a, b])["w"], torch.tensor([2.0, -1.0]))


def test_unknown_init_is_one_line():
    from swamp.errors import SwampError
    with pytest.raises(SwampError, match="`slt_init`"):
        ScoredNetwork(MLP((8,), 2, hidden=(4,)), 0.5, init="xavier")


def test_readme_example_runs(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Strong lottery tickets.*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README", "exec"), {})
    density, acc = map(float, capsys.readouterr().out.split())
    assert abs(density - 0.1) < 1e-3 and acc > 0.15       # above chance (10 classes)
