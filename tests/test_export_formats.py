"""Export formats for use outside swamp: dense and torch-prune (loaded with nothing but torch
and safetensors), ONNX (run in onnxruntime); each gives the level's function back."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from swamp.app.cli import main
from swamp.core.masks import Mask
from swamp.export import FORMATS, export_level
from swamp.loop import run
from swamp.reader import RunReader
from swamp.store import RunStore

LEVEL = 2


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import tiny_settings

    tmp = tmp_path_factory.mktemp("formats")
    return run(tiny_settings(tmp, levels=LEVEL, prune_fraction=0.6, epochs=1)).run_dir


@pytest.fixture(scope="module")
def reference(finished_run):
    """The level's model in PyTorch, and inputs and its outputs on them."""
    reader = RunReader(finished_run)
    model = reader.model.eval()
    model.load_state_dict(reader.solution(LEVEL))
    x = torch.randn(5, *reader.data.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model, x, model(x), reader.mask(LEVEL)


@pytest.fixture(scope="module")
def onnx_file(finished_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    return path, export_level(finished_run, path, level=LEVEL, format="onnx")


# Run in a fresh interpreter in which `import swamp` fails: the files must load without it.
PLAIN_LOADER = r"""
import sys
sys.modules["swamp"] = None
import torch
from torch import nn
from torch.nn.utils import prune
from safetensors.torch import load_file, save_file

dense_path, prune_path, inputs_path, out_path, n_in = sys.argv[1:6]

def mlp():   # the same architecture, written with torch alone
    return nn.Sequential(nn.Flatten(), nn.Linear(int(n_in), 256), nn.ReLU(),
                         nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()

x = load_file(inputs_path)["x"]
dense = mlp()
dense.load_state_dict(load_file(dense_path))
pruned = mlp()
for module in pruned:
    if isinstance(module, nn.Linear):
        prune.identity(module, "weight")
pruned.load_state_dict(load_file(prune_path))          # strict: the names must match
with torch.no_grad():
    save_file({"dense": dense(x), "pruned": pruned(x),
               "masked": pruned[3].weight.contiguous()}, out_path)
"""


def test_dense_and_torch_prune_load_with_only_torch_and_safetensors(finished_run, reference,
                                                                    tmp_path):
    model, x, expected, mask = reference
    dense = export_level(finished_run, tmp_path / "d.safetensors", level=LEVEL, format="dense")
    pruned = export_level(finished_run, tmp_path / "p.safetensors", level=LEVEL,
                          format="torch-prune")
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    script = tmp_path / "load.py"
    script.write_text(PLAIN_LOADER)
    done = subprocess.run([sys.executable, str(script), str(dense.path), str(pruned.path),
                           str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors"),
                           str(x[0].numel())], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = load_file(str(tmp_path / "y.safetensors"))
    assert torch.allclose(got["dense"], expected, rtol=1e-6, atol=1e-6)
    assert torch.allclose(got["pruned"], expected, rtol=1e-6, atol=1e-6)
    # torch's pruning re-applies the mask: the pruned weights are exactly zero there
    assert not got["masked"][~mask["3.weight"]].any()


def test_torch_prune_layout_is_what_torch_nn_utils_prune_saves(finished_run, reference,
                                                              tmp_path):
    from torch.nn.utils import prune

    model, _, _, mask = reference
    summary = export_level(finished_run, tmp_path / "p.safetensors", level=LEVEL,
                           format="torch-prune")
    state = load_file(str(summary.path))
    import copy

    pruned = copy.deepcopy(model)       # pruned by torch itself with the level's mask
    modules = dict(pruned.named_modules())
    for name in mask:
        prune.custom_from_mask(modules[name.rpartition(".")[0]], "weight", mask[name])
    ours = pruned.state_dict()
    assert set(state) == set(ours)
    for key, tensor in ours.items():
        assert state[key].dtype == tensor.dtype, key
        assert torch.equal(state[key], tensor), key


def test_onnx_graph_runs_in_onnxruntime_with_pytorchs_outputs(onnx_file, reference):
    import onnx
    import onnxruntime as ort

    path, summary = onnx_file
    model, x, expected, _ = reference
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):               # the batch dimension is dynamic
        got = session.run(None, {"input": x[:batch].numpy()})[0]
        assert got.shape == tuple(expected[:batch].shape)
        assert torch.allclose(torch.from_numpy(got), expected[:batch], rtol=1e-4, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["format"] == "swamp-onnx/1"
    assert json.loads(props["source"])["level"] == LEVEL
    assert summary.check["max_abs_diff"] <= 1e-4


def test_bench_ort_form_times_the_exported_graph(onnx_file, reference):
    from swamp.bench import check_forms, make_forms

    path, _ = onnx_file
    model, x, _, mask = reference
    forms = make_forms(model, mask, x, forms=("dense", "ort"), onnx_bytes=path.read_bytes())
    assert [f.name for f in forms] == ["dense", "ort"]
    assert check_forms(forms, x)["ort"] <= 1e-4


def test_missing_onnx_extra_is_one_line_and_writes_nothing(finished_run, tmp_path,
                                                           monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)     # as if not installed
    out = tmp_path / "m.onnx"
    assert main(["export", str(finished_run), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'swamp[onnx]'" in err
    assert not out.exists()


def test_formats_have_their_own_default_paths_and_refuse_other_files(finished_run, tmp_path,
                                                                     capsys):
    store = RunStore(finished_run)
    paths = {store.export_path(LEVEL, f) for f in FORMATS}
    assert len(paths) == len(FORMATS)
    assert main(["export", str(finished_run), "--level", "1", "--format", "dense"]) == 0
    assert "written to " + str(store.export_path(1, "dense")) in capsys.readouterr().out
    state = load_file(str(store.export_path(1, "dense")))
    assert set(state) == set(RunReader(finished_run).solution(1))
    # a second export overwrites its own file; a file that is no export is kept
    assert main(["export", str(finished_run), "--level", "1", "--format", "dense"]) == 0
    other = tmp_path / "notes.safetensors"
    other.write_text("keep me")
    assert main(["export", str(finished_run), "--format", "torch-prune",
                 "--out", str(other)]) == 2
    assert "not a swamp export" in capsys.readouterr().err
    assert other.read_text() == "keep me"


def test_dense_export_in_half_precision_keeps_the_zeros(finished_run, tmp_path):
    summary = export_level(finished_run, tmp_path / "h.safetensors", level=LEVEL,
                           format="dense", dtype="float16")
    state = load_file(str(summary.path))
    mask = Mask.load(RunStore(finished_run).mask_path(LEVEL))
    for name in mask:
        assert state[name].dtype == torch.float16
        assert not state[name][~mask[name]].any()


def _fresh(model):
    """A copy of `model` with other weights (so that loading has something to do)."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    return out


def test_torch_prune_export_loads_into_an_ao_pruning_parametrised_model(finished_run, reference,
                                                                       tmp_path):
    from torch.ao.pruning import WeightNormSparsifier
    from torch.ao.pruning.sparsifier.utils import FakeSparsity

    from swamp.export import to_parametrized

    model, x, expected, mask = reference
    summary = export_level(finished_run, tmp_path / "p.safetensors", level=LEVEL,
                           format="torch-prune")
    loaded = to_parametrized(_fresh(model), summary.path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, rtol=1e-6, atol=1e-6)
    # the layout torch.ao.pruning itself makes: the same state-dict keys, FakeSparsity masks
    theirs = _fresh(model)
    WeightNormSparsifier().prepare(theirs, [{"tensor_fqn": n} for n in mask])
    assert set(loaded.state_dict()) == set(theirs.state_dict())
    modules = dict(loaded.named_modules())
    for name in mask:
        fake = modules[name.rpartition(".")[0]].parametrizations.weight[0]
        assert isinstance(fake, FakeSparsity)
        assert torch.equal(fake.mask.bool(), mask[name])
    # the parametrisation re-applies the mask after each optimiser step (momentum and decay too)
    loaded.train()
    optimiser = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = {n: modules[n.rpartition(".")[0]].weight.detach().clone() for n in mask}
    for _ in range(2):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(loaded(x), torch.arange(len(x)) % 10).backward()
        optimiser.step()
    for name in mask:
        weight = modules[name.rpartition(".")[0]].weight
        assert not weight[~mask[name]].any(), name
        assert not torch.equal(weight[mask[name]], before[name][mask[name]]), name


def test_to_parametrized_fills_a_prepared_sparsifiers_masks_in_place(finished_run, reference,
                                                                     tmp_path):
    from safetensors.torch import load_file
    from torch.ao.pruning import WeightNormSparsifier

    from swamp.export import to_parametrized

    model, x, expected, mask = reference
    path = export_level(finished_run, tmp_path / "p.safetensors", level=LEVEL,
                        format="torch-prune").path
    target = _fresh(model)
    sparsifier = WeightNormSparsifier()
    sparsifier.prepare(target, [{"tensor_fqn": n} for n in mask])
    held = {n: sparsifier.state[n]["mask"] for n in mask}
    to_parametrized(target, load_file(str(path)))           # a state dict works as well
    modules = dict(target.named_modules())
    for name in mask:
        assert sparsifier.state[name]["mask"] is held[name]     # the same tensor, filled
        assert torch.equal(held[name].bool(), mask[name])
        assert len(modules[name.rpartition(".")[0]].parametrizations.weight) == 1
    with torch.no_grad():
        assert torch.allclose(target(x), expected, rtol=1e-6, atol=1e-6)
    sparsifier.squash_mask()             # back to plain modules, the zeros baked in
    with torch.no_grad():
        assert torch.allclose(target(x), expected, rtol=1e-6, atol=1e-6)
    assert not dict(target.named_parameters())["3.weight"][~mask["3.weight"]].any()


def test_to_parametrized_refuses_other_files_and_models_in_one_line(finished_run, reference,
                                                                    tmp_path):
    from swamp.errors import SwampError
    from swamp.export import to_parametrized

    model, _, _, _ = reference
    dense = export_level(finished_run, tmp_path / "d.safetensors", level=LEVEL, format="dense")
    with pytest.raises(SwampError, match="not a torch-prune export"):
        to_parametrized(_fresh(model), dense.path)
    path = export_level(finished_run, tmp_path / "p.safetensors", level=LEVEL,
                        format="torch-prune").path
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    with pytest.raises(SwampError, match="pass the model the run was made with") as err:
        to_parametrized(other, path)
    assert "\n" not in str(err.value)
