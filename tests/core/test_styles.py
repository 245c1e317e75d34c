"""The term sets' style features computed outside their SQL (`rlaudit.derived.styles`) against `Behavior.sql`, i.e.
DuckDB's `regexp_matches` with the features' RE2 patterns: the byte loop (numba) and its Arrow fallback for list
and shouting, and the non-ASCII-only patterns for emoji and language switch. Deterministic under the CI
Hypothesis profile (tests/conftest.py); the numba cases are skipped when numba is not installed."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit import kernels
from rlaudit.derived import styles
from rlaudit.behaviors import parse_behavior

needs_numba = pytest.mark.skipif(not kernels.available(),
                                 reason="numba is not installed (pip install 'rlaudit[fast]'): Arrow path only")
BACKENDS = ["numpy", pytest.param("numba", marks=needs_numba)]

# the pieces the patterns turn on: line breaks (\n, \r, \r\n), RE2's whitespace and what is not (\v, U+0085,
# U+00A0, U+2028), list markers (-, *, the bullet U+2022 and its UTF-8 neighbours U+2023 and U+2019, digits
# followed by "." or ")"), capitals beside digits, underscores, lower case and accented or non-Latin letters
_PIECES = ["\n", "\n", "\r", "\r\n", "\t", " ", " ", "  ", "\x0b", "\x0c", "\x85", "\xa0", "\u2028", "\u3000",
           "-", "*", "\u2022", "\u2023", "\u2019", "1", "12", "3.", "4)", ".", ")", "1.", "2)", "١.",
           "A", "B", "ABCD", "ABCDE", "HELLO", "ABC", "x", "word", "_", "a", "9", "É", "é", "Ω", "Д", "中", "😀",
           "!", "?", "```", "'"]
_FREE = st.lists(st.one_of(st.sampled_from(_PIECES), st.sampled_from(_PIECES),
                           st.characters(exclude_categories=("Cs",))), max_size=30).map("".join)
# lines shaped like list items and near misses: indentation, a marker, a separator, the rest, joined by breaks
_SPACE = ["", "", " ", "  ", "\t", "\x0b", "\xa0", "\x0c", "\r", "\n"]
_MARK = ["-", "*", "\u2022", "\u2023", "1.", "2)", "10.", "3", "1 .", "a.", "\u0661.", "", "ABCD", "_"]
_LINE = st.tuples(st.sampled_from(_SPACE), st.sampled_from(_MARK), st.sampled_from(_SPACE + [" ", " "]),
                  st.one_of(st.sampled_from(_SPACE), _FREE)).map("".join)
_LINES = st.tuples(st.lists(_LINE, max_size=5), st.sampled_from(["\n", "\n", "\r\n", "\r", "\x0b", "\n\n"])
                   ).map(lambda lb: lb[1].join(lb[0]))
_TEXT = st.one_of(_FREE, _LINES)
_TEXTS = st.lists(st.one_of(_TEXT, _TEXT, _TEXT, st.none()), min_size=1, max_size=12)


_CON = duckdb.connect()


def _sql(texts: list[str | None], name: str) -> list[float]:
    """`Behavior.sql` of `style:NAME` over the texts, in DuckDB (as `tokens._compute_parts` computed it)."""
    con = _CON.cursor()
    con.register("x", pa.table({"i": pa.array(range(len(texts))), "t": pa.array(texts, pa.string())}))
    return [r[0] for r in con.execute(f"SELECT {parse_behavior(f'style:{name}').sql('t')} FROM x ORDER BY i"
                                      ).fetchall()]


def _check(texts: list[str | None], backend: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, backend)
        got = styles.byte_styles(pa.array(texts, pa.string()))
    assert list(got) == list(styles.BYTE_STYLES)
    for name in styles.BYTE_STYLES:
        assert got[name].type == pa.float64()
        want = _sql(texts, name)
        assert got[name].to_pylist() == want, [(t, g, w) for t, g, w in zip(texts, got[name].to_pylist(), want)
                                              if g != w]
        assert want == parse_behavior(f"style:{name}").values(pa.array(texts, pa.string())).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_byte_styles_equal_their_sql(backend: str, texts: list[str | None]) -> None:
    _check(texts, backend)


# each a case where a byte scan could go wrong, with what RE2 says (checked again against DuckDB in the test)
_LIST = {"- x": 1, "-x": 0, "- ": 0, "-": 0, "": 0, "  - x": 1, "\t* x": 1, "\u2022 x": 1, "\u2022x": 0,
         "\u2023 x": 0, "\u2019 x": 0, "1. x": 1, "1) x": 1, "12. x": 1, "1 . x": 0, "1.x": 0, "1.. x": 0,
         "a1. x": 0, "\u0661. x": 0, "x\n- y": 1, "x\r- y": 0, "x\r\n- y": 1, "x\n\n  \n\t- y": 1,
         "\x0b- x": 0, "-\x0bx": 0, "- \x0bx": 1, "-\u00a0x": 0, "- \u00e9": 1, "-\nx": 1, "-\n": 0, "- \n \n": 0,
         "1.\n\nx": 1, "1.": 0, "x - y": 0, "x\n\n": 0, "\n" * 50 + "-  " + "\n" * 50: 0, "\n" * 50 + "- z": 1,
         "** bold": 0, "para\n\n3) item": 1, "\x0c- x": 1, "\u2028- x": 0, "x\n\u2022\ty": 1}
_SHOUT = {"ABCD": 1, "ABC": 0, "ABCDE!": 1, "xABCD": 0, "ABCDx": 0, "_ABCD": 0, "ABCD_": 0, "1ABCD": 0,
          "ABCD1": 0, "ABCD-x": 1, "\u00c9COLE": 1, "\u00e9COLE": 1, "COLE\u00e9": 1, "C\u00c9OLE": 0,
          "\u0391ABCD": 1, "AB\u0301CD": 0, "ABCD\u0301": 1, "say HELLO there": 1, "Hello": 0, "HeLLO": 0,
          "A B C D": 0, "ABCD\nefg": 1, "abc ABCD": 1, "": 0, "NASA's": 1, "U.S.A.": 0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_cases(backend: str) -> None:
    texts = list(_LIST) + list(_SHOUT) + [None]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, backend)
        got = styles.byte_styles(pa.array(texts, pa.string()))
    assert got["list"].to_pylist()[:len(_LIST)] == [float(v) for v in _LIST.values()] == _sql(list(_LIST), "list")
    assert got["shouting"].to_pylist()[len(_LIST):-1] == [float(v) for v in _SHOUT.values()] \
        == _sql(list(_SHOUT), "shouting")
    assert got["list"][-1].as_py() == got["shouting"][-1].as_py() == 0.0  # a null text is ""


@pytest.mark.parametrize("backend", BACKENDS)
def test_sliced_chunked_and_long_input(backend: str) -> None:
    """Offsets not starting at 0, several chunks, long texts and a null slot with bytes behind it."""
    long = "word " * 5000 + "\n" * 3000 + "1) item"
    arr = pa.chunked_array([pa.array(["ZZZZ", "- a", None]).slice(1), pa.array([long, "x" * 9000 + " SHOUT"])])
    with_bytes = pa.Array.from_buffers(pa.string(), 1, [pa.py_buffer(b"\x00"), pa.array([0, 4], pa.int32()).buffers()[1],
                                                         pa.py_buffer(b"ABCD")])
    for texts in (arr, pa.chunked_array([with_bytes])):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(kernels.ENV, backend)
            got = styles.byte_styles(texts)
        plain = texts.to_pylist()
        for name in styles.BYTE_STYLES:
            assert got[name].to_pylist() == _sql(plain, name)
    assert styles.byte_styles(arr)["list"].to_pylist() == [1.0, 0.0, 1.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(_TEXTS)
def test_non_ascii_styles_equal_their_sql(texts: list[str | None]) -> None:
    """The emoji and language-switch features, computed on non-ASCII texts only, equal `Behavior.sql`."""
    arr = pa.array(texts, pa.string())
    for name in styles.NON_ASCII_STYLES:
        assert styles.non_ascii_style(arr, name).to_pylist() == _sql(texts, name)


@needs_numba
@settings(max_examples=200, deadline=None)
@given(_TEXTS)
def test_scan_flags_and_has_reasoning(texts: list[str | None]) -> None:
    """`scan`'s ASCII flags equal Arrow's, and the term sets' "has reasoning" decided from its `solid` flags
    (`tokens._has_reasoning`, DuckDB asked only for non-ASCII texts without a solid byte) equals its SQL, as do
    the non-ASCII styles asked of the non-ASCII texts only."""
    from rlaudit.derived import tokens
    from rlaudit.text import byte_spans, validity

    arr = pa.array(texts, pa.string())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "numba")
        found = styles.scan(arr)
    assert found is not None
    assert found.ascii.tolist() == [t is None or t.isascii() for t in texts]
    data, lo, hi = byte_spans(arr)
    place = tokens._Place(data, lo, hi, validity(arr))
    con = _CON.cursor()
    got = tokens._has_reasoning(con, place, found)
    with pytest.MonkeyPatch.context() as mp:  # the non-ASCII texts only, where they lie
        mp.setenv(kernels.ENV, "numba")
        non_ascii = styles.code_point_styles(data, lo, hi, place.valid & ~found.ascii)
    for name in styles.NON_ASCII_STYLES:
        assert non_ascii[name].to_pylist() == _sql(texts, name)
    con.register("x", pa.table({"i": pa.array(range(len(texts))), "reasoning": arr}))
    want = [r[0] for r in con.execute(f"SELECT {tokens._HAS_REASONING} FROM x ORDER BY i").fetchall()]
    assert got.tolist() == want, [(t, g, w) for t, g, w in zip(texts, got.tolist(), want) if g != w]


def test_non_ascii_styles_of_every_code_point_are_the_regex_values() -> None:
    """`styles.code_point_styles` (a compiled pass with a table per code point built from DuckDB's RE2) gives
    `Behavior.sql`'s value of each NON_ASCII_STYLES feature for every character of Unicode, alone or among ASCII
    and other non-ASCII text, where the texts lie in a larger buffer, and 0 for texts not taken."""
    import duckdb

    from rlaudit import kernels
    from rlaudit.behaviors import parse_behavior

    if not kernels.available():
        pytest.skip("numba is not installed")
    chars = [chr(cp) for cp in range(0x80, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    texts = [f"ab {c} \u00e9" for c in chars] + ["", "plain ascii", "caf\u00e9", "\u4e2d\u6587 \U0001f600"]
    arr = pa.array(texts, pa.string())
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], np.int32).astype(np.int64)
    take = np.ones(len(texts), bool)
    take[-3] = False  # not taken: 0 whatever it holds
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "numba")
        got = styles.code_point_styles(data, offsets[:-1], offsets[1:], take)
    with duckdb.connect() as con:
        con.register("t", pa.table({"x": arr}))
        for name in styles.NON_ASCII_STYLES:
            want = np.asarray(con.sql(f"SELECT {parse_behavior(f'style:{name}').sql('x')} FROM t").to_arrow_table()
                              .column(0).to_numpy(zero_copy_only=False), np.float64)
            want[-3] = 0.0
            values = np.asarray(got[name].to_numpy(zero_copy_only=False))
            bad = np.flatnonzero(values != want)
            assert not len(bad), (name, [texts[i] for i in bad[:5]])
            assert want.sum() > 1000  # the classes are not empty: the comparison means something
