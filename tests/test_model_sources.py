"""Model sources (timm:, torchvision:, hf:), weights from files, and the prunable tensors
each family chooses. Nothing is downloaded: models are built from tiny configs."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from swamp.app.cli import main
from swamp.config import Settings
from swamp.errors import SwampError
from swamp.models import build_model
from swamp.models.sources import (LogitsOf, ModelSpec, build_source, default_prunable,
                                  head_modules, load_weights, param_kinds, parse_spec,
                                  read_weights)


def _conv1d(seed: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("conv1d", (1, 40), classes)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- specs --------------------------------------------------------------------------------

def test_specs_name_their_family():
    assert parse_spec("resnet20") == ModelSpec("builtin", "resnet20")
    assert parse_spec("timm:resnet18") == ModelSpec("timm", "resnet18")
    assert parse_spec("torchvision:vit_b_16") == ModelSpec("torchvision", "vit_b_16")
    assert parse_spec("hf:/some/dir:with:colons") == ModelSpec("hf", "/some/dir:with:colons")
    with pytest.raises(SwampError, match="unknown model source 'keras'"):
        parse_spec("keras:resnet")
    with pytest.raises(SwampError, match="names no model"):
        parse_spec("timm:")


# -- missing extras -----------------------------------------------------------------------

@pytest.mark.parametrize("spec, module, extra", [
    ("timm:resnet18", "timm", "timm"),
    ("torchvision:resnet18", "torchvision", "torchvision"),
    ("hf:{dir}", "transformers", "hf"),
])
def test_a_missing_extra_is_one_line_naming_it(spec, module, extra, tmp_path, monkeypatch,
                                               capsys):
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    monkeypatch.setitem(sys.modules, module, None)   # `import module` raises ImportError
    out = tmp_path / "pruned.safetensors"
    rc = main(["prune", "--model", spec.format(dir=tmp_path), "--sparsity", "0.5",
               "--num-classes", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and f"pip install 'swamp[{extra}]'" in err, err
    assert not out.exists()


# -- weights files ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "torch", "torch-checkpoint"])
def test_weights_round_trip(fmt, tmp_path):
    source, target = _conv1d(1), _conv1d(2)
    assert not _same_state(source, target)
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(source.state_dict(), str(path))
    elif fmt == "torch":
        torch.save(source.state_dict(), path)
    else:   # a training checkpoint that holds the state dict under "state_dict"
        torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    load_weights(target, path)
    assert _same_state(source, target)


def test_weights_of_another_head_name_the_first_mismatching_key(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_conv1d(1, classes=10).state_dict(), str(path))
    target = _conv1d(2, classes=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(SwampError) as exc:
        load_weights(target, path)
    msg = str(exc.value)
    assert "'classifier.weight'" in msg and "(10, 320)" in msg and "(3, 320)" in msg
    assert "num_classes" in msg and "\n" not in msg
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_weights_missing_or_extra_tensors_are_named(tmp_path):
    state = _conv1d(1).state_dict()
    missing = {k: v for k, v in state.items() if k != "features.3.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(SwampError, match="lacks the model's tensor 'features.3.weight'"):
        load_weights(_conv1d(2), tmp_path / "missing.safetensors")
    save_file({**state, "extra.weight": torch.ones(2)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(SwampError, match="has tensor 'extra.weight' that the model lacks"):
        load_weights(_conv1d(2), tmp_path / "extra.safetensors")


_RAN: list[str] = []


def _mark() -> dict:
    _RAN.append("code ran")
    return {}


class _Payload:
    def __reduce__(self):
        return (_mark, ())


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": _Payload()}, path)
    with pytest.raises(SwampError, match="weights_only=True"):
        read_weights(path)
    assert _RAN == []


def test_weights_go_into_a_run_model(tmp_path):
    from swamp.assemble import prepare_model
    from swamp.data import DataBundle, Split

    source = _conv1d(5)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    split = Split(torch.zeros(4, 1, 40), torch.zeros(4, dtype=torch.long))
    data = DataBundle("toy", split, split, split, 10, (1, 40))
    settings = Settings.from_dict({"model": "conv1d",
                                   "weights": str(tmp_path / "w.safetensors")})
    assert _same_state(prepare_model(settings, data), source)


def test_a_run_is_named_by_its_weights_content_and_read_without_the_file(tmp_path):
    import os

    from conftest import tiny_settings
    from swamp.loop import run
    from swamp.reader import RunReader

    path = tmp_path / "w.safetensors"
    model = build_model("mlp", (1, 32), 10)
    save_file(model.state_dict(), str(path))
    settings = tiny_settings(tmp_path, weights=str(path), levels=0, epochs=1, particles=1,
                             method="imp")
    first = settings.run_name()
    assert Settings.from_dict({"weights": str(path)}).run_name() != Settings().run_name()
    torch.manual_seed(1)
    save_file(build_model("mlp", (1, 32), 10).state_dict(), str(path))   # same path, new file
    os.utime(path, ns=(1, 1))            # even with an old modification time
    assert settings.run_name() != first
    done = run(settings).run_dir
    path.unlink()                        # a finished run is read from its own files
    reader = RunReader(done)
    reader.model.load_state_dict(reader.solution(0))
    with pytest.raises(SwampError, match="weights file .* does not exist"):
        settings.run_name()


# -- transformers (hf:DIR) -----------------------------------------------------------------

@pytest.fixture
def transformers():
    """transformers (the hf extra); these tests are skipped where it is not installed."""
    return pytest.importorskip("transformers")


def _tiny_bert(path, seed=0, labels=3, init=0.02):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32, num_labels=labels,
                                     initializer_range=init)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(str(path))
    return model


def _tiny_gpt2(path, seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(str(path))
    return model


def test_hf_directory_loads_its_weights_and_head(tmp_path, transformers):
    saved = _tiny_bert(tmp_path / "bert", seed=3)
    loaded = build_source(parse_spec(f"hf:{tmp_path / 'bert'}"))
    assert type(loaded).__name__ == "BertForSequenceClassification"
    assert _same_state(saved, loaded)


def test_hf_directory_without_weights_builds_from_its_config(tmp_path, transformers):
    _tiny_bert(tmp_path / "bert")
    (tmp_path / "bert" / "model.safetensors").unlink()
    model = build_source(parse_spec(f"hf:{tmp_path / 'bert'}"))
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.out_features == 3


def test_hf_not_a_model_directory_is_one_line(tmp_path):
    with pytest.raises(SwampError, match="no config.json"):
        build_source(parse_spec(f"hf:{tmp_path}"))


def test_bert_prunes_attention_and_mlp_linears_only(tmp_path, transformers):
    model = _tiny_bert(tmp_path / "bert")
    names = default_prunable(model, "hf")
    assert head_modules(model, "hf") == ["classifier"]
    linears = {n + ".weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(names) == linears - {"classifier.weight"}
    assert not [n for n in names if "embeddings" in n or "LayerNorm" in n or "bias" in n]
    assert any(".attention.self.query." in n for n in names)
    assert any(".intermediate.dense." in n for n in names)
    kinds = param_kinds(model, "hf")
    assert kinds["classifier.weight"] == kinds["classifier.bias"] == "head"
    assert kinds["bert.embeddings.word_embeddings.weight"] == "embedding"
    assert kinds["bert.embeddings.LayerNorm.weight"] == "norm"
    assert kinds["bert.pooler.dense.bias"] == "bias"
    assert {kinds[n] for n in names} == {"weight"}


def test_gpt2_conv1d_is_prunable_and_its_tied_head_stays_dense(tmp_path, transformers):
    model = _tiny_gpt2(tmp_path / "gpt")
    names = default_prunable(model, "hf")
    assert names == [f"transformer.h.{i}.{m}.weight" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_hf_model_in_a_run_gives_logits_and_takes_its_own_weights_file(tmp_path, transformers):
    saved = _tiny_bert(tmp_path / "bert", seed=4)
    model = build_model(f"hf:{tmp_path / 'bert'}", (8,), 3)
    assert isinstance(model, LogitsOf)
    out = model(torch.randint(0, 50, (2, 8)))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    other = _tiny_bert(tmp_path / "other", seed=5)
    load_weights(model, tmp_path / "bert" / "model.safetensors")
    assert _same_state(model.model, saved) and not _same_state(model.model, other)


def test_hf_model_takes_text_classification_batches_as_ids_and_attention_mask(tmp_path,
                                                                              transformers):
    # data/files.py gives (B, 2, L): [:, 0] token ids, [:, 1] the attention mask
    saved = _tiny_bert(tmp_path / "bert", seed=6, init=0.5).eval()   # outputs far apart
    model = build_model(f"hf:{tmp_path / 'bert'}", (2, 8), 3).eval()
    ids = torch.randint(1, 50, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        out = model(torch.stack([ids, mask], dim=1))
        want = saved(input_ids=ids, attention_mask=mask).logits
        other_pad = ids.clone()
        other_pad[1, 5:] = 7                       # what stands under the mask does not count
        moved = model(torch.stack([other_pad, mask], dim=1))
    assert out.shape == (2, 3)
    assert torch.allclose(out, want, atol=1e-6)
    assert torch.allclose(out, moved, atol=1e-5)
    unmasked = saved(input_ids=ids).logits.detach()
    assert torch.allclose(out[0], unmasked[0], atol=1e-6)
    assert not torch.allclose(out[1], unmasked[1], atol=1e-3)


def test_a_runs_file_of_an_hf_model_loads_back_as_weights(tmp_path, transformers):
    # a run saves LogitsOf's state dict (names `model.` + the transformers model's own):
    # `--weights RUN/level_0/solution.safetensors` in `swamp run` and `swamp prune` takes it
    from safetensors.torch import save_file

    _tiny_bert(tmp_path / "bert", seed=7)
    trained = build_model(f"hf:{tmp_path / 'bert'}", (2, 8), 3)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()},
              str(tmp_path / "solution.safetensors"))
    wrapped = build_model(f"hf:{tmp_path / 'bert'}", (2, 8), 3)
    load_weights(wrapped, tmp_path / "solution.safetensors")
    assert _same_state(wrapped, trained)
    bare = build_source(parse_spec(f"hf:{tmp_path / 'bert'}"))
    load_weights(bare, tmp_path / "solution.safetensors")
    assert _same_state(bare, trained.model)
    # another prefix is still the one-line error naming it
    save_file({f"module.{k}": v.contiguous() for k, v in trained.model.state_dict().items()},
              str(tmp_path / "ddp.safetensors"))
    with pytest.raises(SwampError, match="prefix"):
        load_weights(bare, tmp_path / "ddp.safetensors")


# -- timm / torchvision: what swamp asks of them ---------------------------------------------

def test_timm_is_built_without_pretrained_weights_and_its_head_stays_dense(monkeypatch):
    calls = []

    class Net(nn.Module):
        def __init__(self, in_chans, num_classes):
            super().__init__()
            self.stem = nn.Conv2d(in_chans, 4, 3)
            self.head = nn.Linear(4, num_classes)

        def get_classifier(self):
            return self.head

    def create_model(name, pretrained=True, **kw):
        calls.append((name, pretrained, kw))
        return Net(kw["in_chans"], kw["num_classes"])

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = build_model("timm:resnet18", (1, 8, 8), 5)
    assert calls == [("resnet18", False, {"num_classes": 5, "in_chans": 1})]
    assert default_prunable(model, "timm") == ["stem.weight"]
    assert default_prunable(model, "builtin") == ["stem.weight", "head.weight"]


def test_torchvision_is_built_without_weights(monkeypatch):
    calls = []

    def get_model(name, **kw):
        calls.append((name, kw))
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.Linear(8, kw["num_classes"]))

    fake = types.SimpleNamespace(models=types.SimpleNamespace(get_model=get_model))
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    model = build_model("torchvision:resnet18", (3, 4, 4), 7)
    assert calls == [("resnet18", {"weights": None, "num_classes": 7})]
    assert default_prunable(model, "torchvision") == ["1.weight"]   # last Linear: the head


def test_swamp_run_trains_a_timm_model(tmp_path, monkeypatch, capsys):
    """`swamp run --model timm:NAME`: the level loop builds the model through timm (a
    stand-in here, in the main suite; tests/test_vision_models.py runs the real timm)."""
    class Net(nn.Module):
        def __init__(self, in_chans, num_classes):
            super().__init__()
            self.stem = nn.Conv2d(in_chans, 4, 3, padding=1)
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(self.stem(x).relu().mean((2, 3)))

        def get_classifier(self):
            return self.head

    made = []

    def create_model(name, pretrained=True, **kw):
        made.append((name, pretrained))
        return Net(kw["in_chans"], kw["num_classes"])

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    rc = main(["run", "--model", "timm:tiny", "--dataset", "synthetic-image", "--data-size",
               "100", "--epochs", "1", "--levels", "1", "--method", "imp", "--batch-size", "32",
               "--rewind-epochs", "0", "--engine", "sequential", "--device", "cpu", "--quiet",
               "--out", str(tmp_path / "runs")])
    assert rc == 0, capsys.readouterr().err
    assert made and all(m == ("tiny", False) for m in made)
    (level,) = (tmp_path / "runs").glob("imp-*/level_1")
    from swamp.core.masks import Mask

    mask = Mask.load(level / "mask.safetensors")
    assert mask.names == ["stem.weight"]   # timm's head stays dense
    assert 0 < mask.density < 1


def test_weights_saved_from_a_wrapper_say_so(tmp_path):
    wrapped = nn.Sequential()
    wrapped.module = _conv1d(1)   # as DistributedDataParallel holds a model
    save_file(wrapped.state_dict(), str(tmp_path / "ddp.safetensors"))
    with pytest.raises(SwampError,
                       match=r"prefix \('module\.features\.0\.weight'\).*model\.module"):
        load_weights(_conv1d(2), tmp_path / "ddp.safetensors")
