"""The run's dense per-step counts (`rlaudit.derived.stepcounts`): equal to the per-step sums of the count rows, cached,
grown by new parts, rebuilt when a part left the run or the file is torn."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaudit.derived import stepcounts


def _vocab() -> pa.Table:
    return pa.table({"where": ["answer"] * 4 + ["reasoning"] * 3,
                     "term_id": pa.array([0, 1, 2, 3, 4, 5, 6], pa.int32())})


def _part(rng: np.random.Generator, steps: list[int], splits=("train", "eval")) -> pa.Table:
    rows = []
    for step in steps:
        for split in splits:
            for where, ids in (("answer", range(4)), ("reasoning", range(4, 7))):
                for t in ids:
                    if rng.random() < 0.7:
                        rows.append((where, t, step, split, int(rng.integers(1, 50)), int(rng.integers(0, 5))))
    w, t, s, sp, x, m = zip(*rows)
    return pa.table({"where": list(w), "term_id": pa.array(t, pa.int32()), "step": pa.array(s, pa.int64()),
                     "split": list(sp), "x": pa.array(x, pa.int64()), "m": pa.array(m, pa.int64())})


def _expected(tables: list[pa.Table], where: str, ids: np.ndarray, keys: dict[tuple[int, str], int], t: int):
    x, m = np.zeros((len(ids), t)), np.zeros((len(ids), t))
    row = {int(i): r for r, i in enumerate(ids)}
    for table in tables:
        for r in table.to_pylist():
            si = keys.get((r["step"], r["split"]))
            if r["where"] == where and si is not None:
                x[row[r["term_id"]], si] += r["x"]
                m[row[r["term_id"]], si] += r["m"]
    return x, m


def _check(counts: stepcounts.StepCounts, tables: list[pa.Table], steps: list[int]) -> None:
    keys = {(s, "train"): i for i, s in enumerate(steps)}  # the audit's scope: the train split
    ks = np.array([k[0] for k in keys]), np.array([k[1] for k in keys], object), np.array(list(keys.values()))
    vocab = _vocab()
    for where in ("answer", "reasoning"):
        ids = np.array([r["term_id"] for r in vocab.to_pylist() if r["where"] == where])
        x, m = counts.per_step(where, ids, *ks, len(steps))
        ex, em = _expected(tables, where, ids, keys, len(steps))
        assert np.array_equal(x, ex) and np.array_equal(m, em)


def test_dense_counts_equal_the_row_sums_cached_and_grown(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i, steps in enumerate([[0, 1], [2], [2, 3], [4]]):  # parts 1 and 2 share step 2: their counts add up
        files.append((f"p{i}", tmp_path / f"p{i}.counts.parquet"))
        pq.write_table(_part(rng, steps), files[-1][1])
    tables = [pq.read_table(f) for _, f in files]
    cache = tmp_path / "rollup" / "step_counts.npz"
    reads = []

    def read_all(parts):
        reads.append(len(parts))
        return pa.concat_tables([pq.read_table(f) for _, f in parts])

    c = stepcounts.step_counts(files[:3], _vocab(), cache, lambda: read_all(files[:3]))
    _check(c, tables[:3], [0, 1, 2, 3])
    assert cache.is_file() and reads == [3]
    # a new part: read alone and added to the cached arrays
    c = stepcounts.step_counts(files, _vocab(), cache, lambda: read_all(files))
    _check(c, tables, [0, 1, 2, 3, 4])
    assert reads == [3]
    # nothing new: the cache alone
    c = stepcounts.step_counts(files, _vocab(), cache, lambda: read_all(files))
    _check(c, tables, [0, 1, 2, 3, 4])
    assert reads == [3]
    # a part that left the run voids the cache: built again from every part
    kept = [files[0], files[2], files[3]]
    c = stepcounts.step_counts(kept, _vocab(), cache, lambda: read_all(kept))
    _check(c, [tables[0], tables[2], tables[3]], [0, 1, 2, 3, 4])
    assert reads == [3, 3]
    # a torn file is rebuilt, never read
    cache.write_bytes(cache.read_bytes()[:100])
    c = stepcounts.step_counts(kept, _vocab(), cache, lambda: read_all(kept))
    _check(c, [tables[0], tables[2], tables[3]], [0, 1, 2, 3, 4])
    assert reads == [3, 3, 3]
    # another vocabulary's arrays are not used
    other = _vocab().slice(0, 6)
    c = stepcounts.step_counts(kept, other, cache, lambda: read_all(kept))
    assert reads == [3, 3, 3, 3] and len(c.ids["reasoning"]) == 2


def test_in_memory_counts_without_a_cache():
    rng = np.random.default_rng(1)
    tables = [_part(rng, [0, 1]), _part(rng, [1, 2], splits=("train",))]
    parts = [("a", tables[0]), ("b", tables[1])]
    c = stepcounts.step_counts(parts, _vocab(), None, lambda: pa.concat_tables(tables))
    _check(c, tables, [0, 1, 2])


def test_wrong_terms_are_an_error():
    rng = np.random.default_rng(2)
    table = _part(rng, [0])
    c = stepcounts.step_counts([("a", table)], _vocab(), None, lambda: table)
    with pytest.raises(ValueError):
        c.per_step("answer", np.array([0, 1, 2]), np.array([0]), np.array(["train"], object), np.array([0]), 1)


def test_built_from_batches_as_from_one_table(tmp_path):
    rng = np.random.default_rng(3)
    tables = [_part(rng, [0, 1]), _part(rng, [1, 2]), _part(rng, [3])]
    whole = pa.concat_tables(tables)
    parts = [(str(i), t) for i, t in enumerate(tables)]
    c = stepcounts.step_counts(parts, _vocab(), None, lambda: iter(whole.to_batches(max_chunksize=7)))
    _check(c, tables, [0, 1, 2, 3])
    assert len(whole.to_batches(max_chunksize=7)) > 3


def test_all_splits_of_a_step_add_up():
    """An audit of every split maps (step, train) and (step, eval) to one step index: their columns are summed."""
    rng = np.random.default_rng(4)
    table = _part(rng, [0, 1, 2])
    c = stepcounts.step_counts([("a", table)], _vocab(), None, lambda: table)
    keys = {(s, sp): s for s in (0, 1, 2) for sp in ("train", "eval")}
    ids = np.array([0, 1, 2, 3])
    x, m = c.per_step("answer", ids, np.array([k[0] for k in keys]), np.array([k[1] for k in keys], object),
                      np.array(list(keys.values())), 3)
    ex, em = _expected([table], "answer", ids, keys, 3)
    assert np.array_equal(x, ex) and np.array_equal(m, em) and ex.sum() > 0
