"""Limits of the MCP server: how much one answer may hold, and continuations for the rest.

Every tool answers with a small JSON object. Lists are paged: an answer holds at most `limit` items (capped by
`Limits.max_items`) and at most `Limits.max_answer_bytes` of JSON; when more remain it carries `next_cursor`,
an opaque string the caller passes back as `cursor` to get the next page. Long texts are clipped to a number
of characters and say so (`truncated`, the full length), so an agent decides whether to read more.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import RlauditError
from ..findings import jsonable


@dataclass(frozen=True)
class Limits:
    """Bounds of every answer; `rlaudit mcp` options set them."""

    max_items: int = 50  # items per page, whatever `limit` a caller asks for
    max_answer_bytes: int = 24_000  # JSON bytes per answer (pages end early to stay below)
    snippet_chars: int = 160  # characters of a snippet around a match
    text_chars: int = 4_000  # characters of one text field of `get_rollout` per call
    query_rows: int = 200  # rows `query` returns per page
    query_cell_chars: int = 300  # characters of one text cell of `query`
    query_timeout: float = 10.0  # seconds before `query` is interrupted
    query_memory: str = "1GB"  # DuckDB memory_limit of `query`
    query_max_offset: int = 100_000  # rows `query` may skip to reach a page


def encode_cursor(offset: int, key: str = "") -> str:
    """An opaque continuation: the offset of the next item, and what it continues (to reject a foreign one)."""
    return base64.urlsafe_b64encode(json.dumps([_tag(key), offset]).encode()).decode().rstrip("=")


def _tag(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def decode_cursor(cursor: str | None, key: str = "") -> int:
    """The offset a cursor from `encode_cursor` points to (0 without one)."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got_key, offset = json.loads(raw)
        offset = int(offset)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise RlauditError(f"invalid cursor {cursor!r}: pass the next_cursor of a previous answer") from None
    if got_key != _tag(key) or offset < 0:
        raise RlauditError(f"cursor {cursor!r} belongs to another listing; pass the next_cursor of this one")
    return offset


def size_of(obj: Any) -> int:
    """Bytes of the compact JSON of `obj`, as the server sends it."""
    return len(json.dumps(jsonable(obj), ensure_ascii=False, separators=(",", ":")).encode())


def page(items: list[Any], cursor: str | None, limit: int, limits: Limits, key: str = "",
         envelope: dict[str, Any] | None = None, items_key: str = "items") -> dict[str, Any]:
    """One page of `items` as `{**envelope, items_key: [...], "total": n, "next_cursor": c | None}`.

    The page holds at most min(limit, max_items) items and stops early to keep the answer under
    max_answer_bytes (always at least one item, so paging progresses).
    """
    start = decode_cursor(cursor, key)
    limit = max(1, min(int(limit), limits.max_items))
    out = dict(envelope or {})
    out.update({items_key: [], "total": len(items), "next_cursor": None})
    budget = limits.max_answer_bytes - size_of(out) - 100
    chosen: list[Any] = []
    used = 0
    for item in items[start:start + limit]:
        item = jsonable(item)
        n = size_of(item) + 1
        if chosen and used + n > budget:
            break
        chosen.append(item)
        used += n
    out[items_key] = chosen
    end = start + len(chosen)
    if end < len(items):
        out["next_cursor"] = encode_cursor(end, key)
    return out


def clip(text: str | None, chars: int) -> str | None:
    """`text` cut to `chars` characters, with an ellipsis when cut."""
    if text is None or len(text) <= chars:
        return text
    return text[:max(0, chars - 1)] + "…"


def snippet(text: str | None, start: int | None, end: int | None, chars: int) -> str:
    """About `chars` characters of `text` around [start, end) (the whole text when short)."""
    text = text or ""
    if len(text) <= chars:
        return text
    if start is None:
        return clip(text, chars) or ""
    end = end if end is not None else start
    pad = max(0, (chars - (end - start)) // 2)
    lo = max(0, start - pad)
    hi = min(len(text), lo + chars)
    lo = max(0, hi - chars)
    return ("…" if lo > 0 else "") + text[lo:hi] + ("…" if hi < len(text) else "")


def rounded(obj: Any, digits: int = 4) -> Any:
    """Floats rounded to `digits` significant digits, recursively (answers are read, not re-computed)."""
    if isinstance(obj, float):
        if not math.isfinite(obj) or obj == 0:
            return obj if math.isfinite(obj) else None
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj
