"""The vocabulary hash table of `rlaudit.derived.tokens` (`_Lookup`): every occurrence of a key yields exactly the term ids
of that key, whatever the keys' low bits (colliding home slots, long probe chains) and however many terms share a
key. Checked against a dictionary on random keys (deterministic under the CI Hypothesis profile). Also the
vocabulary sample's document frequencies (`_ngram_df`) and prevalences (`_prevalences`, against the DuckDB query it
replaced)."""

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
       st.lists(st.integers(0, 7), min_size=10, max_size=10), st.integers(1, 3))
def test_ngram_df_equals_a_dictionary(occ, in_row_order, cells, min_count):
    """`tokens._ngram_df` (the vocabulary's document frequencies, numpy) against per-row sets counted in Python:
    kept keys sorted, rows per key, first occurrence, rows per (key, cell) sorted; occurrences in row order (as
    the vocabulary builds them) or in any order."""
    from rlaudit.derived.tokens import _ngram_df

    if in_row_order:
        occ = sorted(occ, key=lambda o: o[1])
    key = np.array([k * 0x9E3779B97F4A7C15 % 2**64 for k, _ in occ], np.uint64)
    row = np.array([r for _, r in occ], np.int32)
    uniq, total, first, (term, cell, df) = _ngram_df(key, row, np.array(cells, np.int64), min_count)
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
            want[(t, cells[r])] = want.get((t, cells[r]), 0) + 1
    assert list(zip(term.tolist(), cell.tolist(), df.tolist())) == sorted((t, c, d) for (t, c), d in want.items())


def _prevalence_query(df, cells, min_count, min_prevalence):
    """The DuckDB query `tokens._prevalences` replaced (the reference): df (term, bin, condition, df), cells (bin,
    condition, n)."""
    import duckdb

    with duckdb.connect() as con:
        con.register("cells", cells)
        con.register("df", df)
        return con.sql(f"""
            WITH overall AS (
                SELECT term, bin, sum(df) AS df FROM df GROUP BY ALL),
            prev_all AS (
                SELECT term, max(o.df / c.n) AS pmax,
                       max(o.df / c.n) - CASE WHEN count(*) < (SELECT count(DISTINCT bin) FROM cells)
                                              THEN 0 ELSE min(o.df / c.n) END AS spread,
                       max(CASE WHEN o.df >= {min_count} THEN o.df / c.n ELSE 0 END) AS pmax_counted
                FROM overall o JOIN (SELECT bin, sum(n) AS n FROM cells GROUP BY bin) c USING (bin)
                GROUP BY term),
            prev_cond AS (
                SELECT term, max(CASE WHEN d.df >= {min_count} THEN d.df / c.n ELSE 0 END) AS pmax_counted,
                       max(d.df / c.n) AS spread
                FROM df d JOIN cells c USING (bin, condition)
                WHERE (SELECT count(DISTINCT condition) FROM cells) > 1
                GROUP BY term),
            q AS (
                SELECT a.term, greatest(a.pmax_counted, coalesce(c.pmax_counted, 0)) AS pmax,
                       greatest(a.spread, coalesce(c.spread, 0)) AS spread
                FROM prev_all a LEFT JOIN prev_cond c USING (term))
            SELECT term AS k, pmax, spread FROM q WHERE pmax >= {min_prevalence}""").to_arrow_table()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["a", "b", "c", None])), min_size=1, max_size=60),
       st.data(), st.integers(1, 4), st.sampled_from([0.0, 0.01, 0.2, 0.5, 1 / 3]))
def test_prevalences_equal_the_query_they_replaced(rows, data, min_count, min_prevalence):
    """`tokens._prevalences` (numpy) equals the DuckDB query it replaced, value for value: bins the sample
    lacks, an n-gram missing from some bins, NULL conditions (their own cell overall, left out within a
    condition), one named condition only, counts below and at min_count."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from rlaudit.derived.tokens import VocabOptions, _prevalences, _SampleCells

    sample = pa.table({"bin": pa.array([b for b, _ in rows], pa.int32()),
                       "condition": pa.array([c for _, c in rows], pa.string())})
    cond = pc.dictionary_encode(sample["condition"].combine_chunks(), null_encoding="encode")
    n_cond = len(cond.dictionary)
    nulls = np.flatnonzero(np.asarray(cond.dictionary.is_null()))
    bins = np.asarray(sample["bin"].to_numpy(), np.int64)
    cell = bins * n_cond + np.asarray(cond.indices.to_numpy(), np.int64)
    n_rows = np.bincount(cell, minlength=(int(bins.max()) + 1) * n_cond)
    present = np.flatnonzero(n_rows)
    n_terms = data.draw(st.integers(0, 6))
    records = []  # (term, cell, df): some of each term's cells, df up to the cell's rows
    for t in range(n_terms):
        for c in data.draw(st.sets(st.sampled_from(present.tolist()), min_size=1)):
            records.append((t, c, data.draw(st.integers(1, int(n_rows[c])))))
    term, rcell, df = (np.array([r[i] for r in records], np.int64) for i in range(3))
    cells = _SampleCells(cell, n_rows, n_cond, int(nulls[0]) if len(nulls) else -1)
    o = VocabOptions(min_count=min_count, min_prevalence=min_prevalence)
    got = _prevalences((term, rcell, df), n_terms, cells, o)
    table = pa.table({"term": pa.array(term, pa.int64()), "bin": pa.array(rcell // n_cond, pa.int32()),
                      "condition": cond.dictionary.take(pa.array(rcell % n_cond)), "df": pa.array(df, pa.int64())})
    cells = pa.table({"bin": pa.array(present // n_cond, pa.int32()),
                      "condition": cond.dictionary.take(pa.array(present % n_cond)),
                      "n": pa.array(n_rows[present], pa.int64())})
    want = _prevalence_query(table, cells, min_count, min_prevalence).sort_by("k")
    assert got.column_names == want.column_names
    for name in got.column_names:
        assert got[name].to_pylist() == want[name].to_pylist(), name
