"""Model registry: every model builds and trains at small shapes; exact CIFAR parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from swamp.errors import SwampError
from swamp.models import build_model, list_models, model_description
from swamp.models.common import init_weights

SMALL_IMAGE = (3, 16, 16)
IMAGE_MODELS = ["resnet20", "resnet32", "resnet56", "resnet18", "vgg11", "vgg13", "vgg16", "vgg19",
                "wrn-16-2", "wrn-10-1"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    torch.nn.functional.cross_entropy(out, torch.arange(x.shape[0]) % num_classes).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_registry_lists_every_model_and_the_wrn_pattern():
    names = list_models()
    assert set(IMAGE_MODELS[:-2]) | {"mlp", "conv1d", "mlp-generator", "wrn-D-K", "bow",
                                     "causal-conv"} == set(names)
    assert all(model_description(n) for n in names)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_forward_backward_on_small_images(name):
    torch.manual_seed(0)
    model = build_model(name, SMALL_IMAGE, 7)
    _forward_backward(model, torch.randn(3, *SMALL_IMAGE), 7)


@pytest.mark.parametrize("name", ["resnet20", "vgg19", "wrn-10-1", "resnet18"])
def test_image_models_take_tiny_and_odd_sizes(name):
    # Global average pooling (and ceil-mode max-pool in VGG) make any (C, H, W) work,
    # including the 8x8 synthetic images and 1-channel 28x28 MNIST.
    for shape in [(3, 8, 8), (1, 28, 28), (2, 7, 9)]:
        build_model(name, shape, 4)(torch.randn(2, *shape)).sum().backward()


@pytest.mark.parametrize("shape", [(1, 40), (3, 16, 16), (40,)])
def test_mlp_flattens_any_shape(shape):
    _forward_backward(build_model("mlp", shape, 10), torch.randn(4, *shape), 10)


def test_conv1d_on_signals_and_plain_vectors():
    _forward_backward(build_model("conv1d", (1, 40), 10), torch.randn(4, 1, 40), 10)
    _forward_backward(build_model("conv1d", (2, 33), 5), torch.randn(4, 2, 33), 5)
    _forward_backward(build_model("conv1d", (40,), 10), torch.randn(4, 40), 10)


def _conv1d_reference(c_in: int, length: int, classes: int) -> nn.Module:
    """The MNIST-1D CNN written with Conv1d/BatchNorm1d, as conv1d was before its 2-D form."""
    layers: list[nn.Module] = []
    for stride in (1, 2, 2):
        layers += [nn.Conv1d(c_in, 32, 5, stride=stride, padding=2, bias=False),
                   nn.BatchNorm1d(32), nn.ReLU()]
        c_in, length = 32, (length - 1) // stride + 1
    return init_weights(nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * length, classes)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv1d_is_the_1d_cnn_with_the_same_initial_weights(channels_last):
    """conv1d runs as 2-D convolutions of kernel (1, 5) (so that channels_last applies on
    CPU): under the same seed it starts from the same values as the Conv1d stack and computes
    the same function, in training and in evaluation mode, in both memory layouts."""
    torch.manual_seed(7)
    ours = build_model("conv1d", (2, 33), 5)
    torch.manual_seed(7)
    ref = _conv1d_reference(2, 33, 5)
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    ref_names = {"features." + k if not k.startswith("10.") else "classifier" + k[2:]: k
                 for k in ref_state}
    assert set(ref_names) == set(ours_state)
    for name, ref_name in ref_names.items():        # same values; conv weights gain a 1-axis
        assert torch.equal(ours_state[name].flatten(), ref_state[ref_name].flatten())
    if channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    x = torch.randn(16, 2, 33)
    for train in (True, False):
        ours.train(train), ref.train(train)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


# Exact parameter counts at the CIFAR shape (3, 32, 32) with 10 classes. Conv layers have no
# bias (BN follows); each BN has 2C parameters (running stats are buffers, not parameters).
#
# resnet20 (n=3, option A = parameter-free shortcuts):
#   stem 3*16*9 + 32                                                    =     464
#   stage 16: 3 blocks x (2*16*16*9 + 2*32)                             =  14,016
#   stage 32: (16*32*9 + 32*32*9 + 128) + 2 x (2*32*32*9 + 128)        =  51,072
#   stage 64: (32*64*9 + 64*64*9 + 256) + 2 x (2*64*64*9 + 256)        = 203,520
#   fc 64*10 + 10                                                       =     650
#   total                                                               = 269,722  (~0.27M)
# resnet32 (n=5) / resnet56 (n=9): each extra block per stage adds 4,672 / 18,560 / 73,984:
#   269,722 + 2*(4,672 + 18,560 + 73,984) = 464,154;  + 4 x 97,216 more = 853,018 (~0.85M)
# vgg16-bn: conv weights 9*(3*64 + 64*64 + 64*128 + 128*128 + 128*256 + 2*256*256 + 256*512
#   + 5*512*512) = 14,710,464; BN 2*(2*64 + 2*128 + 3*256 + 6*512) = 8,448; fc 5,130
#   total 14,724,042 (~14.7M; OpenLTH's 14,728,266 adds 4,224 conv biases)
# resnet18 (CIFAR stem, option-B 1x1 conv + BN shortcuts): 11,173,962 (~11.17M), the count
#   of the widely used CIFAR ResNet-18 (torchvision's ImageNet one minus the 7x7 stem and
#   with a 512*10 fc).
# wrn-28-2 (n=4, widths 32/64/128, 1x1 shortcuts at the 3 shape changes): 1,467,610 (~1.47M).
EXPECTED_CIFAR_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet56": 853_018,
    "vgg11": 9_228_362,
    "vgg13": 9_413_066,
    "vgg16": 14_724_042,
    "vgg19": 20_035_018,
    "resnet18": 11_173_962,
    "wrn-28-2": 1_467_610,
}


@pytest.mark.parametrize("name,expected", list(EXPECTED_CIFAR_PARAMS.items()))
def test_parameter_counts_at_cifar_shape(name, expected):
    assert n_params(build_model(name, (3, 32, 32), 10)) == expected


def test_wrn_32_4_parameter_count_paper_convention():
    # The SWAMP paper's CIFAR-100 net, depth 6n+2: n = 5 pre-activation blocks per stage,
    # widths 64/128/256, 1x1 shortcut in each stage's first block; ~7.42M parameters.
    def wrn(n: int, k: int, classes: int) -> int:
        total, c_in = 3 * 16 * 9, 16  # stem conv (no BN: blocks are pre-activation)
        for w in (16 * k, 32 * k, 64 * k):
            total += 2 * c_in + c_in * w * 9 + 2 * w + w * w * 9 + c_in * w  # first block
            total += (n - 1) * (4 * w + 2 * w * w * 9)
            c_in = w
        return total + 2 * c_in + c_in * classes + classes  # final BN, fc
    assert wrn(5, 4, 100) == 7_422_260
    assert wrn(4, 2, 10) == EXPECTED_CIFAR_PARAMS["wrn-28-2"]
    assert n_params(build_model("wrn-32-4", (3, 32, 32), 100)) == 7_422_260


@pytest.mark.parametrize("name,k", [*((n, 10) for n in EXPECTED_CIFAR_PARAMS), ("wrn-32-4", 100)])
def test_cifar_models_forward_backward_at_32x32(name, k):
    # Every CIFAR model at its real input size (the tests above mostly use 16x16), batch 2.
    torch.manual_seed(0)
    _forward_backward(build_model(name, (3, 32, 32), k), torch.randn(2, 3, 32, 32), k)


def test_resnet20_count_follows_from_the_formula():
    # Re-derive the option-A count so the hard-coded number cannot silently drift.
    def cifar_resnet(n: int) -> int:
        total = 3 * 16 * 9 + 2 * 16 + 64 * 10 + 10
        c_in = 16
        for w in (16, 32, 64):
            total += c_in * w * 9 + w * w * 9 + 4 * w + (n - 1) * (2 * w * w * 9 + 4 * w)
            c_in = w
        return total
    assert cifar_resnet(3) == EXPECTED_CIFAR_PARAMS["resnet20"]
    assert cifar_resnet(9) == EXPECTED_CIFAR_PARAMS["resnet56"]
    # Option A: no 1x1 convolutions anywhere.
    convs = [m for m in build_model("resnet20", (3, 32, 32), 10).modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)


def test_small_model_counts():
    # mlp at (1, 40): 40*256+256 + 256*256+256 + 256*10+10.
    assert n_params(build_model("mlp", (1, 40), 10)) == 10_496 + 65_792 + 2_570
    # conv1d at (1, 40): convs 1*32*5 + 2*(32*32*5), BN 3*2*32, fc (32*10)*10 + 10 = 13,802.
    assert n_params(build_model("conv1d", (1, 40), 10)) == 160 + 10_240 + 192 + 3_210


def test_standard_initialisation():
    torch.manual_seed(0)
    m = build_model("vgg16", (3, 32, 32), 10)
    conv = m.features[-3]
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (512, 512, 3, 3)
    fan_in = 512 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)  # Kaiming
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # The same global seed reproduces the same initial weights (rewinding relies on it).
    torch.manual_seed(1)
    a = build_model("resnet20", (3, 16, 16), 10).state_dict()
    torch.manual_seed(1)
    b = build_model("resnet20", (3, 16, 16), 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wrn_depth_and_width_are_checked():
    with pytest.raises(SwampError, match="6n\\+4") as e:
        build_model("wrn-30-4", (3, 32, 32), 100)
    assert "\n" not in str(e.value)
    with pytest.raises(SwampError, match="6n\\+4"):
        build_model("wrn-4-2", (3, 32, 32), 10)
    # wrn-32-4 (the SWAMP paper's CIFAR-100 net) counts depth as 6n+2: 5 blocks per stage,
    # one more than wrn-28-4 (6n+4, n=4) has.
    blocks = lambda m: sum(1 for x in m.modules() if type(x).__name__ == "WideBlock")
    assert blocks(build_model("wrn-32-4", (3, 32, 32), 100)) == 15
    assert blocks(build_model("wrn-28-4", (3, 32, 32), 100)) == 12
    with pytest.raises(SwampError, match="width"):
        build_model("wrn-28-0", (3, 32, 32), 10)
    assert n_params(build_model("WRN-16-1", (3, 32, 32), 10)) > 0  # case-insensitive


def test_unknown_model_and_wrong_input_shapes():
    with pytest.raises(SwampError, match=r"unknown model 'resnet99';( did you mean "
                                         r"'[a-z0-9]+'\?)? known: mlp, conv1d") as e:
        build_model("resnet99", (3, 32, 32), 10)
    assert "wrn-D-K" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SwampError, match="'conv1d' needs 1-D signals"):
        build_model("conv1d", (3, 32, 32), 10)
    for name in ("resnet20", "vgg11", "resnet18", "wrn-16-1"):
        with pytest.raises(SwampError, match="needs image inputs of shape \\(C, H, W\\)"):
            build_model(name, (1, 40), 10)
    with pytest.raises(SwampError, match="num_classes"):
        build_model("mlp", (1, 40), 0)
