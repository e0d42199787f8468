"""Property-based fuzzing of the settings loader and the command-line parser: whatever a
settings file or a command line holds, the result is settings or one SwampError line,
never another exception."""

import json

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from swamp.app.cli import build_parser
from swamp.app.flags import settings_from_args
from swamp.config import SECTIONS, Settings, field_owners
from swamp.errors import SwampError

NAMES = sorted(field_owners())
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**13, 10**13),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.one_of(scalars, st.lists(scalars, max_size=3))
keys = st.one_of(st.sampled_from(NAMES), st.sampled_from(sorted(SECTIONS)),
                 st.text(max_size=10))
documents = st.dictionaries(keys, st.one_of(values, st.dictionaries(
    st.one_of(st.sampled_from(NAMES), st.text(max_size=8)), values, max_size=4)), max_size=6)


def settle(values):
    try:
        Settings.from_dict(values).resolved()
    except SwampError as exc:
        assert "\n" not in str(exc)


@hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_mapping_is_settings_or_one_line(doc):
    settle(doc)


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
@hsettings(max_examples=300, deadline=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=80),
                     documents.map(lambda d: json.dumps(d, default=str).encode())))
def test_any_file_is_settings_or_one_line(tmp_path, suffix, raw):
    path = tmp_path / f"s{suffix}"
    path.write_bytes(raw)
    try:
        Settings.from_file(path).resolved()
    except SwampError as exc:
        assert "\n" not in str(exc)


flag_words = st.sampled_from(["--" + n.replace("_", "-") for n in NAMES] +
                             ["--no-augment", "--preset", "--config", "--run-dir"])
argv = st.lists(st.one_of(flag_words, st.text(max_size=8),
                          st.integers(-10**12, 10**12).map(str),
                          st.floats().map(str)), max_size=8)


@hsettings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv)
def test_any_command_line_is_settings_or_one_line(words):
    parser = build_parser()
    try:
        args = parser.parse_args(["run", *words])
        settings_from_args(args).resolved()
    except SwampError as exc:
        assert "\n" not in str(exc)
    except SystemExit:                  # --help and friends print and exit, as argparse does
        pass


def test_absurd_values_are_refused_naming_the_limit():
    for key, value in [("data_size", 10**11), ("batch_size", 10**12), ("particles", 10**9),
                       ("threads", 10**5), ("levels", 10**12)]:
        with pytest.raises(SwampError, match=f"`{key}`"):
            Settings.from_dict({key: value}).resolved()
