import math

import pytest
import torch
from torch import nn

from swamp.config import TrainSettings
from swamp.data import Split
from swamp.errors import SwampError
from swamp.core.masks import Mask, select_prunable
from swamp.store import save_state
from swamp.training import BatchOrder, Schedule, derive_seed, train_steps


def toy_split(n=256, d=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return Split(x, y.clamp(max=classes - 1))


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def test_derive_seed_depends_on_every_part():
    seeds = {derive_seed(0, "order", lvl, p) for lvl in range(3) for p in range(4)}
    assert len(seeds) == 12
    assert derive_seed(0, "order", 1, 2) == derive_seed(0, "order", 1, 2)
    assert derive_seed(1, "order", 1, 2) != derive_seed(0, "order", 1, 2)


def test_batch_orders_differ_by_seed_and_cover_every_example():
    a = BatchOrder(100, 10, seed=1, device=torch.device("cpu"))
    b = BatchOrder(100, 10, seed=2, device=torch.device("cpu"))
    epoch_a = torch.cat([a.batch(s) for s in range(10)])
    epoch_b = torch.cat([b.batch(s) for s in range(10)])
    assert sorted(epoch_a.tolist()) == list(range(100))
    assert not torch.equal(epoch_a, epoch_b)
    # The same seed gives the same order, also when started mid-way (resumed at T0).
    c = BatchOrder(100, 10, seed=1, device=torch.device("cpu"))
    assert torch.equal(c.batch(13), BatchOrder(100, 10, 1, torch.device("cpu")).batch(13))


def test_schedule_swa_anneals_then_holds():
    t = TrainSettings(epochs=4, batch_size=10, lr=0.1, swa_lr=0.01, swa_start=0.5)
    s = Schedule.build(t, 100, swa=True)
    assert (s.steps_per_epoch, s.total, s.swa_start) == (10, 40, 20)
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(20) == s.lr_at(39) == pytest.approx(0.01)
    assert s.lr_at(10) == pytest.approx(0.055)
    # averaged at the ends of epochs 3 and 4 only
    assert [i for i in range(40) if s.averages_after(i)] == [29, 39]
    plain = Schedule.build(t, 100, swa=False)
    assert plain.lr_at(39) < 0.001 and not any(plain.averages_after(i) for i in range(40))


def test_rewind_point_beyond_training_is_refused():
    with pytest.raises(SwampError, match="rewind point"):
        Schedule.build(TrainSettings(epochs=2, batch_size=10, rewind_iters=25), 100, swa=False)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_through_momentum_and_weight_decay(optimizer):
    model = toy_model()
    names = select_prunable(model)
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(model.state_dict()[n].shape, generator=g) > 0.5 for n in names})
    mask.apply_to_module(model)
    before = {n: model.state_dict()[n].clone() for n in names}
    t = TrainSettings(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=0.01,
                      optimizer=optimizer)
    sched = Schedule.build(t, 256, swa=False)
    train_steps(model, mask, toy_split(), sched, t, start=0, stop=sched.total, order_seed=1)
    for n in names:
        w = model.state_dict()[n]
        assert torch.all(w[~mask[n]] == 0)
        assert not torch.equal(w[mask[n]], before[n][mask[n]])  # the kept weights trained


def test_saving_a_checkpoint_never_changes_live_training(tmp_path):
    t = TrainSettings(epochs=2, batch_size=32, lr=0.1)
    sched = Schedule.build(t, 256, swa=True)
    plain = toy_model()
    train_steps(plain, None, toy_split(), sched, t, start=0, stop=sched.total, order_seed=3)
    saved = toy_model()
    train_steps(saved, None, toy_split(), sched, t, start=0, stop=sched.total, order_seed=3,
                on_step=lambda step: save_state(tmp_path / "ckpt.safetensors",
                                                saved.state_dict()))
    for a, b in zip(plain.state_dict().values(), saved.state_dict().values()):
        assert torch.equal(a, b)


def test_swa_returns_the_mean_of_epoch_end_weights():
    t = TrainSettings(epochs=4, batch_size=32, lr=0.1, swa_start=0.5)
    sched = Schedule.build(t, 256, swa=True)
    # Record the epoch-end weights by training the same particle step by step.
    snapshots = []
    model = toy_model()
    train_steps(model, None, toy_split(), sched, t, start=0, stop=sched.total, order_seed=5,
                on_step=lambda done: snapshots.append(
                    {k: v.clone() for k, v in model.state_dict().items()})
                if sched.averages_after(done - 1) else None)
    result = train_steps(toy_model(), None, toy_split(), sched, t, start=0, stop=sched.total,
                         order_seed=5)
    assert result.averaged == len(snapshots) == 2
    for k, v in result.state.items():
        assert torch.allclose(v, (snapshots[0][k] + snapshots[1][k]) / 2, atol=1e-6)


def test_nan_loss_is_a_clear_error():
    t = TrainSettings(epochs=1, batch_size=32, lr=0.1, rewind_epochs=0)
    sched = Schedule.build(t, 256, swa=False)
    split = toy_split()
    split.x[3, 0] = math.nan
    with pytest.raises(SwampError, match="loss became nan"):
        train_steps(toy_model(), None, split, sched, t, start=0, stop=sched.total, order_seed=0)
