"""Model sizes as settings (issue 14): --hidden, --residual, --channels."""

from __future__ import annotations

import pytest
import torch

from swamp.app.cli import main
from swamp.config import Settings
from swamp.errors import SwampError
from swamp.models import build_model


def _linear_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_hidden_sets_mlp_widths_and_default_is_unchanged():
    wide = build_model("mlp", (40,), 10, hidden=(500, 300, 300))
    assert _linear_shapes(wide) == [(500, 40), (300, 500), (300, 300), (10, 300)]
    default = build_model("mlp", (40,), 10)
    assert _linear_shapes(default) == [(256, 40), (256, 256), (10, 256)]
    # Parameter names of the built-in size stay those older runs saved.
    assert list(default.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias",
                                          "5.weight", "5.bias"]


def test_residual_adds_skips_exactly_where_widths_match():
    torch.manual_seed(0)
    model = build_model("mlp", (8,), 3, hidden=(16, 16, 16), residual=True)
    x = torch.randn(5, 8)
    blocks = list(model)[1:-1]
    h = x
    for i, block in enumerate(blocks):
        lin = [m for m in block.modules() if isinstance(m, torch.nn.Linear)][0]
        out = torch.relu(lin(h))
        h = out if i == 0 else h + out   # the first layer changes width: no skip
    torch.testing.assert_close(model(x), list(model)[-1](h))


def test_channels_sets_conv1d_layers():
    model = build_model("conv1d", (1, 40), 10, channels=(8, 16, 16, 16))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 16, 16]
    assert [c.stride[1] for c in convs] == [1, 2, 2, 2]
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)


def test_flags_parse_and_hash_only_when_set():
    s = Settings.from_dict({"model": "mlp", "hidden": "500,500", "residual": True})
    assert s.model.hidden == [500, 500] and s.model.residual
    base = Settings.from_dict({"model": "mlp"})
    assert s.run_hash() != base.run_hash()
    # An empty list is the default: the hash of a run that never set it is unchanged.
    assert Settings.from_dict({"model": "mlp", "hidden": ""}).run_hash() == base.run_hash()


@pytest.mark.parametrize("values, words", [
    ({"model": "conv1d", "hidden": "64"}, "`hidden` sets the widths of model mlp"),
    ({"model": "resnet20", "residual": True}, "`residual` adds skip connections"),
    ({"model": "mlp", "channels": "8,8"}, "`channels` sets the convolutions"),
    ({"model": "mlp", "hidden": "64,0"}, "at least 1"),
    ({"model": "mlp", "hidden": "64,x"}, "expects list[int]"),
])
def test_bad_sizes_are_one_line(values, words):
    with pytest.raises(SwampError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Settings.from_dict(values).resolved()


def test_run_with_hidden_trains_that_model(tmp_path, capsys):
    rc = main(["run", "--dataset", "synthetic", "--model", "mlp", "--hidden", "24,24",
               "--residual", "--levels", "1", "--epochs", "2", "--rewind-epochs", "0",
               "--particles", "1", "--method", "imp", "--out", str(tmp_path)])
    assert rc == 0
    from safetensors.torch import load_file
    run = next(tmp_path.iterdir())
    weights = load_file(run / "level_1" / "solution.safetensors")
    assert {tuple(v.shape) for k, v in weights.items() if k.endswith("weight")} >= {(24, 24)}
