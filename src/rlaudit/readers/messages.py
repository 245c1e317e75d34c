"""Chat messages and text columns: rendering message lists, completions with reasoning and tool calls.

A completion logged as messages is the policy's turns: assistant messages (their text, their reasoning, their
tool calls) and, between them, what tools or the environment answered. `assistant_turns` states how that maps
onto the canonical columns for every reader (TRL chat completions, verifiers/prime-rl traces, ART, Tinker...):

- `reasoning` is the reasoning of *every* assistant turn: a `reasoning_content` / `thinking` / `reasoning`
  field (response schemas of Qwen3, gpt-oss, Gemma...), else the think-tag blocks inside its content;
- `answer` is every assistant turn's visible text, reasoning removed;
- `tool_calls` are the calls the assistant made (`{name, arguments}`), `tool_outputs` the tool / environment
  messages after the first assistant turn. Neither is answer text: a tool's output is not what the model said.
- `completion` is what the policy generated, turn by turn, each turn's reasoning inside the think tags.

Vectorised for the common Arrow shape (one assistant message per row, reasoning in its content: the text
split then happens on the store's byte spans); a Python path handles multi-turn rows, reasoning fields, tool
calls and any other shape. The scalar helpers serve per-record readers and the live hooks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schema import TOOL_CALLS
from ..text import ThinkTags, split_all_reasoning

#: Message fields that carry a turn's reasoning apart from its content, in order of preference.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
#: Roles whose messages are tool or environment output (a user message after the first assistant turn of a
#: completion is environment feedback too: the policy did not write it).
TOOL_ROLES = {"tool", "ipython", "function", "environment"}


def as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A string column from a column that holds strings or chat message lists (rendered 'role: content')."""
    values = combine(values)
    typ = values.type
    if pa.types.is_string(typ) or pa.types.is_null(typ):
        return values.cast(pa.string())
    if pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        return values.cast(pa.string())
    if is_message_list_type(typ):
        return render_messages(values)
    return pa.array([_py_text(v) for v in values.to_pylist()], pa.string())


def render_messages(messages: pa.Array) -> pa.Array:
    """Render list<struct<role, content>> rows as 'role: content' lines (the form conditions.py reads)."""
    messages = combine(messages)
    item = messages.type.value_type
    content_type = item.field("content").type if item.get_field_index("content") >= 0 else None
    if content_type is None or not (pa.types.is_string(content_type) or pa.types.is_large_string(content_type)):
        return pa.array([_py_text(v) for v in messages.to_pylist()], pa.string())
    flat = messages.flatten()
    role = pc.fill_null(flat.field("role").cast(pa.string()), "user") if item.get_field_index("role") >= 0 \
        else pa.array(["user"] * len(flat), pa.string())
    content = pc.fill_null(flat.field("content").cast(pa.string()), "")
    lines = pc.binary_join_element_wise(role, content, ": ")
    offsets = pc.subtract(messages.offsets, messages.offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, lines), "\n")
    return pc.if_else(messages.is_valid(), joined, pa.scalar(None, pa.string()))


@dataclass(frozen=True)
class Turns:
    """The canonical columns of one completion logged as messages (see the module docstring)."""

    completion: str
    reasoning: str | None
    answer: str
    tool_calls: list[dict[str, str]] | None
    tool_outputs: list[str] | None


def assistant_turns(messages: list[dict[str, Any]] | None, tags: ThinkTags = ThinkTags()) -> Turns:
    """Split a message-list completion into the policy's text, reasoning, tool calls and tool outputs."""
    generated: list[str] = []
    reasoning: list[str] = []
    answer: list[str] = []
    calls: list[dict[str, str]] = []
    outputs: list[str] = []
    for message in messages or []:
        role = message.get("role") or "assistant"
        content = content_text(message.get("content"))
        if role != "assistant":
            outputs.append(content)  # tools, the environment, a simulated user: not the policy's words
            continue
        thought = next((message[f] for f in REASONING_FIELDS if message.get(f)), None)
        if thought is not None:
            r, a = content_text(thought), content.strip()
            generated.append(f"{tags.open}{r}{tags.close}{content}")
        else:
            r, a = split_all_reasoning(content, tags)
            generated.append(content)
        if r is not None:
            reasoning.append(r)
        if a:
            answer.append(a)
        calls += [tool_call(c) for c in message.get("tool_calls") or []]
    return Turns(completion="\n".join(g for g in generated if g), reasoning="\n".join(reasoning) if reasoning else None,
                 answer="\n".join(answer), tool_calls=calls or None, tool_outputs=outputs or None)


def tool_call(call: Any) -> dict[str, str]:
    """{name, arguments} of a tool call: OpenAI's {type, function: {name, arguments}} or a flat {name, arguments}.

    Arguments are kept as the text the model wrote. A parsed object (TRL's `parse_response`) is serialised back
    to JSON without its null keys: Parquet stores such objects as structs that carry every key any call in the
    column used, null where this call had none."""
    if not isinstance(call, dict):
        return {"name": "", "arguments": str(call)}
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    args = fn.get("arguments", fn.get("args", ""))
    if args is None:
        args = ""
    elif not isinstance(args, str):
        args = json.dumps(_without_nulls(args), ensure_ascii=False)
    return {"name": str(fn.get("name") or ""), "arguments": args}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def turn_columns(messages: pa.Array | pa.ChunkedArray | list[Any], tags: ThinkTags) -> dict[str, pa.Array]:
    """completion / reasoning / answer / tool_calls / tool_outputs arrays from message-list completions.

    Rows that are a single assistant message whose reasoning (if any) is inside its content keep that content
    as the completion with `reasoning`/`answer` null: the store splits them on byte spans, vectorised, exactly
    as for text completions. Every other row (several turns, a reasoning field, tool calls) goes through
    `assistant_turns` and carries its reasoning and answer as text.
    """
    if not isinstance(messages, (pa.Array, pa.ChunkedArray)):
        return _turn_rows(list(messages), tags)
    messages = combine(messages)
    simple = _single_plain_turn(messages, tags) if is_message_list_type(messages.type) else None
    if simple is None:
        return _turn_rows(messages.to_pylist(), tags)
    n = len(messages)
    rest = np.flatnonzero(~simple)
    flat = messages.flatten()
    starts = pc.subtract(messages.offsets, messages.offsets[0]).to_numpy()[:-1]
    content = pc.fill_null(flat.field("content").cast(pa.string()), "") if len(flat) else pa.array([], pa.string())
    first = np.where(simple, np.minimum(starts, max(len(flat) - 1, 0)), 0)
    cols = {"completion": pc.take(content, pa.array(first)) if len(flat) else pa.array([""] * n, pa.string()),
            "reasoning": pa.nulls(n, pa.string()), "answer": pa.nulls(n, pa.string()),
            "tool_calls": pa.nulls(n, TOOL_CALLS), "tool_outputs": pa.nulls(n, pa.list_(pa.string()))}
    cols["completion"] = pc.if_else(pa.array(simple), cols["completion"], pa.scalar("", pa.string()))
    if not len(rest):
        return cols
    slow = _turn_rows(messages.take(pa.array(rest)).to_pylist(), tags)
    order = np.full(n, -1, dtype=np.int64)  # row -> index into `slow` (or -1: the fast path's value)
    order[rest] = np.arange(len(rest))
    pick = pa.array(np.where(simple, 0, order))
    for name, values in slow.items():
        cols[name] = pc.if_else(pa.array(simple), cols[name], pc.take(values, pick))
    return cols


def _turn_rows(rows: list[Any], tags: ThinkTags) -> dict[str, pa.Array]:
    turns = [assistant_turns(r if isinstance(r, list) else _as_messages(r), tags) for r in rows]
    return {"completion": pa.array([t.completion for t in turns], pa.string()),
            "reasoning": pa.array([t.reasoning for t in turns], pa.string()),
            "answer": pa.array([t.answer for t in turns], pa.string()),
            "tool_calls": pa.array([t.tool_calls for t in turns], TOOL_CALLS),
            "tool_outputs": pa.array([t.tool_outputs for t in turns], pa.list_(pa.string()))}


def _as_messages(value: Any) -> list[dict[str, Any]]:
    """A completion that is not a message list (a string, or null) as one assistant message."""
    return [] if value is None else [{"role": "assistant", "content": value}]


def _single_plain_turn(messages: pa.Array, tags: ThinkTags) -> np.ndarray | None:
    """Rows holding exactly one assistant message with string content holding at most one think block, no
    reasoning field and no tool calls; None when the Arrow type does not allow the vectorised test."""
    item = messages.type.value_type
    if not is_text_type(item.field("content").type):
        return None
    n = len(messages)
    lengths = pc.fill_null(pc.list_value_length(messages), 0).to_numpy(zero_copy_only=False)
    flat = messages.flatten()
    offsets = pc.subtract(messages.offsets, messages.offsets[0])
    plain = np.ones(len(flat), dtype=bool)  # per message: nothing beyond role/content that matters
    if len(flat):
        content = pc.fill_null(flat.field("content").cast(pa.string()), "")
        for tag in (tags.open, tags.close):  # a turn that thinks twice needs `split_all_reasoning`
            plain &= pc.less_equal(pc.count_substring(content, tag), 1).to_numpy(zero_copy_only=False)
    if item.get_field_index("role") >= 0:
        role = flat.field("role").cast(pa.string())
        plain &= pc.fill_null(pc.equal(role, "assistant"), True).to_numpy(zero_copy_only=False)
    for name in (*REASONING_FIELDS, "tool_calls"):
        if item.get_field_index(name) < 0:
            continue
        value = flat.field(name)
        if pa.types.is_list(value.type) or pa.types.is_large_list(value.type):
            empty = pc.fill_null(pc.equal(pc.list_value_length(value), 0), True)
        elif is_text_type(value.type):
            empty = pc.fill_null(pc.equal(value.cast(pa.string()), ""), True)
        else:
            empty = pc.is_null(value)
        plain &= empty.to_numpy(zero_copy_only=False)
    starts = offsets.to_numpy()[:-1]
    simple = (lengths == 1) & messages.is_valid().to_numpy(zero_copy_only=False)
    if len(flat):
        simple &= plain[np.minimum(starts, len(flat) - 1)]
    else:
        simple &= False
    return simple if n else np.zeros(0, dtype=bool)


def is_text_type(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)


def is_message_list_type(typ: pa.DataType) -> bool:
    return (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_struct(typ.value_type) \
        and typ.value_type.get_field_index("content") >= 0


def content_text(content: Any) -> str:
    """Text of a message content: a string, or a list of parts ({type: text, text}) with images dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return str(content)


def is_message_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def render_message_list(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role') or 'user'}: {content_text(m.get('content'))}" for m in messages)


def _py_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return render_message_list(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def combine(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`values` as one array: a single chunk as it is, consecutive slices of one flat array as that array
    (`_adjacent_slices`), other chunks copied into one (`combine_chunks`)."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return values.chunk(0)
        joined = _adjacent_slices(values)
        return joined if joined is not None else values.combine_chunks()
    return values


def _adjacent_slices(values: pa.ChunkedArray) -> pa.Array | None:
    """The chunks as one array without a copy where they are consecutive slices of one array of a flat type (a
    number, a boolean, a string or binary): the same buffers, each chunk starting where the one before ends. None
    otherwise. Ingest slices each batch's table per source file and `finalize_parts` concatenates those slices
    again: combining them copied every column (the completions' text included) once more."""
    chunks = values.chunks
    first = chunks[0]
    typ = first.type
    if not (pa.types.is_primitive(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ)
            or pa.types.is_binary(typ) or pa.types.is_large_binary(typ)):
        return None
    buffers = first.buffers()
    same = [b.address if b is not None else None for b in buffers]
    end = first.offset + len(first)
    for chunk in chunks[1:]:
        if chunk.offset != end or [b.address if b is not None else None for b in chunk.buffers()] != same:
            return None
        end += len(chunk)
    return pa.Array.from_buffers(typ, end - first.offset, buffers, offset=first.offset)
