"""The report builder on hand-made metrics: the expected table, plot and checks."""

import csv
import json
import statistics

import pytest

from swamp.cli import main
from swamp.config import Settings
from swamp.errors import SwampError
from swamp.report import build_report

HEADER = "level,density,sparsity,target_density,test_acc,test_nll\n"


def fake_run(root, method, seed, accs, nlls=None, posthoc=None, **settings):
    d = root / f"{posthoc or method}-{seed}"
    d.mkdir(parents=True)
    s = Settings.from_dict({"method": method, "seed": seed, "dataset": "mnist1d",
                            "levels": len(accs) - 1, **settings}).resolved()
    (d / "settings.json").write_text(json.dumps(s.to_dict()))
    if posthoc:
        (d / "posthoc.json").write_text(json.dumps({"method": posthoc}))
    nlls = nlls or [1.0 - a for a in accs]
    lines = [f"{lv},{0.8 ** lv},{1 - 0.8 ** lv},{0.8 ** lv},{a},{n}\n"
             for lv, (a, n) in enumerate(zip(accs, nlls))]
    (d / "metrics.csv").write_text(HEADER + "".join(lines))
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
                             "test_acc_mean", "test_acc_std", "test_nll_mean", "test_nll_std"]
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
    assert "| 20.0% | +5.00 | yes |" in md                       # SWAMP vs IMP
    assert "higher mean test accuracy than imp at every density" in md
    assert "swamp report ..." in md
    png = (out / "accuracy_vs_sparsity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_the_densities_where_swamp_does_not_beat_imp(tmp_path):
    runs = [fake_run(tmp_path, "imp", 0, [0.90, 0.85, 0.70]),
            fake_run(tmp_path, "swamp", 0, [0.91, 0.85, 0.60])]
    md = (build_report(runs, tmp_path / "r") / "report.md").read_text()
    assert "does **not** beat imp (mean test accuracy) at sparsity 20.0%, 36.0%" in md


@pytest.mark.parametrize("second,fragment", [
    (dict(method="imp", seed=1, dataset="digits"), "dataset"),
    (dict(method="imp", seed=1, model="mlp"), "model"),
    (dict(method="imp", seed=0), "several runs with seed 0"),
    (dict(method="imp", seed=1, epochs=3), "differ in train.epochs"),
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
