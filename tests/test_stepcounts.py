"""The run's dense per-step counts (`rlaudit.derived.stepcounts`): equal to the per-step sums of the count rows, cached,
grown by new parts, rebuilt when a part left the run or the file is torn."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathlib import Path

import pyarrow.compute as pc

from rlaudit.derived import chunks, stepcounts, tokens
from rlaudit.organisms import run as simulate_run
from rlaudit.store import Store


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
    cache = tmp_path / "rollup" / "step_counts"
    reads = []

    def read_all(parts):
        reads.append(len(parts))
        return [(name, pq.read_table(f)) for name, f in parts]

    c = stepcounts.step_counts(files[:3], _vocab(), cache, lambda: read_all(files[:3]))
    _check(c, tables[:3], [0, 1, 2, 3])
    assert (cache / "manifest.json").is_file() and reads == [3]
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
    # a torn chunk is rebuilt, never read
    chunk = next(f for f in cache.iterdir() if f.suffix == ".npy")
    chunk.write_bytes(chunk.read_bytes()[:100])
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
    c = stepcounts.step_counts(parts, _vocab(), None, lambda: parts)
    _check(c, tables, [0, 1, 2])


def test_wrong_terms_are_an_error():
    rng = np.random.default_rng(2)
    table = _part(rng, [0])
    c = stepcounts.step_counts([("a", table)], _vocab(), None, lambda: [("a", table)])
    with pytest.raises(ValueError):
        c.per_step("answer", np.array([0, 1, 2]), np.array([0]), np.array(["train"], object), np.array([0]), 1)


@pytest.mark.parametrize("cached", [False, True])
def test_built_in_blocks_bounded_by_size_as_in_one(tmp_path, monkeypatch, cached):
    """A run built in blocks of at most BLOCK_CELLS counts (a part's columns in one block; parts sharing a step
    in two blocks add up) counts as one block does, cached as chunks of their own parts that later audits
    never merge once full, or held in memory."""
    rng = np.random.default_rng(3)
    steps = [[0, 1], [1, 2], [2, 3, 4], [4], [5], [6]]  # one split: a column per step
    tables = [_part(rng, s, splits=("train",)) for s in steps]
    files = []
    for i, t in enumerate(tables):
        files.append((f"p{i}", tmp_path / f"p{i}.counts.parquet"))
        pq.write_table(t, files[-1][1])
    parts = files if cached else [(name, t) for (name, _), t in zip(files, tables)]
    cache = tmp_path / "step_counts" if cached else None
    read = lambda n: [(name, pq.read_table(f)) for name, f in files[:n]]  # noqa: E731
    monkeypatch.setattr(stepcounts, "BLOCK_CELLS", 14 * 4)  # 14 counts a column: at most 4 columns a block
    c = stepcounts.step_counts(parts[:5], _vocab(), cache, lambda: read(5) if cached else parts[:5])
    # p2 would take the first block to 5 columns: it starts the second; step 2 is in both (their sums add up),
    # p3 adds no column, p4 the fourth
    assert [list(b.steps) for b in c.blocks] == [[0, 1, 2], [2, 3, 4, 5]]
    assert all(b.arr.dtype == np.int32 for b in c.blocks)
    _check(c, tables[:5], list(range(6)))
    if cached:
        assert _chunks(cache) == [["p0", "p1"], ["p2", "p3", "p4"]]
        assert all(isinstance(b.arr, np.memmap) for b in c.blocks)
        c = stepcounts.step_counts(files, _vocab(), cache, lambda: pytest.fail("built again"))
        _check(c, tables, list(range(7)))
        # the new part's chunk merges with none: every older chunk is at least half a block
        assert _chunks(cache) == [["p0", "p1"], ["p2", "p3", "p4"], ["p5"]]
    one = stepcounts.step_counts(parts[:5], _vocab(), None, lambda: [(n, pq.read_table(f)) for n, f in files[:5]]
                                 if cached else parts[:5])
    for where in ("answer", "reasoning"):
        ids = np.array([r["term_id"] for r in _vocab().to_pylist() if r["where"] == where])
        keys = (np.arange(6), np.array(["train"] * 6, object), np.arange(6))
        assert np.array_equal(c.group_sums(where, ids, *keys, np.arange(6) // 2, 3)[0],
                              one.group_sums(where, ids, *keys, np.arange(6) // 2, 3)[0])


def test_all_splits_of_a_step_add_up():
    """An audit of every split maps (step, train) and (step, eval) to one step index: their columns are summed."""
    rng = np.random.default_rng(4)
    table = _part(rng, [0, 1, 2])
    c = stepcounts.step_counts([("a", table)], _vocab(), None, lambda: [("a", table)])
    keys = {(s, sp): s for s in (0, 1, 2) for sp in ("train", "eval")}
    ids = np.array([0, 1, 2, 3])
    x, m = c.per_step("answer", ids, np.array([k[0] for k in keys]), np.array([k[1] for k in keys], object),
                      np.array(list(keys.values())), 3)
    ex, em = _expected([table], "answer", ids, keys, 3)
    assert np.array_equal(x, ex) and np.array_equal(m, em) and ex.sum() > 0


def _chunks(cache) -> list[list[str]]:
    return [c["parts"] for c in json.loads((cache / "manifest.json").read_text())["chunks"]]


def test_parts_added_one_and_several_at_a_time_grow_chunks_merged_as_a_binary_counter(tmp_path):
    """Each audit writes a chunk of its new parts only; the newest chunks merge while the older holds no more
    parts than the newer (a run of n parts keeps ~log2(n) chunks); the counts equal the row sums throughout,
    loaded from the memory-mapped chunks by a fresh call, and a merged-away chunk is swept after GRACE."""
    rng = np.random.default_rng(5)
    # steps 0-9, part 7 shares step 6 with part 6; parts 3 and 4 in the train split only
    steps = [[0, 1], [2], [3], [4], [5], [6], [6], [7], [8], [9]]
    files, tables = [], []
    for i, s in enumerate(steps):
        files.append((f"p{i}", tmp_path / f"p{i}.counts.parquet"))
        tables.append(_part(rng, s, splits=("train",) if i in (3, 4) else ("train", "eval")))
        pq.write_table(tables[-1], files[-1][1])
    cache = tmp_path / "rollup" / "step_counts"
    reads = []

    def read_all(parts):
        reads.append(len(parts))
        return [(name, pq.read_table(f)) for name, f in parts]

    layouts = []
    for n in (4, 5, 6, 9, 10):  # one part, one, three at once, one
        c = stepcounts.step_counts(files[:n], _vocab(), cache, lambda: read_all(files[:n]))
        _check(c, tables[:n], sorted({s for p in steps[:n] for s in p}))
        again = stepcounts.step_counts(files[:n], _vocab(), cache, lambda: read_all(files[:n]))
        _check(again, tables[:n], sorted({s for p in steps[:n] for s in p}))
        layouts.append([len(p) for p in _chunks(cache)])
    assert reads == [4]  # built once, then grown
    assert layouts == [[4], [4, 1], [4, 2], [9], [9, 1]]
    named = {c["name"] for c in json.loads((cache / "manifest.json").read_text())["chunks"]}
    stale = {f.name for f in cache.iterdir() if f.suffix == ".npy"} - named
    assert stale  # superseded chunks are kept for GRACE seconds (an audit may still open them)
    for f in cache.iterdir():
        os.utime(f, (0, 0))
    stepcounts.step_counts(files[:10], _vocab(), cache, lambda: read_all(files[:10]))  # nothing new: no write
    chunks.sweep(cache, named)
    assert {f.name for f in cache.iterdir() if f.suffix == ".npy"} == named


def test_a_missing_chunk_or_a_part_that_left_rebuilds(tmp_path):
    rng = np.random.default_rng(6)
    tables = [_part(rng, [i]) for i in range(4)]
    files = []
    for i, t in enumerate(tables):
        files.append((f"p{i}", tmp_path / f"p{i}.counts.parquet"))
        pq.write_table(t, files[-1][1])
    cache = tmp_path / "step_counts"
    reads = []

    def read_all(parts):
        reads.append(len(parts))
        return [(name, pq.read_table(f)) for name, f in parts]

    stepcounts.step_counts(files[:2], _vocab(), cache, lambda: read_all(files[:2]))
    stepcounts.step_counts(files[:3], _vocab(), cache, lambda: read_all(files[:3]))
    assert reads == [2] and len(_chunks(cache)) == 2
    newest = json.loads((cache / "manifest.json").read_text())["chunks"][-1]["name"]
    (cache / newest).unlink()
    c = stepcounts.step_counts(files[:3], _vocab(), cache, lambda: read_all(files[:3]))
    _check(c, tables[:3], [0, 1, 2])
    assert reads == [2, 3]
    # a part that left, and a new one, in one audit
    kept = [files[0], files[2], files[3]]
    c = stepcounts.step_counts(kept, _vocab(), cache, lambda: read_all(kept))
    _check(c, [tables[0], tables[2], tables[3]], [0, 1, 2, 3])
    assert reads == [2, 3, 3]


def test_merge_count_is_a_binary_counter():
    sizes = []
    for _ in range(40):
        sizes.append(1)
        k = chunks.merge_count([chunks.Chunk(str(i), ["p"] * s) for i, s in enumerate(sizes)])
        if k:
            sizes = sizes[:-k] + [sum(sizes[-k:])]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert sum(sizes) == 40 and sizes == [32, 8]
    assert chunks.merge_count([chunks.Chunk("a", ["p"] * 2000), chunks.Chunk("b", ["q"])]) == 0


def test_counts_added_into_the_callers_rows():
    """`out`: the counts added into views of a caller's larger arrays (every column-mapping path: a run of steps,
    scattered steps, several columns per step), the same values as returned arrays; a wrong shape is an error."""
    rng = np.random.default_rng(5)
    tables = [_part(rng, [0, 1, 2]), _part(rng, [2, 3])]
    parts = [(str(i), t) for i, t in enumerate(tables)]
    c = stepcounts.step_counts(parts, _vocab(), None, lambda: parts)
    ids = np.array([0, 1, 2, 3])
    for keys in ({(s, "train"): s for s in range(4)}, {(0, "train"): 3, (3, "train"): 0, (1, "train"): 2},
                 {(s, sp): s for s in range(4) for sp in ("train", "eval")}):
        ks = np.array([k[0] for k in keys]), np.array([k[1] for k in keys], object), np.array(list(keys.values()))
        x, m = c.per_step("answer", ids, *ks, 4)
        big = np.zeros((len(ids) + 2, 4)), np.zeros((len(ids), 4))
        got = c.per_step("answer", ids, *ks, 4, out=(big[0][:len(ids)], big[1]))
        assert got[0].base is big[0] and got[1] is big[1]
        assert np.array_equal(big[0][:len(ids)], x) and np.array_equal(big[1], m) and not big[0][len(ids):].any()
        assert x.sum() > 0
    with pytest.raises(ValueError):
        c.per_step("answer", ids, *ks, 4, out=(np.zeros((3, 4)), np.zeros((4, 4))))


def test_group_sums_and_rows_equal_the_per_step_counts(tmp_path):
    """`group_sums`: the per-step counts summed over groups of steps (the trend bins, the windows' kept steps),
    as int64 and equal to summing `per_step`'s columns, for every column-mapping path (a run of steps, scattered
    steps, several columns per step, blocks of several chunks, parts sharing a step) and any grouping (runs, a
    lattice, groups out of order, steps in none); `per_step(rows=)`: those rows of the full arrays."""
    rng = np.random.default_rng(11)
    files = []
    for i, steps in enumerate([[0, 1, 2], [3], [3, 4], [5]]):  # parts 1 and 2 share step 3
        files.append((f"p{i}", tmp_path / f"p{i}.counts.parquet"))
        pq.write_table(_part(rng, steps), files[-1][1])
    cache = tmp_path / "rollup" / "step_counts"
    read = lambda parts: [(name, pq.read_table(f)) for name, f in parts]  # noqa: E731
    stepcounts.step_counts(files[:3], _vocab(), cache, lambda: read(files[:3]))
    c = stepcounts.step_counts(files, _vocab(), cache, lambda: read(files))
    assert len(c.blocks) == 2
    t = 6
    for keys in ({(s, "train"): s for s in range(t)}, {(0, "train"): 5, (5, "train"): 0, (2, "train"): 2},
                 {(s, sp): s for s in range(t) for sp in ("train", "eval")}):
        ks = np.array([k[0] for k in keys]), np.array([k[1] for k in keys], object), np.array(list(keys.values()))
        for where in ("answer", "reasoning"):
            ids = np.array([r["term_id"] for r in _vocab().to_pylist() if r["where"] == where])
            x, m = c.per_step(where, ids, *ks, t)
            rows = np.array([len(ids) - 1, 0])
            xr, mr = c.per_step(where, ids, *ks, t, rows=rows)
            assert np.array_equal(xr, x[rows]) and np.array_equal(mr, m[rows])
            for group_of_si, groups in ((np.arange(t) * 4 // t, 4), (np.array([0, -1, 0, 1, -1, 1]), 2),
                                        (np.array([2, 0, 1, 1, 0, 2]), 3), (np.full(t, -1), 1)):
                gx, gm = c.group_sums(where, ids, *ks, group_of_si, groups)
                assert gx.dtype == np.int64 and gx.shape == (len(ids), groups)
                for g in range(groups):
                    assert np.array_equal(gx[:, g], x[:, group_of_si == g].sum(1))
                    assert np.array_equal(gm[:, g], m[:, group_of_si == g].sum(1))
    with pytest.raises(ValueError):
        c.group_sums("answer", np.array([0, 1]), *ks, np.zeros(t, np.int64), 1)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(codes=st.lists(st.integers(-3, 40), max_size=60), wide=st.booleans())
def test_distinct_codes_equal_numpy_unique(codes, wide):
    """A part's (step, split) codes made distinct by a table of their range (or sorted, where the range is much
    wider than the rows): the values and each row's index into them, as `np.unique` gives them."""
    code = np.array(codes + ([10 ** 9] if wide and codes else []), np.int64)
    got, inv = stepcounts._distinct(code)
    want, want_inv = np.unique(code, return_inverse=True)
    assert np.array_equal(got, want) and np.array_equal(inv, want_inv.ravel())


def _blocks(ids, parts, dense: bool):
    """The blocks a `_Builder` makes of `parts` ((name, steps, splits, {where: (x, m)} as (steps x term id))), fed
    as `PartCounts` (`dense`) or as count tables of their nonzero rows."""
    blocks = []
    builder = stepcounts._Builder(ids, lambda names, block: blocks.append((names, block)))
    for name, steps, splits, counts in parts:
        if dense:
            builder.add_dense(name, stepcounts.PartCounts(ids, np.array(steps), splits, counts))
            continue
        rows = []
        for where, (x, m) in counts.items():
            for c, t in zip(*np.nonzero(x | m)):
                split = None if splits[c] == stepcounts.NULL_SPLIT else splits[c]
                rows.append({"where": where, "term_id": int(t), "step": steps[c], "split": split,
                             "x": int(x[c, t]), "m": int(m[c, t])})
        builder.add(name, pa.Table.from_pylist(rows, schema=tokens._empty_counts().schema))
    builder.close()
    return blocks


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), n_parts=st.integers(1, 4), block=st.sampled_from([6, 40, 10_000]))
def test_dense_part_counts_build_the_blocks_of_their_count_tables(data, n_parts, block):
    """A part's counts handed over dense (`PartCounts`, as a cold audit's term sets do) build the same blocks as
    its count table: columns of no counts left out, a (step, split) twice in a part or in two parts added up,
    NULL splits, blocks closed at the same bound."""
    ids = {"answer": np.array([0, 2, 3]), "reasoning": np.array([1, 4])}
    parts = []
    for i in range(n_parts):
        n = data.draw(st.integers(0, 4))
        steps = data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
        splits = data.draw(st.lists(st.sampled_from(["train", "eval", stepcounts.NULL_SPLIT]), min_size=n, max_size=n))
        counts = {w: tuple(np.array(data.draw(st.lists(st.lists(st.sampled_from([0, 0, 1, 3]), min_size=5,
                                                                          max_size=5), min_size=n, max_size=n)),
                                    np.int64).reshape(n, 5) for _ in range(2)) for w in ("answer", "reasoning")}
        parts.append((f"p{i}", steps, splits, counts))
    import unittest.mock as mock
    with mock.patch.object(stepcounts, "BLOCK_CELLS", block * stepcounts._cells(ids)):
        got, want = _blocks(ids, parts, dense=True), _blocks(ids, parts, dense=False)
    assert [names for names, _ in got] == [names for names, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a.steps.tolist() == b.steps.tolist() and a.splits.tolist() == b.splits.tolist()
        assert np.array_equal(a.arr, b.arr)


def _simulated(root, parts: int) -> Store:
    """A store holding a small simulated run in `parts` parts of consecutive steps (two share a step)."""
    table = simulate_run("goblin_persona", steps=9, prompts=5, generations=4, seed=1, run_name="r").canonical()
    store = Store(root)
    step = np.asarray(table["step"].to_numpy())
    cut = np.linspace(0, len(step), parts + 1).astype(int)
    for i in range(parts):
        store.append("r", table.slice(cut[i], cut[i + 1] - cut[i]), key=f"k{i}")
    return store


@pytest.mark.parametrize("parts", [1, 4])
def test_a_cold_build_of_the_term_sets_caches_the_step_counts(tmp_path, monkeypatch, parts):
    """Term sets computed for every part (a cold audit) build the dense step counts as the parts' counts come
    (`Feed`): `step_counts` then finds every part cached, reads no count table, and gives the counts built from
    the count tables; a warm audit's new part is added to that cache."""
    monkeypatch.setattr(stepcounts, "BLOCK_CELLS", 2_000)  # several blocks, hence chunks
    store = _simulated(tmp_path / "s", parts)
    sets = tokens.term_sets(store, "r")
    entries = [(name, p["counts"]) for name, p in sets.parts]
    cache = stepcounts.cache_dir(Path(entries[0][1]).parent)
    assert (cache / chunks.MANIFEST).is_file()

    def unread():
        raise AssertionError("the count tables were read back")

    cached = stepcounts.step_counts(entries, sets.vocab, cache, unread)
    built = stepcounts.step_counts(entries, sets.vocab, None, sets.count_tables)
    assert [p for c in chunks.load(cache, json.loads((cache / chunks.MANIFEST).read_text())["key"],
                                   {n for n, _ in entries})[0] for p in c.parts] == [n for n, _ in entries]
    for where in tokens.WHERES:
        ids = sets.vocab.filter(pc.equal(sets.vocab["where"], where))["term_id"].to_numpy()
        keys = [(int(s), str(p)) for b in built.blocks for s, p in zip(b.steps, b.splits)]
        step, split = np.array([k[0] for k in keys]), np.array([k[1] for k in keys], dtype=object)
        si = np.arange(len(keys))
        for got, want in zip(cached.per_step(where, ids, step, split, si, len(keys)),
                             built.per_step(where, ids, step, split, si, len(keys))):
            assert np.array_equal(got, want)
    # a warm audit: one more part, its counts added to the cache
    extra = simulate_run("goblin_persona", steps=1, prompts=5, generations=4, seed=2, run_name="r").canonical()
    store.append("r", extra.set_column(extra.schema.get_field_index("step"), "step",
                                       pa.array([100] * len(extra), pa.int64())), key="late")
    sets = tokens.term_sets(store, "r")
    entries = [(name, p["counts"]) for name, p in sets.parts]
    grown = stepcounts.step_counts(entries, sets.vocab, cache, sets.count_tables)
    assert any(100 in b.steps for b in grown.blocks)
