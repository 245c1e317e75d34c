"""Text helpers shared by readers and detectors: the reasoning/answer split.

Reasoning is the span inside `<think>...</think>` (tags configurable). The split is vectorised with Arrow
compute so that ingest never loops over rollouts in Python.

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
