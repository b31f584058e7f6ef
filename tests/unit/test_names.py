"""Metadata read from file names."""

from __future__ import annotations

import re
from datetime import date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from osa_grid.core.names import _Matcher, metadata_from_name, name_pattern
from osa_grid.errors import BadInput

LST = "LST-1.{stream:d}.Run{run_id:d}.{subrun_id:d}.fits.fz"


def test_lst_raw_file_name() -> None:
    assert metadata_from_name(LST, "LST-1.3.Run01807.0042.fits.fz") == {
        "stream": 3,
        "run_id": 1807,
        "subrun_id": 42,
    }


@pytest.mark.parametrize(
    ("template", "name", "expected"),
    [
        ("r{n:int}.h5", "r-12.h5", {"n": -12}),
        ("z{zenith:f}.h5", "z20.5.h5", {"zenith": 20.5}),
        ("z{zenith:float}_x", "z-1e3_x", {"zenith": -1000.0}),
        ("{src:s}_{run_id:d}.h5", "Crab_5.h5", {"src": "Crab", "run_id": 5}),
        ("{src:str}.txt", "0042.txt", {"src": "0042"}),  # forced text keeps its zeros
        ("v{version}.txt", "v0.10.1.txt", {"version": "0.10.1"}),
    ],
)
def test_typed_fields(template: str, name: str, expected: dict[str, object]) -> None:
    found = metadata_from_name(template, name)
    assert found == expected
    assert [type(v) for v in found.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1807", 1807),
        ("-3", -3),
        ("2.5", 2.5),
        ("2024-01-02", date(2024, 1, 2)),
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5)),
        ("DL1", "DL1"),
        ("0.12.3", "0.12.3"),
    ],
)
def test_untyped_fields_are_typed_like_literals(text: str, expected: object) -> None:
    (value,) = metadata_from_name("x_{v}.h5", f"x_{text}.h5").values()
    assert value == expected
    assert type(value) is type(expected)


def test_untyped_fields_are_shortest_first() -> None:
    assert metadata_from_name("{a}_{b}", "x_y_z") == {"a": "x", "b": "y_z"}


def test_regex_characters_in_the_template_are_literal() -> None:
    assert metadata_from_name("a.b+{n:d}(x)", "a.b+7(x)") == {"n": 7}
    with pytest.raises(BadInput):
        metadata_from_name("a.b+{n:d}(x)", "aXb+7(x)")


@pytest.mark.parametrize(
    "name",
    [
        "LST-1.3.Run01807.0042.fits",  # suffix missing
        "LST-1.x.Run01807.0042.fits.fz",  # not an int
        "LST-2.3.Run01807.0042.fits.fz",
        "prefix_LST-1.3.Run01807.0042.fits.fz",
        "",
    ],
)
def test_mismatch_is_an_error(name: str) -> None:
    with pytest.raises(BadInput) as info:
        metadata_from_name(LST, name)
    assert "does not match the pattern" in str(info.value)
    assert repr(name) in str(info.value)


def test_duplicate_field_is_an_error() -> None:
    with pytest.raises(BadInput, match=r"field \{run_id\} appears twice"):
        name_pattern("Run{run_id:d}.{run_id:d}.h5")


def test_untyped_value_that_looks_like_a_bad_date() -> None:
    with pytest.raises(BadInput, match="looks like a date"):
        metadata_from_name("n_{night}.h5", "n_2024-13-45.h5")


@pytest.mark.parametrize("template", ["x_{a:q}", "x_{a", "x_}", "{a b}", "{1a}"])
def test_malformed_fields_at_the_end(template: str) -> None:
    with pytest.raises(BadInput, match="malformed field"):
        name_pattern(template)


@pytest.mark.parametrize("template", ["{a:q}_{b:d}", "{bad-name}_{run_id:d}", "{x_{run_id:d}"])
def test_malformed_fields_anywhere(template: str) -> None:
    # BUG: names.name_pattern only looks for stray braces after the last valid field; a malformed
    # field before a valid one is taken as literal text ("{a:q}_5" then matches the pattern).
    with pytest.raises(BadInput, match="malformed field"):
        name_pattern(template)


@pytest.mark.parametrize("name", ["x_1.2.3.h5", "x_-.h5", "x_e.h5", "x_..h5"])
def test_float_fields_that_do_not_parse_are_bad_input(name: str) -> None:
    # BUG: the {v:f} pattern [+-]?[\d.eE+-]+ matches text float() refuses; the ValueError escapes
    # metadata_from_name instead of a BadInput saying the name does not match.
    with pytest.raises(BadInput):
        metadata_from_name("x_{v:f}.h5", name)


@given(stream=st.integers(1, 4), run=st.integers(0, 99999), subrun=st.integers(0, 9999))
def test_lst_names_round_trip(stream: int, run: int, subrun: int) -> None:
    name = f"LST-1.{stream}.Run{run:05d}.{subrun:04d}.fits.fz"
    assert metadata_from_name(LST, name) == {"stream": stream, "run_id": run, "subrun_id": subrun}


def test_many_untyped_fields_on_a_name_that_does_not_match_is_decided_without_backtracking() -> None:
    # A regular expression of 20 lazy groups backtracked for minutes on this; the matcher decides each
    # (piece, position) pair once, which the count of decisions shows.
    template = "".join(f"{{f{i}}}." for i in range(20)) + "h5"
    pattern = name_pattern(template)
    name = "a." * 100 + "fits"
    assert pattern.match(name) is None
    matcher = _Matcher(pattern._pieces, name)
    assert matcher.groups() is None
    pieces, positions = len(pattern._pieces) + 1, len(name) + 1
    assert matcher.fits.cache_info().currsize <= pieces * positions


def test_many_fields_still_match_like_a_regular_expression() -> None:
    template = "".join(f"{{f{i}}}." for i in range(20)) + "h5"
    name = ".".join(f"v{i}" for i in range(19)) + ".x.y.h5"
    found = metadata_from_name(template, name)
    assert [found[f"f{i}"] for i in range(19)] == [f"v{i}" for i in range(19)]
    assert found["f19"] == "x.y"


@pytest.mark.parametrize(
    ("template", "name", "expected"),
    [
        ("{a:d}{b:d}.h5", "12345.h5", {"a": 1234, "b": 5}),  # numbers as long as possible
        ("{a}{b:d}.h5", "ab123.h5", {"a": "ab", "b": 123}),
        ("{a:f}_{b}", "-1.5e3_rest_x", {"a": -1500.0, "b": "rest_x"}),
        ("{a}.{b}.h5", "x.y.z.h5", {"a": "x", "b": "y.z"}),
        ("{a}", "x", {"a": "x"}),
    ],
)
def test_preferences_of_a_regular_expression(template: str, name: str, expected: dict[str, object]) -> None:
    assert metadata_from_name(template, name) == expected


def test_too_many_fields_and_too_long_names() -> None:
    with pytest.raises(BadInput, match="more than 64 fields"):
        name_pattern("".join(f"{{f{i}}}_" for i in range(65)))
    assert name_pattern("{a}").match("x" * 2000) is None


def _as_regex(template: str) -> re.Pattern[str]:
    # The regular expression the matcher replaces: the reference for small cases, where it is fast.
    parts = re.split(r"(\{[a-z]+(?::d)?\})", template)
    pieces = [
        (f"(?P<{p[1:-1].split(':')[0]}>" + (r"[+-]?\d+" if p.endswith(":d}") else ".+?") + ")")
        if p.startswith("{")
        else re.escape(p)
        for p in parts
    ]
    return re.compile("^" + "".join(pieces) + "$")


@given(
    st.lists(st.sampled_from(["_", ".", "x", "1", "-"]), max_size=3).map("".join),
    st.lists(
        st.tuples(
            st.sampled_from(["", ":d"]), st.lists(st.sampled_from(["_", ".", "x"]), max_size=2).map("".join)
        ),
        min_size=1,
        max_size=4,
    ),
    st.text(alphabet="_.x1-2", max_size=12),
)
def test_the_matcher_agrees_with_the_regular_expression(
    head: str, fields: list[tuple[str, str]], name: str
) -> None:
    template = head + "".join(f"{{f{chr(97 + i)}{kind}}}{tail}" for i, (kind, tail) in enumerate(fields))
    expected = _as_regex(template).match(name)
    assert name_pattern(template).match(name) == (None if expected is None else expected.groupdict())
