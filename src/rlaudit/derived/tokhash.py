"""Vectorised tokenising and hashing: the 64-bit hashes of the `behaviors.TOKEN_PATTERN` tokens of many texts.

`token_hashes(texts)` gives, for an Arrow string array, the hash of every token of every text (flat values plus
per-text offsets): the tokens are exactly those of `behaviors.tokenize` (lower-cased words of any script, an
inner apostrophe kept, single CJK characters), in order.

Texts that are pure ASCII (nearly all of an English run) are tokenised in numpy over the raw UTF-8 bytes: a
byte is a word character when it is a letter or digit; an apostrophe joins a token when a word character is on
both sides of it (the `'W+` repeats of the pattern); tokens break at text boundaries. That is the pattern
restricted to ASCII, where `\\pL` and `\\pN` are `[A-Za-z]` and `[0-9]`, there are no marks and no CJK, and
lower-casing is ASCII lower-casing. Where numba is installed (`rlaudit.kernels`), one compiled loop over the bytes
does the same and gives the same hashes. Other texts: with numba, one compiled pass over their code points with
DuckDB's own case mapping and RE2's classes as tables (`unicode_tables`); without, the RE2 pattern in DuckDB. The
property tests in tests/core/test_tokhash.py check every path against `behaviors.tokenize` on random unicode text,
and the compiled one on every character of Unicode.

Hashes (`span_hashes`): a polynomial hash of the token's bytes modulo 2^64 with a random odd base over
random 64-bit byte codes (ASCII letters folded to lower case), computed for all tokens at once from prefix sums,
then mixed with the token length by `splitmix64`. `string_hashes` hashes whole strings the same way, so a term
string's tokens (`"by my beard".split()`) hash as they do inside a text. Two distinct tokens share a hash
with probability about 2^-64 for ordinary text; polynomial hashes modulo 2^64 do collide for adversarial
pairs (Thue-Morse strings of 2,048 bytes and more), which no tokeniser output of real text resembles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import kernels
from ..behaviors import TOKEN_PATTERN, re2_cursor
from ..cot.shingles import splitmix64

_RNG = np.random.default_rng(0x5EED_70C5)
_CODES = _RNG.integers(1, 2**63, size=256, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_CODES[ord("A"):ord("Z") + 1] = _CODES[ord("a"):ord("z") + 1]  # ASCII case folding
_BASE = int(_RNG.integers(2**40, 2**62)) * 2 + 1
_BASE_INV = pow(_BASE, -1, 2**64)
_LEN_MIX = np.uint64(0xD6E8FEB86659FD93)

_WORD = np.zeros(256, bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
    _WORD[_c] = True
_APOSTROPHE = ord("'")

#: bytes tokenised per numpy pass: small enough that the temporaries (about 40 bytes per text byte) are reused
#: heap memory rather than fresh pages (fresh pages cost more than the arithmetic)
CHUNK_BYTES = 1 << 17

_POW: np.ndarray = np.ones(1, np.uint64)
_INV: np.ndarray = np.ones(1, np.uint64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE^i and BASE^-i modulo 2^64 for i < n (cached, grown as needed; safe to call from several threads)."""
    global _POW, _INV
    pw, inv = _POW, _INV  # one consistent pair: other threads may replace the globals meanwhile
    if len(pw) < n:
        size = max(n, 2 * len(pw))
        with np.errstate(over="ignore"):
            grown = np.concatenate([np.ones(1, np.uint64), np.cumprod(np.full(size, _BASE, np.uint64))[:-1]])
            grown_inv = np.concatenate([np.ones(1, np.uint64), np.cumprod(np.full(size, _BASE_INV, np.uint64))[:-1]])
        pw, inv = grown, grown_inv
        _POW, _INV = pw, inv
    return pw[:n], inv[:n]


def span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The hash of each byte span data[starts[i]:ends[i]] (see module doc)."""
    if len(starts) == 0:
        return np.zeros(0, np.uint64)
    pw, inv = _powers(len(data) + 1)
    with np.errstate(over="ignore"):
        prefix = np.empty(len(data) + 1, np.uint64)
        prefix[0] = 0
        np.cumsum(_CODES[data] * pw[:len(data)], out=prefix[1:])
        poly = (prefix[ends] - prefix[starts]) * inv[starts]
        return splitmix64(poly ^ ((ends - starts).astype(np.uint64) * _LEN_MIX))


def _buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 data, int64 offsets rebased to 0) of a string array without nulls."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if arr.type == pa.large_string():
        off_type = np.int64
    else:
        arr = arr.cast(pa.string()) if arr.type != pa.string() else arr
        off_type = np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], off_type)[arr.offset:arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]:offsets[-1]] if len(offsets) else data[:0]
    return data, offsets - (offsets[0] if len(offsets) else 0)


def string_hashes(strings: pa.Array) -> np.ndarray:
    """The hash of each whole string (nulls hash as the empty string), the same as a token of that text."""
    data, offsets = _buffers(pc.fill_null(strings, ""))
    return span_hashes(data, offsets[:-1], offsets[1:])


def _ascii_tokens(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text index, hash) of the tokens of ASCII texts given as one byte buffer with text offsets."""
    n = len(data)
    word = _WORD[data]
    # an apostrophe joins when word characters are on both sides within the same text
    joiner = np.zeros(n, bool)
    if n > 2:
        joiner[1:-1] = (data[1:-1] == _APOSTROPHE) & word[:-2] & word[2:]
    boundary = np.zeros(n + 1, bool)
    boundary[offsets] = True  # a text starts (or the buffer ends) here
    if n > 2:
        joiner[1:-1] &= ~boundary[1:-2] & ~boundary[2:-1]
    tok = word | joiner
    # cont[i]: bytes i-1 and i are token bytes of one token (same text); cont[n] = False closes the last token
    cont = np.zeros(n + 1, bool)
    if n > 1:
        cont[1:n] = tok[1:] & tok[:-1] & ~boundary[1:n]
    starts = np.flatnonzero(tok & ~cont[:n])
    after = np.zeros(n + 1, bool)  # after[e]: byte e-1 is a token byte
    after[1:] = tok
    ends = np.flatnonzero(after & ~cont)
    row = np.searchsorted(offsets, starts, side="right") - 1
    return row, span_hashes(data, starts, ends)


def span_token_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, is_ascii: np.ndarray,
                      cut: Callable[[np.ndarray], pa.Array]) -> tuple[np.ndarray, np.ndarray] | None:
    """`token_hashes` of the texts data[starts[i]:ends[i]] where they lie (answers and reasonings within their
    completions), with the compiled kernels: ASCII texts tokenised in place, the others (`is_ascii` false) by the
    Unicode pass, also in place (`_other_hashes`; cut out by `cut(rows)` only where its tables cannot be built).
    None where numba is not used: the caller then cuts every text and calls `token_hashes`. The same hashes and
    offsets."""
    if not kernels.use_numba():
        return None
    n_texts = len(starts)
    h, counts = kernels.ascii_token_hashes(data, starts, is_ascii, _WORD, _CODES, _BASE, _LEN_MIX, ends=ends)
    out_offsets = np.zeros(n_texts + 1, np.int64)
    other = np.flatnonzero(~np.asarray(is_ascii, bool))
    if not len(other):
        np.cumsum(counts, out=out_offsets[1:])
        return h, out_offsets
    o_values, o_offsets = _other_hashes(data, starts, ends, other, cut)
    row = np.concatenate([np.repeat(np.arange(n_texts, dtype=np.int64), counts),
                          np.repeat(other.astype(np.int64), np.diff(o_offsets))])
    order = np.argsort(row, kind="stable")
    np.cumsum(np.bincount(row, minlength=n_texts), out=out_offsets[1:])
    return np.concatenate([h, o_values])[order], out_offsets


def _other_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray,
                  cut: Callable[[np.ndarray], pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets) of the tokens of the texts `rows` (non-ASCII ones) of a buffer: where they lie, by the
    compiled Unicode pass (`unicode_tables`), else cut out (`cut(rows)`) and tokenised by `token_hashes`."""
    tables = unicode_tables()
    if tables is None:
        return token_hashes(cut(rows))
    take = np.ones(len(rows), np.bool_)
    h, counts = kernels.unicode_token_hashes(data, starts[rows], ends[rows], take, *tables, _CODES, _BASE, _LEN_MIX)
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return h, offsets


def span_term_ids(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, is_ascii: np.ndarray,
                  cut: Callable[[np.ndarray], pa.Array], max_n: int, lookup: Any, n_ids: int,
                  exclude: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, keys: Any = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int64 token count per text, int64 offsets per text, int32 term ids): the token counts of
    `span_token_hashes` and `kernels.row_term_ids` of its hashes (`lookup`, `exclude`, `keys` as there), in one
    compiled pass per text (`kernels.term_ids`): an ASCII text's tokens are hashed and looked up where they are
    found, without an array of every token's hash; the others (`is_ascii` false) are hashed first, where they lie
    (`_other_hashes`). Compiled only (numba)."""
    other = np.flatnonzero(~np.asarray(is_ascii, bool))
    given = np.full(len(starts), -1, np.int64)
    given[other] = np.arange(len(other))
    hashes = _other_hashes(data, starts, ends, other, cut) if len(other) else (np.zeros(0, np.uint64),
                                                                                np.zeros(1, np.int64))
    return kernels.term_ids(data, starts, ends, given, hashes, _WORD, _CODES, max_n, lookup, n_ids, exclude, keys,
                            base=_BASE, len_mix=int(_LEN_MIX))


def text_term_ids(texts: pa.Array | pa.ChunkedArray, max_n: int, lookup: Any, n_ids: int,
                  exclude: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, keys: Any = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`span_term_ids` of an Arrow string array's texts (nulls: no tokens). Compiled only (numba)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    texts = pc.fill_null(texts, "")
    data, offsets = _buffers(texts)
    is_ascii = np.asarray(pc.string_is_ascii(texts).to_numpy(zero_copy_only=False), bool)
    return span_term_ids(data, offsets[:-1], offsets[1:], is_ascii, lambda rows: texts.take(pa.array(rows)), max_n,
                         lookup, n_ids, exclude, keys)


_UNICODE_TABLES: list = []  # [(lower, classes)] once built, [None] where they cannot be (see `unicode_tables`)
_UNICODE_LOCK = threading.Lock()


def unicode_tables() -> tuple[np.ndarray, np.ndarray] | None:
    """(lower: int32 code point -> its lower case, classes: uint8 per code point, `kernels.WORD_CLASS` and
    `kernels.SINGLE_CLASS` bits) over all of Unicode, as this process's DuckDB sees them: `lower(chr(cp))` and
    whether RE2 fully matches chr(cp) with `behaviors`' word and single-character classes. The compiled
    tokeniser of non-ASCII texts reads them, so that it tokenises exactly as `regexp_extract_all(lower(x),
    TOKEN_PATTERN)` does in this DuckDB, whatever Unicode version its RE2 and case tables follow; one query over
    1.1M code points (0.3-0.7 s measured), once per process. None (the caller then runs that SQL) where DuckDB
    lower-cases a code point to more than one."""
    with _UNICODE_LOCK:
        if not _UNICODE_TABLES:
            _UNICODE_TABLES.append(_build_unicode_tables())
        return _UNICODE_TABLES[0]


def _build_unicode_tables() -> tuple[np.ndarray, np.ndarray] | None:
    from ..behaviors import _CJK, _WORD as WORD_CLASS_RE2

    cps, tab = per_code_point(f"""unicode(lower(c)) AS l, length(lower(c)) AS n,
                                  regexp_full_match(c, '{WORD_CLASS_RE2}') AS word,
                                  regexp_full_match(c, '{_CJK}') AS single""")
    if pc.max(tab.column("n")).as_py() != 1:
        return None
    lower = np.arange(UNICODE_SIZE, dtype=np.int32)  # surrogates keep the defaults
    lower[cps] = np.asarray(tab.column("l").to_numpy(), np.int32)
    classes = np.zeros(UNICODE_SIZE, np.uint8)
    classes[cps] = (np.asarray(tab.column("word").to_numpy(zero_copy_only=False), np.uint8) * kernels.WORD_CLASS
                    | np.asarray(tab.column("single").to_numpy(zero_copy_only=False), np.uint8) * kernels.SINGLE_CLASS)
    return lower, classes


#: the code points of Unicode (U+0000..U+10FFFF): the length of a table indexed by code point
UNICODE_SIZE = 0x110000


def per_code_point(columns: str) -> tuple[np.ndarray, pa.Table]:
    """(int64 code points, their table): `columns`, SQL over `c` (the character), evaluated by this process's
    DuckDB for every character of Unicode, the surrogates left out (they are not characters: `chr` fails on
    them). What the per-code-point tables of the compiled passes are built from (`unicode_tables`,
    `styles.code_point_table`), so that they answer as DuckDB's `lower` and RE2 do."""
    with re2_cursor() as con:
        tab = con.sql(f"""SELECT cp::INTEGER AS cp, {columns}
                          FROM (SELECT cp, chr(cp::INTEGER) AS c FROM range(0, {UNICODE_SIZE}) t(cp)
                                WHERE cp < 55296 OR cp > 57343)""").to_arrow_table()
    return np.asarray(tab.column("cp").to_numpy(), np.int64), tab


def token_hashes(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 token hashes, int64 offsets per text) of the tokens of each text (nulls: no tokens)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    texts = pc.fill_null(texts, "")
    n_texts = len(texts)
    ascii_ = np.asarray(pc.string_is_ascii(texts).to_numpy(zero_copy_only=False), bool)
    data, offsets = _buffers(texts)
    rows, hashes = [], []
    if kernels.use_numba():  # ASCII texts: one compiled pass over the bytes (the same hashes)
        h, counts = kernels.ascii_token_hashes(data, offsets, ascii_, _WORD, _CODES, _BASE, _LEN_MIX)
        if ascii_.all():
            out_offsets = np.zeros(n_texts + 1, np.int64)
            np.cumsum(counts, out=out_offsets[1:])
            return h, out_offsets
        rows.append(np.repeat(np.arange(n_texts, dtype=np.int64), counts))
        hashes.append(h)
    # ASCII texts: numpy over the bytes, in chunks of whole texts
    lo = n_texts if rows else 0
    while lo < n_texts:
        hi = int(np.searchsorted(offsets, offsets[lo] + CHUNK_BYTES, side="right")) - 1
        hi = min(max(hi, lo + 1), n_texts)
        base = offsets[lo]
        r, h = _ascii_tokens(data[base:offsets[hi]], offsets[lo:hi + 1] - base)
        keep = ascii_[lo:hi][r]
        rows.append(r[keep] + lo)
        hashes.append(h[keep])
        lo = hi
    other = np.flatnonzero(~ascii_)
    tables = unicode_tables() if len(other) and kernels.use_numba() else None
    if tables is not None:  # the other texts: a compiled pass over their code points (the same tokens and hashes)
        h, counts = kernels.unicode_token_hashes(data, offsets[:-1], offsets[1:], ~ascii_, *tables, _CODES, _BASE,
                                                 _LEN_MIX)
        rows.append(np.repeat(other.astype(np.int64), counts[other]))
        hashes.append(h)
    elif len(other):
        with re2_cursor() as con:  # not a new connection per call: ~20 ms each, and a part may call several times
            con.register("t", pa.table({"i": pa.array(other), "x": texts.take(pa.array(other))}))
            pattern = TOKEN_PATTERN.replace("'", "''")
            tok = con.sql(f"SELECT i, regexp_extract_all(lower(x), '{pattern}') AS tk FROM t ORDER BY i"
                          ).to_arrow_table()
        lists = tok.column("tk").combine_chunks()
        counts = np.asarray(pc.list_value_length(lists).to_numpy(zero_copy_only=False), np.int64)
        rows.append(np.repeat(np.asarray(tok.column("i").to_numpy(), np.int64), counts))
        hashes.append(string_hashes(lists.flatten()))
    row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    values = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    if len(other):
        order = np.argsort(row, kind="stable")
        row, values = row[order], values[order]
    out_offsets = np.zeros(n_texts + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=n_texts), out=out_offsets[1:])
    return values, out_offsets
