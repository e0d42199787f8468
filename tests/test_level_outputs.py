"""What a finished level holds: masks over exactly the prunable tensors, per-layer
densities that match the mask files."""

import json

import pytest
import torch
from safetensors.torch import load_file

from swamp.loop import run
from swamp.models import build_model


def level_metrics(root, level):
    return json.loads((root / f"level_{level}" / "metrics.json").read_text())


# ---- prunable tensors -------------------------------------------------------------------------
@pytest.mark.parametrize("model,names", [
    ("mlp", {"1.weight", "3.weight", "5.weight"}),
    ("conv1d", {"features.0.weight", "features.3.weight", "features.6.weight",
                "classifier.weight"}),
])
def test_masks_cover_exactly_the_linear_and_conv_weights(tiny, model, names):
    result = run(tiny(model=model, method="imp", particles=1, levels=1, epochs=1))
    net = build_model(model, (1, 32), 10)
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    assert names == {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, kinds)}
    bn = {n for n, m in net.named_modules()
          if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))}
    solution = result.solution(1)
    for level in (0, 1):
        assert set(result.mask(level).names) == names
    # everything else (biases, BatchNorm weights and statistics) is in the solution, unmasked
    rest = set(solution) - names
    assert rest and all(k.endswith(".bias") or k.rsplit(".", 1)[0] in bn for k in rest)
    if model == "conv1d":
        bn_weights = {"features.1.weight", "features.4.weight", "features.7.weight"}
        assert bn_weights <= set(solution) and not bn_weights & names
        assert all(torch.count_nonzero(solution[k]) == solution[k].numel() for k in bn_weights)


# ---- per-layer densities ----------------------------------------------------------------------
def test_per_layer_densities_in_metrics_match_the_mask_files(tiny):
    result = run(tiny(method="imp", particles=1, levels=2))
    root = result.run_dir
    seen = set()
    for level in range(3):
        metrics = level_metrics(root, level)
        mask = load_file(str(root / f"level_{level}" / "mask.safetensors"))
        assert set(metrics["layers"]) == set(mask)
        for name, m in mask.items():
            layer = metrics["layers"][name]
            nnz, numel = int(m.sum()), m.numel()
            assert layer["nnz"] == nnz and layer["numel"] == numel
            assert layer["density"] == pytest.approx(nnz / numel, abs=1e-12)
            seen.add(round(nnz / numel, 6))
        total = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        assert metrics["density"] == pytest.approx(total, abs=1e-12)
    assert len(seen) > 3    # global pruning left the layers at different densities
