"""Make arbitrary model text safe to put in an HTML report.

Transcripts hold anything a policy can emit: HTML and script tags, megabyte strings, lone UTF-16 surrogates,
NUL and other control bytes. The report never trusts them:

- `clean_text` turns any value into a valid Unicode string, replacing each lone surrogate and each forbidden
  control character with U+FFFD *one for one*, so character offsets computed on the raw text (e.g. the span a
  CoT scanner matched in a grader input) still point at the same characters.
- `Clip` truncates each text to a hard cap, and draws the caps from a report-wide character budget so that a
  report stays bounded however many long texts its evidence holds.
- `script_json` serialises data for a `<script type="application/json">` block: `<`, `>`, `&` and the JS line
  separators are written as `\\uXXXX` escapes, so neither `</script>` nor `<!--` can end or confuse the block.
- `plot_label` makes text safe inside plotly labels, which understand a subset of HTML tags.

HTML escaping itself is Jinja's autoescape: templates never mark model text as safe.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

# Lone surrogates, C0 controls other than tab/newline/carriage return, DEL and C1 controls: not allowed in an
# HTML document (or not encodable as UTF-8, for surrogates).
_BAD_CHARS = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_REPLACEMENT = "\ufffd"


def clean_text(value: Any) -> str:
    """A valid, HTML-storable string for any value; length (in code points) is preserved for `str` input."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        value = str(value)
    return _BAD_CHARS.sub(_REPLACEMENT, value)


def clean_data(obj: Any) -> Any:
    """`clean_text` applied to every string (and dict key) of a JSON-like structure; non-finite floats -> None."""
    if isinstance(obj, dict):
        return {clean_text(k): clean_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_data(v) for v in obj]
    if isinstance(obj, (str, bytes)):
        return clean_text(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return clean_data(obj.tolist())
    return clean_text(obj)


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SCRIPT_UNSAFE = re.compile("[<>&\u2028\u2029]")


def script_json(obj: Any) -> str:
    """JSON text that is inert inside `<script type="application/json">` (and valid JSON for `JSON.parse`)."""
    text = json.dumps(clean_data(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _SCRIPT_UNSAFE.sub(lambda m: _SCRIPT_ESCAPES[m.group(0)], text)


def short(value: Any, limit: int = 200) -> str:
    """A cleaned one-off string (a name, an id, a note) cut to `limit` characters with an ellipsis."""
    text = clean_text(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def plot_label(value: Any, limit: int = 80) -> str:
    """Text for a plotly title, legend or axis label: clipped, and with the characters plotly would read as
    markup written as entities (plotly shows `&lt;` as `<`)."""
    text = short(value, limit).replace("\n", " ")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass
class Clipped:
    """A text cut for display: `shown` is what the report holds, `total` the original length in characters."""

    shown: str
    total: int

    @property
    def omitted(self) -> int:
        return self.total - len(self.shown)

    @property
    def empty(self) -> bool:
        return self.total == 0


class Clip:
    """Cuts texts to `cap` characters each, and to a shared `budget` for the whole report.

    Once the budget is spent, each further text still shows its first `floor` characters, so evidence never
    disappears entirely; the report bound is then `budget + floor * texts`, and texts are capped in number too
    (evidence per finding). Every cut is visible in the report ("N more characters not included").
    """

    def __init__(self, cap: int = 20_000, budget: int = 3_000_000, floor: int = 400):
        self.cap, self.budget, self.floor = cap, budget, floor

    def __call__(self, value: Any) -> Clipped:
        text = clean_text(value)
        limit = max(self.floor, min(self.cap, self.budget))
        shown = text[:limit]
        self.budget = max(0, self.budget - len(shown))
        return Clipped(shown=shown, total=len(text))

    def window(self, value: Any, start: int, end: int, context: int = 1_500) -> tuple[Clipped, int, int, int]:
        """Cut a text around the span [start, end) rather than from its start.

        Returns the clipped window, the offset of the window in the original text, and the span's start and
        end within the window (the span itself is clipped to the cap if it is longer).
        """
        text = clean_text(value)
        span_len = min(end - start, max(self.floor, min(self.cap, self.budget)))
        lo = max(0, start - context)
        hi = min(len(text), start + span_len + context)
        shown = text[lo:hi]
        self.budget = max(0, self.budget - len(shown))
        return Clipped(shown=shown, total=len(text)), lo, start - lo, start - lo + span_len


def highlight_segments(text: str, spans: list[tuple[int, int]]) -> list[tuple[str, bool]]:
    """Split `text` into (piece, highlighted) segments for the given [start, end) spans (merged if overlapping,
    clipped to the text, empty or inverted spans ignored)."""
    n = len(text)
    cleaned = sorted((max(0, s), min(n, e)) for s, e in spans if min(n, e) > max(0, s))
    merged: list[list[int]] = []
    for s, e in cleaned:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out: list[tuple[str, bool]] = []
    pos = 0
    for s, e in merged:
        if s > pos:
            out.append((text[pos:s], False))
        out.append((text[s:e], True))
        pos = e
    if pos < n or not out:
        out.append((text[pos:], False))
    return out
