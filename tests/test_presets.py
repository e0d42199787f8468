from pathlib import Path

import pytest

from swamp.app.cli import build_parser, main
from swamp.app.flags import settings_from_args
from swamp.config import Settings, TrainSettings
from swamp.errors import SwampError
from swamp.presets import PRESETS
from swamp.train import Schedule


def parse(*argv):
    return settings_from_args(build_parser().parse_args(["run", *argv]))


def test_preset_sets_the_recipe_and_flags_override_it(tmp_path):
    s = parse("--preset", "resnet20", "--method", "imp")
    assert (s.model.model, s.train.epochs, s.train.weight_decay, s.train.schedule,
            s.train.rewind_iters) == ("resnet20", 160, 1e-4, "step", 2000)
    s = parse("--preset", "resnet20", "--epochs", "30")
    assert s.train.epochs == 30 and s.train.weight_decay == 1e-4
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.05\n")
    s = parse("--preset", "wrn-28-2", "--config", str(cfg))
    assert s.model.model == "wrn-28-2" and s.train.lr == 0.05 and s.train.swa_lr == 0.05


def test_every_preset_is_a_valid_setting():
    for preset in PRESETS.values():
        Settings.from_dict(preset.values).resolved()


def test_unknown_preset_is_refused():
    with pytest.raises(SwampError, match="unknown preset 'resnet99'"):
        parse("--preset", "resnet99")


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    s = Schedule.build(TrainSettings(epochs=4, batch_size=10, lr=0.1, schedule="step"), 100,
                       swa=False)
    assert [round(s.lr_at(i), 6) for i in (0, 19, 20, 29, 30, 39)] == \
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    with_swa = Schedule.build(TrainSettings(epochs=4, batch_size=10, lr=0.1, schedule="step",
                                            swa_start=0.6, swa_lr=0.02), 100, swa=True)
    assert with_swa.lr_at(20) == pytest.approx(0.01) and with_swa.lr_at(24) == 0.02


def test_swamp_list_shows_every_preset(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert f"  {name} " in out and preset.source in out


def test_every_preset_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "presets.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in doc, name


def test_step_schedule_asked_for_with_swa_jumps_back_up_as_documented():
    # The LTH step recipe under an SWA method, when asked for by flag: 0.1, 0.01 from 50%,
    # then swa_lr (0.05 = lr/2) from 75% (docs/presets.md says so).
    s = parse("--preset", "vgg16", "--method", "swamp", "--schedule", "step",
              "--swa-lr", "0.05").resolved()
    sched = Schedule.build(s.train, 45_000, swa=True)
    assert sched.total == 56_160 and sched.rewind == 2000  # 351 iterations x 160 epochs
    assert [round(sched.lr_at(i), 6) for i in (0, 28_080, 42_120)] == [0.1, 0.01, 0.05]
    c = parse("--preset", "vgg16", "--schedule", "cosine", "--swa-lr", "0.05").resolved()
    lrs = [Schedule.build(c.train, 45_000, swa=True).lr_at(i) for i in range(0, 56_160, 500)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == 0.05


def test_cifar_presets_give_swa_methods_the_papers_cosine_recipe(tmp_path):
    imp = parse("--preset", "vgg16", "--method", "imp")
    assert (imp.train.schedule, imp.train.swa_lr) == ("step", None)      # plain LTH for IMP
    swamp = parse("--preset", "vgg16", "--method", "swamp")
    assert (swamp.train.schedule, swamp.train.swa_lr) == ("cosine", 0.05)
    forced = parse("--preset", "resnet20", "--method", "imp", "--swa")
    assert forced.train.schedule == "cosine"
    # A flag or a settings file still wins over the SWA recipe.
    assert parse("--preset", "vgg16", "--method", "swamp", "--schedule", "step") \
        .train.schedule == "step"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nswa_lr = 0.02\n")
    s = parse("--preset", "vgg16", "--method", "imp-swa", "--config", str(cfg))
    assert (s.train.schedule, s.train.swa_lr) == ("cosine", 0.02)
    # With the recipe the lr never rises: cosine annealing into the constant SWA rate.
    sched = Schedule.build(swamp.resolved().train, 45000, swa=True)
    lrs = [sched.lr_at(i) for i in range(0, sched.total, 97)]
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(0.05)


def test_compare_gives_each_method_its_own_preset_recipe(tmp_path, monkeypatch):
    import swamp.studies.compare as cmp

    seen = {}

    def fake_compare(methods, seeds, base, out, *, method_bases=None, **kw):
        for m in ("imp", "swamp", "imp-swa"):
            seen[m] = cmp.method_settings(method_bases.get(m, base), m, 0).train.schedule
        return tmp_path

    monkeypatch.setattr(cmp, "compare", fake_compare)
    assert main(["compare", "--methods", "imp,swamp,lottery-pools", "--seeds", "0",
                 "--preset", "resnet20", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert seen == {"imp": "step", "swamp": "cosine", "imp-swa": "cosine"}
