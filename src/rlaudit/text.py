"""Text helpers shared by readers and detectors: the reasoning/answer split.

Reasoning is the span inside `<think>...</think>` (tags configurable). `split_reasoning` states the rules as
two regexes and is the reference; ingest uses `reasoning_spans`, which gives the same split as byte spans into
the completion (what the store keeps) with numpy, never looping over rollouts in Python.

Rules, in order:
1. `<think>R</think>A` (leading whitespace allowed): reasoning R, answer A.
2. `R</think>A` with no opening tag: the chat template put the opening tag in the prompt (Qwen3,
   DeepSeek-R1 style): reasoning R, answer A.
3. `<think>R` with no closing tag (an *unclosed* tag): the generation stopped inside its reasoning, usually by
   hitting the length limit. Everything after the tag is reasoning and the answer is empty: a grader that saw
   "the answer" of such a completion saw reasoning, so treating it as answer would hide CoT exposure.
4. No tag at all: no reasoning (null), the answer is the whole completion.
Answers are stripped of surrounding whitespace; reasoning is kept verbatim (exposure scans match on it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class ThinkTags:
    open: str = "<think>"
    close: str = "</think>"

    @classmethod
    def parse(cls, spec: str | None) -> ThinkTags:
        """Parse 'OPEN,CLOSE' (e.g. '<reasoning>,</reasoning>'); None gives the default tags."""
        if not spec:
            return cls()
        parts = spec.split(",")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            from .errors import RlauditError

            raise RlauditError(f"--think-tags expects 'OPEN,CLOSE' such as '<think>,</think>', got {spec!r}")
        return cls(parts[0].strip(), parts[1].strip())


def split_reasoning(completions: pa.Array | pa.ChunkedArray, tags: ThinkTags = ThinkTags()) -> tuple[pa.Array, pa.Array]:
    """Split completions into (reasoning, answer) arrays following the module's rules."""
    if isinstance(completions, pa.ChunkedArray):
        completions = completions.combine_chunks()
    completions = pc.fill_null(completions.cast(pa.string()), "")
    o, c = re.escape(tags.open), re.escape(tags.close)
    closed = pc.extract_regex(completions, rf"(?s)^\s*(?:{o})?(?P<reasoning>.*?){c}(?P<answer>.*)$")
    unclosed = pc.extract_regex(completions, rf"(?s)^\s*{o}(?P<reasoning>.*)$")
    closed_ok = pc.is_valid(closed)
    unclosed_ok = pc.and_(pc.invert(closed_ok), pc.is_valid(unclosed))
    null_str = pa.scalar(None, pa.string())
    reasoning = pc.if_else(
        closed_ok,
        pc.struct_field(closed, "reasoning"),
        pc.if_else(unclosed_ok, pc.struct_field(unclosed, "reasoning"), null_str),
    )
    answer = pc.if_else(
        closed_ok,
        pc.struct_field(closed, "answer"),
        pc.if_else(unclosed_ok, pa.scalar("", pa.string()), completions),
    )
    return reasoning, pc.utf8_trim_whitespace(answer)


def split_one(completion: str, tags: ThinkTags = ThinkTags()) -> tuple[str | None, str]:
    """The scalar form of `split_reasoning`, for callers that hold a single completion."""
    r, a = split_reasoning(pa.array([completion], pa.string()), tags)
    return r[0].as_py(), a[0].as_py()


def split_all_reasoning(text: str, tags: ThinkTags = ThinkTags()) -> tuple[str | None, str]:
    """(reasoning, answer) of a text that may hold several think blocks: a multi-turn output logged as one
    string (verl's agent loop interleaves assistant turns), or one turn that thinks twice.

    Every block is reasoning, not only the first: `split_reasoning` would leave the later blocks inside the answer,
    where a CoT-exposure scan takes them for answer text. Blocks are joined with a newline, verbatim; the answer
    is the text between them, each piece stripped and the non-empty ones joined with a newline. A close tag
    before any open tag ends a first block whose open tag was in the prompt (rule 2), and an open tag never
    closed runs to the end (rule 3). A text with at most one open and one close tag is split exactly as
    `split_reasoning` splits it, so a reader may leave such rows to the store's span split.
    """
    if text.count(tags.open) <= 1 and text.count(tags.close) <= 1:
        return _split_single(text, tags)
    reasoning: list[str] = []
    answer: list[str] = []
    pos = 0
    first_close, first_open = text.find(tags.close), text.find(tags.open)
    if first_close >= 0 and (first_open < 0 or first_close < first_open):
        start = len(text) - len(text.lstrip())
        reasoning.append(text[start:first_close])
        pos = first_close + len(tags.close)
    while True:
        opened = text.find(tags.open, pos)
        if opened < 0:
            answer.append(text[pos:])
            break
        answer.append(text[pos:opened])
        body = opened + len(tags.open)
        closed = text.find(tags.close, body)
        if closed < 0:  # cut off while thinking
            reasoning.append(text[body:])
            break
        reasoning.append(text[body:closed])
        pos = closed + len(tags.close)
    pieces = [a.strip() for a in answer]
    return "\n".join(reasoning), "\n".join(p for p in pieces if p)


#: RE2's `\s` (the class `split_reasoning`'s regexes use) as a Python pattern: no vertical tab, no Unicode spaces.
_LEADING_SPACE = "[\t\n\f\r ]*"


def _split_single(text: str, tags: ThinkTags) -> tuple[str | None, str]:
    """`split_reasoning`'s rules for one string, in Python (no Arrow round trip per row)."""
    o, c = re.escape(tags.open), re.escape(tags.close)
    closed = re.match(rf"(?s){_LEADING_SPACE}(?:{o})?(.*?){c}(.*)$", text)
    if closed:
        return closed.group(1), closed.group(2).strip()
    unclosed = re.match(rf"(?s){_LEADING_SPACE}{o}(.*)$", text)
    if unclosed:
        return unclosed.group(1), ""
    return None, text.strip()


# ---------------------------------------------------------------------------------------------- spans
@dataclass(frozen=True)
class Spans:
    """Where the reasoning and the answer sit inside each completion: [start, end) in UTF-8 bytes from the start
    of the completion. `reasoning_start`/`reasoning_end` are null where a completion has no reasoning. The store
    keeps these four integers instead of a second and a third copy of the completion's text, which halves what
    ingest compresses and writes; DuckDB cuts them with `decode(encode(completion)[start + 1:end])`."""

    reasoning_start: pa.Array
    reasoning_end: pa.Array
    answer_start: pa.Array
    answer_end: pa.Array
    #: per completion, whether it holds `THINK_CLOSE`, where the split's close tag is that (its search found the
    #: first one if any: a fact the part keeps, `completion_facts`); None for other tags
    think_close: np.ndarray | None = None


_SCAN = 16  # bytes examined at each edge of a region for whitespace before falling back to Arrow's kernels
_RE2_SPACE = np.zeros(256, bool)
_RE2_SPACE[[9, 10, 12, 13, 32]] = True  # \s in RE2 and in split_reasoning's regex; whitespace by any definition
_PLAIN = np.zeros(256, bool)
_PLAIN[0x21:0x7F] = True  # printable ASCII: not whitespace by any definition


def reasoning_spans(completions: pa.Array | pa.ChunkedArray, tags: ThinkTags = ThinkTags()) -> Spans:
    """`split_reasoning` as byte spans (same rules: `text_at` of the spans gives the same strings).

    Works on the completions' UTF-8 bytes without building any new text: with numba (`kernels.think_spans`) one
    pass per row, else with numpy (`_numpy_spans`). Either way only rows whose answer begins or ends in something
    other than ASCII (a Unicode space, say) have their edges trimmed by Arrow's `utf8_*trim_whitespace`, so the
    trimming rule is exactly the reference's.
    """
    from .derived import kernels

    strings = _strings(completions)
    data, off = _bytes(strings)
    begin, end = off[:-1], off[1:]
    found = kernels.think_spans(data, begin, end, tags.open.encode(), tags.close.encode())
    if found is None:
        reasoning_start, reasoning_end, answer_start, answer_end, has_reasoning = _numpy_spans(data, off, tags)
    else:
        reasoning_start, reasoning_end, answer_start, answer_end, has_reasoning, unsure = found
        rows = np.flatnonzero(unsure)
        if len(rows):  # the untrimmed answer regions of these rows, trimmed by Arrow's rules
            answer_start[rows], answer_end[rows] = _arrow_trimmed(data, answer_start[rows], answer_end[rows])
    return Spans(
        reasoning_start=pa.array(reasoning_start - begin, pa.int32(), mask=~has_reasoning),
        reasoning_end=pa.array(reasoning_end - begin, pa.int32(), mask=~has_reasoning),
        answer_start=pa.array(answer_start - begin, pa.int32()),
        answer_end=pa.array(answer_end - begin, pa.int32()),
        # the reasoning ends before the completion does only at a close tag (both paths)
        think_close=reasoning_end < end if tags.close == THINK_CLOSE else None)


def _numpy_spans(data: np.ndarray, off: np.ndarray, tags: ThinkTags
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(reasoning start, reasoning end, answer start, answer end, has reasoning), absolute byte positions, of the
    completions data[off[i]:off[i + 1]] with numpy: the first closing tag is found by a vectorised byte search,
    leading whitespace and the opening tag by looking at a few bytes per row."""
    begin, end = off[:-1], off[1:]
    close_b, open_b = tags.close.encode(), tags.open.encode()
    at = _first_occurrence(data, off, close_b)
    closed = at >= 0
    reasoning_end = np.where(closed, at, end)
    lead = _edge(data, begin, reasoning_end, forward=True, exact=True)
    unsure = np.flatnonzero(lead < 0)  # more whitespace than the scan looked at: all ASCII, so exact in bytes
    if len(unsure):
        region = _cut(data, begin[unsure], reasoning_end[unsure])
        found = pc.find_substring_regex(region, r"[^\t\n\f\r ]").to_numpy()
        lead[unsure] = np.where(found < 0, reasoning_end[unsure] - begin[unsure], found)
    opened = _starts_with(data, begin + lead, reasoning_end, open_b)
    reasoning_start = begin + lead + opened * len(open_b)
    has_reasoning = closed | opened
    answer_start, answer_end = _trimmed(data, np.where(closed, at + len(close_b), begin), end)
    empty = opened & ~closed  # an unclosed tag: all reasoning, empty answer
    answer_start[empty] = answer_end[empty] = end[empty]
    return reasoning_start, reasoning_end, answer_start, answer_end, has_reasoning


#: The literal `completion_facts` looks for: training health's check of a closed think block reads it as it is,
#: whatever tags a run's reasoning was split by.
THINK_CLOSE = "</think>"


def completion_facts(completions: pa.Array | pa.ChunkedArray, think_close: np.ndarray | None = None
                     ) -> tuple[pa.Array, pa.Array]:
    """(int32 characters, holds `THINK_CLOSE`) of each completion, null where it is null: what DuckDB's
    `length(completion)` and `completion LIKE '%</think>%'` give, kept in the part (`layout.FACTS`) so that
    statistics of every rollout need not read its text. The characters are counted by a compiled kernel where
    numba is imported (`kernels.completion_chars`), else by Arrow; `think_close` is the second where the reasoning
    split already searched every completion for it (`Spans.think_close`), else Arrow searches (the same values,
    tested)."""
    from .derived import kernels

    strings = _strings(completions, fill_nulls=False)
    data, begin, end = byte_spans(strings)
    chars = kernels.completion_chars(data, begin, end)
    mask = ~validity(strings) if strings.null_count else None
    chars = pc.utf8_length(strings).cast(pa.int32()) if chars is None else pa.array(chars, pa.int32(), mask=mask)
    think = (pc.match_substring(strings, THINK_CLOSE) if think_close is None or mask is not None
             else pa.array(think_close, pa.bool_()))
    return chars, think


def text_at(strings: pa.Array | pa.ChunkedArray, start: pa.Array, end: pa.Array) -> pa.Array:
    """The substrings `strings[i][start[i]:end[i]]` (UTF-8 bytes, as `Spans` gives them); null where `start` is
    null. One byte gather, no per-row Python."""
    return cut_ranges(*span_ranges(strings, start, end))


def cut_ranges(data: np.ndarray, lo: np.ndarray, hi: np.ndarray, valid: np.ndarray) -> pa.Array:
    """The strings data[lo[i]:hi[i]] (UTF-8 bytes), null where `valid` is false: `span_ranges`' texts cut out
    (for a reader that tokenises most texts where they lie and needs a few as strings)."""
    cut = _cut(data, lo, hi)
    return cut if valid.all() else pc.if_else(pa.array(valid), cut, pa.scalar(None, pa.string()))


def span_ranges(strings: pa.Array | pa.ChunkedArray, start: pa.Array | pa.ChunkedArray,
                end: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data, lo, hi, valid): the substring `strings[i][start[i]:end[i]]` (UTF-8 byte offsets, as `Spans` gives
    them) is data[lo[i]:hi[i]] of the strings' own buffer; where `start` is null (`valid` false) the range is
    empty. What reading a span in place needs (`text_at` cuts them; the CoT scan tokenises and hashes them
    where they lie), without copying the texts."""
    start, end = (a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in (start, end))
    data, base, _ = byte_spans(strings)
    valid = validity(start)
    lo = base + np.where(valid, int_values(start), 0)
    hi = np.where(valid, base + int_values(end), lo)
    return data, lo, hi, valid


def int_values(array: pa.Array) -> np.ndarray:
    """The int64 values of an integer array, whatever its null slots hold (the caller masks them): no
    `fill_null` (an Arrow kernel call per column, which also imports pandas on first use)."""
    if array.null_count == 0:
        return array.to_numpy().astype(np.int64)
    if array.null_count == len(array) or array.buffers()[1] is None:
        return np.zeros(len(array), np.int64)
    width = np.dtype(f"<i{array.type.bit_width // 8}")  # the span columns are int32
    return np.frombuffer(array.buffers()[1], width, len(array), array.offset * width.itemsize).astype(np.int64)


def byte_spans(strings: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data buffer, start, end): each string is data[start[i]:end[i]] (int64); a null is empty."""
    if isinstance(strings, pa.ChunkedArray):  # (combine_chunks copies even a single chunk)
        strings = strings.chunk(0) if strings.num_chunks == 1 else strings.combine_chunks()
    if not pa.types.is_large_string(strings.type):
        strings = strings.cast(pa.string())
    width = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    buffers = strings.buffers()
    off = np.frombuffer(buffers[1], width, len(strings) + 1, strings.offset * np.dtype(width).itemsize)
    off = off.astype(np.int64)
    starts, ends = off[:-1], off[1:]
    if strings.null_count:  # a null's offsets may cover bytes (Arrow allows it)
        ends = np.where(validity(strings), ends, starts)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return data, starts, ends


def validity(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which entries of an array are not null (bool), unpacked from its validity bitmap: Arrow's boolean
    `to_numpy(zero_copy_only=False)` goes through its pandas conversion (imports pandas, ~0.3 CPU s once per
    process, and took ~8 ms for a part's 5,000 all-null answers); this takes microseconds."""
    if array.null_count == 0:
        return np.ones(len(array), bool)
    if isinstance(array, pa.ChunkedArray):  # chunk by chunk: combining them would copy a string column's data
        return np.concatenate([validity(c) for c in array.chunks]) if array.num_chunks else np.ones(0, bool)
    bits = np.frombuffer(array.buffers()[0], np.uint8)
    return np.unpackbits(bits, count=array.offset + len(array), bitorder="little")[array.offset:].astype(bool)


def _strings(values: pa.Array | pa.ChunkedArray, fill_nulls: bool = True) -> pa.Array:
    """`values` as one string (or large string) array, nulls as "" unless `fill_nulls` is false."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    return pc.fill_null(values, "") if fill_nulls and values.null_count else values


def _bytes(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The data buffer and the n + 1 absolute offsets (int64) of a string or large_string array."""
    width = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    buffers = strings.buffers()
    off = np.frombuffer(buffers[1], width, len(strings) + 1, strings.offset * np.dtype(width).itemsize)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return data, off.astype(np.int64)


def _cut(data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> pa.Array:
    """A string array of the byte ranges data[lo:hi] (hi >= lo), gathered at once (range by range with numba,
    `kernels.gather_spans`: the same bytes)."""
    from .derived import kernels

    gathered = kernels.gather_spans(data, lo, hi)
    if gathered is not None:
        cut, off = gathered
        if off[-1] < 2**31:
            return pa.Array.from_buffers(pa.string(), len(lo), [None, pa.py_buffer(off.astype(np.int32)),
                                                                pa.py_buffer(cut)])
        return pa.Array.from_buffers(pa.large_string(), len(lo), [None, pa.py_buffer(off), pa.py_buffer(cut)]
                                     ).cast(pa.string())
    size = hi - lo
    out = np.zeros(len(lo) + 1, np.int64)
    np.cumsum(size, out=out[1:])
    index = np.repeat(lo - out[:-1], size) + np.arange(out[-1])
    array = pa.Array.from_buffers(pa.large_string(), len(lo), [None, pa.py_buffer(out), pa.py_buffer(data[index])])
    return array.cast(pa.string())


def count_substrings(strings: pa.Array | pa.ChunkedArray, patterns: list[str]) -> dict[str, np.ndarray]:
    """Per pattern, the non-overlapping occurrences in each string (null: none), as `pc.count_substring` counts
    them, from one search of the UTF-8 bytes: the positions of the patterns' first bytes are found once and each
    pattern's other bytes tested there only. Arrow's count and match ran a pass over every byte per pattern (~400
    MB/s: verl's four tests of each output were ~6 CPU s of a 1M-rollout ingest). A pattern that can overlap
    itself (a proper prefix equal to a suffix, "aa") is counted by Arrow, whose count skips overlaps."""
    values = _strings(strings)
    data, off = _bytes(values)
    out: dict[str, np.ndarray] = {}
    firsts = np.frombuffer(bytes(sorted({p.encode()[0] for p in patterns if p})), np.uint8)
    starts = np.flatnonzero(np.isin(data[off[0]:off[-1]], firsts)) + off[0]
    for pattern in patterns:
        b = pattern.encode()
        if not b or any(b[:i] == b[-i:] for i in range(1, len(b))):
            out[pattern] = np.asarray(pc.count_substring(values, pattern).to_numpy(zero_copy_only=False), np.int64)
            continue
        _, row = _matches(data, off, b, starts[data[starts] == b[0]])
        out[pattern] = np.bincount(row, minlength=len(off) - 1).astype(np.int64)
    return out


def _matches(data: np.ndarray, off: np.ndarray, pattern: bytes, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, rows) of the occurrences of `pattern` among the candidate positions `cand` (sorted, where its
    first byte is) that lie inside one string."""
    k = len(pattern)
    cand = cand[cand + k <= off[-1]]
    for j in range(1, k):
        cand = cand[data[cand + j] == pattern[j]]
    row = np.searchsorted(off, cand, side="right") - 1
    inside = cand + k <= off[row + 1]
    return cand[inside], row[inside]


def _first_occurrence(data: np.ndarray, off: np.ndarray, pattern: bytes) -> np.ndarray:
    """Absolute byte position of the first `pattern` inside each string, -1 where there is none."""
    n, k = len(off) - 1, len(pattern)
    where = np.full(n, -1, np.int64)
    if n == 0 or k == 0 or off[-1] - off[0] < k:
        return where
    cand, row = _matches(data, off, pattern, np.flatnonzero(data[off[0]:off[-1] - k + 1] == pattern[0]) + off[0])
    rows, first = np.unique(row, return_index=True)  # candidates are sorted: the first per row is the earliest
    where[rows] = cand[first]
    return where


def _edge(data: np.ndarray, lo: np.ndarray, hi: np.ndarray, forward: bool, exact: bool) -> np.ndarray:
    """Bytes of RE2 whitespace ([\\t\\n\\f\\r ]) at the start (`forward`) or the end of each region data[lo:hi].

    With `exact` that count is the answer. Otherwise the caller trims Unicode whitespace, which has more
    characters than these, so a count is trusted only where the run stops at printable ASCII or fills the region.
    -1 where the count is not certain (or the run is longer than the `_SCAN` bytes looked at). One byte per
    row is read, then one more for each row still in whitespace: most rows stop at the first byte.
    """
    size = hi - lo
    count = np.zeros(len(lo), np.int64)
    certain = np.ones(len(lo), bool)
    active = np.flatnonzero(size > 0)
    for _ in range(_SCAN):
        if not len(active):
            break
        byte = data[lo[active] + count[active] if forward else hi[active] - 1 - count[active]]
        space = _RE2_SPACE[byte]
        if not exact:
            certain[active[~space]] = _PLAIN[byte[~space]]
        active = active[space]
        count[active] += 1
        active = active[count[active] < size[active]]  # a region all whitespace is certain
    certain[active] = False
    return np.where(certain, count, -1)


def _starts_with(data: np.ndarray, at: np.ndarray, hi: np.ndarray, prefix: bytes) -> np.ndarray:
    """Whether data[at:hi] begins with `prefix`."""
    k = len(prefix)
    fits = at + k <= hi
    if k == 0 or not fits.any():
        return fits if k == 0 else np.zeros(len(at), bool)
    window = data[np.clip(at[:, None] + np.arange(k), 0, len(data) - 1)]
    return fits & (window == np.frombuffer(prefix, np.uint8)).all(axis=1)


def _trimmed(data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of each region data[lo:hi] without the whitespace `utf8_trim_whitespace` removes."""
    head = _edge(data, lo, hi, forward=True, exact=False)
    tail = _edge(data, lo, hi, forward=False, exact=False)
    unsure = np.flatnonzero((head < 0) | (tail < 0))
    start, stop = lo + head, hi - tail
    if len(unsure):  # leave the Unicode rules to Arrow
        start[unsure], stop[unsure] = _arrow_trimmed(data, lo[unsure], hi[unsure])
    return start, np.maximum(stop, start)


def _arrow_trimmed(data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of each region data[lo:hi] without the whitespace `utf8_trim_whitespace` removes, by Arrow's
    own kernels (for the regions whose edges hold other than ASCII)."""
    region = _cut(data, lo, hi)
    size = pc.binary_length(region).to_numpy()
    head = size - pc.binary_length(pc.utf8_ltrim_whitespace(region)).to_numpy()
    tail = size - pc.binary_length(pc.utf8_rtrim_whitespace(region)).to_numpy()
    start = lo + head
    return start, np.maximum(hi - tail, start)
