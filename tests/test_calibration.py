"""Calibration (evaluation.py): ECE against a hand computation, a temperature that sees only
the validation split, and the level records that carry both."""

import csv
import math

import pytest
import torch

from swamp.evaluation import (ECE_BINS, calibrate, expected_calibration_error, fit_temperature,
                              log_probs, nll_at_temperature)
from swamp.loop import run
from swamp.reader import load_run
from swamp.store import METRICS_COLUMNS, RunStore
from swamp.studies.report import build_report, read_result

CALIBRATION = ["test_ece", "test_nll_ts", "temperature", "ensemble_ece", "ensemble_nll_ts"]


def test_ece_equals_a_hand_computation_on_small_logits():
    probs = torch.tensor([[0.90, 0.10], [0.57, 0.43], [0.30, 0.70], [0.55, 0.45]])
    y = torch.tensor([0, 1, 1, 0])   # right, wrong, right, right
    # confidences 0.90 (bin 13 of 15), 0.57 and 0.55 (both bin 8), 0.70 (bin 10):
    #   bin 13: 1/4 * |1 - 0.90|; bin 8: 2/4 * |0.5 - 0.56|; bin 10: 1/4 * |1 - 0.70|
    hand = 0.25 * 0.10 + 0.5 * 0.06 + 0.25 * 0.30
    assert expected_calibration_error(probs.log(), y) == pytest.approx(hand, abs=1e-6)
    # logits, not probabilities: the same (log_softmax of the logits)
    logits = probs.log() + torch.tensor([[3.0], [-1.0], [0.5], [2.0]])
    assert expected_calibration_error(torch.log_softmax(logits, 1), y) == \
        pytest.approx(hand, abs=1e-6)


def test_ece_matches_the_definition_written_as_loops():
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(300, 5, generator=g)
    y = torch.randint(0, 5, (300,), generator=g)
    p = torch.softmax(logits, 1)
    total = 0.0
    for b in range(ECE_BINS):
        lo, hi = b / ECE_BINS, (b + 1) / ECE_BINS
        inside = [i for i in range(300) if lo < p[i].max() <= hi]
        if inside:
            acc = sum(float(p[i].argmax() == y[i]) for i in inside) / len(inside)
            conf = sum(float(p[i].max()) for i in inside) / len(inside)
            total += len(inside) / 300 * abs(acc - conf)
    assert expected_calibration_error(torch.log_softmax(logits, 1), y) == \
        pytest.approx(total, abs=1e-6)


def overconfident(n, seed, sharpen=3.0):
    """Labels drawn from softmax(z), predictions softmax(sharpen * z): a temperature of
    `sharpen` calibrates them."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return torch.log_softmax(sharpen * z, 1), y


def test_the_temperature_reduces_validation_nll_and_is_its_minimum():
    val_lp, val_y = overconfident(2000, 0)
    t = fit_temperature(val_lp, val_y)
    assert 2.5 < t < 3.5                                      # the sharpening undone
    best = nll_at_temperature(val_lp, val_y, t)
    assert best < nll_at_temperature(val_lp, val_y, 1.0) - 0.05
    assert best <= nll_at_temperature(val_lp, val_y, t * 1.02)
    assert best <= nll_at_temperature(val_lp, val_y, t / 1.02)


def test_the_temperature_is_fitted_on_validation_data_only():
    val_lp, val_y = overconfident(800, 1)
    test_lp, test_y = overconfident(800, 2)
    other_lp, other_y = overconfident(500, 3, sharpen=0.5)   # another test set entirely
    a = calibrate(val_lp, val_y, test_lp, test_y)
    b = calibrate(val_lp, val_y, other_lp, other_y)
    assert a.temperature == b.temperature                     # test data changes nothing
    assert a.nll != b.nll
    assert a.nll == pytest.approx(nll_at_temperature(test_lp, test_y, a.temperature))
    assert a.nll < nll_at_temperature(test_lp, test_y, 1.0)  # it also helps on test here
    # other validation data, another temperature
    assert calibrate(other_lp, other_y, test_lp, test_y).temperature != a.temperature
    # no validation split: nothing stands in for it
    empty = calibrate(val_lp[:0], val_y[:0], test_lp, test_y)
    assert math.isnan(empty.temperature) and math.isnan(empty.nll)


def test_each_level_records_ece_and_the_temperature_fitted_on_its_validation_split(tiny):
    result = run(tiny(method="swamp", particles=2, levels=0, epochs=1))
    reader = load_run(result.run_dir)
    record = reader.metrics(0)
    reader.model.load_state_dict(reader.solution(0))
    val = log_probs(reader.model, reader.data.val)
    test = log_probs(reader.model, reader.data.test)
    assert record["temperature"] == fit_temperature(val, reader.data.val.y)
    assert record["test_nll_ts"] == pytest.approx(
        nll_at_temperature(test, reader.data.test.y, record["temperature"]), rel=1e-9)
    assert record["test_ece"] == pytest.approx(
        expected_calibration_error(test, reader.data.test.y), rel=1e-9)
    assert 0 <= record["ensemble_ece"] <= 1 and record["ensemble_nll_ts"] > 0
    assert record["ensemble_temperature"] > 0
    assert [set(p) for p in record["particle_test"]] == [{"acc", "nll", "ece"}] * 2
    with open(result.run_dir / "metrics.csv") as fh:
        header = next(csv.reader(fh))
    assert header == METRICS_COLUMNS and header[-len(CALIBRATION):] == CALIBRATION
    rows = read_result(result.run_dir).rows
    assert [r["test_ece"] for r in rows] == [reader.metrics(0)["test_ece"]]


def test_without_a_validation_split_there_is_no_temperature(tiny):
    result = run(tiny(method="imp", particles=1, levels=0, epochs=1, val_fraction=0.0))
    record = load_run(result.run_dir).metrics(0)
    assert math.isnan(record["temperature"]) and math.isnan(record["test_nll_ts"])
    assert 0 <= record["test_ece"] <= 1


def test_a_run_recorded_before_calibration_is_still_reported(tiny, tmp_path):
    result = run(tiny(method="imp", particles=1, levels=1, epochs=1))
    store = RunStore(result.run_dir)
    for level in (0, 1):                      # the records an older version wrote
        path = store.level_metrics_path(level)
        record = store.read_record(path)
        for key in [*CALIBRATION, "ensemble_temperature"]:
            record.pop(key)
        store.write_record(path, record)
    assert all(math.isnan(r["test_ece"]) for r in read_result(result.run_dir).rows)
    md = (build_report([result.run_dir], tmp_path / "r") / "report.md").read_text()
    assert "Test ECE" not in md and "Test accuracy" in md


def test_output_ensembles_and_lottery_pools_record_their_calibration(tiny, tmp_path):
    from swamp.posthoc.ensemble import ensemble_runs
    from swamp.posthoc.pools import lottery_pools

    runs = [run(tiny(method="imp", particles=1, levels=1, epochs=1, seed=s)).run_dir
            for s in (0, 1)]
    ensemble_runs(runs, tmp_path / "ens", label="imp-ensemble")
    ens = read_result(tmp_path / "ens").rows
    assert all(0 <= r["test_ece"] <= 1 for r in ens)
    assert all(math.isnan(r["test_nll_ts"]) for r in ens)   # no shared validation split
    pools = read_result(lottery_pools(runs[0], tmp_path / "pools")).rows
    assert all(0 <= r["test_ece"] <= 1 and r["test_nll_ts"] > 0 for r in pools)
    md = (build_report([*runs, tmp_path / "ens"], tmp_path / "r") / "report.md").read_text()
    ece = md.split("## Test ECE")[1].split("##")[0]
    assert "imp-ensemble" in ece and "| 0.0% | 100.00% |" in ece


def test_language_model_scores_are_per_token():
    from swamp.evaluation import (calibrate, expected_calibration_error, score_log_probs)

    g = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(4, 5, 7, generator=g), dim=-1)   # (n, T, V)
    y = torch.randint(0, 7, (4, 5), generator=g)
    flat_p, flat_y = logp.reshape(20, 7), y.reshape(20)
    a, b = score_log_probs(logp, y), score_log_probs(flat_p, flat_y)
    assert (a.acc, a.nll, a.ece) == (b.acc, b.nll, b.ece)
    assert expected_calibration_error(logp, y) == expected_calibration_error(flat_p, flat_y)
    assert calibrate(logp, y, logp, y) == calibrate(flat_p, flat_y, flat_p, flat_y)
