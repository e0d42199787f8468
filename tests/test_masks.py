"""Mask invariants: selection, exact zeroing of weights and optimiser state, files."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from swamp.errors import SwampError
from swamp.core.masks import Mask, select_prunable


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv1d = nn.Conv1d(2, 2, 1)  # unused in forward; still a Conv
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def random_mask(model: nn.Module, density: float, seed: int = 0) -> Mask:
    g = torch.Generator().manual_seed(seed)
    base = Mask.ones(model, ["fc.weight", "conv.weight", "conv1d.weight"])
    return Mask({n: torch.rand(t.shape, generator=g) < density for n, t in base.items()})


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


# -- selection -------------------------------------------------------------------------------


def test_select_default_is_conv_and_linear_weights(net: Net) -> None:
    assert select_prunable(net) == ["conv.weight", "conv1d.weight", "fc.weight"]


def test_select_include_replaces_default_and_exclude_removes(net: Net) -> None:
    assert select_prunable(net, include=["bn.*", "fc.weight"]) == [
        "bn.weight",
        "bn.bias",
        "fc.weight",
    ]
    assert select_prunable(net, exclude=["fc.*"]) == ["conv.weight", "conv1d.weight"]
    assert select_prunable(net, include=["*.weight"], exclude=["bn.*"]) == [
        "conv.weight",
        "conv1d.weight",
        "fc.weight",
    ]


def test_select_errors(net: Net) -> None:
    with pytest.raises(SwampError, match="no prunable tensors"):
        select_prunable(net, exclude=["*"])
    with pytest.raises(SwampError, match="'layer9.*'"):
        select_prunable(net, include=["layer9.*"])
    with pytest.raises(SwampError, match="no prunable tensors"):
        select_prunable(nn.Sequential(nn.BatchNorm1d(3)))


def test_select_shared_weight_once() -> None:
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    assert select_prunable(nn.Sequential(a, b)) == ["0.weight"]


# -- statistics and set operations -------------------------------------------------------------


def test_statistics_and_set_operations() -> None:
    a = Mask({"x": torch.tensor([True, False, True, True]), "y": torch.tensor([[False, True]])})
    b = Mask({"x": torch.tensor([True, True, False, True]), "y": torch.tensor([[False, False]])})
    assert (a.nnz, a.numel, a.density) == (4, 6, 4 / 6)
    assert a.per_layer() == {"x": (3, 4), "y": (1, 2)}
    assert a.names == ["x", "y"] and set(a) == {"x", "y"} and len(a) == 2
    assert a.intersect(b) == Mask({"x": torch.tensor([1, 0, 0, 1]), "y": torch.tensor([[0, 0]])})
    assert a.union(b) == Mask({"x": torch.tensor([1, 1, 1, 1]), "y": torch.tensor([[0, 1]])})
    assert a != b and a == a.clone() and a == a.to("cpu")
    c = a.clone()
    c["x"][1] = True  # a clone owns its tensors
    assert not a["x"][1]
    with pytest.raises(SwampError, match="same model"):
        a.intersect(Mask({"x": torch.ones(4, dtype=torch.bool)}))


def test_mask_for_other_model_is_refused(net: Net) -> None:
    with pytest.raises(SwampError, match="different model"):
        Mask({"nope.weight": torch.ones(3, dtype=torch.bool)}).apply_to_module(net)
    with pytest.raises(SwampError, match="shape"):
        Mask({"fc.weight": torch.ones(3, dtype=torch.bool)}).apply_to_module(net)


# -- applying ----------------------------------------------------------------------------------


def test_apply_to_module_zeros_exactly_the_masked_entries(net: Net) -> None:
    mask = random_mask(net, 0.5)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert all((before[n] != 0).all() for n in mask.names)  # so zeros below come from the mask
    mask.apply_to_module(net)
    after = dict(net.named_parameters())
    for n, p in after.items():
        if n in mask:
            m = mask[n]
            assert (p[~m] == 0).all()
            assert torch.equal(p[m], before[n][m])
        else:  # biases and BN stay untouched
            assert torch.equal(p, before[n])


def test_apply_to_state_dict_returns_copy(net: Net) -> None:
    mask = random_mask(net, 0.5)
    sd = net.state_dict()
    sd["fc.weight"][~mask["fc.weight"]] = float("nan")  # masking must clear NaN too
    keep = sd["fc.weight"].clone()
    out = mask.apply_to_state_dict(sd)
    assert out is not sd and out.keys() == sd.keys()
    assert (out["fc.weight"][~mask["fc.weight"]] == 0).all()
    assert torch.equal(out["fc.weight"][mask["fc.weight"]], keep[mask["fc.weight"]])
    assert torch.equal(sd["fc.weight"].isnan(), keep.isnan())  # input untouched
    assert out["fc.bias"] is sd["fc.bias"]
    with pytest.raises(SwampError, match="lacks"):
        mask.apply_to_state_dict({"fc.weight": sd["fc.weight"]})


def _step(net: Net, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 2, 4, 4, generator=g), torch.randint(0, 5, (8,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


@pytest.mark.parametrize(
    "make_opt, keys",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), {"momentum_buffer"}),
        (
            lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
            {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
        ),
    ],
)
def test_apply_to_optimizer_zeros_state_at_masked_entries(net: Net, make_opt, keys) -> None:
    mask = random_mask(net, 0.5)
    opt = make_opt(net.parameters())
    _step(net, opt, 0)
    params = dict(net.named_parameters())
    before = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    mask.apply_to_optimizer(opt, net)
    for n in ["conv.weight", "fc.weight"]:  # conv1d gets no gradient, hence no state
        state, old = opt.state[params[n]], before[params[n]]
        assert keys <= state.keys()
        for k in keys:
            assert (old[k][~mask[n]] != 0).any()  # so the zeros below come from the mask
            assert (state[k][~mask[n]] == 0).all()
            assert torch.equal(state[k][mask[n]], old[k][mask[n]])
        for k in state.keys() - keys:  # e.g. Adam's step
            assert torch.equal(state[k], old[k])
    for p in ["conv.bias", "bn.weight", "fc.bias"]:  # unmasked parameters keep their state
        for k, v in opt.state[params[p]].items():
            assert torch.equal(v, before[params[p]][k])


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=5e-4),
    ],
)
@pytest.mark.parametrize("reapply", [True, False])
def test_bound_mask_keeps_pruned_weights_zero_through_training(
    net: Net, make_opt, reapply: bool
) -> None:
    mask = random_mask(net, 0.3)
    opt = make_opt(net.parameters())
    bound = mask.bind(net, opt)
    bound.apply_()  # the ticket: theta ⊙ m
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    params = dict(net.named_parameters())
    for step in range(20):
        _step(net, opt, step)
        if reapply:
            bound.apply_()
    for n in ["conv.weight", "fc.weight"]:
        m, p = mask[n], params[n].detach()
        assert (p[m] != start[n][m]).float().mean() > 0.9  # kept weights do train
        if reapply:
            assert (p[~m] == 0).all()
            for v in opt.state[params[n]].values():
                if v.shape == p.shape:
                    assert (v[~m] == 0).all()
        else:  # the control: momentum/Adam and weight decay revive pruned weights
            assert (p[~m] != 0).float().mean() > 0.5


def test_bound_mask_follows_optimizer_load_state_dict(net: Net) -> None:
    mask = random_mask(net, 0.3)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    bound = mask.bind(net, opt)
    _step(net, opt, 0)
    bound.apply_()
    saved = copy.deepcopy(opt.state_dict())  # as if read back from a checkpoint
    _step(net, opt, 1)
    fc = dict(net.named_parameters())["fc.weight"]
    old_buf = opt.state[fc]["momentum_buffer"]
    opt.load_state_dict(saved)
    buf = opt.state[fc]["momentum_buffer"]
    assert buf is not old_buf  # new state tensors that the bound mask must pick up
    buf.fill_(1.0)
    bound.apply_()
    assert (buf[~mask["fc.weight"]] == 0).all() and (buf[mask["fc.weight"]] == 1).all()


# -- files -------------------------------------------------------------------------------------


def test_save_load_round_trip(net: Net, tmp_path) -> None:
    mask = random_mask(net, 0.4)
    path = tmp_path / "mask.safetensors"
    mask.save(path)
    raw = load_file(str(path))
    assert set(raw) == set(mask.names) and all(t.dtype == torch.bool for t in raw.values())
    loaded = Mask.load(path)
    assert loaded == mask and loaded.names == mask.names  # order = pruning tie-break order
    assert mask.names != sorted(mask.names)
    assert Mask.load(str(path), device="cpu") == mask
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary


def test_load_missing_or_corrupt_file_raises(tmp_path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(SwampError, match="missing.safetensors"):
        Mask.load(missing)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(SwampError, match="corrupt.safetensors"):
        Mask.load(corrupt)
    floats = tmp_path / "floats.safetensors"
    save_file({"w": torch.ones(3)}, str(floats))
    with pytest.raises(SwampError, match="not a mask"):
        Mask.load(floats)
