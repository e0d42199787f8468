"""Paired differences over seeds (studies/paired.py) and the figures of a report."""

import math
import statistics

import pytest
from scipy import stats

from swamp.studies.paired import NO_DIFFERENCE, TOO_FEW, mean_interval, paired_difference
from swamp.studies.report import build_report, read_result, summarise
from test_report import fake_run


def test_the_interval_is_the_paired_t_interval_by_hand():
    method = {0: 0.91, 1: 0.88, 2: 0.93, 3: 0.90}
    base = {0: 0.89, 1: 0.87, 2: 0.90, 3: 0.90}
    d = [0.02, 0.01, 0.03, 0.00]
    p = paired_difference(method, base)
    mean, sd = sum(d) / 4, statistics.stdev(d)
    half = 3.182446305284263 * sd / 2          # t(0.975, 3), from a table
    assert half == pytest.approx(stats.t.ppf(0.975, 3) * sd / math.sqrt(4))
    assert p.n == 4 and p.seeds == (0, 1, 2, 3) and p.dropped == ()
    assert p.mean == pytest.approx(mean)
    assert (p.low, p.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert p.p == pytest.approx(stats.ttest_rel(list(method.values()), list(base.values()))
                                .pvalue)
    assert p.low < 0 < p.high and p.verdict == NO_DIFFERENCE


def test_the_verdict_says_better_or_worse_only_when_the_interval_leaves_out_zero():
    base = {0: 0.80, 1: 0.82, 2: 0.81}
    ahead = paired_difference({0: 0.85, 1: 0.86, 2: 0.87}, base)
    assert ahead.low > 0 and ahead.verdict == "better" and ahead.p < 0.05
    assert paired_difference({0: 0.75, 1: 0.76, 2: 0.77}, base).verdict == "worse"
    # for a loss (NLL, ECE), lower is better
    assert paired_difference({0: 0.75, 1: 0.76, 2: 0.77}, base, direction=-1).verdict == "better"
    # a mean difference in favour that the seeds do not bear out
    mixed = paired_difference({0: 0.85, 1: 0.80, 2: 0.83}, base)
    assert mixed.mean > 0 and mixed.low <= 0 <= mixed.high and mixed.verdict == NO_DIFFERENCE


def test_pairs_are_made_by_seed_and_a_missing_seed_is_dropped_and_named():
    method = {2: 0.9, 0: 0.7, 1: 0.8, 5: 0.99}          # order of the dict does not matter
    base = {0: 0.6, 1: 0.75, 2: 0.8, 3: 0.1}
    p = paired_difference(method, base)
    assert p.seeds == (0, 1, 2) and p.dropped == (3, 5)
    assert p.mean == pytest.approx(statistics.fmean([0.1, 0.05, 0.1]))
    # a seed whose value was never recorded (NaN) is unpaired too
    assert paired_difference({0: 0.9, 1: math.nan}, {0: 0.8, 1: 0.7}).dropped == (1,)


def test_fewer_than_two_pairs_are_never_judged():
    one = paired_difference({0: 0.9, 1: 0.95}, {0: 0.5})
    assert one.n == 1 and one.mean == pytest.approx(0.4) and one.verdict == TOO_FEW
    assert math.isnan(one.low) and math.isnan(one.p) and one.dropped == (1,)
    none = paired_difference({0: 0.9}, {1: 0.5})
    assert none.n == 0 and none.verdict == TOO_FEW and none.dropped == (0, 1)


def test_the_band_of_the_figures_is_the_t_interval_of_the_mean():
    xs = [0.9, 0.8, 0.85]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(xs) / math.sqrt(3)
    assert mean_interval(xs) == (pytest.approx(0.85 - half), pytest.approx(0.85 + half))
    assert mean_interval([0.7]) == (0.7, 0.7)
    assert mean_interval([0.7, math.nan]) == (0.7, 0.7)


def test_a_report_pairs_runs_by_seed_and_names_an_unpaired_seed(tmp_path):
    runs = [fake_run(tmp_path, "imp", s, [0.9, a]) for s, a in [(0, 0.80), (1, 0.82), (2, 0.81)]]
    runs += [fake_run(tmp_path, "swamp", s, [0.9, a]) for s, a in [(0, 0.86), (1, 0.85),
                                                                   (3, 0.99)]]
    out = build_report(runs, tmp_path / "r")
    lines = (out / "paired.csv").read_text().splitlines()
    row = next(line for line in lines if line.startswith("test_acc,swamp,imp,0.8,"))
    cells = row.split(",")
    # seeds 0 and 1 pair (+0.06, +0.03); imp's seed 2 and swamp's seed 3 are unpaired
    assert cells[5] == "2" and float(cells[6]) == pytest.approx(0.045)
    assert cells[-2:] == ["0 1", "2 3"]
    md = (out / "report.md").read_text()
    assert "| 20.0% | swamp | 2 | +4.50 |" in md and "| 2 3 |" in md


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("pdf", b"%PDF-"),
                                       ("svg", b"<?xml")])
def test_figures_are_written_in_each_format(tmp_path, fmt, magic):
    runs = [fake_run(tmp_path, "imp", s, [0.9 - s / 100, 0.8]) for s in (0, 1)]
    runs += [fake_run(tmp_path, "swamp", s, [0.91, 0.85 + s / 100]) for s in (0, 1)]
    out = build_report(runs, tmp_path / "r", formats=[fmt])
    data = (out / f"accuracy_vs_sparsity.{fmt}").read_bytes()
    assert len(data) > 1000 and data.startswith(magic)
    assert {p.suffix for p in out.glob("accuracy_vs_sparsity.*")} == {f".{fmt}"}
    if fmt != "png":   # no creation date: the same runs give the same file
        again = build_report(runs, tmp_path / "r2", formats=[fmt])
        assert (again / f"accuracy_vs_sparsity.{fmt}").read_bytes() == data
    if fmt == "svg":
        text = data.decode()
        assert "test NLL" in text and "95% t-interval" in text and "imp (n=2)" in text


def test_old_runs_without_calibration_are_read_with_it_missing(tmp_path):
    run = fake_run(tmp_path, "imp", 0, [0.9, 0.8])
    rows = read_result(run).rows
    assert all(math.isnan(r["test_ece"]) and math.isnan(r["test_nll_ts"]) for r in rows)
    summary = summarise([read_result(run)])
    assert all(s.ece and all(math.isnan(x) for x in s.ece) for s in summary)


def test_compare_refuses_a_baseline_it_does_not_run_before_training(tiny, tmp_path, capsys):
    from swamp.app.cli import main
    from swamp.errors import SwampError
    from swamp.studies.compare import compare

    with pytest.raises(SwampError, match="`baseline` swamp is not among"):
        compare(["imp", "imp-swa"], [0, 1], tiny(method="imp", particles=1), tmp_path / "o",
                baseline="swamp")
    assert main(["compare", "--methods", "imp", "--seeds", "0", "--format", "gif",
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown figure format 'gif'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
