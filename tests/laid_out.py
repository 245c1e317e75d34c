"""Texts laid out in one byte buffer, as a part's completions lie in a read batch: the kernels that tokenise
or scan texts where they lie (`styles.scan_spans`, `tokhash.span_term_ids`, ...) are tested on texts in another
order than their rows, with a byte between them, against the same texts as a string array."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rlaudit.text import byte_spans


def laid_out(texts: list[str | None], order: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The buffer ("x" before, between and after the texts, in `order`) and each row's [lo, hi) byte range."""
    buffer = pa.array(["x".join([""] + [texts[i] or "" for i in order] + [""])], pa.string())
    data, _, _ = byte_spans(buffer)
    lo = np.zeros(len(texts), np.int64)
    at = 1
    for i in order:
        lo[i] = at
        at += len((texts[i] or "").encode()) + 1
    hi = lo + np.array([len((t or "").encode()) for t in texts], np.int64)
    return data, lo, hi
