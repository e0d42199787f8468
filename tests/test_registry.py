"""The method registries: every method runs through the one loop, settings follow
`Method.reads`, the next mask is saved with its level, and no module outside the registries
tells methods apart by name."""

import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from swamp.posthoc.methods import POSTHOC
from swamp.studies.compare import method_settings
from swamp.config import MethodSettings, Settings
from swamp.core.masks import Mask
from swamp.errors import SwampError
from swamp.loop import LevelLoop
from swamp.methods import METHODS, get_method
from swamp.studies.report import METHOD_SETTINGS, ORDER
from swamp.store import RunStore, read_json, write_json

SRC = Path(__file__).resolve().parents[1] / "src" / "swamp"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_runs_a_level_and_saves_its_next_mask(tiny, name):
    m = get_method(name)
    particles = 1 if m.fixed_particles else max(2, m.min_particles)
    result = LevelLoop(tiny(method=name, particles=particles, levels=1, epochs=1)).run()
    store = RunStore(result.run_dir)
    assert [r["level"] for r in result.levels] == [0, 1]
    path = store.next_mask_path(0)
    assert path.relative_to(store.root).as_posix() in read_json(store.checksums_path)
    if m.scores is None:
        assert Mask.load(path) == result.mask(1)
    else:    # slt: every level chooses among all weights; the next mask is the candidate set
        assert Mask.load(path).density == 1.0 and result.mask(1).density < 1.0
    combined = read_json(store.level_metrics_path(0))["combined"]
    assert ("next_mask" in combined) == m.next_mask.combines


def test_unknown_method_is_one_line():
    with pytest.raises(SwampError) as err:
        get_method("magic")
    assert "\n" not in str(err.value) and "unknown method 'magic'" in str(err.value)
    assert all(name in str(err.value) for name in METHODS)


def test_compare_gives_each_method_exactly_the_settings_it_reads():
    base = Settings.from_dict({"levels": 2, "particles": 3, "soup": "greedy",
                               "vote_share": 0.6, "swamp_plus_level": 1,
                               "target_sparsity": 0.5})
    defaults = MethodSettings()
    for name, method in METHODS.items():
        s = method_settings(base, name, seed=1)
        for f in fields(MethodSettings):
            if f.name in ("method", "swa"):
                continue
            expected = getattr(base.method if f.name in method.reads else defaults, f.name)
            assert getattr(s.method, f.name) == expected, (name, f.name)


def test_report_and_list_read_the_registries():
    assert ORDER[:len(METHODS)] == list(METHODS)
    assert set(POSTHOC) <= set(ORDER)
    assert {r for m in METHODS.values() for r in m.reads} <= METHOD_SETTINGS


def test_each_optional_setting_is_refused_by_methods_that_do_not_read_it(tiny):
    for flag, value in (("vote_share", 0.6), ("swamp_plus_level", 1),
                        ("target_sparsity", 0.5)):
        for name, method in METHODS.items():
            if flag in method.reads:
                continue
            particles = 1 if method.fixed_particles else 2
            with pytest.raises(SwampError, match="applies to `method`"):
                tiny(method=name, particles=particles, **{flag: value}).resolved()


def _name_comparison() -> re.Pattern:
    """A quoted method name next to a comparison: `== "colt"`, `"sms" in`, `in ("imp", ...`."""
    names = "|".join(re.escape(n) for n in [*METHODS, *POSTHOC])
    quoted = rf"""["']({names})["']"""
    return re.compile(rf"(==|!=|\bin\b)\s*[(\[{{]?\s*{quoted}|{quoted}\s*(==|!=|\bin\b)")


def test_no_module_outside_the_registries_compares_method_names():
    compared = _name_comparison()
    registries = {SRC / "methods", SRC / "posthoc" / "methods.py"}
    offenders = []
    for path in SRC.rglob("*.py"):
        if any(path == r or r in path.parents for r in registries):
            continue
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if compared.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{k}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_name_check_catches_a_regression():
    compared = _name_comparison()
    assert compared.search('if s.method.method == "colt":')
    assert compared.search('if "imp-ensemble" in methods:')
    assert not compared.search('"""colt: particles on disjoint data"""')


def test_resume_uses_the_saved_next_mask(tiny):
    settings = tiny(levels=1, epochs=1)
    root = LevelLoop(settings).run().run_dir
    store = RunStore(root)
    saved = Mask.load(store.next_mask_path(0))
    # Another mask of the same count, recorded as the level's: the resumed level 1 uses it.
    other = Mask({n: saved[n].flatten().flip(0).view(saved[n].shape) for n in saved.names})
    other.save(store.next_mask_path(0))
    store.record_checksums(store.next_mask_path(0))
    shutil.rmtree(store.level_dir(1))
    result = LevelLoop(settings, run_dir=root).run()
    assert result.mask(1) == other


def test_a_changed_next_mask_is_refused_on_resume(tiny):
    settings = tiny(levels=1, epochs=1)
    root = LevelLoop(settings).run().run_dir
    store = RunStore(root)
    saved = Mask.load(store.next_mask_path(0))
    Mask({n: ~saved[n] for n in saved.names}).save(store.next_mask_path(0))
    shutil.rmtree(store.level_dir(1))
    with pytest.raises(SwampError, match="checksum mismatch"):
        LevelLoop(settings, run_dir=root).run()


@pytest.mark.parametrize("name,recomputed", [("swamp", True), ("colt", False)])
def test_old_run_directories_without_a_next_mask_file(tiny, name, recomputed):
    settings = tiny(method=name, levels=1, epochs=1)
    root = LevelLoop(settings).run().run_dir
    store = RunStore(root)
    saved = Mask.load(store.next_mask_path(0))
    store.next_mask_path(0).unlink()
    sums = read_json(store.checksums_path)
    write_json(store.checksums_path, {k: v for k, v in sums.items()   # as an old version wrote
                                      if not k.startswith("level_1/") and k != "__self__"
                                      and not k.endswith("next_mask.safetensors")})
    shutil.rmtree(store.level_dir(1))
    if recomputed:     # a method that prunes its solution prunes the saved one again
        assert LevelLoop(settings, run_dir=root).run().mask(1) == saved
    else:              # a mask combination needs the particles: one line, no guess
        with pytest.raises(SwampError, match="next_mask.safetensors"):
            LevelLoop(settings, run_dir=root).run()
