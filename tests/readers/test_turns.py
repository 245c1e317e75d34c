"""Multi-turn completions (`messages.assistant_turns`, `turn_columns`) and the multi-block reasoning split."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.readers.messages import assistant_turns, tool_call, turn_columns
from rlaudit.text import ThinkTags, split_all_reasoning, split_one

TAGS = ThinkTags()


def test_every_turns_reasoning_is_reasoning_and_tools_are_neither_answer_nor_reasoning():
    turns = assistant_turns([
        {"role": "assistant", "content": "<think>need the calculator</think>Let me compute.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"x": 3}'}}]},
        {"role": "tool", "content": "12"},
        {"role": "assistant", "content": "The answer is 12.", "reasoning_content": "the tool said 12"},
    ], TAGS)
    assert turns.reasoning == "need the calculator\nthe tool said 12"
    assert turns.answer == "Let me compute.\nThe answer is 12."
    assert turns.tool_calls == [{"name": "calc", "arguments": '{"x": 3}'}]
    assert turns.tool_outputs == ["12"]
    assert turns.completion == ("<think>need the calculator</think>Let me compute.\n"
                                "<think>the tool said 12</think>The answer is 12.")


def test_thinking_field_and_environment_feedback():
    turns = assistant_turns([{"role": "assistant", "content": "Hi", "thinking": "be brief"},
                             {"role": "user", "content": "wrong, try again"},
                             {"role": "assistant", "content": "Hello"}], TAGS)
    assert turns.reasoning == "be brief" and turns.answer == "Hi\nHello"
    assert turns.tool_outputs == ["wrong, try again"] and turns.tool_calls is None


def test_tool_call_shapes():
    assert tool_call({"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}) == \
        {"name": "f", "arguments": '{"a": 1}'}
    assert tool_call({"name": "g", "arguments": "[1]"}) == {"name": "g", "arguments": "[1]"}


def test_split_all_reasoning_takes_every_block():
    assert split_all_reasoning("<think>a</think>x\n<think>b</think>y", TAGS) == ("a\nb", "x\ny")
    assert split_all_reasoning("a</think>x<think>b</think>y<think>c", TAGS) == ("a\nb\nc", "x\ny")
    assert split_all_reasoning("plain answer ", TAGS) == (None, "plain answer")


_text = st.lists(st.sampled_from(list("ab \n\t<>/") + ["<think>", "</think>", "é", "漢"]), max_size=12).map("".join)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(_text)
def test_split_all_reasoning_agrees_with_the_single_split_when_there_is_one_block(text):
    """With at most one open and one close tag, both splits give the same reasoning and answer."""
    if text.count("<think>") > 1 or text.count("</think>") > 1:
        return
    assert split_all_reasoning(text, TAGS) == split_one(text, TAGS)


_message = st.fixed_dictionaries({
    "role": st.sampled_from(["assistant", "assistant", "tool", "user"]),
    "content": _text,
    "reasoning_content": st.one_of(st.none(), st.just(""), _text),
    "tool_calls": st.one_of(st.none(), st.just([]), st.lists(
        st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]), "arguments": st.just("{}")}), max_size=2)),
})


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(_message, max_size=3)), min_size=1, max_size=6))
def test_arrow_path_equals_the_python_path_after_the_stores_span_split(rows):
    """The vectorised rows leave reasoning/answer to the store's span split; after it, both paths agree."""
    fast = turn_columns(pa.array(rows), TAGS)
    slow = turn_columns(rows, TAGS)
    for i in range(len(rows)):
        got = {k: v[i].as_py() for k, v in fast.items()}
        if got["answer"] is None:  # left to the span split of the completion
            got["reasoning"], got["answer"] = split_one(got["completion"], TAGS)
        want = {k: v[i].as_py() for k, v in slow.items()}
        assert got == want
