"""`swamp prune`: one-shot pruning with exact counts per group, plain safetensors output and
the mask, per-layer / per-group sparsity, evaluation on data, refusals before writing."""

from __future__ import annotations

import fnmatch
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from swamp.app.cli import main
from swamp.core.masks import Mask
from swamp.errors import SwampError
from swamp.models import build_model
from swamp.oneshot import Group, parse_group, prune_oneshot, select_tensors

SHAPE = ["--input-shape", "1,40", "--num-classes", "10"]


def _weights(tmp_path, seed=1):
    torch.manual_seed(seed)
    model = build_model("conv1d", (1, 40), 10)
    path = tmp_path / "dense.safetensors"
    save_file(model.state_dict(), str(path))
    return model.state_dict(), path


def _kept_by_formula(numel: int, sparsity: float) -> int:
    # round half up of the kept count, as documented for the exact counts
    return math.floor((1 - sparsity) * numel + 0.5)


def _prune(tmp_path, *extra, weights=None):
    out = tmp_path / "pruned.safetensors"
    args = ["prune", "--model", "conv1d", *SHAPE, "--out", str(out), *extra]
    if weights is not None:
        args += ["--weights", str(weights)]
    return main(args), out


def test_groups_get_exact_counts_and_the_file_is_zero_where_the_mask_is_off(tmp_path,
                                                                            capsys):
    dense, path = _weights(tmp_path)
    rc, out = _prune(tmp_path, "--group", "features.*=0.475", "--group",
                     "classifier.*=0.35", weights=path)
    assert rc == 0
    pruned = load_file(str(out))
    mask = Mask.load(tmp_path / "pruned.mask.safetensors")
    assert pruned.keys() == dense.keys()
    groups = {"features.*": 0.475, "classifier.*": 0.35}
    for pattern, sparsity in groups.items():
        names = [n for n in mask.names if fnmatch.fnmatchcase(n, pattern)]
        total = sum(mask[n].numel() for n in names)
        kept = sum(int(mask[n].sum()) for n in names)
        assert kept == _kept_by_formula(total, sparsity)
    for name, t in pruned.items():
        if name in mask:
            assert torch.equal(t[~mask[name]], torch.zeros_like(t[~mask[name]]))
            assert torch.equal(t[mask[name]], dense[name][mask[name]])
            kept_min = dense[name][mask[name]].abs().min()
            # global magnitude within a group: a kept weight is no smaller than a pruned one
            same = [n for n in mask.names
                    if any(fnmatch.fnmatchcase(n, p) and fnmatch.fnmatchcase(name, p)
                           for p in groups)]
            pruned_max = max(dense[n][~mask[n]].abs().max() for n in same
                             if (~mask[n]).any())
            assert kept_min >= pruned_max or kept_min.isclose(pruned_max)
        else:   # biases and norms: untouched
            assert torch.equal(t, dense[name])
    text = capsys.readouterr().out
    assert "features.*" in text and "47.50%" in text and "35.00%" in text
    assert "classifier.weight" in text
    dense_line = next(line for line in text.splitlines() if line.startswith("kept dense:"))
    model = build_model("conv1d", (1, 40), 10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert f"norm {2 * len(norms)} tensors" in dense_line and "bias 1 tensors" in dense_line
    assert "head" not in dense_line   # a built-in model's head is pruned like any layer


@pytest.mark.parametrize("scorer", ["magnitude", "lamp", "random"])
def test_layerwise_scope_prunes_each_tensor_to_its_own_count(tmp_path, scorer):
    dense, path = _weights(tmp_path)
    rc, out = _prune(tmp_path, "--sparsity", "0.8", "--scope", "layerwise", "--scorer",
                     scorer, weights=path)
    assert rc == 0
    mask = Mask.load(tmp_path / "pruned.mask.safetensors")
    for name in mask.names:
        assert int(mask[name].sum()) == _kept_by_formula(mask[name].numel(), 0.8)


def test_random_scorer_is_reproducible_by_seed(tmp_path):
    dense, path = _weights(tmp_path)
    masks = []
    for seed in ("1", "1", "2"):
        assert _prune(tmp_path, "--sparsity", "0.5", "--scorer", "random", "--seed", seed,
                      weights=path)[0] == 0
        masks.append(Mask.load(tmp_path / "pruned.mask.safetensors"))
    assert masks[0] == masks[1] and masks[0] != masks[2]


def test_a_tensor_in_no_group_stays_dense():
    torch.manual_seed(0)
    model = build_model("conv1d", (1, 40), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune_oneshot(model, [Group("features.3.*", 0.9)])
    untouched = [r for r in result.layers if r.group is None]
    assert {r.name for r in untouched} == set(select_tensors(model)) - {"features.3.weight"}
    assert all(r.kept == r.total for r in untouched)
    assert torch.equal(model.state_dict()["classifier.weight"], before["classifier.weight"])
    row = result.groups[0]
    assert (row.kept, row.total) == (_kept_by_formula(5120, 0.9), 5120)
    assert int((model.state_dict()["features.3.weight"] != 0).sum()) == row.kept


def test_include_and_exclude_change_the_selection():
    torch.manual_seed(0)
    model = build_model("conv1d", (1, 40), 10)
    base = select_tensors(model)
    assert select_tensors(model, exclude=["classifier.*"]) == base[:-1]
    assert "features.1.weight" in select_tensors(model, include=["features.1.weight"])
    with pytest.raises(SwampError, match="matches no parameter"):
        select_tensors(model, include=["nope.*"])


@pytest.mark.parametrize("args, message", [
    (["--group", "decoder.*=0.5"], "matches no prunable tensor"),
    (["--group", "features.*=0.5", "--group", "features.3.*=0.9"], "taken by an earlier"),
    (["--group", "features.*"], "is not PATTERN=SPARSITY"),
    (["--sparsity", "1.0"], "must lie in [0, 1)"),
    (["--sparsity", "0.5", "--input-shape", "1,x"], "--input-shape '1,x' is not"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    rc, out = _prune(tmp_path, *args)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists() and not (tmp_path / "pruned.mask.safetensors").exists()


def test_an_output_folder_that_does_not_exist_is_refused(tmp_path, capsys):
    rc = main(["prune", "--model", "conv1d", *SHAPE, "--sparsity", "0.5",
               "--out", str(tmp_path / "missing" / "p.safetensors")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_weights_of_another_model_are_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    save_file(build_model("conv1d", (1, 40), 3).state_dict(), str(tmp_path / "w.safetensors"))
    rc, out = _prune(tmp_path, "--sparsity", "0.5", weights=tmp_path / "w.safetensors")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "'classifier.weight'" in err
    assert not out.exists()


def test_parse_group():
    assert parse_group("text_encoder.*=0.475") == Group("text_encoder.*", 0.475)
    assert parse_group("a=b=0.1") == Group("a=b", 0.1)


def test_data_evaluates_before_and_after(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    rc = main(["prune", "--model", "mlp", "--dataset", "synthetic", "--data-size", "200",
               "--sparsity", "0.5", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "dense ->" in text and "on synthetic" in text


def test_a_builtin_model_without_shape_or_data_is_one_line(tmp_path, capsys):
    rc = main(["prune", "--model", "conv1d", "--sparsity", "0.5",
               "--out", str(tmp_path / "p.safetensors")])
    assert rc == 2 and "--input-shape" in capsys.readouterr().err


# -- transformers ---------------------------------------------------------------------------

def test_hf_bert_prunes_by_group_and_loads_back_into_transformers(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(str(tmp_path / "bert"))
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "bert-pruned.safetensors"
    rc = main(["prune", "--model", f"hf:{tmp_path / 'bert'}", "--group",
               "*.attention.*=0.5", "--group", "*.intermediate.*=0.75", "--out", str(out)])
    assert rc == 0
    pruned = load_file(str(out))
    mask = Mask.load(tmp_path / "bert-pruned.mask.safetensors")
    for pattern, s in (("*.attention.*", 0.5), ("*.intermediate.*", 0.75)):
        names = [n for n in mask.names if fnmatch.fnmatchcase(n, pattern)]
        assert names
        assert sum(int(mask[n].sum()) for n in names) == _kept_by_formula(
            sum(mask[n].numel() for n in names), s)
    # embeddings, norms, the head and tensors in no group are the dense values
    for name in ("bert.embeddings.word_embeddings.weight", "classifier.weight",
                 "bert.encoder.layer.0.output.dense.weight",
                 "bert.encoder.layer.1.attention.output.LayerNorm.weight"):
        assert torch.equal(pruned[name], dense[name])
    fresh = transformers.BertForSequenceClassification(config)
    fresh.load_state_dict(pruned, strict=True)   # any loader reads it
    for n in mask.names:
        assert not fresh.state_dict()[n][~mask[n]].any()
    text = capsys.readouterr().out
    assert "bert.encoder.layer.0.attention.self.query.weight" in text
    dense_line = next(line for line in text.splitlines() if line.startswith("kept dense:"))
    assert "head 2 tensors" in dense_line and "embedding 3 tensors" in dense_line


def test_hf_head_is_prunable_by_pattern(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    default = select_tensors(model, "hf")
    assert "classifier.weight" not in default
    chosen = select_tensors(model, "hf", include=["classifier.weight"],
                            exclude=["*.pooler.*"])
    assert chosen == [n for n in default if ".pooler." not in n] + ["classifier.weight"]
