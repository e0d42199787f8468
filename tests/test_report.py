"""The report builder on hand-made metrics: the expected table, plot and checks."""

import csv
import re
import statistics

import pytest

from swamp.app.cli import main
from swamp.config import Settings
from swamp.errors import SwampError
from swamp.store import RunStore
from swamp.studies.report import build_report

HEADER = "level,density,sparsity,target_density,test_acc,test_nll\n"


def fake_run(root, method, seed, accs, nlls=None, posthoc=None, densities=None, **settings):
    d = root / f"{posthoc or method}-{seed}"
    d.mkdir(parents=True)
    s = Settings.from_dict({"method": method, "seed": seed, "dataset": "mnist1d",
                            "levels": len(accs) - 1, **settings}).resolved()
    store = RunStore(d)   # records written as a run writes them: checksummed
    store.write_record(store.settings_path, s.to_dict())
    if posthoc:
        store.write_record(store.posthoc_path, {"method": posthoc})
    nlls = nlls or [1.0 - a for a in accs]
    densities = densities or [0.8 ** lv for lv in range(len(accs))]
    lines = [f"{lv},{d},{1 - d},{0.8 ** lv},{a},{n}\n"
             for lv, (a, n, d) in enumerate(zip(accs, nlls, densities))]
    store.write_record(store.metrics_csv, (HEADER + "".join(lines)).encode())
    return d


def read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_report_on_hand_made_metrics_gives_the_expected_table(tmp_path):
    runs = [
        fake_run(tmp_path, "imp", 0, [0.90, 0.80]),
        fake_run(tmp_path, "imp", 1, [0.92, 0.84]),
        fake_run(tmp_path, "swamp", 0, [0.91, 0.86]),
        fake_run(tmp_path, "swamp", 1, [0.93, 0.88]),
        fake_run(tmp_path, "imp", 0, [0.95, 0.90], posthoc="lottery-pools"),
    ]
    out = build_report(runs, tmp_path / "report", command="swamp report ...")
    rows = read(out / "summary.csv")
    assert list(rows[0]) == ["method", "level", "density", "sparsity", "seeds",
                             "test_acc_mean", "test_acc_std", "test_nll_mean", "test_nll_std",
                             "test_ece_mean", "test_ece_std", "test_nll_ts_mean",
                             "test_nll_ts_std"]
    # tables without calibration columns (older runs): empty fields, "–" cells, no ECE table
    assert rows[0]["test_ece_mean"] == "" and rows[0]["test_nll_ts_std"] == ""
    table = {(r["method"], int(r["level"])): r for r in rows}
    assert [(r["method"], r["level"]) for r in rows] == [
        ("imp", "0"), ("imp", "1"), ("swamp", "0"), ("swamp", "1"),
        ("lottery-pools", "0"), ("lottery-pools", "1")]
    imp1 = table[("imp", 1)]
    assert int(imp1["seeds"]) == 2
    assert float(imp1["density"]) == pytest.approx(0.8)
    assert float(imp1["sparsity"]) == pytest.approx(0.2)
    assert float(imp1["test_acc_mean"]) == pytest.approx(0.82)
    assert float(imp1["test_acc_std"]) == pytest.approx(statistics.stdev([0.80, 0.84]), rel=1e-5)
    assert float(imp1["test_nll_mean"]) == pytest.approx(0.18)
    pools = table[("lottery-pools", 0)]
    assert int(pools["seeds"]) == 1 and float(pools["test_acc_std"]) == 0.0

    md = (out / "report.md").read_text()
    assert "| sparsity | density | imp | swamp | lottery-pools |" in md
    assert "| 20.0% | 80.00% | 82.00 ± 2.83 | 87.00 ± 1.41 | 90.00 |" in md
    assert "| 0.0% | 100.00% | 91.00 ± 1.41 | 92.00 ± 1.41 | 95.00 |" in md
    # paired by seed: level 1 differences 0.06, 0.04 -> mean 5.00 points, half-width
    # t(0.975, 1) * sd / sqrt(2) = 12.706 * 1.414 / 1.414 points
    assert ("| 20.0% | swamp | 2 | +5.00 | [-7.71, +17.71] | 0.126 | no clear difference | – |"
            in md)
    assert "| 20.0% | lottery-pools | 1 | +10.00 | – | – | n<2: no interval | 1 |" in md
    assert "Test ECE" not in md
    assert "swamp report ..." in md
    png = (out / "accuracy_vs_sparsity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_counts_the_verdicts_of_each_method_against_the_baseline(tmp_path):
    runs = [fake_run(tmp_path, "imp", s, a) for s, a in
            enumerate([[0.90, 0.85, 0.70], [0.92, 0.84, 0.72], [0.91, 0.86, 0.71]])]
    runs += [fake_run(tmp_path, "swamp", s, a) for s, a in
             enumerate([[0.95, 0.83, 0.60], [0.96, 0.86, 0.61], [0.95, 0.84, 0.62]])]
    md = (build_report(runs, tmp_path / "r") / "report.md").read_text()
    acc = md.split("### test accuracy")[1].split("###")[0]
    assert "| 0.0% | swamp | 3 | +4.33 |" in acc and "**better**" in acc
    assert "| 36.0% | swamp | 3 | -10.00 |" in acc and "**worse**" in acc
    assert "| 20.0% | swamp | 3 | -0.67 |" in acc
    assert "- swamp vs imp: 1 better, 1 worse, 1 no clear difference (of 3 densities)" in acc
    # the same runs paired with swamp instead: the signs turn over
    md = (build_report(runs, tmp_path / "r2", baseline="swamp") / "report.md").read_text()
    assert "| 36.0% | imp | 3 | +10.00 |" in md


def test_an_unknown_baseline_or_format_is_refused_before_anything_is_written(tmp_path, capsys):
    runs = [fake_run(tmp_path, "imp", 0, [0.9, 0.8]), fake_run(tmp_path, "swamp", 0, [0.9, 0.8])]
    with pytest.raises(SwampError, match="`baseline` sms is not among the methods reported"):
        build_report(runs, tmp_path / "out", baseline="sms")
    with pytest.raises(SwampError, match="unknown figure format 'jpg'"):
        build_report(runs, tmp_path / "out", formats=["jpg"])
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "out"), "--baseline",
                 "colt"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    # no imp and no baseline: no paired table, and the report says how to get one
    md = (build_report(runs[1:], tmp_path / "r") / "report.md").read_text()
    assert "pass `--baseline METHOD`" in md


@pytest.mark.parametrize("second,fragment", [
    (dict(method="imp", seed=1, dataset="digits"), "dataset"),
    (dict(method="imp", seed=1, model="mlp"), "model"),
    (dict(method="imp", seed=0), "several runs with seed 0"),
    (dict(method="imp", seed=1, epochs=3), "differ in train.epochs"),
    (dict(method="swamp", seed=0, epochs=3), "differ in train.epochs"),   # across methods
    (dict(method="swamp", seed=1, levels=2), "differ in prune.levels"),
])
def test_report_refuses_runs_that_do_not_belong_together(tmp_path, second, fragment):
    a = fake_run(tmp_path / "a", "imp", 0, [0.9, 0.8])
    extra = {k: v for k, v in second.items() if k not in ("method", "seed")}
    b = fake_run(tmp_path / "b", second["method"], second["seed"], [0.9, 0.8], **extra)
    with pytest.raises(SwampError, match=fragment):
        build_report([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_cli_bad_input_is_one_line(tmp_path, capsys):
    a = fake_run(tmp_path / "a", "imp", 0, [0.9, 0.8])
    b = fake_run(tmp_path / "b", "imp", 1, [0.9, 0.8], model="mlp")
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "model" in err and err.count("\n") == 1
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a swamp run directory" in capsys.readouterr().err
    assert main(["report", str(a), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "report.md").is_file()


def test_runs_of_different_methods_may_differ_in_method_settings_only(tmp_path):
    runs = [fake_run(tmp_path, "imp", 0, [0.9, 0.8], device="cpu", engine="sequential"),
            fake_run(tmp_path, "swamp", 0, [0.9, 0.8], particles=3, soup="greedy"),
            fake_run(tmp_path, "imp-swa", 0, [0.9, 0.8], swa_lr=0.01),
            fake_run(tmp_path, "oneshot", 0, [0.9, 0.8], target_sparsity=0.5),
            fake_run(tmp_path, "imp", 0, [0.9, 0.8], posthoc="lottery-pools")]
    md = (build_report(runs, tmp_path / "r") / "report.md").read_text()
    assert "imp-swa (1 particle(s), SWA True)" in md
    assert "lottery-pools (Lottery Pools over imp)" in md
    # two SWA runs with different SWA learning rates are not comparable
    other = fake_run(tmp_path / "b", "swamp", 1, [0.9, 0.8])
    with pytest.raises(SwampError, match=r"train.swa_lr .*imp-swa-0: 0.01 vs .*swamp-1: 0.05"):
        build_report([runs[2], other], tmp_path / "r2")


def test_sparsity_labels_are_rounded_once(tmp_path):
    runs = [fake_run(tmp_path, "imp", 0, [0.9, 0.8], densities=[1.0, 0.17851]),
            fake_run(tmp_path, "swamp", 0, [0.9, 0.85], densities=[1.0, 0.17851])]
    out = build_report(runs, tmp_path / "r")
    md = (out / "report.md").read_text()
    assert "| 82.1% | 17.85% | 80.00 | 85.00 |" in md          # not 82.2% (via 0.1785)
    assert "| 82.1% | swamp | 1 | +5.00 | – | – | n<2: no interval | – |" in md
    assert "82.2%" not in md
    row = [r for r in read(out / "summary.csv") if r["level"] == "1"][0]
    assert (row["density"], row["sparsity"]) == ("0.17851", "0.82149")


@pytest.mark.parametrize("header,line,fragment", [
    ("level,density,sparsity,test_nll\n", "0,1.0,0.0,0.3\n", "lacks the column test_acc"),
    (HEADER, "0,1.0,0.0,1.0,high,0.3\n", "column test_acc holds 'high' (line 2)"),
    (HEADER, ",1.0,0.0,1.0,0.9,0.3\n", "column level is empty"),
])
def test_a_broken_metrics_csv_is_one_clear_error(tmp_path, capsys, header, line, fragment):
    run = fake_run(tmp_path, "imp", 0, [0.9])   # a table that is its own record (ensemble)
    RunStore(run).write_record(run / "metrics.csv", (header + line).encode())
    with pytest.raises(SwampError, match=re.escape(fragment)) as info:
        build_report([run], tmp_path / "r")
    assert str(run / "metrics.csv") in str(info.value)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_report_out_on_a_file_is_refused(tmp_path):
    run = fake_run(tmp_path, "imp", 0, [0.9, 0.8])
    target = tmp_path / "file.md"
    target.write_text("mine")
    for out in (target, target / "sub"):
        with pytest.raises(SwampError, match=f"{target} is a file; `out` needs a directory"):
            build_report([run], out)
    assert target.read_text() == "mine"
