"""The vocabulary hash table of `rlaudit.derived.tokens` (`_Lookup`): every occurrence of a key yields exactly the term ids
of that key, whatever the keys' low bits (colliding home slots, long probe chains) and however many terms share a
key. Checked against a dictionary on random keys (deterministic under the CI Hypothesis profile)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.derived.tokens import _Lookup, _distinct_pairs


def reference(keys, ids, rows, queries):
    by_key: dict[int, list[int]] = {}
    for k, i in zip(keys.tolist(), ids.tolist()):
        by_key.setdefault(k, []).append(i)
    return sorted((r, i) for r, q in zip(rows.tolist(), queries.tolist()) for i in by_key.get(q, []))


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=0, max_value=300),
       st.integers(min_value=0, max_value=64), st.sampled_from([0, 8, 12, 20, 40]))
def test_lookup_matches_a_dictionary(seed, n_keys, n_shared, low_bits):
    rng = np.random.default_rng(seed)
    # keys sharing their low bits (low_bits > 0) crowd a few home slots: long probe chains
    high = rng.integers(0, 2**63, n_keys, dtype=np.uint64)
    keys = high << np.uint64(low_bits) if low_bits else high
    keys = np.concatenate([keys, rng.choice(keys, min(n_shared, n_keys)) if n_keys else keys[:0]])
    ids = rng.permutation(len(keys)).astype(np.int32)
    queries = np.concatenate([rng.choice(keys, 500) if len(keys) else keys[:0],
                              rng.integers(0, 2**63, 500, dtype=np.uint64)])
    rows = rng.integers(0, 50, len(queries)).astype(np.int64)
    got_rows, got_ids = _Lookup(keys, ids).match(rows, queries)
    assert sorted(zip(got_rows.tolist(), got_ids.tolist())) == reference(keys, ids, rows, queries)


def test_distinct_pairs_are_sorted_and_unique():
    rows = np.array([3, 1, 3, 1, 0, 3])
    ids = np.array([5, 2, 5, 1, 7, 0])
    r, i = _distinct_pairs(rows, ids, 8)
    assert list(zip(r.tolist(), i.tolist())) == [(0, 7), (1, 1), (1, 2), (3, 0), (3, 5)]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(-5, 2**40), st.integers(-1, 2)), max_size=60))
def test_cells_equal_a_row_unique(rows):
    """`tokens._cells` (one 1-D unique of a combined code) = `np.unique(axis=0, return_inverse=True)`."""
    from rlaudit.derived.tokens import _cells

    a = np.array(rows, np.int64).reshape(-1, 3)
    want, inverse = np.unique(a, axis=0, return_inverse=True)
    got, cell = _cells(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy())
    assert np.array_equal(got, want) and np.array_equal(cell, inverse.ravel())


@settings(max_examples=150)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 5)), max_size=80), st.booleans(),
       st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["a", "b", None])), min_size=10, max_size=10),
       st.integers(1, 3))
def test_ngram_df_equals_a_dictionary(occ, in_row_order, rows, min_count):
    """`tokens._ngram_df` (the vocabulary's document frequencies, numpy) against per-row sets counted in Python:
    kept keys sorted, rows per key, first occurrence, rows per (key, bin, condition), NULL a condition of its own;
    occurrences in row order (as the vocabulary builds them) or in any order."""
    import pyarrow as pa

    from rlaudit.derived.tokens import _ngram_df

    if in_row_order:
        occ = sorted(occ, key=lambda o: o[1])
    key = np.array([k * 0x9E3779B97F4A7C15 % 2**64 for k, _ in occ], np.uint64)
    row = np.array([r for _, r in occ], np.int32)
    bins = pa.chunked_array([pa.array([b for b, _ in rows], pa.int32())])
    conds = pa.chunked_array([pa.array([c for _, c in rows], pa.string())])
    uniq, total, first, table = _ngram_df(key, row, bins, conds, min_count)
    members: dict[int, set[int]] = {}
    for i, (k, r) in enumerate(zip(key.tolist(), row.tolist())):
        members.setdefault(k, set()).add(r)
    kept = sorted(k for k, m in members.items() if len(m) >= min_count)
    assert uniq.tolist() == kept
    assert total.tolist() == [len(members[k]) for k in kept]
    assert first.tolist() == [key.tolist().index(k) for k in kept]
    want: dict[tuple, int] = {}
    for t, k in enumerate(kept):
        for r in members[k]:
            cell = (t, rows[r][0], rows[r][1])
            want[cell] = want.get(cell, 0) + 1
    got = {(t, b, c): d for t, b, c, d in zip(*(table.column(n).to_pylist() for n in ("term", "bin", "condition", "df")))}
    assert got == want and table.schema.field("bin").type == pa.int32()
