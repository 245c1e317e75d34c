"""Unit tests of the shingle primitives behind the CoT-grading scan."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.cot.shingles import (SortedKeys, Vocabulary, distinct, edge_runs, longest_runs, matching_spans,
                              normalized_tokens, scoped, token_spans)


def test_normalisation_ignores_case_punctuation_markdown_and_whitespace():
    toks = normalized_tokens(pa.array(["  **Hello**,\n\tWORLD!  2+2=4 ", None, "", "_x_ Ünï"])).to_pylist()
    assert toks == [["hello", "world", "2", "2", "4"], [], [], ["x", "ünï"]]


def _keys(texts: list[str], k: int) -> list[set[int]]:
    vocab = Vocabulary([normalized_tokens(pa.array(texts))])
    sh = vocab.shingles(0, k)
    return [set(sh.keys[sh.row == i].tolist()) for i in range(len(texts))]


def test_shingles_match_across_formatting_and_never_straddle_texts():
    a, b, c = _keys(["one two three four five six", "ONE  two\nthree - four **five** six", "five six seven"], 3)
    assert a == b and len(a) == 4
    assert not a & c  # "five six seven" shares no 3-shingle; "four five six"+"five.." across rows never formed


def test_sorted_key_lookups_are_per_scope():
    keys = scoped(np.array([1, 2, 3, 1], np.uint64), np.array([0, 0, 0, 1]))
    ref = scoped(np.array([1, 2, 1, 1], np.uint64), np.array([0, 1, 1, 1]))
    q = SortedKeys(keys)
    assert q.member(ref).tolist() == [True, False, False, True]
    assert q.count(ref).tolist() == [1, 0, 0, 2]
    assert q.distinct().tolist() == distinct(keys).tolist() and len(q.distinct()) == 4


def test_edge_runs():
    flag = np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)
    row = np.array([0, 0, 0, 0, 1, 1, 1, 3])
    leading, trailing = edge_runs(flag, row, 4)
    assert leading.tolist() == [2, 0, 0, 1] and trailing.tolist() == [1, 2, 0, 1]


def test_longest_runs_per_row():
    flag = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    row = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2])
    assert longest_runs(flag, row, 4).tolist() == [2, 2, 1, 0]


def test_matching_spans_are_offsets_into_the_seen_text():
    reasoning = "The hidden plan is to flatter the grader with many kind words today"
    seen = "Grade this:\n* THE hidden plan IS to flatter the grader, with many kind words"
    spans = matching_spans(reasoning, seen, excluded=[], k=4)
    start, end = spans[0]
    assert seen[start:end].lower().startswith("the hidden plan")
    assert seen[start:end].endswith("words")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]),
                min_size=6, max_size=40),
       st.lists(st.sampled_from([" ", "\n", "  ", " * ", ", ", " **", "** ", "\t# "]), min_size=1, max_size=5))
def test_reformatting_never_changes_the_shingles(words, separators):
    plain = " ".join(words)
    reformatted = "".join((w.upper() if i % 3 == 0 else w) + separators[i % len(separators)]
                          for i, w in enumerate(words))
    assert _keys([plain], 3)[0] == _keys([reformatted], 3)[0]
    assert [t for t, _, _ in token_spans(reformatted)] == words


def test_interval_helpers():
    from rlaudit.cot.stats import bootstrap_mean_ci, wilson_interval

    lo, hi = wilson_interval(0, 50)
    assert abs(lo) < 1e-12 and 0.05 < hi < 0.09  # Wilson upper bound for 0/50 is about 0.071
    lo, hi = wilson_interval(30, 100)
    assert lo < 0.3 < hi and hi - lo < 0.2
    lo, hi = bootstrap_mean_ci(np.r_[np.zeros(50), np.ones(50)])
    assert lo < 0.5 < hi and hi - lo < 0.25


_SCRIPT_PIECES = ["我们", "先", "计算", "总数", "ひらがな", "カタカナ", "wörld", "ça", "alpha", "42", "ünï", " ", "\n",
                  "：", "。", "，", "“", "”", "…", "—", "«", "»", "\u00a0", "\u3000", "×", "！", "(", "-"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_SCRIPT_PIECES), max_size=14).map("".join), min_size=1, max_size=6))
def test_the_three_tokenisers_agree_on_multi_script_text(texts):
    """The scan's byte tokeniser (`hashed_tokens`), the screen's Arrow tokeniser (`normalized_tokens`) and the
    evidence tokeniser (`token_spans`) cut the same tokens from text in Chinese, Japanese and Latin scripts with
    their punctuation: each CJK character is a token, punctuation and spaces separate."""
    from rlaudit.cot.shingles import hashed_tokens

    arrow = normalized_tokens(pa.array(texts)).to_pylist()
    assert arrow == [[t for t, _, _ in token_spans(text)] for text in texts]
    hashes, offsets = hashed_tokens(pa.array(texts))
    assert np.diff(offsets).tolist() == [len(tokens) for tokens in arrow]
    by_token: dict[str, set[int]] = {}
    for tokens, start in zip(arrow, offsets[:-1]):
        for j, token in enumerate(tokens):
            by_token.setdefault(token, set()).add(int(hashes[start + j]))
    assert all(len(h) == 1 for h in by_token.values())  # one hash per token
    assert len({next(iter(h)) for h in by_token.values()}) == len(by_token)  # and distinct tokens differ


def test_chinese_reasoning_has_word_shingles():
    """A paragraph of Chinese has no spaces: without single-character tokens it would be one token per clause
    and have no 5-shingles at all, so a grader that saw it could not be caught."""
    from rlaudit.cot.shingles import hashed_tokens, shingles_from_ids

    reasoning = "首先我们需要计算总数，然后检查结果是否正确。"
    seen = f"请评分。回答：{reasoning}参考答案：四十二"
    other = "今天天气很好，我们去公园散步吧。"
    (r, s, o) = (shingles_from_ids(*hashed_tokens(pa.array([t])), 5).keys for t in (reasoning, seen, other))
    assert len(r) >= 15 and set(r.tolist()) <= set(s.tolist()) and not set(r.tolist()) & set(o.tolist())
