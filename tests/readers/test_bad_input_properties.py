"""Hypothesis: random valid records plus random corruption. Good rows are all kept, every bad line is quarantined
with its exact line number, and nothing crashes, across fast-path chunks, slow-path chunks and chunk borders."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlaudit.readers import jsonl
from rlaudit.readers.base import BadRecord, ReadContext, SourceFile, finalize
from rlaudit.readers.canonical import CanonicalReader
from rlaudit.readers.verl import VerlReader
from rlaudit.layout import LAYOUT, part_signals, part_table, to_canonical, view_columns
from rlaudit.schema import ROLLOUT_SCHEMA
from rlaudit.text import ThinkTags, reasoning_spans, split_reasoning, text_at

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
NUMBER = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**20, 10**20))


@st.composite
def good_record(draw, fmt):
    text = draw(TEXT)
    if fmt == "verl":
        rec = {"input": draw(TEXT), "output": "<think>" + text + "</think>done", "gts": draw(st.one_of(
            st.none(), TEXT, st.integers(), st.lists(st.integers(), max_size=2))), "score": draw(NUMBER), "step": 1}
        if draw(st.booleans()):
            rec["acc"] = draw(st.booleans())
    else:
        rec = {"step": draw(st.integers(0, 10**6)), "prompt": draw(TEXT), "completion": text,
               "rewards": {"a": draw(NUMBER)}}
    if draw(st.integers(0, 30)) == 0:  # a huge string (longer than the small chunk sizes drawn below)
        rec["note"] = "x" * 70_000
    return rec


REQUIRED = {"verl": ["input", "output", "score"], "canonical": ["step", "prompt", "completion"]}
NUMERIC = {"verl": "score", "canonical": "step"}


@st.composite
def corrupted_line(draw, fmt):
    rec = draw(good_record(fmt))
    kind = draw(st.sampled_from(["torn", "wrong_type", "missing", "null", "utf8", "not_object"]))
    raw = json.dumps(rec, ensure_ascii=False).encode()
    if kind == "torn":
        return raw[: draw(st.integers(1, len(raw) - 2))]
    if kind == "wrong_type":
        rec[NUMERIC[fmt]] = "x" + draw(TEXT)
    elif kind in ("missing", "null"):
        field = draw(st.sampled_from(REQUIRED[fmt]))
        if kind == "missing":
            del rec[field]
        else:
            rec[field] = None
    elif kind == "utf8":
        return raw[:-1] + b', "bad": "\xff\xfe"}'
    elif kind == "not_object":
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), TEXT))).encode()
    return json.dumps(rec, ensure_ascii=False).encode()


@st.composite
def jsonl_file(draw, fmt):
    lines, good, bad = [], [], []
    for _ in range(draw(st.integers(1, 40))):
        what = draw(st.sampled_from(["good", "good", "good", "bad", "blank"]))
        n = len(lines) + 1
        if what == "good":
            lines.append(json.dumps(draw(good_record(fmt)), ensure_ascii=False).encode())
            good.append(n)
        elif what == "bad":
            lines.append(draw(corrupted_line(fmt)))
            bad.append(n)
        else:
            lines.append(b"   " if draw(st.booleans()) else b"")
    trailing = draw(st.booleans())
    data = b"\n".join(lines) + (b"\n" if trailing else b"")
    return data, good, bad


def _read(fmt: str, data: bytes, chunk: int):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "7.jsonl"
        path.write_bytes(data)
        bad: list[BadRecord] = []
        ctx = ReadContext(run="r", on_bad=bad.append)
        reader = VerlReader() if fmt == "verl" else CanonicalReader()
        file = SourceFile(path, "7.jsonl", step=7 if fmt == "verl" else None)
        old = jsonl.CHUNK_BYTES
        jsonl.CHUNK_BYTES = chunk
        try:
            tables = [finalize(raw, file, ctx) for raw in reader.read(file, ctx)]
        finally:
            jsonl.CHUNK_BYTES = old
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    return rows, bad


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["verl", "canonical"])
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_good_rows_kept_and_bad_lines_quarantined_exactly(fmt, data):
    content, good, bad_lines = data.draw(jsonl_file(fmt))
    chunk = data.draw(st.sampled_from([64, 1000, 1 << 20]))
    rows, bad = _read(fmt, content, chunk)
    kept = sorted(int(r["rollout_id"].split(":")[1]) for r in rows)
    assert kept == good
    assert sorted(b.line for b in bad) == bad_lines
    assert all(b.file == "7.jsonl" and b.reason for b in bad)


TAG_PIECES = ["<think>", "</think>", " ", "\n", "\t", "a", "é", "\u00a0", "\u3000", "</", "think>", "<r>", "</r>",
              "\r", "\f", "\v", "\x1c", "\x85", "\u2028", "x" * 20, " " * 70, "\n" * 65]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(TAG_PIECES), max_size=12).map("".join), max_size=20),
       st.sampled_from([ThinkTags(), ThinkTags("<r>", "</r>")]))
def test_reasoning_spans_cut_the_same_text_as_the_reference_split(texts, tags):
    """The store keeps spans, not text: reading them back with Arrow (`to_canonical`) and with DuckDB (the
    `rollouts` view's SQL) must both give exactly what the regex reference split gives, Unicode included."""
    arr = pa.array(texts + [None], pa.string())
    ref_r, ref_a = split_reasoning(arr, tags)
    spans = reasoning_spans(arr, tags)
    assert text_at(arr, spans.reasoning_start, spans.reasoning_end).to_pylist() == ref_r.to_pylist()
    assert text_at(arr, spans.answer_start, spans.answer_end).to_pylist() == ref_a.to_pylist()
    cols = {f.name: pa.nulls(len(arr), f.type) for f in ROLLOUT_SCHEMA}
    cols["completion"] = pc.fill_null(arr, "")
    part = part_table(cols, spans)
    rows = to_canonical(part)
    assert rows["reasoning"].to_pylist() == ref_r.to_pylist()
    assert rows["answer"].to_pylist() == ref_a.to_pylist()
    got = duckdb.sql(f"SELECT reasoning, answer FROM (SELECT {view_columns(LAYOUT, part_signals(part.schema))} "
                     "FROM part)").fetchall()
    assert [r for r, _ in got] == ref_r.to_pylist()
    assert [a for _, a in got] == ref_a.to_pylist()


#: bytes around the surrogate hint's two forms: the escape's letters and digits, and CESU-8's lead and trail bytes
_NEAR_SURROGATES = st.lists(st.sampled_from([b"\\", b"u", b"U", b"d", b"D", b"8", b"9", b"a", b"F", b"g", b"\xed",
                                             b"\xa0", b"\xbf", b"\x9f", b"\xc0", b"x", b" "]), max_size=24)


@given(st.one_of(st.binary(max_size=64), _NEAR_SURROGATES.map(b"".join)))
@settings(max_examples=300)
def test_the_surrogate_prefilter_answers_as_the_pattern(raw):
    """`jsonl._may_hold_surrogate` (literal searches, then the pattern) says what the pattern alone says."""
    assert jsonl._may_hold_surrogate(raw) == (jsonl._SURROGATE_HINT.search(raw) is not None)
