"""`text.count_substrings` counts what Arrow's `count_substring` counts, from one search of the bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.text import count_substrings

#: pieces that make tags, near-tags, overlaps and multi-byte characters likely
PIECES = ["<think>", "</think>", "<tool_call>", "<tool_response>", "<thi", "nk>", "<", ">", "a", "aa", "é", "思", " ",
          "\n"]
PATTERNS = ["<think>", "</think>", "<tool_call>", "<tool_response>", "aa", "aba", "é", "思考", "[THINK]", "<"]


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.one_of(st.none(), st.lists(st.sampled_from(PIECES + ["b"]), max_size=12).map("".join)),
                     max_size=20),
       patterns=st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=4, unique=True),
       start=st.integers(0, 3), chunked=st.booleans())
def test_counts_equal_arrows(rows, patterns, start, chunked):
    values = pa.array(rows, pa.string()).slice(min(start, len(rows)))
    given_values = pa.chunked_array([values.slice(0, len(values) // 2), values.slice(len(values) // 2)],
                                    pa.string()) if chunked else values
    got = count_substrings(given_values, patterns)
    for p in patterns:
        want = pc.count_substring(pc.fill_null(values, ""), p).to_numpy(zero_copy_only=False)
        assert got[p].tolist() == np.asarray(want, np.int64).tolist(), p


def test_a_pattern_that_overlaps_itself_counts_without_overlaps():
    got = count_substrings(pa.array(["aaaa", "ababa", None]), ["aa", "aba"])
    assert got["aa"].tolist() == [2, 0, 0] and got["aba"].tolist() == [0, 1, 0]


def test_a_match_never_spans_two_strings():
    got = count_substrings(pa.array(["xa", "ax", "<thi", "nk>", "a"]), ["aa", "<think>"])
    assert got["aa"].tolist() == [0, 0, 0, 0, 0] and got["<think>"].tolist() == [0, 0, 0, 0, 0]
