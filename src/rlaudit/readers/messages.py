"""Chat messages and text columns: rendering message lists, completions with `reasoning_content`.

Vectorised for the common Arrow shape list<struct<role, content, reasoning_content>>; a Python fallback handles
anything else (content as a list of parts, mixed shapes). The scalar helpers serve per-record readers and the
live hooks.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..text import ThinkTags


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


def completion_columns(messages: pa.Array, tags: ThinkTags) -> dict[str, pa.Array]:
    """completion / reasoning / answer from a message-list completion with optional `reasoning_content`.

    The answer is the assistant's content (a single message) or the rendered turns (several messages); the
    reasoning is the messages' `reasoning_content`. The completion puts the reasoning back inside the think tags
    so that `completion` stays "everything the model generated" like in the text formats.
    """
    messages = combine(messages)
    item = messages.type.value_type
    if any(item.get_field_index(f) >= 0 and not is_text_type(item.field(f).type) for f in ("content", "reasoning_content")):
        rows = [_py_completion(v) for v in messages.to_pylist()]
        answer = pa.array([r[0] for r in rows], pa.string())
        reasoning = pa.array([r[1] for r in rows], pa.string())
    else:
        flat = messages.flatten()
        lengths = pc.fill_null(pc.list_value_length(messages), 0)
        offsets = pc.subtract(messages.offsets, messages.offsets[0])
        first = pc.take(pc.fill_null(flat.field("content").cast(pa.string()), ""),
                        pc.if_else(pc.greater(lengths, 0), offsets.slice(0, len(messages)), 0)) \
            if len(flat) else pa.array([""] * len(messages), pa.string())
        answer = pc.if_else(pc.equal(lengths, 1), first, pc.fill_null(render_messages(messages), ""))
        if item.get_field_index("reasoning_content") >= 0 and len(flat):
            rc = flat.field("reasoning_content").cast(pa.string())
            counts = _count_valid_per_list(offsets, rc)
            kept = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
            joined = pc.binary_join(pa.ListArray.from_arrays(kept, pc.drop_null(rc)), "\n")
            reasoning = pc.if_else(pc.greater(pa.array(counts), 0), joined, pa.scalar(None, pa.string()))
        else:
            reasoning = pa.nulls(len(messages), pa.string())
    completion = pc.if_else(
        pc.is_valid(reasoning),
        pc.binary_join_element_wise(pa.scalar(tags.open), pc.fill_null(reasoning, ""), pa.scalar(tags.close),
                                    answer, ""),
        answer)
    return {"completion": completion, "reasoning": reasoning, "answer": answer}


def _count_valid_per_list(offsets: pa.Array, values: pa.Array) -> np.ndarray:
    valid = values.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(valid)])
    off = offsets.to_numpy()
    return csum[off[1:]] - csum[off[:-1]]


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


def _py_completion(messages: list[dict[str, Any]] | None) -> tuple[str, str | None]:
    """(answer, reasoning) of a message-list completion (see `completion_columns`)."""
    if not messages:
        return "", None
    answer = content_text(messages[0].get("content")) if len(messages) == 1 else render_message_list(messages)
    reasonings = [m.get("reasoning_content") for m in messages if m.get("reasoning_content")]
    return answer, ("\n".join(str(r) for r in reasonings) if reasonings else None)


def combine(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values
