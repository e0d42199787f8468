import torch
from torch import nn

from swamp.core.averaging import RunningAverage, average_states, interpolate, recompute_batchnorm
from swamp.data import Split


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def test_average_leaves_integer_buffers_alone():
    a, b = bn_model().state_dict(), bn_model().state_dict()
    b = {k: (v + 1 if v.is_floating_point() else v + 10) for k, v in b.items()}
    a["1.num_batches_tracked"].fill_(3)
    mean = average_states([a, b])
    assert mean["1.num_batches_tracked"].dtype == torch.int64
    assert mean["1.num_batches_tracked"].item() == 3   # copied, not averaged to 8
    assert torch.allclose(mean["0.weight"], a["0.weight"] + 0.5)
    assert torch.allclose(interpolate(a, b, 0.25)["0.weight"], a["0.weight"] + 0.25)


def test_running_average_equals_mean():
    states = [{"w": torch.full((3,), float(i)), "n": torch.tensor(i)} for i in range(5)]
    avg = RunningAverage()
    for s in states:
        avg.update(s)
    out = avg.value()
    assert torch.allclose(out["w"], torch.full((3,), 2.0)) and out["n"].item() == 4


def test_batchnorm_is_recomputed_from_training_data():
    model = bn_model()
    x = torch.randn(300, 4) * 3 + 1
    with torch.no_grad():
        model[1].running_mean.fill_(123.0)
        model[1].running_var.fill_(456.0)
        features = model[0](x)
    recompute_batchnorm(model, Split(x, torch.zeros(300, dtype=torch.long)), batch_size=100)
    # cumulative average over 3 equal batches == the mean over the data
    assert torch.allclose(model[1].running_mean, features.mean(0), atol=1e-5)
    assert model.training  # mode restored
