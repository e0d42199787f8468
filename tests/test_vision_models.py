"""timm and torchvision models through swamp, against the real packages.

PyPI's torchvision wheels are CUDA builds whose compiled ops do not load beside the CPU
torch this suite pins ('operator torchvision::nms does not exist'), and timm imports
torchvision. So these tests skip in the main suite and run in a virtual environment of their
own, made by `tests/vision.sh` (the README's test command runs it), where the torch release
those wheels were built for runs on the CPU. There SWAMP_REQUIRE_VISION=1 turns a missing
package into a failure, so that the second stage cannot pass by skipping.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from swamp.app.cli import main
from swamp.core.masks import Mask
from swamp.models import build_model
from swamp.models.sources import default_prunable, load_weights


def _need(module: str):
    if os.environ.get("SWAMP_REQUIRE_VISION") == "1":
        return __import__(module)      # the vision stage: a missing package fails
    return pytest.importorskip(module)


@pytest.fixture
def torchvision():
    tv = _need("torchvision")
    import torchvision.ops   # noqa: F401  (the compiled ops load: the wheel matches torch)
    return tv


@pytest.fixture
def timm():
    return _need("timm")


def _conv_and_linear_weights(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_torchvision_resnet_prunes_its_convs_and_keeps_head_and_norms_dense(torchvision):
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", (3, 32, 32), 10)
    assert isinstance(model, torchvision.models.ResNet)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    prunable = default_prunable(model, "torchvision")
    assert prunable == [n for n in _conv_and_linear_weights(model) if n != "fc.weight"]
    assert not any("bn" in n or "downsample.1" in n for n in prunable)


def test_timm_model_takes_its_channels_and_keeps_its_classifier_dense(timm):
    torch.manual_seed(0)
    model = build_model("timm:resnet10t", (1, 16, 16), 5)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 5)
    head = [n for n, m in model.named_modules() if m is model.get_classifier()]
    prunable = default_prunable(model, "timm")
    assert prunable == [n for n in _conv_and_linear_weights(model)
                        if n != f"{head[0]}.weight"]
    vit = build_model("timm:test_vit", (3, 32, 32), 4)
    names = default_prunable(vit, "timm")
    assert names and all(not n.startswith("head") and "norm" not in n for n in names)
    assert "patch_embed.proj.weight" in names and "blocks.0.attn.qkv.weight" in names


def test_swamp_prune_a_torchvision_model_from_its_weights_file(torchvision, tmp_path,
                                                               capsys):
    torch.manual_seed(1)
    dense_model = torchvision.models.resnet18(num_classes=10)
    dense = {k: v.clone() for k, v in dense_model.state_dict().items()}
    save_file(dense, str(tmp_path / "resnet18.safetensors"))
    out = tmp_path / "pruned.safetensors"
    rc = main(["prune", "--model", "torchvision:resnet18", "--num-classes", "10",
               "--weights", str(tmp_path / "resnet18.safetensors"), "--sparsity", "0.9",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    mask = Mask.load(tmp_path / "pruned.mask.safetensors")
    assert mask.names == default_prunable(dense_model, "torchvision")
    assert mask.nnz == math.floor(0.1 * mask.numel + 0.5)       # exact global count
    fresh = torchvision.models.resnet18(num_classes=10)
    fresh.load_state_dict(load_file(str(out)), strict=True)    # any loader reads it
    state = fresh.state_dict()
    for name, tensor in state.items():
        if name in mask:
            assert not tensor[~mask[name]].any()
            assert torch.equal(tensor[mask[name]], dense[name][mask[name]])
        else:                                                   # fc, norms, biases
            assert torch.equal(tensor, dense[name])
    text = capsys.readouterr().out
    dense_line = next(line for line in text.splitlines() if line.startswith("kept dense:"))
    assert "head 2 tensors" in dense_line            # fc.weight and fc.bias
    assert "norm 40 tensors" in dense_line           # 20 BatchNorms: weight and bias


def test_a_timm_torch_checkpoint_is_read_as_weights_only(timm, tmp_path):
    torch.manual_seed(2)
    source = build_model("timm:resnet10t", (3, 16, 16), 3)
    torch.save(source.state_dict(), tmp_path / "net.pt")
    target = build_model("timm:resnet10t", (3, 16, 16), 3)
    load_weights(target, tmp_path / "net.pt")
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def _run(tmp_path, model: str, *extra: str) -> tuple[int, object]:
    out = tmp_path / "runs"
    rc = main(["run", "--model", model, "--dataset", "synthetic-image", "--data-size", "96",
               "--epochs", "1", "--levels", "1", "--batch-size", "32", "--rewind-epochs", "0",
               "--device", "cpu", "--quiet", "--out", str(out), *extra])
    return rc, out


@pytest.mark.parametrize("engine", ["sequential", "vectorised", "distributed"])
def test_a_torchvision_model_fine_tunes_sparse_in_every_engine(torchvision, tmp_path, engine,
                                                              capsys):
    """A pretrained start (`--weights`), SWAMP particles, and the level's pruned weights stay
    zero in the particles and the solution, whatever the engine."""
    torch.manual_seed(3)
    start = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    save_file(start.state_dict(), str(tmp_path / "start.safetensors"))
    extra = ["--processes", "2"] if engine == "distributed" else []
    rc, out = _run(tmp_path, "torchvision:resnet18", "--method", "swamp", "--particles", "2",
                   "--weights", str(tmp_path / "start.safetensors"), "--engine", engine, *extra)
    assert rc == 0, capsys.readouterr().err
    (level,) = out.glob("swamp-*/level_1")
    mask = Mask.load(level / "mask.safetensors")
    assert "fc.weight" not in mask.names and 0 < mask.density < 1
    for name in ["solution", "particle_0", "particle_1"]:
        state = load_file(str(level / f"{name}.safetensors"))
        for n in mask.names:
            assert not state[n][~mask[n]].any(), (name, n)


def test_a_timm_model_prunes_gradually_with_squarehead(timm, tmp_path, capsys):
    rc, out = _run(tmp_path, "timm:resnet10t", "--method", "imp", "--engine", "sequential",
                   "--prune-schedule", "gradual", "--ramp", "cubic", "--distill", "squarehead")
    assert rc == 0, capsys.readouterr().err
    (level,) = out.glob("imp-*/level_1")
    mask = Mask.load(level / "mask.safetensors")
    model = build_model("timm:resnet10t", (3, 8, 8), 10)
    assert mask.names == default_prunable(model, "timm")
    solution = load_file(str(level / "solution.safetensors"))
    for n in mask.names:
        assert not solution[n][~mask[n]].any()
