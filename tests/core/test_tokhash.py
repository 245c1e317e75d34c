"""The vectorised tokeniser (`rlaudit.derived.tokhash`) against `behaviors.tokenize` (DuckDB's RE2 pattern)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.derived import tokhash
from rlaudit.behaviors import TOKEN_PATTERN, tokenize

from laid_out import laid_out

# mostly ASCII words, punctuation, apostrophes and line breaks (the numpy path), with some letters, marks and CJK
# characters of other scripts (the RE2 path) and the odd character from anywhere
_ASCII = st.sampled_from(list("abcXYZ019 '''!?.,_-\n\t\"`") + ["don't", "rock'n'roll", "GOBLIN", "  "])
_OTHER = st.sampled_from(["é", "É", "ß", "中", "文", "ひ", "カ", "я", "ع", "क", "ि", "😀", "\u00a0", "\u2019", "İ"])
_TEXT = st.lists(st.one_of(_ASCII, _ASCII, _ASCII, _OTHER, st.characters(exclude_categories=("Cs",))), max_size=40
                ).map("".join)  # no lone surrogates: Arrow strings are valid UTF-8


def _regex_tokens(texts: list[str | None]) -> list[list[str]]:
    """`behaviors.tokenize` of each text, in one DuckDB query (the same SQL, one connection)."""
    with duckdb.connect() as con:
        rows = con.execute("SELECT regexp_extract_all(lower(t), $p) FROM unnest($texts) AS u(t)",
                           {"texts": [t or "" for t in texts], "p": TOKEN_PATTERN}).fetchall()
    return [list(r[0]) for r in rows]


def _expected(texts: list[str | None]) -> list[np.ndarray]:
    return [tokhash.string_hashes(pa.array(tk, pa.string())) for tk in _regex_tokens(texts)]


def _check(texts: list[str | None]) -> None:
    values, offsets = tokhash.token_hashes(pa.array(texts, pa.string()))
    assert len(offsets) == len(texts) + 1
    for i, want in enumerate(_expected(texts)):
        got = values[offsets[i]:offsets[i + 1]]
        assert np.array_equal(got, want), (texts[i], tokenize(texts[i] or ""))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(_TEXT, st.none()), min_size=1, max_size=12))
def test_tokens_equal_the_regex_tokeniser(texts: list[str | None]) -> None:
    _check(texts)


@settings(max_examples=25, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=20), st.integers(1, 64))
def test_chunking_keeps_texts_whole(texts: list[str], chunk: int) -> None:
    """Texts are tokenised in chunks of whole texts; a chunk size smaller than a text changes nothing."""
    old = tokhash.CHUNK_BYTES
    tokhash.CHUNK_BYTES = chunk
    try:
        _check(texts)
    finally:
        tokhash.CHUNK_BYTES = old


def test_known_cases_and_sliced_input() -> None:
    texts = ["Hello, World! don't 'quote' a''b rock'n'roll", "", None, "ÉCOLE été 中文字 abc", "A1_b2", "x'"]
    _check(texts)
    arr = pa.array(["zzz", *texts], pa.string()).slice(1)
    values, offsets = tokhash.token_hashes(arr)
    assert np.array_equal(values, np.concatenate(_expected(texts)))
    assert np.array_equal(tokhash.string_hashes(pa.array(["Goblin"])), tokhash.string_hashes(pa.array(["goblin"])))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=30, unique=True))
def test_distinct_strings_hash_apart(words: list[str]) -> None:
    """Distinct strings (after ASCII case folding) get distinct hashes; equal ones equal hashes."""
    folded = [w.translate({c: c + 32 for c in range(65, 91)}) for w in words]
    h = tokhash.string_hashes(pa.array(words))
    assert len(set(h.tolist())) == len(set(folded))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(_TEXT, st.none()), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_texts_tokenised_where_they_lie_equal_the_cut_texts(texts: list[str | None], rnd) -> None:
    """`span_token_hashes` (texts as byte ranges of a larger buffer, in any order, with bytes between them;
    non-ASCII ones cut out and tokenised apart) gives `token_hashes`' hashes and offsets (compiled path)."""
    import pytest

    from rlaudit import kernels
    from rlaudit.derived import styles
    from rlaudit.text import cut_ranges, validity

    if not kernels.available():
        pytest.skip("numba is not installed")
    order = list(range(len(texts)))
    rnd.shuffle(order)  # laid out in another order, "x" between them
    data, lo, hi = laid_out(texts, list(order))
    valid = validity(pa.array(texts, pa.string()))
    assert cut_ranges(data, lo, hi, valid).to_pylist() == texts
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "numba")
        found = styles.scan_spans(data, lo, hi)
        got = tokhash.span_token_hashes(data, lo, hi, found.ascii, lambda rows: cut_ranges(data, lo[rows], hi[rows],
                                                                                            valid[rows]))
        want = tokhash.token_hashes(pa.array(texts, pa.string()))
    assert got is not None
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    assert {k: v.to_pylist() for k, v in found.values.items()} == {
        k: v.to_pylist() for k, v in styles.byte_styles(pa.array(texts, pa.string())).items()}


def test_validity_of_a_chunked_array_is_read_chunk_by_chunk():
    """`text.validity` of a chunked array (read chunk by chunk, not combined: that would copy a string column)
    equals the validity of the combined array, slices and empty chunks included."""
    import pyarrow as pa

    from rlaudit.text import validity

    arr = pa.chunked_array([pa.array(["a", None]), pa.array([], pa.string()), pa.array([None, "b", None, "c"])])
    assert validity(arr).tolist() == [True, False, False, True, False, True]
    assert validity(arr.slice(1, 4)).tolist() == [False, False, True, False]
    assert validity(pa.chunked_array([pa.array(["x"])])).tolist() == [True]
    assert validity(pa.chunked_array([], pa.string())).tolist() == []


def _every_code_point_in_context() -> list[str]:
    """Every character of Unicode (no surrogates), each where a token may start, continue, follow an apostrophe
    and stand alone: 256 characters per text."""
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    return [" ".join(f"a{c}b'{c} {c}{c}x '{c}" for c in chars[i:i + 256]) for i in range(0, len(chars), 256)]


def test_every_code_point_tokenises_as_the_regex_does() -> None:
    """The compiled tokeniser of non-ASCII texts (`kernels.unicode_token_hashes` over `tokhash.unicode_tables`)
    gives, for every character of Unicode in every position a token has, the tokens and hashes of DuckDB's
    `regexp_extract_all(lower(x), TOKEN_PATTERN)`: its tables come from that DuckDB, so no character class or
    case mapping of another Unicode version can creep in."""
    from rlaudit import kernels

    if not kernels.available():
        pytest.skip("numba is not installed")
    texts = _every_code_point_in_context()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernels.ENV, "numba")
        assert tokhash.unicode_tables() is not None
        values, offsets = tokhash.token_hashes(pa.array(texts, pa.string()))
    for i, want in enumerate(_expected(texts)):
        assert np.array_equal(values[offsets[i]:offsets[i + 1]], want), i


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(_TEXT, st.none()), min_size=1, max_size=12))
def test_tokens_equal_the_regex_tokeniser_without_the_unicode_tables(texts: list[str | None]) -> None:
    """Where the tables cannot be built (a DuckDB lower-casing a character to several), non-ASCII texts go through
    the SQL pattern itself: the same tokens."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokhash, "unicode_tables", lambda: None)
        _check(texts)


def test_bytes_that_are_not_utf8_stay_in_bounds() -> None:
    """A buffer that is not valid UTF-8 (stray continuation bytes, truncated characters, leads past U+10FFFF)
    cannot come from Arrow's string arrays, but the compiled passes must not read outside their tables on it:
    such bytes read as U+FFFD, and the valid text around them tokenises as it would alone."""
    from rlaudit import kernels
    from rlaudit.derived import kernels as dk

    if not kernels.available():
        pytest.skip("numba is not installed")
    bad = b"caf\xc3\xa9 \x80\xbf ok \xf7\xbf\xbf\xbf \xff\xfe z\xe2\x82"
    data = np.frombuffer(bad, np.uint8)
    lower, classes = tokhash.unicode_tables()
    h, counts = dk.unicode_token_hashes(data, np.array([0]), np.array([len(bad)]), np.array([True]), lower, classes,
                                        tokhash._CODES, tokhash._BASE, tokhash._LEN_MIX)
    want = tokhash.string_hashes(pa.array(["café", "ok", "z"]))
    assert counts.tolist() == [3] and np.array_equal(h, want)
    from rlaudit.derived import styles

    flags = dk.code_point_flags(data, np.array([0]), np.array([len(bad)]), np.array([True]), styles.code_point_table())
    assert flags.tolist() == [0]
