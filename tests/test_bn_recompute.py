"""BatchNorm statistics of an average: on un-augmented training data (default) or through the
training augmentation (`bn_augment`, as the SWA reference recomputes them)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_settings
from swamp.core.averaging import BN_AUGMENT_SEED, recompute_batchnorm
from swamp.data import Split
from swamp.data.augment import CropFlip
from swamp.errors import SwampError
from swamp.loop import run
from swamp.store import load_state


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _split() -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randn(40, 3, 8, 8, generator=g), torch.zeros(40, dtype=torch.long))


def test_augmented_recompute_is_the_mean_over_the_augmented_batches():
    net, train, aug = _net(), _split(), CropFlip(pad=2)
    net(train.x[:2])
    recompute_batchnorm(net, train, batch_size=16, augment=aug)
    g = torch.Generator().manual_seed(BN_AUGMENT_SEED)
    feats = torch.cat([net[0](aug(train.x[i:i + 16], g)) for i in range(0, 40, 16)])
    # update_bn's cumulative average of per-batch means, batches weighted equally
    means = [feats[i:i + 16].mean((0, 2, 3)) for i in range(0, 40, 16)]
    torch.testing.assert_close(net[1].running_mean, torch.stack(means).mean(0))
    plain = _net()
    plain(train.x[:2])
    recompute_batchnorm(plain, train, batch_size=16)
    assert not torch.allclose(plain[1].running_mean, net[1].running_mean)
    again = _net()
    again(train.x[:2])
    recompute_batchnorm(again, train, batch_size=16, augment=aug)   # the same draw each time
    torch.testing.assert_close(again[1].running_mean, net[1].running_mean)


def test_bn_augment_in_a_run_and_refused_without_augmentation(tmp_path):
    kw = dict(dataset="synthetic-image", model="resnet20", levels=0, epochs=1, batch_size=32,
              data_size=128)
    aug = run(tiny_settings(tmp_path / "a", bn_augment=True, **kw)).run_dir
    plain = run(tiny_settings(tmp_path / "p", **kw)).run_dir
    a = load_state(aug / "level_0" / "solution.safetensors")
    p = load_state(plain / "level_0" / "solution.safetensors")
    means = [k for k in a if k.endswith("running_mean")]
    weights = [k for k in a if k.endswith("conv1.weight")]
    assert weights and all(torch.equal(a[k], p[k]) for k in weights)  # same training
    assert any(not torch.equal(a[k], p[k]) for k in means)           # other statistics
    with pytest.raises(SwampError, match="`bn_augment`.*has none"):
        run(tiny_settings(tmp_path / "s", bn_augment=True, levels=0))  # synthetic: no augment
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())
