import json

import pytest

from swamp.config import Settings
from swamp.errors import SwampError


def test_default_run_hash_is_frozen():
    # Changing these values renames every existing run directory: do it only on purpose.
    assert Settings().run_hash() == FROZEN_DEFAULT
    assert Settings.from_dict({"method": "imp", "lr": 0.05}).run_hash() == FROZEN_IMP


FROZEN_DEFAULT = "430e13d149"
FROZEN_IMP = "ddfd2244a5"


def test_hash_ignores_where_and_how_but_not_what():
    base = Settings()
    same = Settings.from_dict({"out": "elsewhere", "device": "cpu", "particles": 4})
    assert same.run_hash() == base.run_hash()   # particles=4 is swamp's default
    assert Settings.from_dict({"seed": 1}).run_hash() != base.run_hash()
    assert Settings.from_dict({"lr": 0.2}).run_hash() != base.run_hash()


def test_run_name_uses_method():
    assert Settings.from_dict({"method": "imp"}).run_name().startswith("imp-")


def test_method_presets_resolve():
    r = Settings.from_dict({"method": "imp"}).resolved()
    assert (r.method.particles, r.method.swa) == (1, False)
    r = Settings.from_dict({"method": "imp-swa"}).resolved()
    assert (r.method.particles, r.method.swa) == (1, True)
    r = Settings.from_dict({"method": "imp-wa"}).resolved()
    assert (r.method.particles, r.method.swa) == (4, False)
    r = Settings.from_dict({"method": "swamp", "particles": 3}).resolved()
    assert (r.method.particles, r.method.swa) == (3, True)


@pytest.mark.parametrize("suffix,text", [
    (".toml", '[train]\nlr = 0.3\nepochs = 7\n[method]\nmethod = "imp"\n'),
    (".yaml", "train:\n  lr: 0.3\n  epochs: 7\nmethod: imp\n"),
    (".json", json.dumps({"lr": 0.3, "epochs": 7, "method": "imp"})),
])
def test_settings_files_sectioned_or_flat(tmp_path, suffix, text):
    path = tmp_path / f"s{suffix}"
    path.write_text(text)
    s = Settings.from_file(path)
    assert s.train.lr == 0.3 and s.train.epochs == 7 and s.method.method == "imp"


@pytest.mark.parametrize("values,fragment", [
    ({"particles": 0}, "`particles`"),
    ({"prune_fraction": 1.5}, "`prune_fraction`"),
    ({"prune_fraction": 0.0}, "`prune_fraction`"),
    ({"swa_start": 1.2}, "after the end of training"),
    ({"levels": -1}, "`levels`"),
    ({"method": "magic"}, "unknown method"),
    ({"method": "imp", "particles": 3}, "one particle"),
    ({"rewind_epochs": 30}, "rewind"),
    ({"scorer": "taylor"}, "scorer"),
])
def test_impossible_settings_are_refused(values, fragment):
    with pytest.raises(SwampError, match=fragment):
        Settings.from_dict(values).resolved()


def test_errors_name_settings_and_the_command_line_names_flags(tmp_path, capsys):
    """The library names a setting as Python spells it; `swamp` shows the user's flag."""
    from swamp.app.cli import main

    with pytest.raises(SwampError, match=r"^`prune_fraction` must be in \(0, 1\) \(got 1\.5\)$"):
        Settings.from_dict({"prune_fraction": 1.5}).resolved()
    assert main(["run", "--prune-fraction", "1.5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "swamp: error: --prune-fraction must be in (0, 1) (got 1.5)\n"
    # other quoted words stay as they are
    assert main(["export", str(tmp_path)]) == 2
    assert "`swamp run`" in capsys.readouterr().err


def test_render_error_maps_settings_and_the_given_options_only():
    from swamp.app.flags import render_error

    message = "`max_val_drop` and `swa_lr` differ from `swamp run`, `no_swa` and `no_thing`"
    assert render_error(message, {"max_val_drop"}) == \
        "--max-val-drop and --swa-lr differ from `swamp run`, --no-swa and `no_thing`"
    assert render_error(message) == \
        "`max_val_drop` and --swa-lr differ from `swamp run`, --no-swa and `no_thing`"


def test_unknown_and_mistyped_keys(tmp_path):
    with pytest.raises(SwampError, match="unknown setting 'learning_rate'"):
        Settings.from_dict({"learning_rate": 0.1})
    with pytest.raises(SwampError, match="expects int"):
        Settings.from_dict({"epochs": "ten"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=")
    with pytest.raises(SwampError, match="could not be parsed"):
        Settings.from_file(bad)
    with pytest.raises(SwampError, match="does not exist"):
        Settings.from_file(tmp_path / "missing.toml")
