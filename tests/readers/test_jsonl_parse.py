"""The line-by-line JSONL parse (`readers.jsonl.parse_line`): orjson where it gives what `json` gives, `json`
everywhere else, and per-token arrays a reader does not read emptied before the parse (`FlatArrays`).

The reference is `json.loads` of the line as written: every good line must come back as it would have without
orjson and without emptying (except the emptied arrays), and every bad line must be reported with `json`'s
message about the line as written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rlaudit.readers import jsonl
from rlaudit.readers.base import ReadContext, SourceFile
from rlaudit.readers.jsonl import FlatArrays, parse_line

KEYS = ("token_ids", "logprobs", "mask", "is_content")
UNREAD = FlatArrays(KEYS)
FILE = SourceFile(Path("traces.jsonl"), "traces.jsonl")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
names = st.one_of(st.sampled_from(KEYS + ("x", "message", 'a"token_ids', "token_ids\\")), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(names, inner, max_size=4)), max_leaves=24)
#: what a per-token array holds: numbers and booleans (as verifiers writes them), or anything else
token_arrays = st.one_of(st.lists(st.one_of(st.integers(0, 2 ** 17), st.floats(-30, 0), st.booleans()), max_size=8),
                         st.lists(values, max_size=3))
nodes = st.fixed_dictionaries({"message": st.dictionaries(st.sampled_from(["role", "content"]), st.text(max_size=20)),
                               "token_ids": token_arrays, "mask": token_arrays},
                              optional={"logprobs": token_arrays, "is_content": token_arrays, "info": values})
records = st.fixed_dictionaries({"id": st.text(max_size=6), "nodes": st.lists(nodes, max_size=3)},
                                optional={"info": values, "extra": values})


def _parse(raw: bytes, unread: FlatArrays | None = None) -> tuple[Any, list[str]]:
    bad: list[str] = []
    ctx = ReadContext(run="r", on_bad=lambda record: bad.append(record.reason))
    return parse_line(raw, FILE, 1, ctx, unread), bad


def _emptied(obj: Any) -> Any:
    """`obj` with what `FlatArrays` empties emptied, worked out on the parsed object rather than the bytes: every
    array under a KEYS name whose text holds no quote before its first `]`."""
    if isinstance(obj, list):
        return [_emptied(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    return {k: [] if k in KEYS and isinstance(v, list) and _first_mark(v) != "quote" else _emptied(v)
            for k, v in obj.items()}


def _first_mark(value: Any, outer: bool = True) -> str | None:
    """Which comes first in `value`'s JSON text after its opening bracket: a quote, a `]`, or neither (None)."""
    if isinstance(value, str) or (isinstance(value, dict) and value):
        return "quote"
    if isinstance(value, list):
        for item in value:
            mark = _first_mark(item, outer=False)
            if mark:
                return mark
        return None if outer else "bracket"
    return None


def _nested(obj: Any) -> bool:
    """Whether some KEYS array meets an inner array's `]` before any quote: its emptied line does not parse, so
    the line is read as written."""
    if isinstance(obj, list):
        return any(_nested(v) for v in obj)
    if not isinstance(obj, dict):
        return False
    return any((k in KEYS and isinstance(v, list) and _first_mark(v) == "bracket") or _nested(v)
               for k, v in obj.items())


def _same(a: Any, b: Any) -> bool:
    """Equal, with the types of numbers (an int stays an int) and NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=200, deadline=None)
@given(records, st.sampled_from(["json", "json-compact", "orjson"]))
def test_a_good_line_reads_as_json_reads_it_with_the_unread_arrays_emptied(record, writer):
    if writer == "orjson":
        try:
            raw = orjson.dumps(record)
        except TypeError:  # integers past 64 bits: orjson does not write them
            assume(False)
    else:
        raw = json.dumps(record, separators=(",", ":") if writer == "json-compact" else None).encode()
    expected = json.loads(raw)
    plain, bad = _parse(raw)
    assert not bad and _same(plain, expected)
    emptied, bad = _parse(raw, UNREAD)
    assert not bad and _same(emptied, expected if _nested(expected) else _emptied(expected))


@settings(max_examples=200, deadline=None)
@given(records)
def test_without_orjson_every_line_reads_the_same(record):
    raw = json.dumps(record).encode()
    fast, _ = _parse(raw, UNREAD)
    saved = jsonl._orjson
    jsonl._orjson = None
    try:
        slow, _ = _parse(raw, UNREAD)
    finally:
        jsonl._orjson = saved
    assert _same(fast, slow)


@pytest.mark.parametrize("raw, kind", [
    (b'{"a": 123456789012345678901234567890}', int),  # past 64 bits: orjson would give a float
    (b'{"a": -9223372036854775809}', int),
    (b'{"a": 18446744073709551615}', int),
    (b'{"a": NaN, "token_ids": [1, 2]}', float),  # json's NaN literal: orjson refuses it
    (b'{"a": 1E400}', float),
])
def test_what_orjson_reads_otherwise_is_left_to_json(raw, kind):
    obj, bad = _parse(raw, UNREAD)
    assert not bad and _same(obj, _emptied(json.loads(raw))) and type(obj["a"]) is kind


@pytest.mark.parametrize("raw", [
    b'{"id": "e1", "nodes": [{"token_ids": [1, 2, 3], "mask": [true, fal',  # torn inside an emptied array
    b'{"id": "e1", "nodes": [{"token_ids": [1, 2, 3], "mask": [true]}], "x": tru}',
    b'{"id": "e1", "nodes": [{"token_ids": [1, 2, 3]}], "x": "\\ud800"}',  # a lone surrogate
    b'{"id": "e1", "nodes": [{"token_ids": [1, 2, 3]}], "x": "\xff"}',  # not UTF-8
    b'[{"token_ids": [1, 2]}]',
])
def test_a_bad_line_is_reported_as_json_reports_the_line_as_written(raw):
    saved = jsonl._orjson
    jsonl._orjson = None
    try:
        _, expected = _parse(raw)
    finally:
        jsonl._orjson = saved
    obj, bad = _parse(raw, UNREAD)
    assert obj is None and bad == expected and len(bad) == 1
    assert "column" in bad[0] or "surrogate" in bad[0] or "UTF-8" in bad[0] or "object" in bad[0]


def test_an_escaped_quote_before_a_name_is_no_key():
    record = {'say "token_ids': [1, 2], "text": '"mask":[1,2]', "mask": [3, 4]}
    obj, bad = _parse(json.dumps(record).encode(), UNREAD)
    assert not bad and obj == {'say "token_ids': [1, 2], "text": '"mask":[1,2]', "mask": []}
