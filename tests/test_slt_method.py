"""`--method slt` in the level loop (issue 16): strong tickets at every level's density."""

from __future__ import annotations

import json

import pytest
import torch

from swamp.config import Settings
from swamp.core.masks import Mask
from swamp.core.pruning import target_counts
from swamp.engines import SequentialEngine
from swamp.errors import SwampError
from swamp.loop import LevelLoop, run
from swamp.methods.slt import ScoreLevel
from swamp.store import RunStore, load_state
from swamp.train import StackedReplicas, TrainPlan, fit
from swamp.train.callbacks import Callback

torch.set_num_threads(1)


def slt(tiny, **kw):
    values = dict(method="slt", particles=1, lr=0.1, levels=2, prune_fraction=0.5, data_size=160)
    values.update(kw)
    return tiny(**values)


class Recording(SequentialEngine):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    @property
    def record(self):
        return self.inner.record

    @property
    def description(self):
        return self.inner.description

    def train_particles(self, task, ctx, progress=None):
        results = self.inner.train_particles(task, ctx, progress)
        self.seen.append((task, results))
        return results


def _frozen(loop, level):
    """The level's score network as the loop builds it (frozen weights, initial scores)."""
    return ScoreLevel(loop.settings, loop.ctx, loop.ctx.initial_state, loop.prunable, level,
                      loop.plan.target_density(level))


@pytest.mark.parametrize("engine", ["sequential", "vectorised", "auto"])
def test_slt_run_keeps_weights_frozen_and_exact_counts(tiny, engine):
    from swamp.engines import make_engine

    s = slt(tiny, engine=engine, particles=2)
    loop = LevelLoop(s)
    name = "vectorised" if engine == "auto" else engine
    rec = Recording(make_engine(name, settings=loop.settings))
    loop.engine = rec
    result = loop.run()
    assert [r["level"] for r in result.levels] == [0, 1, 2]
    ones = Mask.ones(loop.model, loop.prunable)
    counts = target_counts(ones, 0.5, 2, "global")
    store = RunStore(result.run_dir)
    for level, row in enumerate(result.levels):
        mask = result.mask(level)
        assert mask.nnz == counts[level][""]                   # IMP's exact count
        assert row["density"] == pytest.approx(counts[level][""] / ones.numel)
        assert row["target_density"] == 0.5 ** level
        assert 0.0 <= row["test_acc"] <= 1.0 and row["particles"] == 2
        net = _frozen(loop, level).net
        frozen = {k: v for k, v in net.net.state_dict().items()}
        # every trained particle's weights are the frozen ones, bitwise
        task, results = rec.seen[level]
        for r in results:
            for k, v in frozen.items():
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                    assert torch.equal(r.state["net." + k], v), (engine, level, k)
        # the level's solution is the frozen weights times its mask; the rest as initialised
        sol = result.solution(level)
        for k, v in frozen.items():
            want = v * mask[k] if k in mask.names else v
            assert torch.equal(sol[k], want), k
        details = json.loads(store.level_metrics_path(level).read_text())
        assert details["combined"]["solution"] == "mask of the mean score"
    # the scores trained: the level-2 mask is not the mask of the initial scores
    level2 = _frozen(loop, 2)
    assert not torch.equal(torch.cat([m.flatten() for _, m in result.mask(2).items()]),
                           torch.cat([m.flatten() for _, m in level2.net.mask().items()]))


class Guard(Callback):
    """Fails the fit on the first step at which a stacked frozen tensor moved (bitwise)."""

    def __init__(self, replicas):
        self.replicas = replicas
        self.frozen = {k: v.clone() for k, v in replicas.params.items() if not v.requires_grad}
        self.steps = 0

    def on_step_end(self, loop) -> None:
        self.steps += 1
        for k, v in self.frozen.items():
            assert torch.equal(self.replicas.params[k], v), f"{k} moved at step {loop.step}"


def test_stacked_score_particles_keep_weights_bitwise_every_step(tiny):
    loop = LevelLoop(slt(tiny))
    level = _frozen(loop, 1)
    ctx = level.ctx
    replicas = StackedReplicas(ctx.model, level.start, 3)
    assert len(replicas.parameters()) == len(level.net.names)   # only the scores train
    plan = TrainPlan(ctx.data.train, ctx.schedule, ctx.settings, 0, ctx.schedule.total,
                     order_seeds=[1, 2, 3], augment_seeds=[1, 2, 3], subsets=[None] * 3,
                     labels=["p"] * 3, objective=ctx.objective)
    guard = Guard(replicas)
    fit(replicas, plan, callbacks=[guard])
    assert guard.steps == ctx.schedule.total > 0 and guard.frozen


def test_vectorised_scores_equal_sequential(tiny):
    """Stacked score particles train like one at a time: the trained scores agree to float
    tolerance, not bitwise (the batched kernels sum in another order: they differ by about
    1e-8 on the development machine), and the masks and solutions they give are identical
    (a flip would need two scores within that distance at the threshold)."""
    from swamp.engines import make_engine

    out = {}
    for engine in ("sequential", "vectorised"):
        loop = LevelLoop(slt(tiny, engine=engine, particles=3, out=str(tiny().run.out) + engine))
        loop.engine = Recording(make_engine(engine, settings=loop.settings))
        out[engine] = (loop.run(), loop.engine.seen)
    (a, seen_a), (b, seen_b) = out["sequential"], out["vectorised"]
    assert a.run_dir.name == b.run_dir.name
    for level in range(3):
        for ra, rb in zip(seen_a[level][1], seen_b[level][1]):
            assert ra.state.keys() == rb.state.keys()
            for k in ra.state:
                torch.testing.assert_close(ra.state[k], rb.state[k], rtol=1e-5, atol=1e-7)
        assert torch.equal(torch.cat([m.flatten() for _, m in a.mask(level).items()]),
                           torch.cat([m.flatten() for _, m in b.mask(level).items()]))
        sa, sb = a.solution(level), b.solution(level)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vmappable_top_k_is_the_pruning_top_k():
    """The forward pass's top-k (sort + scatter, runs under vmap) keeps exactly what
    `keep_exactly` keeps, ties included (the lower flat index is removed first)."""
    from swamp.core.pruning import keep_exactly
    from swamp.train.scores import top_masks

    g = torch.Generator().manual_seed(0)
    ranked = {"a": torch.randint(0, 4, (7, 5), generator=g).float(),   # many ties
              "b": torch.randint(0, 4, (9,), generator=g).float()}
    ones = Mask({n: torch.ones_like(v, dtype=torch.bool) for n, v in ranked.items()})
    for scope, counts in (("global", {"": 17}), ("layerwise", {"a": 11, "b": 4})):
        fast = top_masks(ranked, counts, scope)
        ref = keep_exactly(ranked, ones, counts, scope)
        for n in ranked:
            assert torch.equal(fast[n], ref[n]), (scope, n)


@pytest.mark.parametrize("how", ["vote", "overlap"])
def test_mask_combination_of_score_particles_has_exact_counts(tiny, how):
    s = slt(tiny, engine="vectorised", particles=3, slt_combine=how, scope="layerwise")
    result = run(s)
    loop = LevelLoop(s)
    ones = Mask.ones(loop.model, loop.prunable)
    counts = target_counts(ones, 0.5, 2, "layerwise")
    store = RunStore(result.run_dir)
    for level in range(3):
        mask = result.mask(level)
        for n in loop.prunable:
            assert int(mask[n].sum()) == counts[level][n]
        combined = json.loads(store.level_metrics_path(level).read_text())["combined"]
        assert combined["solution"] == f"mask {how} of the particles' masks"
        assert combined["votes_needed"] == (3 if how == "overlap" else 2)
        assert combined["target"] == mask.nnz


def test_combined_mask_ranks_votes_first(tiny):
    """A weight kept by every particle's mask outranks one kept by fewer, whatever the
    mean |score|; exact count."""
    loop = LevelLoop(slt(tiny, particles=3, slt_combine="vote"))
    level = _frozen(loop, 2)
    g = torch.Generator().manual_seed(0)
    scores = [{n: torch.randn(level.net.ones[n].shape, generator=g) for n in level.net.names}
              for _ in range(3)]
    mask, record = level.combine_scores(scores)
    assert mask.nnz == level.counts[""] == record["target"]
    masks = [level.mask_of(s) for s in scores]
    unanimous = sum(int((masks[0][n] & masks[1][n] & masks[2][n]).sum())
                    for n in level.net.names)
    kept_unanimous = sum(int((masks[0][n] & masks[1][n] & masks[2][n] & mask[n]).sum())
                         for n in level.net.names)
    assert kept_unanimous == min(unanimous, mask.nnz)


@pytest.mark.parametrize("values, message", [
    (dict(slt_init="xavier"), "unknown `slt_init` 'xavier'"),
    (dict(slt_combine="max"), "unknown `slt_combine` 'max'"),
    (dict(slt_combine="vote"), "use `particles` 2 or more"),
    (dict(scorer="lamp"), "`scorer` lamp does not apply"),
    (dict(engine="distributed"), "use `engine` auto, sequential or vectorised"),
    (dict(method="swamp", slt_init="kaiming"), "`slt_init` applies to `method` slt only"),
])
def test_slt_settings_are_checked_in_one_line(tiny, values, message):
    s = slt(tiny, **values)
    with pytest.raises(SwampError, match=message.replace("(", r"\(")) as e:
        s.resolved()
    assert "\n" not in str(e.value)


def test_slt_init_is_a_setting_of_the_run(tiny):
    """`slt_init` changes the frozen weights (and the run hash); `model` keeps the model's
    own initialisation."""
    runs = {}
    for init in ("signed-constant", "kaiming", "model"):
        s = slt(tiny, levels=1, slt_init=init, epochs=1)
        loop = LevelLoop(s)
        loop.run()
        runs[init] = (loop.store.root.name, _frozen(loop, 1).net, loop)
    assert len({name for name, _, _ in runs.values()}) == 3
    w = {k: dict(net.net.named_parameters())[net.names[0]] for k, (_, net, _) in runs.items()}
    assert torch.unique(w["signed-constant"].abs()).numel() == 1
    assert torch.unique(w["kaiming"].abs()).numel() > 1
    init = load_state(runs["model"][2].store.init_path)
    assert torch.equal(w["model"], init[runs["model"][1].names[0]])
    assert torch.equal(init[runs["model"][1].names[0]],
                       runs["model"][2].ctx.initial_state[runs["model"][1].names[0]])


# ---- generators --------------------------------------------------------------------------
def _generator():
    from swamp.models.generator import MLPGenerator

    return MLPGenerator((2,), latent=4, hidden=(32,))


@pytest.mark.parametrize("method", ["slt", "imp"])
def test_generator_levels_have_generative_metrics_and_samples(tiny, method):
    import csv
    import math

    s = tiny(method=method, dataset="gaussian-mixture", data_size=200, particles=1, levels=1,
             optimizer="adam", lr=0.01, weight_decay=0.0, epochs=2, batch_size=32,
             engine="sequential")
    result = run(s, model=_generator())
    store = RunStore(result.run_dir)
    with open(store.metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row, record in zip(rows, result.levels):
        for k in ("test_mmd", "test_frechet", "val_mmd", "particle_mmd_mean"):
            assert math.isfinite(float(row[k])) and float(row[k]) == pytest.approx(record[k])
        assert float(row["test_mmd"]) > -0.05          # MMD^2 (unbiased: may dip below 0)
        assert float(row["test_frechet"]) >= 0.0
        assert math.isnan(record["test_acc"])           # no accuracy for a generator
        picture = store.samples_path(int(row["level"]))
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    store.verify_checksums()                            # the pictures are checksummed too
    details = json.loads(store.level_metrics_path(1).read_text())
    assert details["generative"]["bandwidths"]
    assert result.mask(1).nnz == target_counts(result.mask(0), 0.2, 1, "global")[1][""]


def test_classifier_runs_keep_their_csv_columns(tiny):
    from swamp.store import METRICS_COLUMNS

    result = run(slt(tiny, levels=0, epochs=1))
    header = RunStore(result.run_dir).metrics_csv.read_text().splitlines()[0]
    assert header.split(",") == METRICS_COLUMNS


# ---- the command line --------------------------------------------------------------------
def test_swamp_run_method_slt(tmp_path, capsys):
    from swamp.app.cli import main

    out = tmp_path / "runs"
    code = main(["run", "--method", "slt", "--dataset", "synthetic", "--data-size", "200",
                 "--model", "mlp", "--epochs", "1", "--batch-size", "50", "--levels", "1",
                 "--prune-fraction", "0.5", "--particles", "2", "--slt-init", "kaiming",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = out.iterdir()
    store = RunStore(run_dir)
    assert store.finished_levels() == [0, 1]
    records = store.level_metrics()
    assert [r["density"] for r in records] == pytest.approx([1.0, 0.5], abs=1e-3)
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in records)
    settings = json.loads(store.settings_path.read_text())
    assert settings["method"]["slt_init"] == "kaiming"


def test_swamp_run_slt_init_refused_in_one_line(tmp_path, capsys):
    from swamp.app.cli import main

    out = tmp_path / "runs"
    code = main(["run", "--method", "slt", "--slt-init", "xavier", "--device", "cpu",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "--slt-init" in err and err.count("\n") == 1
    assert not out.exists()


def test_swamp_run_generator_shows_mmd(tmp_path, capsys):
    from swamp.app.cli import main

    code = main(["run", "--method", "slt", "--dataset", "gaussian-mixture", "--data-size",
                 "200", "--model", "mlp-generator", "--epochs", "1", "--batch-size", "50",
                 "--levels", "0", "--optimizer", "adam", "--lr", "0.01", "--device", "cpu",
                 "--out", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "MMD²" in captured.out + captured.err


# ---- compare and report ------------------------------------------------------------------
def test_compare_puts_strong_tickets_next_to_imp(tmp_path):
    import csv

    from swamp.studies.compare import compare, method_settings

    base = Settings.from_dict(dict(dataset="synthetic", data_size=200, model="mlp", epochs=1,
                                   batch_size=50, levels=1, prune_fraction=0.5, device="cpu",
                                   rewind_epochs=0.0, particles=2, slt_init="kaiming"))
    out = compare(["imp", "slt"], [0], base, tmp_path / "report", runs_dir=tmp_path / "runs")
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by = {(r["method"], r["level"]): r for r in rows}
    assert by[("imp", "1")]["density"] == by[("slt", "1")]["density"]   # the same densities
    report = (out / "report.md").read_text()
    assert "slt (2 score particle(s), frozen weights kaiming, combined by average)" in report
    # imp got no slt setting (it would refuse one), slt its own
    assert method_settings(base, "imp", 0).method.slt_init == "signed-constant"
    assert method_settings(base, "slt", 0).method.slt_init == "kaiming"


def test_report_of_generators_has_mmd_tables(tiny, tmp_path):
    from swamp.studies.report import build_report

    dirs = []
    for method in ("imp", "slt"):
        s = tiny(method=method, dataset="gaussian-mixture", data_size=200, particles=1,
                 levels=1, optimizer="adam", lr=0.01, weight_decay=0.0, epochs=1,
                 batch_size=50, engine="sequential")
        dirs.append(run(s, model=_generator()).run_dir)
    out = build_report(dirs, tmp_path / "report")
    report = (out / "report.md").read_text()
    assert "## Test MMD²" in report and "## Frechet distance" in report
    table = report.split("## Test MMD²")[1].split("##")[0]
    assert "| imp | slt |" in table and "nan" not in table
    # summary.csv carries the generators' metrics: the mean over seeds of each level's MMD²
    import csv

    from swamp.studies.report import GENERATIVE_COLUMNS, SUMMARY_COLUMNS

    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == SUMMARY_COLUMNS + GENERATIVE_COLUMNS
    for row in rows:
        d = dirs[["imp", "slt"].index(row["method"])]
        record = RunStore(d).level_metrics()[int(row["level"])]
        assert float(row["test_mmd_mean"]) == pytest.approx(record["test_mmd"], rel=1e-5)
        assert float(row["test_frechet_mean"]) == pytest.approx(record["test_frechet"],
                                                                rel=1e-5)
        assert row["test_acc_mean"] == ""                  # no accuracy for a generator


def test_report_figure_of_generators_plots_mmd_and_frechet(tiny, tmp_path, monkeypatch):
    """Generator runs have no accuracy: the figure's panels are MMD² and the Frechet distance,
    one line per method through its level means (not empty accuracy panels)."""
    import math

    import matplotlib.pyplot as plt

    from swamp.studies.report import build_report, read_result, summarise

    dirs = []
    for method in ("imp", "slt"):
        s = tiny(method=method, dataset="gaussian-mixture", data_size=200, particles=1,
                 levels=1, optimizer="adam", lr=0.01, weight_decay=0.0, epochs=1,
                 batch_size=50, engine="sequential")
        dirs.append(run(s, model=_generator()).run_dir)
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    out = build_report(dirs, tmp_path / "report")
    assert (out / "accuracy_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    (fig,) = figures
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["test MMD²", "Frechet distance"]
    assert fig._suptitle.get_text().startswith("MMD² and Frechet distance vs sparsity")
    assert (out / "report.md").read_text().startswith("# MMD² and Frechet distance vs sparsity")
    rows = summarise([read_result(d) for d in dirs])
    for ax, metric in zip(axes, ("mmd", "frechet")):
        lines = {line.get_label().split(" ")[0]: line for line in ax.get_lines()}
        assert sorted(lines) == ["imp", "slt"]
        for method, line in lines.items():
            want = [math.fsum(getattr(r, metric)) / len(getattr(r, metric))
                    for r in sorted((r for r in rows if r.method == method),
                                    key=lambda r: -r.density)]
            assert list(line.get_ydata()) == pytest.approx(want)
            assert all(math.isfinite(y) for y in line.get_ydata())


def test_an_interrupted_slt_run_resumes_to_the_same_tickets(tiny, tmp_path):
    from conftest import RecordingEngine

    s = slt(tiny, particles=2)
    whole = run(slt(tiny, particles=2, out=str(tmp_path / "whole"), engine="sequential"))
    loop = LevelLoop(s, engine=RecordingEngine(fail_at=1))
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert RunStore(loop.store.root).finished_levels() == [0]
    resumed = LevelLoop(s, engine=RecordingEngine()).run()
    for level in range(3):
        a, b = whole.solution(level), resumed.solution(level)
        assert all(torch.equal(a[k], b[k]) for k in a), level


def test_posthoc_tools_refuse_generator_runs_in_one_line(tiny):
    from swamp.posthoc.lmc import connectivity
    from swamp.posthoc.pools import lottery_pools
    from swamp.reader import RunReader

    s = tiny(method="imp", dataset="gaussian-mixture", data_size=200, particles=1, levels=1,
             epochs=1, batch_size=50, engine="sequential", optimizer="adam", lr=0.01)
    result = run(s, model=_generator())
    reader = RunReader(result.run_dir, model=_generator())
    for tool in (lottery_pools, connectivity):
        with pytest.raises(SwampError, match="scores classifiers by accuracy") as e:
            tool(reader)
        assert "\n" not in str(e.value)


def test_a_run_made_before_the_slt_settings_still_resumes(tiny):
    """settings.json of a run made before a setting existed lacks it: it counts as the
    default, so the run is found again (resumed, reused by compare) instead of refused."""
    s = tiny(method="imp", particles=1, levels=1, epochs=1)
    first = run(s)
    store = RunStore(first.run_dir)
    saved = json.loads(store.settings_path.read_text())
    for k in ("slt_init", "slt_combine"):
        del saved["method"][k]
    store.write_record(store.settings_path, saved)
    again = run(s)
    assert again.run_dir == first.run_dir and len(again.levels) == 2
    changed = tiny(method="imp", particles=1, levels=1, epochs=1, lr=0.2)
    with pytest.raises(SwampError, match="different settings"):
        run(changed, run_dir=first.run_dir)
