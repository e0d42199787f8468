"""Post-hoc methods on tiny finished runs: Lottery Pools, ensembles, connectivity."""

import csv
import json
import math

import pytest
import torch

from conftest import tiny_settings
from swamp.app.cli import main
from swamp.errors import SwampError
from swamp.evaluation import ensemble_log_probs, log_probs, score_log_probs
from swamp.loop import run
from swamp.core.masks import Mask
from swamp.posthoc import connectivity, ensemble_runs, load_run, lottery_pools, pool_level
from swamp.store import RunStore, load_state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("posthoc")
    imp = [run(tiny_settings(root, method="imp", particles=1, seed=s)).run_dir for s in (0, 1)]
    swamp = run(tiny_settings(root, method="swamp", particles=2, levels=1)).run_dir
    digits = run(tiny_settings(root, method="imp", particles=1, dataset="synthetic-image",
                               levels=0, epochs=1)).run_dir
    return {"imp": imp, "swamp": swamp, "other": digits, "root": root}


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ---- Lottery Pools -------------------------------------------------------------------------
def test_lottery_pools_keep_density_and_never_lower_validation_accuracy(runs, tmp_path):
    src = runs["imp"][0]
    out = lottery_pools(src, tmp_path / "pools", grid=[0.2, 0.5])
    source = load_run(src)
    pooled = load_run(out)
    assert pooled.levels == source.levels == [0, 1, 2]
    assert json.loads((out / "posthoc.json").read_text())["method"] == "lottery-pools"
    assert [int(r["level"]) for r in rows(out / "metrics.csv")] == [0, 1, 2]
    for level in source.levels:
        m = pooled.metrics(level)
        mask = pooled.mask(level)
        assert mask.nnz == source.mask(level).nnz                 # the level's density
        state = pooled.solution(level)
        assert all(torch.all(state[n][~mask[n]] == 0) for n in mask.names)
        assert m["val_acc"] >= m["base_val_acc"]                  # never lower on validation
        assert m["base_val_acc"] == pytest.approx(source.metrics(level)["val_acc"])
        if not m["accepted"]:
            assert torch.equal(state[mask.names[0]], source.solution(level)[mask.names[0]])
        else:
            assert m["val_acc"] > m["base_val_acc"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    lottery_pools(src, tmp_path / "pools", grid=[0.2, 0.5])      # finished: nothing redone
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before
    with pytest.raises(SwampError, match="other settings"):
        lottery_pools(src, tmp_path / "pools", grid=[0.3])


def test_pool_level_accepts_only_a_strict_validation_improvement():
    base_mask = Mask({"w": torch.tensor([True, True, False, False])})
    base = {"w": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    other = {"w": torch.tensor([0.0, 0.0, 4.0, 4.0])}

    def val(state):   # pretend validation rewards weight on index 2
        return float(state["w"][2] != 0) + (0.5 if state["w"][3] != 0 else 0.0)

    state, mask, acc, accepted = pool_level(base, base_mask, {1: other}, [0.25, 0.75],
                                            "global", lambda s: s, val)
    assert mask.nnz == 2 and acc == 1.5 and accepted == [[1, 0.25, 1.5]]
    # re-pruned to the two largest of 0.75*[1,1,0,0] + 0.25*[0,0,4,4] = [.75,.75,1,1]
    assert mask["w"].tolist() == [False, False, True, True]
    state, mask, acc, accepted = pool_level(base, base_mask, {1: other}, [0.25], "global",
                                            lambda s: s, lambda s: 0.0)
    assert accepted == [] and mask == base_mask and state is base


# ---- ensembles -----------------------------------------------------------------------------
def test_ensemble_of_two_runs_matches_the_mean_probability(runs, tmp_path):
    a, b = runs["imp"]
    result = ensemble_runs([a, b], tmp_path / "ens", label="imp-ensemble")
    assert [r["level"] for r in result] == [0, 1, 2]
    ra, rb = load_run(a), load_run(b)
    for row in result:
        lps = []
        for r in (ra, rb):
            r.model.load_state_dict(r.solution(row["level"]))
            lps.append(log_probs(r.model, r.data.test))
        expected = score_log_probs(ensemble_log_probs(lps), ra.data.test.y)
        assert row["test_acc"] == pytest.approx(expected.acc)
        assert row["test_nll"] == pytest.approx(expected.nll)
    written = rows(tmp_path / "ens" / "metrics.csv")
    assert len(written) == 3
    assert json.loads((tmp_path / "ens" / "posthoc.json").read_text())["method"] == "imp-ensemble"


def test_ensemble_refuses_runs_of_different_tasks(runs):
    with pytest.raises(SwampError, match="dataset"):
        ensemble_runs([runs["imp"][0], runs["other"]])
    with pytest.raises(SwampError, match="twice"):
        ensemble_runs([runs["imp"][0], runs["imp"][0]])
    with pytest.raises(SwampError, match="at least two"):
        ensemble_runs([runs["imp"][0]])


# ---- connectivity --------------------------------------------------------------------------
def test_connectivity_between_particles_and_between_levels(runs, tmp_path):
    src = runs["swamp"]
    result = connectivity(src, points=3, out=tmp_path / "lmc")
    loaded = load_run(src)
    p0 = load_state(loaded.store.particle_path(1, 0))
    loaded.model.load_state_dict(p0)
    from swamp.evaluation import evaluate
    start = evaluate(loaded.model, loaded.data.test)
    assert result["kind"] == "particles" and result["level"] == 1
    assert [p["t"] for p in result["points"]] == [0.0, 0.5, 1.0]
    assert result["points"][0]["test_acc"] == pytest.approx(start.acc)
    mid, ends = result["points"][1], result["points"][::2]
    expected = max(0.0, mid["test_nll"] - (ends[0]["test_nll"] + ends[1]["test_nll"]) / 2)
    assert result["test_loss_barrier"] == pytest.approx(expected)
    nll = [p["test_nll"] for p in result["points"]]
    acc = [p["test_acc"] for p in result["points"]]
    assert result["test_loss_barrier_mean_ends"] == pytest.approx(
        max(0.0, max(nll) - (nll[0] + nll[-1]) / 2))
    assert result["test_error_barrier_mean_ends"] == pytest.approx(
        max(0.0, (acc[0] + acc[-1]) / 2 - min(acc)))
    for name in ("connectivity.csv", "connectivity.json", "connectivity.png"):
        assert (tmp_path / "lmc" / name).is_file()
    levels = connectivity(src, levels=(0, 1), points=2)
    assert levels["kind"] == "levels" and levels["test_loss_barrier"] == 0.0
    with pytest.raises(SwampError, match="not finished"):
        connectivity(src, levels=(0, 5))
    with pytest.raises(SwampError, match="particle 3"):
        connectivity(src, particles=(0, 3))


# ---- bad input -----------------------------------------------------------------------------
def test_a_run_directory_with_no_finished_level_is_one_clear_line(runs, tmp_path, capsys):
    src = runs["imp"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    RunStore(empty).copy_record(src / "settings.json", empty / "settings.json")
    for argv in (["lottery-pools", str(empty)], ["connectivity", str(empty)],
                 ["ensemble", str(src), str(empty)], ["report", str(empty), "--out",
                                                      str(tmp_path / "r")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no finished level" in err and err.count("\n") == 1
    assert main(["lottery-pools", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_ensemble_cli_with_different_datasets_exits_non_zero(runs, capsys):
    assert main(["ensemble", str(runs["imp"][0]), str(runs["other"])]) == 2
    err = capsys.readouterr().err
    assert "dataset" in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_commands_print_and_write(runs, tmp_path, capsys):
    assert main(["ensemble", *map(str, runs["imp"]), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "ensemble" in out and (tmp_path / "e" / "metrics.csv").is_file()
    assert main(["connectivity", str(runs["swamp"]), "--points", "2", "--out",
                 str(tmp_path / "c")]) == 0
    assert "loss barrier" in capsys.readouterr().out
    assert main(["lottery-pools", str(runs["imp"][1]), "--grid", "0.5", "--window", "1",
                 "--out", str(tmp_path / "p")]) == 0
    assert "pooled solutions" in capsys.readouterr().out
    assert not math.isnan(float(rows(tmp_path / "p" / "metrics.csv")[0]["test_acc"]))


def test_lottery_pools_search_the_authors_grid_over_all_levels_by_default(runs, tmp_path):
    from swamp.posthoc.pools import DEFAULT_GRID, neighbours

    assert DEFAULT_GRID == tuple(round(0.05 * i, 2) for i in range(1, 20))
    assert DEFAULT_GRID[0] == 0.05 and DEFAULT_GRID[-1] == 0.95 and len(DEFAULT_GRID) == 19
    levels = list(range(6))
    assert neighbours(2, levels, 0) == [1, 3, 0, 4, 5]            # all, nearest first
    assert neighbours(2, levels, 1) == [1, 3]
    assert main(["lottery-pools", str(runs["imp"][0]), "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "posthoc.json").read_text())
    assert record["window"] == 0 and record["grid"] == list(DEFAULT_GRID)
    assert main(["lottery-pools", str(runs["imp"][0]), "--narrow", "--out",
                 str(tmp_path / "n")]) == 0
    record = json.loads((tmp_path / "n" / "posthoc.json").read_text())
    assert record["window"] == 2 and record["grid"] == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_swamp_run_refuses_to_resume_inside_a_pools_directory(runs, tmp_path):
    from swamp.config import Settings
    from swamp.loop import LevelLoop

    out = lottery_pools(runs["imp"][0], tmp_path / "pools", grid=[0.5], window=1)
    settings = Settings.from_dict(json.loads((out / "settings.json").read_text()))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(SwampError, match="post-hoc results"):
        LevelLoop(settings, run_dir=out).run()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_lottery_pools_refuse_a_run_without_a_validation_split(runs, tmp_path, capsys):
    src = runs["imp"][0]
    novalid = tmp_path / "novalid"
    novalid.mkdir()
    settings = json.loads((src / "settings.json").read_text())
    settings["data"]["val_fraction"] = 0.0
    RunStore(novalid).write_record(novalid / "settings.json", settings)
    with pytest.raises(SwampError, match="no validation split"):
        lottery_pools(novalid, tmp_path / "pools")
    assert main(["lottery-pools", str(novalid)]) == 2
    err = capsys.readouterr().err
    assert "--val-fraction 0" in err and err.count("\n") == 1
    assert not (tmp_path / "pools").exists()


def test_posthoc_out_on_a_file_is_one_clear_line(runs, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine")
    message = f"{target} is a file; `out` needs a directory"   # the CLI: --out
    for call in (lambda: lottery_pools(runs["imp"][0], target),
                 lambda: ensemble_runs(runs["imp"], target),
                 lambda: connectivity(runs["swamp"], points=2, out=target / "sub")):
        with pytest.raises(SwampError, match=message):
            call()
    for argv in (["lottery-pools", str(runs["imp"][0]), "--out", str(target)],
                 ["ensemble", *map(str, runs["imp"]), "--out", str(target)],
                 ["connectivity", str(runs["swamp"]), "--out", str(target)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--out needs a directory" in err and err.count("\n") == 1
    assert target.read_text() == "mine"


def test_the_two_barrier_forms_by_hand():
    from swamp.posthoc.lmc import _barrier, _barrier_mean_ends

    ts = [0.0, 0.5, 1.0]
    # Loss 1.0 -> 1.2 -> 2.0: under the line between the ends, above their mean.
    assert _barrier([1.0, 1.2, 2.0], ts, True) == 0.0
    assert _barrier_mean_ends([1.0, 1.2, 2.0], True) == pytest.approx(0.5)
    # Equal ends: both forms are the height of the worst point.
    assert _barrier([1.0, 1.7, 1.0], ts, True) == pytest.approx(0.7)
    assert _barrier_mean_ends([1.0, 1.7, 1.0], True) == pytest.approx(0.7)
    # Accuracy 0.9 -> 0.6 -> 0.8: the line at 0.5 is 0.85, the mean of the ends 0.85.
    assert _barrier([0.9, 0.6, 0.8], ts, False) == pytest.approx(0.25)
    assert _barrier_mean_ends([0.9, 0.6, 0.8], False) == pytest.approx(0.25)
