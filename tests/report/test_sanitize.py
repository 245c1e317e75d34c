"""Sanitising helpers: any text becomes valid, storable, offset-preserving; embedded JSON cannot break out."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from rlaudit.report.sanitize import Clip, clean_data, clean_text, highlight_segments, plot_label, script_json

any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF))  # surrogates included


@given(any_text)
def test_clean_text_is_valid_utf8_and_keeps_offsets(s):
    out = clean_text(s)
    out.encode("utf-8")  # no lone surrogates left
    assert len(out) == len(s)
    assert "\x00" not in out
    for a, b in zip(s, out):  # only forbidden characters change
        assert a == b or b == "\ufffd"


def test_clean_text_handles_bytes_and_other_values():
    assert clean_text(b"ok \xff") == "ok \ufffd"
    assert clean_text(None) == ""
    assert clean_text(3.5) == "3.5"
    assert clean_text("tab\tnew\nline\r") == "tab\tnew\nline\r"
    assert clean_text("a\x00b\x07c\ud800d") == "a\ufffdb\ufffdc\ufffdd"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20)


@given(json_values)
def test_script_json_is_inert_in_a_script_block_and_round_trips(value):
    text = script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == clean_data(value)


def test_script_json_escapes_script_end_and_comment_open():
    text = script_json({"title": "</script><script>alert(1)</script><!--"})
    assert "</script" not in text.lower() and "<!--" not in text
    assert json.loads(text)["title"] == "</script><script>alert(1)</script><!--"


def test_clean_data_drops_non_finite_numbers():
    assert clean_data({"a": float("nan"), "b": [float("inf"), 1.5], "c": "x\x00"}) == {
        "a": None, "b": [None, 1.5], "c": "x\ufffd"}


def test_plot_label_escapes_plotly_markup_and_clips():
    assert plot_label("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
    assert len(plot_label("z" * 500, limit=80)) == 80


def test_clip_caps_each_text_and_spends_a_budget_with_a_floor():
    clip = Clip(cap=100, budget=250, floor=10)
    first = clip("a" * 1000)
    assert len(first.shown) == 100 and first.total == 1000 and first.omitted == 900
    clip("b" * 1000)
    third = clip("c" * 1000)
    assert len(third.shown) == 50  # what is left of the budget
    fourth = clip("d" * 1000)
    assert len(fourth.shown) == 10  # budget spent: the floor still shows
    assert clip("").empty


def test_clip_window_keeps_the_span_in_view():
    text = "x" * 100_000 + "SPAN" + "y" * 100_000
    window, offset, start, end = Clip(cap=1000).window(text, 100_000, 100_004, context=50)
    assert window.shown[start:end] == "SPAN"
    assert offset == 100_000 - 50 and window.total == len(text)


@given(any_text, st.lists(st.tuples(st.integers(-5, 60), st.integers(-5, 60)), max_size=5))
def test_highlight_segments_cover_the_text_and_mark_exactly_the_spans(text, spans):
    segments = highlight_segments(text, spans)
    assert "".join(piece for piece, _ in segments) == text
    marked = set()
    pos = 0
    for piece, hl in segments:
        if hl:
            marked.update(range(pos, pos + len(piece)))
        pos += len(piece)
    expected = {i for s, e in spans for i in range(max(0, s), min(len(text), e))}
    assert marked == expected
