"""Per-rollout style features of the term sets (`tokens._compute_parts`) that a regex pass per row made costly.

The term sets hold `Behavior.sql`'s value of every style feature (`behaviors.STYLE_FEATURES`) for the answer and
the reasoning of each rollout. Most are cheap in DuckDB (a literal search, a length); these are not, and are
computed here to the same values:

- `NON_ASCII_STYLES` (emoji, language switch): only non-ASCII characters show them, so the exact RE2 pattern
  runs on the non-ASCII texts only (`non_ascii_style`); an ASCII or missing text is 0.
- `BYTE_STYLES` (list, shouting, and the cheap ones: chars, exclamation, code block, question): the RE2 patterns
  of list and shouting cost ~0.4 CPU s per 200k rollouts (two regex passes over every text, answer and
  reasoning: ~2 CPU s of a cold 1M audit), and the four cheap ones, evaluated by DuckDB while it read the parts,
  ~0.7 CPU s of a cold 1M audit between them. With numba (`rlaudit.kernels.use_numba`) one compiled loop over
  each text's UTF-8 bytes decides all six (`scan`, `byte_styles`), and notes on the way which texts are ASCII
  (the tokeniser's and `NON_ASCII_STYLES`' question, which Arrow answered in a pass of its own per use) and which
  hold an ASCII byte other than a space (`tokens` decides "has reasoning" from it); without numba
  `Behavior.values` runs the same RE2 patterns (DuckDB's) and length.

Why a byte loop is exact for every valid UTF-8 text, not only ASCII ones: in RE2 (DuckDB's and Arrow's engine)
every class these patterns use is ASCII: `\\s` is [\\t\\n\\f\\r ] (not \\v, not U+0085, U+00A0 or U+2028), `\\S`
any other character, `\\d` [0-9], `\\b` a boundary between an ASCII word byte [0-9A-Za-z_] and anything else
(an accented letter is a non-word character: "ÉCOLE" shouts), `[A-Z]` ASCII, and `(?m)^` matches at the text's
start and after "\\n" only (not after "\\r"). A non-ASCII character is therefore, byte by byte, a run of bytes
>= 0x80 that are none of these, and "a \\S character starts here" is "the byte here is not one of [\\t\\n\\f\\r ]".
The one non-ASCII character named, the bullet U+2022, is the bytes E2 80 A2; E2 only ever starts a character, so
the three bytes are that character wherever they occur. tests/core/test_styles.py checks both paths against
DuckDB's `regexp_matches` on generated text with the characters that matter (line breaks, \\v, bullets, digits
before "." or ")", capitals beside digits, underscores and accented letters).

The patterns, read as byte scans (`_byte_styles`):

- list `(?m)^\\s*(?:[-*\\x{2022}]|\\d+[.)])\\s+\\S`: from a line start, skip whitespace (which may cross line
  breaks: every line start it crosses leads to the same first non-whitespace byte); there a marker ("-", "*",
  the bullet, or digits then "." or ")"), then at least one whitespace byte, and a non-whitespace byte after
  that whitespace run (the text must not end in it).
- shouting `\\b[A-Z]{4,}\\b`: some maximal run of ASCII word bytes is 4 or more capitals and nothing else.
- chars `length(x)`: DuckDB counts code points, i.e. the bytes that are not UTF-8 continuation bytes (10xxxxxx).
- exclamation `!` and code block ```` ``` ````: the byte "!", a run of three backticks (ASCII bytes never occur
  inside a multi-byte character).
- question `\\?\\s*$` (`$` is the text's end without `(?m)`): the last byte that is not [\\t\\n\\f\\r ] is "?".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import kernels
from ..behaviors import parse_behavior, re2_matches
from .tokhash import UNICODE_SIZE, _buffers, per_code_point

#: style features that only non-ASCII characters show (emoji, scripts other than Latin)
NON_ASCII_STYLES = ("emoji", "language_switch")
#: style features computed by the byte loop where numba is installed (see module doc)
BYTE_STYLES = ("list", "shouting", "chars", "exclamation", "code_block", "question")

# byte classes as uint8 0/1 (numba reads a bool table slower: a widening per byte)
_WS = np.zeros(256, np.uint8)  # RE2's \s
for _c in b"\t\n\x0c\r ":
    _WS[_c] = 1
_WORD = np.zeros(256, np.uint8)  # RE2's \w, the sides of \b
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD[_c] = 1
_UPPER = np.zeros(256, np.uint8)
_UPPER[ord("A"):ord("Z") + 1] = 1
_DIGIT = np.zeros(256, np.uint8)
_DIGIT[ord("0"):ord("9") + 1] = 1

_1, _2, _3, _4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)



_CODE_POINT_TABLE: list = []  # [table] once built (`code_point_table`)
_CODE_POINT_LOCK = threading.Lock()


def code_point_table() -> np.ndarray:
    """uint8 per code point (all of Unicode): bit i set where DuckDB's RE2 matches the character with the pattern of
    NON_ASCII_STYLES[i]. Both patterns are one character class and match no ASCII character (`code_point_flags`
    checks it), so a text shows the style exactly when one of its non-ASCII characters has the bit; built by one
    query (~0.13 s), once per process."""
    from ..behaviors import STYLE_FEATURES

    with _CODE_POINT_LOCK:
        if not _CODE_POINT_TABLE:
            cps, tab = per_code_point(", ".join(f"regexp_full_match(c, '{STYLE_FEATURES[n].regex}') AS s{i}"
                                                for i, n in enumerate(NON_ASCII_STYLES)))
            table = np.zeros(UNICODE_SIZE, np.uint8)  # surrogates: no bit
            for i in range(len(NON_ASCII_STYLES)):
                table[cps] |= np.asarray(tab.column(f"s{i}").to_numpy(zero_copy_only=False), np.uint8) << i
            _CODE_POINT_TABLE.append(table)
        return _CODE_POINT_TABLE[0]


def code_point_styles(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, take: np.ndarray
                      ) -> dict[str, pa.Array]:
    """{name: float64 values} of the NON_ASCII_STYLES of the texts data[starts[i]:ends[i]] where they lie (1.0
    present, 0.0 absent; texts without `take`, e.g. ASCII ones, 0.0), equal to `non_ascii_style`: one compiled
    pass over the non-ASCII texts' characters with `code_point_table`, instead of cutting them out and running an
    RE2 pattern per style over them. Compiled only (numba)."""
    from .kernels import code_point_flags

    take = np.asarray(take, bool)
    if not take.any():  # an all-ASCII batch: no table to build
        zeros = pa.array(np.zeros(len(take)))
        return {name: zeros for name in NON_ASCII_STYLES}
    flags = code_point_flags(data, starts, ends, take, code_point_table())
    return {name: pa.array(((flags >> i) & 1).astype(np.float64)) for i, name in enumerate(NON_ASCII_STYLES)}


def non_ascii_style(texts: pa.ChunkedArray | pa.Array, name: str) -> pa.Array:
    """`Behavior.sql` of the style feature `name` (in NON_ASCII_STYLES) over `texts`, skipping ASCII texts (by
    DuckDB's RE2, as `Behavior.sql`: `behaviors.re2_matches`)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    valid = np.asarray(texts.is_valid().to_numpy(zero_copy_only=False), bool)
    ascii_ = np.asarray(pc.fill_null(pc.string_is_ascii(texts), True).to_numpy(zero_copy_only=False), bool)
    out = np.zeros(len(texts))
    todo = np.flatnonzero(valid & ~ascii_)
    if len(todo):
        out[todo] = re2_matches(texts.take(pa.array(todo)), parse_behavior(f"style:{name}").pattern)
    return pa.array(out)


@dataclass
class Scan:
    """What one pass over a column's texts found (`scan`)."""

    #: the BYTE_STYLES, float64 (1.0 present, 0.0 absent; chars a count), as `Behavior.sql` gives them
    values: dict[str, pa.Array]
    #: per text, no byte >= 0x80 (a null text is "": ASCII)
    ascii: np.ndarray
    #: per text, some ASCII byte other than a space (DuckDB's `trim` strips spaces, and of non-ASCII characters
    #: some: a text with such a byte keeps a character through `trim`)
    solid: np.ndarray


def scan(texts: pa.ChunkedArray | pa.Array) -> Scan | None:
    """The BYTE_STYLES of `texts` and which texts are ASCII, in one compiled pass over their bytes; None where
    numba is not installed (`byte_styles` then asks Arrow)."""
    if not kernels.use_numba():
        return None
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    data, offsets = _buffers(pc.fill_null(texts, ""))
    return scan_spans(data, offsets)


def scan_spans(data: np.ndarray, starts: np.ndarray, ends: np.ndarray | None = None) -> Scan:
    """`scan` of the texts data[starts[i]:ends[i]] where they lie (answers and reasonings within their
    completions: no cut), or of data[starts[i]:starts[i + 1]] without `ends`. Compiled only (see `scan`)."""
    c = np.ascontiguousarray
    ends = np.zeros(0, np.int64) if ends is None else c(ends, np.int64)
    flags, chars = compiled().byte_styles(c(data, np.uint8), c(starts, np.int64), ends, _WS, _WORD, _UPPER, _DIGIT)
    values = {name: pa.array(flags[:, i].astype(np.float64)) for i, name in enumerate(_FLAGS)}
    values["chars"] = pa.array(chars.astype(np.float64))
    return Scan({name: values[name] for name in BYTE_STYLES}, flags[:, len(_FLAGS)] == 0,
                flags[:, len(_FLAGS) + 1] != 0)


def byte_styles(texts: pa.ChunkedArray | pa.Array) -> dict[str, pa.Array]:
    """{name: float64 values} of the BYTE_STYLES over `texts`, equal to `Behavior.sql` / `Behavior.values`
    (1.0 present, 0.0 absent, chars a count; a null text is ""). Compiled where numba is installed (`scan`),
    else `Behavior.values` (DuckDB's RE2, Arrow's length)."""
    found = scan(texts)
    if found is not None:
        return found.values
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    texts = pc.fill_null(texts, "")
    return {name: pa.array(parse_behavior(f"style:{name}").values(texts)) for name in BYTE_STYLES}


#: the presence flags of the kernel's output, in its column order (then: a non-ASCII byte, a solid byte)
_FLAGS = ("list", "shouting", "exclamation", "code_block", "question")


# ---------------------------------------------------------------------------------------------------------------
# Kernel source: plain Python over numpy arrays, compiled by `compiled()`.

def _list_from(data, i, e, ws, digit):
    """(found, next) for the line start i of a text ending at e: whether a list item starts there, and the first
    byte not yet ruled out (line starts at or before `next` lead to the same first non-whitespace byte, so need
    no check; `next` = e when the text ends in whitespace after a marker, where no later line start can match).
    Positions are uint64, and so is every operand of their arithmetic (numba widens uint64 op int64 to float64)."""
    while i < e and ws[data[i]]:  # \s* (line breaks included)
        i += _1
    if i == e:
        return False, i
    b = data[i]
    m = e  # just past the marker (e: no marker)
    if b == 45 or b == 42:  # "-", "*"
        m = i + _1
    elif b == 0xE2:  # U+2022 is E2 80 A2
        if i + _2 < e and data[i + _1] == 0x80 and data[i + _2] == 0xA2:
            m = i + _3
    elif digit[b]:
        j = i + _1
        while j < e and digit[data[j]]:
            j += _1
        if j < e and (data[j] == 46 or data[j] == 41):  # ".", ")"
            m = j + _1
    if m < e and ws[data[m]]:  # \s+ then \S
        j = m + _1
        while j < e and ws[data[j]]:
            j += _1
        return j < e, e
    return False, i


def _byte_styles(data, offsets, ends, ws, word, upper, digit):
    """((n_texts, 7) uint8, n_texts int64): per text, the flags list, shouting, exclamation, code block, question,
    a byte >= 0x80, an ASCII byte other than a space; and the characters (see module doc).

    Shouting in one pass over the text's bytes without a branch per byte (word ends are unpredictable, and a
    mispredicted branch cost more than a byte's work: 3.2 -> 1.0 ns per byte): `run` counts the capitals just
    seen, `bad` is 1 when the current run of word bytes holds a non-capital, and a non-word byte (or the text's
    end) closes the run. The same pass notes whether the text has a line break; the list test runs at the text's
    start and, in texts with line breaks, after each line break not yet ruled out (`_list_from`). The other
    features are counts of byte classes, in a second pass that LLVM vectorises (~0.5 ns per byte; riding along
    the first pass as masks they took ~2 ns per byte more): exclamation marks, backticks (only a text with three
    or more is searched for a run of three), bytes >= 0x80, ASCII bytes other than a space, and the bytes that
    start a character (not 10xxxxxx); the question mark is looked for behind the text's trailing whitespace.
    `ends` (empty: none): text t is data[offsets[t]:ends[t]] instead (texts where they lie, `scan_spans`)."""
    spans = len(ends) > 0
    n = len(ends) if spans else len(offsets) - 1
    out = np.zeros((n, 7), np.uint8)
    chars = np.zeros(n, np.int64)
    zero = np.uint64(0)
    for t in range(n):
        s, e = np.uint64(offsets[t]), np.uint64(ends[t] if spans else offsets[t + 1])
        hit, run, bad, breaks = zero, zero, zero, zero
        for j in range(s, e):
            b = data[j]
            w, u = np.uint64(word[b]), np.uint64(upper[b])
            hit |= (w ^ _1) & np.uint64(run >= _4) & (bad ^ _1)
            run = (run + _1) & (zero - u)
            bad = (bad | (w ^ u)) & w
            breaks |= np.uint64(b == 10)
        found, ruled = _list_from(data, s, e, ws, digit)
        j = ruled
        while breaks and not found and j < e:  # the next line break not ruled out
            if data[j] == 10:
                found, ruled = _list_from(data, j + _1, e, ws, digit)
                j = max(ruled, j + _1)
            else:
                j += _1
        out[t, 0] = found
        out[t, 1] = (hit | (np.uint64(run >= _4) & (bad ^ _1))) != zero
        bang, ticks, high, solid, count = 0, 0, 0, 0, 0
        for j in range(s, e):
            b = data[j]
            bang += b == 33
            ticks += b == 96
            high += b >= 128
            solid += (b != 32) & (b < 128)
            count += (b & 192) != 128
        fence = False
        if ticks >= 3:
            for j in range(s, e - min(e - s, _2)):
                if data[j] == 96 and data[j + _1] == 96 and data[j + _2] == 96:
                    fence = True
                    break
        k = e
        while k > s and ws[data[k - _1]]:
            k -= _1
        out[t, 2] = bang > 0
        out[t, 3] = fence
        out[t, 4] = k > s and data[k - _1] == 63
        out[t, 5] = high > 0
        out[t, 6] = solid > 0
        chars[t] = count
    return out, chars


def _build() -> SimpleNamespace:
    """The byte-style kernel, compiled (see `kernels.Compiled`)."""
    import numba

    t = numba.types

    def ro(dtype: Any) -> Any:
        return t.Array(dtype, 1, "C", readonly=True)

    # the helper is looked up as a global when the kernel compiles: its jitted version must be in place
    glob = globals()
    glob["_list_from"] = kernels.jit(getattr(_list_from, "py_func", _list_from), inline="always")
    u8, i64 = ro(t.uint8), ro(t.int64)
    return SimpleNamespace(byte_styles=kernels.jit(_byte_styles, (u8, i64, i64, u8, u8, u8, u8)))


compiled = kernels.Compiled(_build)
