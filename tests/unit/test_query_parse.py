"""Query language v1: parsing, errors, canonical text, and the Python semantics."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osa_grid.core.metadata import MetaValue
from osa_grid.core.query import (
    INT64_MAX,
    INT64_MIN,
    KEYWORDS,
    OPERATORS,
    WORD_CHARS,
    And,
    Comparison,
    Exists,
    InDataset,
    InList,
    Node,
    Not,
    Or,
    QueryMismatch,
    Range,
    Span,
    check_against_catalog,
    datasets,
    evaluate,
    keys,
    parse,
    replace_datasets,
    satisfiable,
    to_text,
)
from osa_grid.core.query import _comparable as comparable_pair
from osa_grid.errors import BadInput, QuerySyntaxError

C = Comparison

# ------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run_id = 1807", C("run_id", "=", 1807)),
        ("run_id=1807", C("run_id", "=", 1807)),
        ("run_id != -3", C("run_id", "!=", -3)),
        ("x < 1.5", C("x", "<", 1.5)),
        ("x <= 1e3", C("x", "<=", 1000.0)),
        ("x > .5", C("x", ">", 0.5)),
        ("x >= +7", C("x", ">=", 7)),
        ("night >= 2024-01-01", C("night", ">=", date(2024, 1, 1))),
        ("t < 2024-01-01T20:00:00", C("t", "<", datetime(2024, 1, 1, 20))),
        ("t < 2024-01-01T20:00:00Z", C("t", "<", datetime(2024, 1, 1, 20, tzinfo=UTC))),
        (
            "t < 2024-01-01T20:00:00.25+01:00",
            C("t", "<", datetime(2024, 1, 1, 20, 0, 0, 250000, tzinfo=timezone(timedelta(hours=1)))),
        ),
        ('source = "Crab Nebula"', C("source", "=", "Crab Nebula")),
        ("source = 'Crab'", C("source", "=", "Crab")),
        (r'source = "a\"b\\c"', C("source", "=", 'a"b\\c')),
        (r"source = 'it\'s'", C("source", "=", "it's")),
        ('run_id = "1807"', C("run_id", "=", "1807")),
        ('x = ""', C("x", "=", "")),
        ("data_level = DL1", C("data_level", "=", "DL1")),
        ("level = R0", C("level", "=", "R0")),
        ("telescope = LST-1", C("telescope", "=", "LST-1")),
        ("version = 0.12.3", C("version", "=", "0.12.3")),
        ("v = 1807abc", C("v", "=", "1807abc")),
        ("v = nan", C("v", "=", "nan")),
        ("path = /fefs/data:1", C("path", "=", "/fefs/data:1")),
        ("name ~ dl1_*.h5", C("name", "~", "dl1_*.h5")),
        ("name ~ 'Run?????.*'", C("name", "~", "Run?????.*")),
        ("night ~ 2024-01-*", C("night", "~", "2024-01-*")),
        ("obs.source_name = Crab", C("obs.source_name", "=", "Crab")),
        ("_k = 1", C("_k", "=", 1)),
        ("run_id in (1807, 1808)", InList("run_id", (1807, 1808))),
        ("run_id in(1807)", InList("run_id", (1807,))),
        ("level not in (DL1, 'DL 2', 3)", InList("level", ("DL1", "DL 2", 3), negated=True)),
        ("a = 1 AND b = 2", And((C("a", "=", 1), C("b", "=", 2)))),
        ("a = 1 Or b = 2 oR c = 3", Or((C("a", "=", 1), C("b", "=", 2), C("c", "=", 3)))),
        ("NOT a = 1", Not(C("a", "=", 1))),
        ("a NOT IN (1)", InList("a", (1,), negated=True)),
        ("not not a = 1", Not(Not(C("a", "=", 1)))),
        ("  ( ( a = 1 ) )  ", C("a", "=", 1)),
        ("night in 2024-01-01..2024-03-31", Range("night", date(2024, 1, 1), date(2024, 3, 31))),
        ("run_id in 1000..2000", Range("run_id", 1000, 2000)),
        ("run_id in 1000 .. 2000", Range("run_id", 1000, 2000)),
        ("run_id in 1000.. 2000", Range("run_id", 1000, 2000)),
        ("run_id in 1000 ..2000", Range("run_id", 1000, 2000)),
        ("x in -2..-1", Range("x", -2, -1)),
        ("x in 0.5..1e3", Range("x", 0.5, 1000.0)),
        ("x in 1..1", Range("x", 1, 1)),
        ("x NOT IN 1..2", Range("x", 1, 2, negated=True)),
        ("source in A..M", Range("source", "A", "M")),
        ("source in 'a b'..\"c d\"", Range("source", "a b", "c d")),
        ("v in 'a.'..b", Range("v", "a.", "b")),
        (
            "start in 2024-01-01T20:00:00Z..2024-01-02",
            Range("start", datetime(2024, 1, 1, 20, tzinfo=UTC), date(2024, 1, 2)),
        ),
        ("v = 0..1", C("v", "=", "0..1")),  # outside 'in', '..' is part of a word as before
        ("exists run_id", Exists("run_id")),
        ("EXISTS obs.source", Exists("obs.source")),
        ("not exists run_id", Not(Exists("run_id"))),
        ("exists exists", Exists("exists")),
        ("exists = 1", C("exists", "=", 1)),  # 'exists' is a keyword only before a key
        ("dataset = x", C("dataset", "=", "x")),
        ("in dataset crab-2024", InDataset("crab-2024")),
        ("IN DATASET 'crab.v2'", InDataset("crab.v2")),
        ("a = 1 and not in dataset bad_runs", And((C("a", "=", 1), Not(InDataset("bad_runs"))))),
    ],
)
def test_parse_examples(text: str, expected: Node) -> None:
    assert parse(text) == expected


def test_precedence_not_and_or() -> None:
    a, b, c = C("a", "=", 1), C("b", "=", 2), C("c", "=", 3)
    assert parse("a = 1 or b = 2 and c = 3") == Or((a, And((b, c))))
    assert parse("a = 1 and b = 2 or c = 3") == Or((And((a, b)), c))
    assert parse("not a = 1 and b = 2") == And((Not(a), b))
    assert parse("not (a = 1 and b = 2)") == Not(And((a, b)))
    assert parse("(a = 1 or b = 2) and c = 3") == And((Or((a, b)), c))
    # Parentheses keep their own node: the tree is what was written.
    assert parse("(a = 1 and b = 2) and c = 3") == And((And((a, b)), c))


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("", 0, "empty query"),
        ("   ", 0, "empty query"),
        ("run_id", 6, "expected an operator"),
        ("run_id 1807", 7, "expected an operator"),
        ("run_id =", 8, "missing value"),
        ("run_id = and b = 1", 9, "missing value"),
        ("run_id = )", 9, "missing value"),
        ("a == 1", 2, "unknown operator '=='"),
        ("a => 1", 2, "unknown operator '=>'"),
        ("a =< 1", 2, "unknown operator '=<'"),
        ("a <> 1", 2, "unknown operator '<>'"),
        ("a ! 1", 2, "unknown operator '!'"),
        ("(a = 1", 0, "'(' is never closed"),
        ("a = 1 and (b = 2 or (c = 3)", 10, "'(' is never closed"),
        ("a = 1)", 5, "')' without a matching '('"),
        ("(a = 1 b = 2)", 7, "expected 'and', 'or' or ')'"),
        ("a = 1 b = 2", 6, "trailing input"),
        ("a = 1 not", 6, "trailing input"),
        ('a = "Crab', 4, "unterminated string"),
        ("a = 'x\\'", 4, "unterminated string"),
        ('a = "x\\n"', 6, "unknown escape"),
        ("a ~ 5", 4, "glob '~' needs a string"),
        ("a ~ 2024-01-01", 4, "glob '~' needs a string"),
        ("a in ()", 6, "missing value"),
        ("a in (1,)", 8, "missing value"),
        ("a in (1 2)", 8, "expected ',' or ')'"),
        ("a in (1, 2", 5, "'(' is never closed"),
        ("a in 1", 5, "expected '('"),
        ("a not = 1", 6, "expected 'in' after 'not'"),
        ('"a" = 1', 0, "keys are not quoted"),
        ("= 1", 0, "expected a key"),
        ("a = 1 and", 9, "expected a key"),
        ("and = 1", 0, "keyword"),
        ("LST-1 = x", 0, "not a valid key"),
        ("1a = x", 0, "not a valid key"),
        ("a = 2024-13-01", 4, "not one"),
        ("a = 1e400", 4, "out of range"),
        ("a = 9223372036854775808", 4, "out of range"),
        ("a = 1 & b = 2", 6, "unexpected character '&'"),
        ("a = Crabé", 8, "unexpected character"),
        ("a = 1 and b = 2 and ()", 21, "expected a key"),
        ("not " * 150 + "a = 1", 400, "nested deeper"),
        ("a in", 4, "expected '(' or a range"),
        ("a in 1 2", 5, "expected '(' or a range"),
        ("a in ..2", 5, "missing the lower bound"),
        ("a in 1..", 8, "missing value after '..'"),
        ("a in 1.. and b = 1", 9, "missing value after '..'"),
        ("a in 2..1", 5, "empty range"),
        ("a in b..a", 5, "empty range"),
        ("a in 1..b", 5, "must both be numbers or both be text"),
        ("a in 2024-01-01..5", 5, "must both be numbers or both be text"),
        ("a in 1..2..3", 5, "must both be numbers or both be text"),
        ("a in (1)..2", 8, "trailing input"),
        ("a in ~..2", 5, "expected '(' or a range"),
        ("exists", 6, "expected an operator"),
        ("exists 1a", 7, "not a valid key"),
        ("exists and", 7, "expected an operator"),
        ("exists a = 1", 9, "trailing input"),
        ("in", 2, "expected 'dataset'"),
        ("in data x", 3, "expected 'dataset'"),
        ("in dataset", 10, "expected a dataset name"),
        ("in dataset (x)", 11, "expected a dataset name"),
        ("in dataset 1x", 11, "not a valid dataset name"),
        ("in dataset and", 11, "keyword"),
        ("in dataset x = 1", 13, "trailing input"),
    ],
)
def test_syntax_errors(text: str, position: int, fragment: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse(text)
    assert fragment in info.value.reason
    assert info.value.position == position
    assert info.value.text == text
    assert isinstance(info.value, BadInput)


def test_error_message_shows_a_caret_under_the_token() -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse("run_id == 1807")
    assert str(info.value).splitlines()[-1] == "  " + " " * 7 + "^"


def test_leftmost_error_wins() -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse('a 1 = "unterminated')
    assert info.value.position == 2


def test_int64_bounds_are_accepted() -> None:
    assert parse(f"a = {INT64_MAX}") == C("a", "=", INT64_MAX)
    assert parse(f"a = {INT64_MIN}") == C("a", "=", INT64_MIN)


# ------------------------------------------------------------------------- AST construction


@pytest.mark.parametrize(
    "build",
    [
        lambda: C("a", "==", 1),  # type: ignore[arg-type]
        lambda: C("a", "~", 1),
        lambda: C("a", "=", True),
        lambda: C("a", "=", float("nan")),
        lambda: C("a", "=", float("inf")),
        lambda: C("a", "=", 2**63),
        lambda: C("a", "=", "x\x00"),
        lambda: C("and", "=", 1),
        lambda: C("a-b", "=", 1),
        lambda: InList("a", ()),
        lambda: And((C("a", "=", 1),)),
        lambda: Or(()),
        lambda: Range("a", 2, 1),
        lambda: Range("a", 1, "b"),
        lambda: Range("a", "b", "a"),
        lambda: Range("a", 1, float("inf")),
        lambda: Exists("in"),
        lambda: InDataset("1x"),
        lambda: InDataset("or"),
        lambda: InDataset("a b"),
    ],
)
def test_invalid_nodes_are_refused(build: object) -> None:
    with pytest.raises(BadInput):
        build()  # type: ignore[operator]


def test_nodes_take_lists_and_stay_hashable() -> None:
    node = And([C("a", "=", 1), InList("b", [1, 2])])  # type: ignore[arg-type]
    assert isinstance(node.items, tuple)
    assert hash(node) == hash(parse("a = 1 and b in (1, 2)"))


# --------------------------------------------------------------------------- canonical text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("run_id=1807", "run_id = 1807"),
        ("A = 1 AND NOT b = 2 OR c = 3", "A = 1 and not b = 2 or c = 3"),
        ("x in(1,2.0,DL1,'a b')", 'x in (1, 2.0, DL1, "a b")'),
        ("x NOT IN (1)", "x not in (1)"),
        ("x = 1e3", "x = 1000.0"),
        ("x = 1e20", "x = 1e+20"),
        ("x = 'DL1'", "x = DL1"),
        ("x = '1807'", 'x = "1807"'),
        ("x = 'or'", 'x = "or"'),
        ("x = '2024-13-01'", 'x = "2024-13-01"'),
        ("x = 'it\\'s'", 'x = "it\'s"'),
        ("t = 2024-01-01T21:00:00+01:00", "t = 2024-01-01T20:00:00Z"),
        ("t = 2024-01-01T21:00:00", "t = 2024-01-01T21:00:00"),
        ("not (a = 1 or b = 2)", "not (a = 1 or b = 2)"),
        ("(a = 1 or b = 2) or c = 3", "(a = 1 or b = 2) or c = 3"),
        ("a = 1 and (b = 2 and c = 3)", "a = 1 and (b = 2 and c = 3)"),
        ("((a = 1))", "a = 1"),
        ("night IN 2024-01-01 .. 2024-03-31", "night in 2024-01-01..2024-03-31"),
        ("x not in 1 .. 2.5", "x not in 1..2.5"),
        ("x in 'a.' .. 'b.'", 'x in "a.".."b."'),
        ("x in '.a' .. b", 'x in ".a"..b'),
        ("x in 'a..b'..c", 'x in "a..b"..c'),
        ("x = 'a..b'", 'x = "a..b"'),
        ("EXISTS k", "exists k"),
        ("In Dataset 'crab'", "in dataset crab"),
        ("not in dataset a or exists b", "not in dataset a or exists b"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    node = parse(text)
    assert to_text(node) == canonical
    assert parse(canonical) == node


# --------------------------------------------------------------------------- property tests

KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,12}", fullmatch=True).filter(
    lambda k: k.lower() not in KEYWORDS
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
WORDISH = st.text(st.sampled_from(sorted(WORD_CHARS)), min_size=1, max_size=12)
OFFSET = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
TZ = st.none() | st.just(UTC) | OFFSET.map(timezone)
DATETIME = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=TZ)
LITERAL: st.SearchStrategy[MetaValue] = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    WORDISH,
    st.sampled_from(["and", "OR", "Not", "in", "-", "+", "1807", "0.12.3", "2024-01-01", "2024-13-01"]),
    st.dates(),
    DATETIME,
)


@st.composite
def comparisons(draw: st.DrawFn) -> Comparison:
    op = draw(st.sampled_from(OPERATORS))
    value = draw(TEXT | WORDISH) if op == "~" else draw(LITERAL)
    return Comparison(draw(KEY), op, value)


NUMBER = st.integers(INT64_MIN, INT64_MAX) | st.floats(allow_nan=False, allow_infinity=False)
TEXTUAL = TEXT | WORDISH | st.sampled_from(["a.", ".b", "a..b", "..", "2024-01-01"]) | st.dates() | DATETIME


@st.composite
def ranges(draw: st.DrawFn) -> Range:
    """Bounds of one kind, in order (equal bounds too): the ranges the AST accepts."""
    kind = draw(st.sampled_from([NUMBER, TEXTUAL]))
    low, high = draw(kind), draw(kind)
    pair = comparable_pair(low, high)
    assert pair is not None
    if pair[0] > pair[1]:
        low, high = high, low
    return Range(draw(KEY), low, high, draw(st.booleans()))


DATASET = st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,10}", fullmatch=True).filter(
    lambda name: name.lower() not in KEYWORDS
)
LEAF = (
    comparisons()
    | st.builds(InList, KEY, st.lists(LITERAL, min_size=1, max_size=4).map(tuple), st.booleans())
    | ranges()
    | st.builds(Exists, KEY)
)


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    items = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.builds(Not, children) | st.builds(And, items) | st.builds(Or, items)


NODES: st.SearchStrategy[Node] = st.recursive(LEAF, _extend, max_leaves=12)
# Datasets only for syntax: Python cannot evaluate them (the catalog does).
ANY_NODES: st.SearchStrategy[Node] = st.recursive(
    LEAF | st.builds(InDataset, DATASET), _extend, max_leaves=12
)


def typed(value: MetaValue) -> tuple[str, MetaValue, bool]:
    """Equality that also tells 1 from 1.0 and naive from aware datetimes."""
    naive = isinstance(value, datetime) and value.tzinfo is None
    return type(value).__name__, value, naive


def shape(node: Node) -> object:
    if isinstance(node, Comparison):
        return ("cmp", node.key, node.op, typed(node.value))
    if isinstance(node, InList):
        return ("in", node.key, node.negated, tuple(typed(v) for v in node.values))
    if isinstance(node, Range):
        return ("range", node.key, node.negated, typed(node.low), typed(node.high))
    if isinstance(node, Exists):
        return ("exists", node.key)
    if isinstance(node, InDataset):
        return ("dataset", node.name)
    if isinstance(node, Not):
        return ("not", shape(node.item))
    return (type(node).__name__, tuple(shape(item) for item in node.items))


@settings(max_examples=500)
@given(ANY_NODES)
def test_round_trip(node: Node) -> None:
    text = to_text(node)
    parsed = parse(text)
    assert parsed == node
    assert shape(parsed) == shape(node)
    assert to_text(parsed) == text


@settings(max_examples=300)
@given(st.text(st.sampled_from(list(" ()=!<>~,\"'\\aAnNdDoOrRtTiI01-.:*?_xé")), max_size=30))
def test_parse_raises_only_syntax_errors(text: str) -> None:
    try:
        node = parse(text)
    except QuerySyntaxError as exc:
        assert 0 <= exc.position <= len(text)
    else:
        assert parse(to_text(node)) == node


RANGE_TOKENS = [
    "in",
    "not",
    "exists",
    "dataset",
    "..",
    "...",
    "1",
    "2",
    "-1",
    "0.5",
    "a",
    "b",
    "k",
    "'x'",
    '"a."',
    "(",
    ")",
    ",",
    "=",
    "and",
    "or",
    "2024-01-01",
    "2024-01-01T20:00:00Z",
    "a..b",
    "1..2",
]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(RANGE_TOKENS), max_size=10), st.lists(st.booleans(), max_size=10))
def test_parse_of_new_constructs_raises_only_syntax_errors(tokens: list[str], glue: list[bool]) -> None:
    # Tokens glued together or apart: '1..2', '1 ..2', 'in..', 'exists(' ... never crash the parser.
    text = "".join(tok + (" " if i >= len(glue) or glue[i] else "") for i, tok in enumerate(tokens))
    try:
        node = parse(text)
    except QuerySyntaxError as exc:
        assert 0 <= exc.position <= len(text)
    else:
        assert parse(to_text(node)) == node


# ------------------------------------------------------------------------------- semantics

MD: dict[str, MetaValue] = {
    "run_id": 1807,
    "night": date(2024, 1, 1),
    "start": datetime(2024, 1, 1, 20, tzinfo=UTC),
    "naive": datetime(2024, 1, 1, 20),
    "night_text": "2024-01-01",
    "data_level": "DL1",
    "zenith": 20.5,
    "version": "0.12.3",
    "name": "LST-1.1.Run01807.0000.fits.fz",
    "big": 2**53 + 1,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run_id = 1807", True),
        ("run_id = 1807.0", True),  # int metadata, float literal: numeric
        ("run_id = '1807'", False),  # number vs string: false, not an error
        ("run_id != '1807'", False),  # ... also for !=
        ("run_id != 1808", True),
        ("run_id < 2000 and run_id >= 1807", True),
        ("missing = 1", False),
        ("missing != 1", False),
        ("not missing = 1", True),
        ("not run_id = 5", True),
        ("run_id in (1, 1807)", True),
        ("run_id in (1, 2)", False),
        ("run_id in (x, 1807.0)", True),
        ("run_id not in (1, 2)", True),
        ("run_id not in (1807, 2)", False),
        ("run_id not in (x)", False),  # nothing to compare with: like run_id != x
        ("run_id not in (x, 1)", True),
        ("missing not in (1)", False),
        ("data_level = DL1", True),
        ("data_level = dl1", False),
        ("data_level > DL0 and data_level < DL2", True),
        ("data_level ~ DL*", True),
        ("data_level ~ dl*", False),  # globs are case-sensitive
        ("data_level ~ D?1", True),
        ("data_level ~ D?", False),
        ("data_level ~ '[D]L1'", False),  # no character classes: '[' is literal
        ("name ~ 'LST-1.?.Run01807.*.fits.fz'", True),
        ("run_id ~ '18*'", False),  # globs match text only
        ("zenith > 20", True),
        ("zenith = 20.5", True),
        ("zenith ~ '20*'", False),
        ("version = 0.12.3", True),
        ("night = 2024-01-01", True),
        ("night = '2024-01-01'", True),  # string literal vs date: ISO text
        ("night >= 2024-01-01 and night < 2024-01-02", True),
        ("night ~ 2024-01-*", True),
        ("night = 20240101", False),
        ("night_text = 2024-01-01", True),  # date literal vs string metadata: text too
        ("start >= 2024-01-01 and start < 2024-01-02", True),
        ("start = 2024-01-01T21:00:00+01:00", True),  # same instant, same UTC text
        ("start = 2024-01-01T20:00:00", True),  # naive means UTC
        ("naive = 2024-01-01T20:00:00Z", True),
        ("start ~ '2024-01-01T20:*'", True),
        ("start = 2024-01-01", False),  # textual: a date is not a datetime
        ("big = 9007199254740993", True),  # int vs int is exact beyond 2**53
        ("big = 9007199254740992", False),
        ("big = 9007199254740992.0", True),  # int vs float compares as doubles
        ("run_id in 1800..1807", True),  # both ends included
        ("run_id in 1807..1900", True),
        ("run_id in 1807.0..1807.0", True),
        ("run_id in 1808..1900", False),
        ("run_id not in 1808..1900", True),
        ("run_id not in 1800..1807", False),
        ("run_id in a..z", False),  # text bounds, number value: false, as '=' would be
        ("run_id not in a..z", False),  # ... and not its complement either
        ("missing not in 1..2", False),
        ("night in 2024-01-01..2024-01-31", True),
        ("night in 2023-12-01..2023-12-31", False),
        ("night in '2024-01-01'..'2024-01-01'", True),
        ("start in 2024-01-01..2024-01-02", True),  # datetimes sort between their dates
        ("start in 2024-01-01T20:00:00Z..2024-01-01T20:00:00Z", True),
        ("data_level in DL0..DL2", True),
        ("data_level in DL2..DL3", False),
        ("big in 9007199254740993..9007199254740993", True),
        ("big in 9007199254740992..9007199254740992", False),
        ("exists run_id", True),
        ("exists missing", False),
        ("not exists missing", True),
    ],
)
def test_evaluate(text: str, expected: bool) -> None:
    assert evaluate(parse(text), MD) is expected
    assert evaluate(Not(parse(text)), MD) is not expected


def test_evaluate_refuses_boolean_metadata() -> None:
    with pytest.raises(BadInput):
        evaluate(parse("flag = 1"), {"flag": True})


@pytest.mark.parametrize(
    ("text", "known", "open_keys", "expected"),
    [
        ("data_level = DL1 and run_id > 0", {"data_level": "DL1"}, True, True),
        ("data_level = DL1 and run_id > 0", {"data_level": "DL1"}, False, False),
        ("data_level = DL1 and run_id > 0", {"data_level": "DL2"}, True, False),
        ("data_level = DL1 and run_id > 0", {"data_level": "DL1", "run_id": 3}, False, True),
        ("not data_level = DL1", {"data_level": "DL1"}, True, False),
        ("not x = 1", {}, False, True),
        ("not x = 1", {}, True, True),
        ("x = 1 or data_level = DL1", {"data_level": "DL2"}, True, True),
        ("x = 1 or data_level = DL1", {"data_level": "DL2"}, False, False),
        ("x = 1 and not x = 1", {}, True, True),  # Kleene: sound, not complete
        ("x = 1 and not x = 1", {}, False, False),
        ("data_level in (DL2, DL3) or x ~ '*'", {"data_level": "DL1"}, False, False),
    ],
)
def test_satisfiable(text: str, known: dict[str, MetaValue], open_keys: bool, expected: bool) -> None:
    assert satisfiable(parse(text), known, open_keys=open_keys) is expected


@settings(max_examples=100)
@given(NODES, st.data())
def test_satisfiable_agrees_with_evaluate_when_everything_is_known(node: Node, data: st.DataObject) -> None:
    metadata = data.draw(st.dictionaries(st.sampled_from(sorted(keys(node))), LITERAL))
    assert satisfiable(node, metadata, open_keys=False) == evaluate(node, metadata)
    if evaluate(node, metadata):
        assert satisfiable(node, {}, open_keys=True)


def test_keys() -> None:
    assert keys(parse("a = 1 and (b.c in (1) or not d ~ x)")) == {"a", "b.c", "d"}
    assert keys(parse("a = 1 or a = 2")) == {"a"}


def test_keys_and_datasets_of_new_constructs() -> None:
    node = parse("a in 1..2 and exists b and not in dataset d1 or in dataset d2")
    assert keys(node) == {"a", "b"}
    assert datasets(node) == {"d1", "d2"}


def test_in_dataset_cannot_be_evaluated_but_may_be_satisfied() -> None:
    node = parse("in dataset crab and data_level = DL1")
    with pytest.raises(BadInput, match="catalog"):
        evaluate(node, {"data_level": "DL1"})
    assert satisfiable(node, {"data_level": "DL1"}, open_keys=False)
    assert not satisfiable(node, {"data_level": "DL2"}, open_keys=False)


def test_replace_datasets_inlines_queries() -> None:
    node = parse("a = 1 and (in dataset x or not in dataset y)")
    inlined = replace_datasets(node, lambda leaf: parse(f"name = {leaf.name}"))
    assert inlined == parse("a = 1 and (name = x or not name = y)")


def test_spans_point_at_keys_and_values() -> None:
    text = "run_id in (1, 22) and night in 2024-01-01..2024-02-01 and exists k and in dataset d"
    leaves = parse(text).items  # type: ignore[union-attr]
    assert leaves[0].span == Span(0, (11, 14))
    assert leaves[1].span == Span(22, (31, 43))
    assert leaves[2].span == Span(65)
    assert leaves[3].span == Span(82)
    # Spans never change what a node is.
    assert leaves[0] == InList("run_id", (1, 22)) and hash(leaves[0]) == hash(InList("run_id", (1, 22)))


# ------------------------------------------------------------------------ checks against a catalog

KEY_TYPES = {
    "run_id": {"int"},
    "zenith": {"float", "int"},
    "night": {"date"},
    "start": {"datetime"},
    "data_level": {"str"},
    "mixed": {"int", "str"},
}


@pytest.mark.parametrize(
    "text",
    [
        "run_id = 1807",
        "run_id = 1807.0",
        "zenith > 20 and zenith in 10..30",
        "night in 2024-01-01..2024-03-31",
        "night >= '2024-01-01'",
        "start >= 2024-01-01",  # a date bounds datetimes: fine for order
        "start in 2024-01-01..2024-01-02",
        "data_level in (DL1, DL2) and data_level ~ 'DL*'",
        "mixed = 3 or mixed = x or mixed ~ 'x*'",
        "exists run_id and not exists zenith",
        "in dataset anything",  # datasets are the catalog's business
        "run_id not in (1, 2)",
    ],
)
def test_queries_that_fit_the_catalog(text: str) -> None:
    check_against_catalog(parse(text), KEY_TYPES, text)


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("nigth = 2024-01-01", 0, "unknown key 'nigth'"),
        ("run_id = 1 and exists nigth", 22, "did you mean 'night'"),
        ("Run_ID = 1", 0, "did you mean 'run_id'"),
        ("run_id = DL1", 9, "run_id holds int values, DL1 is a string"),
        ("run_id = '1807'", 9, "write it without quotes"),
        ("data_level = 1", 13, "quote it to compare text"),
        ("run_id in (1, 2, x)", 17, "x is a string"),
        ("run_id in a..b", 10, "a is a string"),
        ("night in 1..2", 9, "1 is an integer"),
        ("run_id ~ '18*'", 9, "a glob '~' matches text only"),
        (
            "start = 2024-01-01",
            8,
            "never equal to a date (a range selects the day: start in 2024-01-01..2024-01-02)",
        ),
        ("start in (2024-01-01)", 10, "never equal"),
        ("night = 2024-01-01T20:00:00Z", 8, "holds date values, never equal to a datetime"),
        ("zenith > 1 or (night = 2024-01-01 and run_id = x)", 47, "run_id holds int values"),
    ],
)
def test_queries_that_do_not_fit_the_catalog(text: str, position: int, fragment: str) -> None:
    with pytest.raises(QueryMismatch) as info:
        check_against_catalog(parse(text), KEY_TYPES, text)
    assert fragment in info.value.reason
    assert info.value.position == position
    assert str(info.value).splitlines()[-1] == "  " + " " * position + "^"
    assert isinstance(info.value, BadInput)


def test_an_empty_catalog_says_so() -> None:
    with pytest.raises(QueryMismatch, match="holds no metadata yet"):
        check_against_catalog(parse("a = 1"), {}, "a = 1")


def test_nodes_built_in_code_are_checked_too() -> None:
    with pytest.raises(QueryMismatch) as info:
        check_against_catalog(Comparison("run_id", "=", "x"), KEY_TYPES)
    assert info.value.text == "run_id = x"
