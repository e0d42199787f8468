"""`swamp compare`: runs what is missing, reuses finished runs, writes the report."""

import csv

import pytest

from swamp.app.cli import main
from swamp.posthoc.methods import ensemble_pairs
from swamp.studies.compare import compare, method_settings
from swamp.config import Settings
from swamp.errors import SwampError

TINY = ["--dataset", "synthetic", "--data-size", "200", "--model", "mlp", "--epochs", "1",
        "--batch-size", "50", "--levels", "1", "--device", "cpu", "--rewind-epochs", "0",
        "--particles", "2"]


def test_compare_runs_what_is_missing_and_reuses_finished_runs(tmp_path, trainings, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "imp,swamp,lottery-pools,imp-ensemble", "--seeds", "0,1",
            *TINY, "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert len(trainings) == 2 * 2 * 2            # (imp, swamp) x 2 seeds x 2 levels
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["method"] for r in rows} == {"imp", "swamp", "lottery-pools", "imp-ensemble"}
    assert all(int(r["seeds"]) == (1 if r["method"] == "imp-ensemble" else 2) for r in rows)
    for name in ("summary.csv", "accuracy_vs_sparsity.png", "report.md"):
        assert (out / name).is_file()
    md = (out / "report.md").read_text()
    assert "compare --methods imp,swamp" in md
    assert "lottery-pools (Lottery Pools over imp, all levels, coefficients 0.05-0.95)" in md
    assert "imp-ensemble (output ensemble of 2 imp runs)" in md
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len([r for r in runs if r.startswith("swamp-")]) == 2
    assert len([r for r in runs if r.endswith("-pools")]) == 2

    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    trainings.clear()
    assert main(argv) == 0                          # everything finished: nothing trained
    assert trainings == []
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")} == before
    # one more seed trains only that seed's runs
    assert main([*argv[:4], "0,1,2", *argv[5:]]) == 0
    assert len(trainings) == 2 * 2


def test_compare_resumes_a_run_made_by_swamp_run(tmp_path, trainings):
    base = Settings.from_dict({"dataset": "synthetic", "data_size": 200, "model": "mlp",
                               "epochs": 1, "batch_size": 50, "levels": 1, "device": "cpu",
                               "rewind_epochs": 0})
    imp = method_settings(base, "imp", 0)
    assert main(["run", *TINY[:-2], "--method", "imp", "--run-dir",
                 str(tmp_path / "runs" / imp.run_name()), "--quiet"]) == 0
    trainings.clear()
    compare(["imp"], [0], base, tmp_path / "report", runs_dir=tmp_path / "runs")
    assert trainings == []


def test_method_settings_give_each_method_only_what_it_uses():
    base = Settings.from_dict({"particles": 3, "soup": "greedy", "vote_share": 0.7,
                               "target_sparsity": 0.9, "swamp_plus_level": 1})
    imp = method_settings(base, "imp", 4).resolved()
    assert (imp.method.particles, imp.method.soup, imp.run.seed) == (1, "uniform", 4)
    assert imp.method.target_sparsity is None and imp.method.vote_share == 0.5
    sms = method_settings(base, "sms", 0).resolved()
    assert (sms.method.particles, sms.method.soup) == (3, "greedy")
    assert method_settings(base, "mask-vote", 0).method.vote_share == 0.7
    assert method_settings(base, "mask-vote", 0).method.soup == "greedy"
    assert method_settings(base, "oneshot", 0).method.target_sparsity == 0.9
    assert method_settings(base, "swamp+", 0).method.swamp_plus_level == 1
    assert method_settings(base, "colt", 0).method.soup == "uniform"


def test_ensemble_pairs():
    assert ensemble_pairs([0, 1]) == [(0, 1)]
    assert ensemble_pairs([0, 1, 2]) == [(0, 1), (1, 2), (2, 0)]


@pytest.mark.parametrize("extra,fragment", [
    (["--methods", "imp,magic"], "unknown method 'magic'"),
    (["--methods", "imp,imp"], "listed twice"),
    (["--methods", "imp-ensemble", "--seeds", "0"], "at least two"),
    (["--methods", "imp", "--seeds", "a,b"], "--seeds must be integers"),
    (["--methods", "imp", "--method", "swamp"], "--methods"),
    (["--methods", "imp,swamp", "--swa"], "--swa does not apply"),
    (["--methods", "imp,swamp", "--no-swa"], "--no-swa does not apply"),
    (["--methods", "imp,lottery-pools", "--val-fraction", "0"], "--val-fraction 0"),
    (["--methods", "imp,sms", "--soup", "greedy", "--val-fraction", "0"], "--soup greedy"),
])
def test_compare_bad_input_is_one_line_and_trains_nothing(tmp_path, capsys, trainings, extra,
                                                          fragment):
    assert main(["compare", *TINY, "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert trainings == [] and not (tmp_path / "o").exists()


def test_method_settings_refuse_swa_set_by_the_user():
    with pytest.raises(SwampError, match="each method defines SWA"):
        method_settings(Settings.from_dict({"swa": False}), "swamp", 0)


def test_compare_out_or_runs_dir_on_a_file_is_one_line(tmp_path, capsys, trainings):
    target = tmp_path / "file"
    target.write_text("not a directory")
    for flags, fragment in ((["--out", str(target)], "--out needs a directory"),
                            (["--out", str(tmp_path / "o"), "--runs-dir", str(target / "x")],
                             "--runs-dir needs a directory")):
        assert main(["compare", "--methods", "imp", "--seeds", "0", *TINY, *flags]) == 2
        err = capsys.readouterr().err
        assert f"{target} is a file" in err and fragment in err and err.count("\n") == 1
    assert trainings == [] and target.read_text() == "not a directory"


def test_compare_needs_an_output_directory(capsys):
    assert main(["compare", "--methods", "imp", *TINY]) == 2
    assert "--out" in capsys.readouterr().err
