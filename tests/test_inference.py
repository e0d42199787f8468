"""swamp.sparsify gives the masked dense model's outputs on sparse kernels; the bench times
only forms that compute the same function, pairs its rounds, and writes its table."""

import json
import time

import pytest
import torch
from torch import nn

import swamp
from swamp.app.cli import main
from swamp.bench import Form, check_forms, masked_dense, time_forms
from swamp.models import build_model
from swamp.sparse import SparseConv, SparseLinear


def random_mask(model, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters()
            if n.endswith("weight") and p.dim() > 1}


@pytest.mark.parametrize("name,shape", [("mlp", (40,)), ("conv1d", (1, 40))])
@pytest.mark.parametrize("layout", ["csr", "bsr"])
@pytest.mark.parametrize("convs", [False, True])
def test_sparsify_gives_the_masked_dense_models_outputs(name, shape, layout, convs):
    torch.manual_seed(0)
    model = build_model(name, shape, 10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = random_mask(model, 0.1)
    sparse = swamp.sparsify(model, mask, layout=layout, convs=convs).eval()
    x = torch.randn(7, *shape)
    with torch.no_grad():
        assert torch.allclose(sparse(x), masked_dense(model, mask)(x), rtol=1e-5, atol=1e-6)
    # the model passed in is not changed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    modules = dict(sparse.named_modules())
    for key, keep in mask.items():
        layer = modules[key.rpartition(".")[0]]
        conv = key.startswith("features")
        assert isinstance(layer, SparseConv if conv and convs else
                          nn.Conv2d if conv else SparseLinear)
        if isinstance(layer, SparseLinear) and layout == "csr":
            assert layer.weight.layout == torch.sparse_csr
            assert layer.weight._nnz() == int(keep.sum())   # only the kept weights stored
        if isinstance(layer, nn.Conv2d):                   # stays dense, but masked
            assert not layer.weight[~keep].any()


def test_sparse_layers_take_any_leading_dims_and_no_bias():
    torch.manual_seed(0)
    linear = nn.Linear(12, 8, bias=False)
    keep = torch.rand(8, 12) < 0.3
    sparse = SparseLinear(linear, keep)
    x = torch.randn(2, 3, 12)
    expected = nn.functional.linear(x, linear.weight * keep)
    assert torch.allclose(sparse(x), expected, atol=1e-6)

    conv = nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=1)
    keep = torch.rand(conv.weight.shape) < 0.5
    x = torch.randn(2, 3, 11)
    expected = nn.functional.conv1d(x, conv.weight * keep, conv.bias, 2, 1)
    with torch.no_grad():
        assert torch.allclose(SparseConv(conv, keep)(x), expected, atol=1e-6)


def test_sparsify_refuses_a_mask_of_another_model():
    model = build_model("mlp", (40,), 10)
    with pytest.raises(swamp.SwampError, match="names no module weight"):
        swamp.sparsify(model, {"fc.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(swamp.SwampError, match="has shape"):
        swamp.sparsify(model, {"1.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(swamp.SwampError, match="layout"):
        swamp.sparsify(model, {}, layout="coo")


def test_a_form_with_other_outputs_is_refused_before_timing():
    ident = (lambda x: x), (lambda y: y)
    forms = [Form("dense", lambda x: x * 2, *ident), Form("csr", lambda x: x * 2 + 1e-3, *ident)]
    with pytest.raises(swamp.SwampError, match="other outputs"):
        check_forms(forms, torch.ones(3))


def test_the_check_scales_its_tolerance_with_the_outputs():
    """Trained logits of tens: float32 noise (3e-5 on an output near 0) passes, an error
    of a few 1e-3 does not."""
    ident = (lambda x: x), (lambda y: y)
    logits = torch.tensor([40.0, 0.0, -25.0])
    noisy = [Form("dense", lambda x: logits, *ident),
             Form("ort", lambda x: logits + torch.tensor([0.0, 3e-5, 0.0]), *ident)]
    assert check_forms(noisy, torch.ones(3))["ort"] == pytest.approx(3e-5)
    wrong = [noisy[0], Form("csr", lambda x: logits + torch.tensor([0.0, 3e-3, 0.0]), *ident)]
    with pytest.raises(swamp.SwampError, match="other outputs"):
        check_forms(wrong, torch.ones(3))


def test_paired_timing_compares_forms_within_rounds():
    ident = (lambda x: x), (lambda y: y)
    forms = [Form("dense", lambda x: time.sleep(0.0005), *ident),
             Form("slow", lambda x: time.sleep(0.003), *ident)]
    out = time_forms(forms, torch.ones(4, 2), rounds=3, repeats=2, warmup=1)
    assert out["dense"]["speedup"] == 1.0
    slow = out["slow"]
    assert slow["speedup_min"] <= slow["speedup"] <= slow["speedup_max"] < 1.0
    assert slow["median_s"] >= 0.003
    assert slow["throughput"] == pytest.approx(4 / slow["median_s"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import tiny_settings
    from swamp.loop import run

    tmp = tmp_path_factory.mktemp("bench")
    return run(tiny_settings(tmp, levels=1, prune_fraction=0.6, epochs=1)).run_dir


def test_bench_command_prints_and_writes_its_table(finished_run, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", str(finished_run), "--forms", "dense,csr", "--batch", "16",
                 "--rounds", "1", "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| level | sparsity | batch | form |" in printed
    results = json.loads((out / "bench.json").read_text())
    seen = {(r["level"], r["batch"], r["form"]) for r in results["rows"]}
    assert seen == {(lv, b, f) for lv in (0, 1) for b in (1, 16) for f in ("dense", "csr")}
    assert {s["level"] for s in results["sizes"]} == {0, 1}
    assert results["sizes"][1]["swamp"] < results["sizes"][1]["dense"]   # 40% density
    assert (out / "bench.md").read_text().startswith("| level |")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_input_before_writing(finished_run, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", str(finished_run), "--level", "5", "--out", str(out)]) == 2
    assert "not finished" in capsys.readouterr().err
    assert main(["bench", str(finished_run), "--forms", "dense,coo", "--out", str(out)]) == 2
    assert "unknown form" in capsys.readouterr().err
    assert main(["bench", str(finished_run), "--threads", "0", "--out", str(out)]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_bench_writes_into_the_runs_bench_folder_by_default(finished_run, capsys):
    from swamp.store import RunStore

    assert main(["bench", str(finished_run), "--level", "0", "--forms", "dense,bsr",
                 "--batch", "4", "--rounds", "1", "--repeats", "1", "--warmup", "0"]) == 0
    folder = RunStore(finished_run).bench_dir
    rows = json.loads((folder / "bench.json").read_text())["rows"]
    assert {(r["level"], r["form"]) for r in rows} == {(0, "dense"), (0, "bsr")}
    assert str(folder / "bench.md") in capsys.readouterr().out
