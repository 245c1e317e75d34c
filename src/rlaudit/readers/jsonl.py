"""Robust JSONL reading shared by the JSON-lines readers.

`iter_json_records` yields (line_number, object) for every well-formed JSON object line and reports every bad
line (torn write, invalid JSON, not an object) to the context with its file and line. Blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .base import ReadContext, SourceFile


def iter_json_records(file: SourceFile, ctx: ReadContext) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(file.path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                ctx.bad(file, lineno, f"invalid JSON ({exc.__class__.__name__}: {exc})",
                        raw.decode("utf-8", "replace"))
                continue
            if not isinstance(obj, dict):
                ctx.bad(file, lineno, f"expected a JSON object, got {type(obj).__name__}",
                        raw.decode("utf-8", "replace"))
                continue
            yield lineno, obj
