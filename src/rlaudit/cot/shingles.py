"""Word shingles: the fuzzy text-containment primitive of the CoT-grading scan.

Text is normalised to lowercase letter/digit tokens (markdown, punctuation, whitespace and line breaks vanish),
and every run of `k` consecutive tokens (a *shingle*) is hashed to a 64-bit integer. "Is this reasoning inside
that grader input?" then becomes "what share of the reasoning's shingles are among the grader input's
shingles?", which survives reformatting, re-wrapping, markdown changes and truncation (a grader that saw only
the tail of the reasoning still shares the tail's shingles).

Everything here works on whole Arrow columns. The scan tokenises with `hashed_tokens` (numpy over the UTF-8 byte
buffer, each token hashed to 64 bits); `Vocabulary` dictionary-encodes tokens when the words themselves are needed
(the screen's word features). Shingle hashes are numpy arithmetic over the flat token-id array, and membership
questions for a whole batch are answered by one sorted array of scoped keys (`SortedKeys`). There is no Python loop over rows; the
scalar helpers at the end (`token_spans`, `shingle_set`) exist only to cut evidence spans for a handful of rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import kernels as _kernels
from ..text import cut_ranges

_NON_WORD = r"[^\p{L}\p{N}]+"  # RE2 (Arrow) spelling
_SINGLE_RE2 = r"([\p{Han}\p{Hiragana}\p{Katakana}])"  # each such character is a token of its own
# Characters that are tokens of their own in the byte and Python tokenisers (kana, CJK ideographs, radicals)
_SINGLE_RANGES = [(0x2E80, 0x2FDF), (0x3005, 0x3007), (0x3021, 0x3029), (0x3038, 0x303B),
                  (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF)]
_CJK_PY = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _SINGLE_RANGES)
_WORD_PY = re.compile(rf"[{_CJK_PY}]|[^\W_{_CJK_PY}]+")  # the same token definition for Python's re
_MIX = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast 64-bit finaliser: spreads structured inputs (small ids, sums) over the whole 64-bit range."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += _MIX
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


SCOPE_SHIFT = np.uint64(40)
_LOW = np.uint64((1 << 40) - 1)


def scoped(keys: np.ndarray, scope: np.ndarray) -> np.ndarray:
    """Attach a scope id (row, group, prompt) to shingle keys, so one sorted array answers per-row membership
    questions for a whole batch at once. The scope goes in the top 24 bits and the (already mixed) shingle hash
    keeps its low 40 bits, so `scope_of` and `shingle_of` can take a scoped key apart again. Two distinct shingles
    of one scope collide with probability 2^-40 per pair: about 1e-8 per text of a few hundred words."""
    return (scope.astype(np.uint64) << SCOPE_SHIFT) | (keys & _LOW)


def scope_of(scoped_keys: np.ndarray) -> np.ndarray:
    return (scoped_keys >> SCOPE_SHIFT).astype(np.int64)


def shingle_of(scoped_keys: np.ndarray) -> np.ndarray:
    return scoped_keys & _LOW


def normalized_tokens(texts: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Lowercase letter/digit tokens of each text (null or empty text: no tokens)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    lowered = pc.utf8_lower(texts.cast(pa.string()))
    lowered = pc.replace_substring_regex(lowered, _SINGLE_RE2, " \\1 ")
    spaced = pc.utf8_trim_whitespace(pc.replace_substring_regex(lowered, _NON_WORD, " "))
    spaced = pc.if_else(pc.equal(spaced, ""), pa.scalar(None, pa.string()), spaced)
    tokens = pc.utf8_split_whitespace(spaced)
    return pc.fill_null(tokens, pa.scalar([], pa.list_(pa.string())))


_WORD_BYTE = np.zeros(256, bool)
_WORD_BYTE[ord("0"):ord("9") + 1] = True
_WORD_BYTE[ord("a"):ord("z") + 1] = True
_WORD_BYTE[0x80:] = True  # bytes of multi-byte UTF-8 characters: non-ASCII text counts as word characters
_BYTE_MASKS = np.array([(1 << (8 * r)) - 1 for r in range(8)] + [(1 << 64) - 1], np.uint64)


def _code_point_table(ranges: list[tuple[int, int]]) -> np.ndarray:
    table = np.zeros(0x10000, bool)
    for lo, hi in ranges:
        table[lo:hi + 1] = True
    return table


# Exceptions to "non-ASCII is a word character", for the two- and three-byte UTF-8 characters where text in
# practice has them: punctuation and spaces separate tokens, and each character of a script written without
# spaces (Chinese, Japanese) is a token of its own (as in `behaviors.TOKEN_PATTERN`), so that Chinese reasoning
# has word shingles rather than one token per clause.
_SEPARATOR = _code_point_table([
    (0x00A0, 0x00A9), (0x00AB, 0x00B1), (0x00B4, 0x00B4), (0x00B6, 0x00B8), (0x00BB, 0x00BB), (0x00BF, 0x00BF),
    (0x00D7, 0x00D7), (0x00F7, 0x00F7),  # Latin-1 spaces, quotes, signs
    (0x2000, 0x206F),  # general punctuation: spaces, dashes, curly quotes, ellipsis
    (0x3000, 0x3004), (0x3008, 0x3020), (0x3030, 0x3037), (0x303C, 0x303F),  # CJK punctuation
    (0xFF00, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65),  # fullwidth punctuation
])
_SINGLE = _code_point_table(_SINGLE_RANGES)


def _non_ascii_breaks(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes of separator characters, token boundaries around single-character tokens) of a UTF-8 buffer.

    `breaks[i]` marks a boundary between byte i - 1 and byte i. Only two- and three-byte characters are decoded
    (vectorised); four-byte ones (emoji, rare ideographs) stay word characters.
    """
    n = len(seg)
    separator = np.zeros(n, bool)
    breaks = np.zeros(n + 1, bool)
    lead2 = np.flatnonzero((seg[:-1] & 0xE0) == 0xC0) if n >= 2 else np.zeros(0, np.int64)
    cp2 = ((seg[lead2].astype(np.int64) & 0x1F) << 6) | (seg[lead2 + 1] & 0x3F)
    for k in range(2):
        separator[lead2[_SEPARATOR[cp2]] + k] = True
    lead3 = np.flatnonzero((seg[:-2] & 0xF0) == 0xE0) if n >= 3 else np.zeros(0, np.int64)
    cp3 = (((seg[lead3].astype(np.int64) & 0x0F) << 12) | ((seg[lead3 + 1].astype(np.int64) & 0x3F) << 6)
           | (seg[lead3 + 2] & 0x3F))
    for k in range(3):
        separator[lead3[_SEPARATOR[cp3]] + k] = True
    single = lead3[_SINGLE[cp3]]
    breaks[single] = True
    breaks[single + 3] = True
    return separator, breaks


def byte_span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The 64-bit hash of each byte span data[starts[i]:ends[i]]: the span's length, then its bytes 8 at a time
    (the last round masked), each folded in with `splitmix64`. Vectorised over spans: a round handles every span
    not finished yet, and nearly all tokens finish in the first. Used for tokens here and for whole answers by
    the screen's keys (`cot.screen_keys`)."""
    n = len(data)
    padded = np.zeros(n + 8, np.uint8)
    padded[:n] = data
    view = np.ndarray((n + 1,), dtype="<u8", buffer=padded, strides=(1,))
    hashes = splitmix64((ends - starts).astype(np.uint64))
    active = np.flatnonzero(ends > starts)
    pos = starts.copy()
    while active.size:
        remaining = np.minimum(ends[active] - pos[active], 8)
        chunk = view[pos[active]] & _BYTE_MASKS[remaining]
        with np.errstate(over="ignore"):
            hashes[active] = splitmix64(hashes[active] * np.uint64(31) ^ chunk)
        pos[active] += 8
        active = active[pos[active] < ends[active]]
    return hashes


def hashed_tokens(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes, per-text offsets) without materialising token strings: the scan's fast tokeniser.

    Same idea as `normalized_tokens` (lowercase runs of ASCII letters/digits; every other ASCII byte separates
    tokens) but computed on the UTF-8 byte buffer with numpy, and each token hashed 8 bytes at a time through an
    overlapping uint64 view. Non-ASCII characters are word characters (no Unicode classes, which are the slow
    part of regex tokenising) except common punctuation and spaces, which separate, and Chinese/Japanese
    characters, which are tokens of their own (`_non_ascii_breaks`); both sides of every comparison use this
    same function. With numba (`cot.kernels.token_hashes`) the same hashes come from one loop over the bytes.
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    filled = pc.fill_null(texts.cast(pa.string()), "")
    if _kernels.use_numba():  # the same tokens and hashes in one pass over the bytes (`cot.kernels`)
        seg, bounds = _utf8_buffer(filled)
        if len(seg) and seg.max() >= 0x80:  # only the non-ASCII texts lower-cased (`_mixed_tokens`)
            ascii_rows = np.asarray(pc.string_is_ascii(filled).to_numpy(zero_copy_only=False), bool)
            return _mixed_tokens(seg, bounds[:-1], bounds[1:], ascii_rows)
        hashes, counts = _kernels.token_hashes(seg, bounds, _WORD_BYTE, _SEPARATOR, _SINGLE, ascii=True)
        offsets = np.zeros(len(filled) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return hashes, offsets
    lowered = pc.utf8_lower(filled)
    n = len(lowered)
    raw_offsets = np.frombuffer(lowered.buffers()[1], np.int32, n + 1, lowered.offset * 4).astype(np.int64)
    base = raw_offsets[0]
    data = lowered.buffers()[2]
    seg = np.frombuffer(data, np.uint8, raw_offsets[-1] - base, base) if data is not None and raw_offsets[-1] > base \
        else np.zeros(0, np.uint8)
    bounds = raw_offsets - base
    word = _WORD_BYTE[seg]
    n_bytes = len(seg)
    separator, boundary = _non_ascii_breaks(seg) if n_bytes and seg.max() >= 0x80 else (None, None)
    if separator is not None:
        word &= ~separator
    else:
        boundary = np.zeros(n_bytes + 1, bool)
    boundary[bounds[:-1]] = True  # every text starts a fresh token
    prev = np.zeros(n_bytes, bool)
    prev[1:] = word[:-1]
    prev &= ~boundary[:-1]
    nxt = np.zeros(n_bytes, bool)
    nxt[:-1] = word[1:]
    nxt &= ~boundary[1:]
    starts = np.flatnonzero(word & ~prev)
    ends = np.flatnonzero(word & ~nxt) + 1
    hashes = byte_span_hashes(seg, starts, ends)
    text_of = np.searchsorted(bounds, starts, side="right") - 1
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(text_of, minlength=n), out=offsets[1:])
    return hashes, offsets


def span_tokens(data: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                ascii_rows: Callable[[], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """`hashed_tokens` of the texts data[starts[i]:ends[i]] (byte spans of one UTF-8 buffer, e.g. reasonings
    within their completions) without cutting them out, with the compiled kernel: the same hashes and offsets.
    Where the buffer is not all ASCII, `ascii_rows()` (true: the span is ASCII; e.g. its completion is) lets the
    ASCII spans be read in place and only the others be cut and lower-cased (`_mixed_tokens`). None where the
    numpy path runs, or the buffer is not all ASCII and `ascii_rows` is not given: the caller then cuts the
    texts and calls `hashed_tokens`."""
    if not _kernels.use_numba():
        return None
    if len(data) and data.max() >= 0x80:
        return None if ascii_rows is None else _mixed_tokens(data, starts, ends, np.asarray(ascii_rows(), bool))
    hashes, counts = _kernels.token_hashes(data, starts, _WORD_BYTE, _SEPARATOR, _SINGLE, ends=ends, ascii=True)
    offsets = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return hashes, offsets


def _mixed_tokens(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, ascii_rows: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes, per-text offsets) of the texts data[starts[i]:ends[i]] of a buffer that is not all ASCII:
    the ASCII texts (`ascii_rows`) tokenised where they lie by the ASCII kernel (which folds case itself), the
    others cut out, lower-cased (`utf8_lower`) and tokenised by the byte kernel. Lower-casing the whole buffer
    instead cost the CoT scan 1.5-3.5 CPU s at 1M rollouts of which 5-30% hold a non-ASCII word. The same hashes
    as `hashed_tokens` of the cut texts."""
    n = len(starts)
    asc, other = np.flatnonzero(ascii_rows), np.flatnonzero(~ascii_rows)
    h_a, c_a = _kernels.token_hashes(data, starts[asc], _WORD_BYTE, _SEPARATOR, _SINGLE, ends=ends[asc], ascii=True)
    texts = cut_ranges(data, starts[other], ends[other], np.ones(len(other), bool))
    seg, bounds = _utf8_buffer(pc.utf8_lower(texts))
    h_o, c_o = _kernels.token_hashes(seg, bounds, _WORD_BYTE, _SEPARATOR, _SINGLE, ascii=False)
    counts = np.zeros(n, np.int64)
    counts[asc], counts[other] = c_a, c_o
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = np.empty(int(offsets[-1]), np.uint64)
    for rows, hashes, c in ((asc, h_a, c_a), (other, h_o, c_o)):  # each text's tokens to where its row's go
        first = np.zeros(len(c), np.int64)
        np.cumsum(c[:-1], out=first[1:])
        out[np.repeat(offsets[rows] - first, c) + np.arange(len(hashes))] = hashes
    return out, offsets


def _utf8_buffer(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets relative to them) of a string array without nulls."""
    n = len(strings)
    raw = np.frombuffer(strings.buffers()[1], np.int32, n + 1, strings.offset * 4).astype(np.int64)
    data = strings.buffers()[2]
    size = int(raw[-1] - raw[0])
    seg = np.frombuffer(data, np.uint8, size, int(raw[0])) if data is not None and size else np.zeros(0, np.uint8)
    return seg, raw - raw[0]


#: Scoped keys arrive ordered by scope (a text's shingles are contiguous, texts in row order), i.e. as runs that
#: are already in order relative to each other. Timsort ("stable") merges such runs by galloping, so it sorts
#: them ~3x faster than the default introsort (1,000 rows x 36 shingles: 0.43 ms against 1.23 ms); on keys in
#: random order it is about as fast. Which sort is used never changes a result (only values are compared).
SORT_KIND = "stable"


class SortedKeys:
    """Query keys sorted once, so that many membership/count lookups run as cache-friendly merges rather than
    random binary searches (10-30x faster on millions of keys)."""

    def __init__(self, keys: np.ndarray):
        self.order = np.argsort(keys, kind=SORT_KIND)
        self.sorted = keys[self.order]

    def member(self, reference: np.ndarray, presorted: bool = False) -> np.ndarray:
        """Which keys (in original order) occur in reference (`presorted`: reference is already sorted)."""
        return self._scatter(_hits(self.sorted, reference if presorted else np.sort(reference, kind=SORT_KIND)))

    def count(self, reference: np.ndarray) -> np.ndarray:
        """How many times each key occurs in reference."""
        if len(reference) == 0 or len(self.sorted) == 0:
            return np.zeros(len(self.sorted), np.int64)
        ref = np.sort(reference, kind=SORT_KIND)
        # distinct reference keys with their run lengths, then one lookup of the (sorted) keys among them
        new = np.ones(len(ref), bool)
        new[1:] = ref[1:] != ref[:-1]
        starts = np.flatnonzero(new)
        values, runs = ref[starts], np.diff(np.append(starts, len(ref)))
        idx = np.minimum(np.searchsorted(values, self.sorted), len(values) - 1)
        return self._scatter(np.where(values[idx] == self.sorted, runs[idx], 0))

    def distinct(self) -> np.ndarray:
        """The distinct keys, sorted."""
        return _distinct_sorted(self.sorted)

    def _scatter(self, values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[self.order] = values
        return out


def _distinct_sorted(sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return sorted_keys
    new = np.ones(len(sorted_keys), bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return sorted_keys[new]


def distinct(keys: np.ndarray, presorted: bool = False) -> np.ndarray:
    """Sorted distinct keys (np.unique without its bookkeeping)."""
    return _distinct_sorted(keys if presorted else np.sort(keys, kind=SORT_KIND))


def _hits(sorted_query: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    if len(sorted_ref) == 0 or len(sorted_query) == 0:
        return np.zeros(len(sorted_query), bool)
    idx = np.searchsorted(sorted_ref, sorted_query)
    idx[idx == len(sorted_ref)] = len(sorted_ref) - 1
    return sorted_ref[idx] == sorted_query


class Shingles:
    """The k-shingles of n texts: hash `keys`, owning text `row` and `position` (index of the shingle's first
    token in its text), all in text-then-position order. `n_tokens[i]` is the token count of text i. `row` and
    `position` follow from the token counts: where they are not given (the compiled path, whose scan reads
    `row` of the reasoning alone), they are computed when first read."""

    def __init__(self, keys: np.ndarray, row: np.ndarray | None, position: np.ndarray | None, n_tokens: np.ndarray,
                 k: int = 0):
        self.keys = keys  # uint64
        self._row = row  # int64
        self._position = position  # int64
        self.n_tokens = n_tokens  # int64, per text
        self._k = k

    @property
    def row(self) -> np.ndarray:
        if self._row is None:
            self._row = np.repeat(np.arange(len(self.n_tokens), dtype=np.int64), self._counts())
        return self._row

    @property
    def position(self) -> np.ndarray:
        if self._position is None:
            counts = self._counts()
            self._position = np.arange(len(self.keys), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts,
                                                                                    counts)
        return self._position

    def _counts(self) -> np.ndarray:
        return np.maximum(self.n_tokens - self._k + 1, 0)

    @property
    def counts(self) -> np.ndarray:
        """Shingles per text."""
        return np.bincount(self.row, minlength=len(self.n_tokens))


class Vocabulary:
    """Token ids shared by every column of one batch: tokens of all columns are dictionary-encoded together."""

    def __init__(self, columns: list[pa.ListArray]):
        flats = [c.flatten() for c in columns]
        encoded = pc.dictionary_encode(pa.chunked_array(flats, pa.string())).combine_chunks()
        ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.uint64)
        self.words: pa.Array = encoded.dictionary  # token id -> token
        self._ids: list[np.ndarray] = []
        start = 0
        for f in flats:
            self._ids.append(ids[start:start + len(f)])
            start += len(f)
        self._offsets = [np.asarray(c.offsets.to_numpy(zero_copy_only=False), dtype=np.int64) - c.offsets[0].as_py()
                         for c in columns]

    def ids(self, column: int) -> np.ndarray:
        """Flat token ids of one column (uint64)."""
        return self._ids[column]

    def offsets(self, column: int) -> np.ndarray:
        """Per-text offsets into `ids(column)` (length n_texts + 1)."""
        return self._offsets[column]

    def shingles(self, column: int, k: int) -> Shingles:
        """The k-shingles of every text in column `column`."""
        return shingles_from_ids(self._ids[column], self._offsets[column], k)


def shingles_from_ids(ids: np.ndarray, offsets: np.ndarray, k: int) -> Shingles:
    """Hash every window of k consecutive token ids that lies inside one text.

    The window hash is a polynomial in the token ids with fixed odd 64-bit multipliers (wrapping arithmetic),
    finalised by splitmix64. Windows that straddle two texts are dropped.
    """
    n_texts = len(offsets) - 1
    n_tokens = np.diff(offsets)
    total = len(ids)
    if _kernels.use_numba():  # the same hashes, compiled (`cot.kernels.shingle_keys`)
        return Shingles(_kernels.shingle_keys(ids, offsets, k, _multipliers(k)), None, None, n_tokens, k)
    if total < k:
        empty = np.empty(0, np.int64)
        return Shingles(np.empty(0, np.uint64), empty, empty, n_tokens)
    m = total - k + 1
    acc = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for j, mult in enumerate(_multipliers(k)):  # k is small (5-10): a loop over window offsets, not rows
            acc = acc * mult + ids[j:j + m] + np.uint64(1)
    keys = splitmix64(acc)
    counts = np.maximum(n_tokens - k + 1, 0)
    row = np.repeat(np.arange(n_texts, dtype=np.int64), counts)
    starts = np.repeat(offsets[:-1], counts)
    within = np.arange(len(row), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    position = starts + within
    return Shingles(keys[position], row, within, n_tokens)


def _multipliers(k: int) -> np.ndarray:
    """The odd 64-bit multiplier of each of a shingle's k token positions (computed once per k; read only)."""
    m = _MULTIPLIERS.get(k)
    if m is None:
        m = splitmix64(np.arange(1, k + 1, dtype=np.uint64)) | np.uint64(1)
        m.flags.writeable = False
        _MULTIPLIERS[k] = m
    return m


_MULTIPLIERS: dict[int, np.ndarray] = {}


def longest_runs(flag: np.ndarray, row: np.ndarray, n_rows: int) -> np.ndarray:
    """Per row, the longest run of consecutive True values in `flag` (elements ordered by row, then position)."""
    out = np.zeros(n_rows, np.int64)
    if len(flag) == 0:
        return out
    new_row = np.ones(len(row), bool)
    new_row[1:] = row[1:] != row[:-1]
    run_id = np.cumsum(~flag | new_row)
    lengths = np.bincount(run_id[flag], minlength=run_id[-1] + 1)
    run_row = np.zeros(len(lengths), np.int64)
    run_row[run_id[flag]] = row[flag]
    nz = np.flatnonzero(lengths)
    np.maximum.at(out, run_row[nz], lengths[nz])
    return out


def edge_runs(flag: np.ndarray, row: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the length of the run of True values that starts at the row's first element (leading) and of
    the run that ends at its last element (trailing)."""
    leading = np.zeros(n_rows, np.int64)
    trailing = np.zeros(n_rows, np.int64)
    if len(flag) == 0:
        return leading, trailing
    new_row = np.ones(len(row), bool)
    new_row[1:] = row[1:] != row[:-1]
    run_id = np.cumsum(~flag | new_row)
    lengths = np.bincount(run_id[flag], minlength=run_id[-1] + 1)
    first = np.flatnonzero(new_row)
    last = np.append(first[1:] - 1, len(row) - 1)
    leading[row[first]] = np.where(flag[first], lengths[run_id[first]], 0)
    trailing[row[last]] = np.where(flag[last], lengths[run_id[last]], 0)
    return leading, trailing


# ---------------------------------------------------------------- scalar helpers, for evidence only
def token_spans(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) of each normalised token of one text, with character offsets into the original."""
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD_PY.finditer(text)]


def shingle_tuples(tokens: list[str], k: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)]


def matching_spans(reasoning: str, seen: str, excluded: list[str], k: int) -> list[tuple[int, int]]:
    """Character spans of `seen` covered by shingles of `reasoning` that occur in no `excluded` text.

    Overlapping/adjacent matched shingles are merged into one span; spans are sorted by length, longest first.
    """
    reasoning_only = set(shingle_tuples([t for t, _, _ in token_spans(reasoning)], k))
    for text in excluded:
        reasoning_only -= set(shingle_tuples([t for t, _, _ in token_spans(text)], k))
    spans = token_spans(seen)
    toks = [t for t, _, _ in spans]
    covered = np.zeros(len(toks), bool)
    for i, sh in enumerate(shingle_tuples(toks, k)):
        if sh in reasoning_only:
            covered[i:i + k] = True
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(toks):
        if covered[i]:
            j = i
            while j + 1 < len(toks) and covered[j + 1]:
                j += 1
            out.append((spans[i][1], spans[j][2]))
            i = j + 1
        else:
            i += 1
    return sorted(out, key=lambda s: s[0] - s[1])
