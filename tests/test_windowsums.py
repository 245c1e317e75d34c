"""The per-part window sums (`rlaudit.derived.windowsums`): equal to a direct computation from the cell tables on
either path (numpy, compiled), cached per run in chunks, grown by the parts asked for, rebuilt after a torn or
missing chunk or a part that left; and `emerging`'s window statistics from them equal those of the SQL over
every (cell, term) row, clusters of several cells and thinned windows included."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rlaudit import kernels
from rlaudit.derived import windowsums

N_TERMS = 9
#: term ids 0-3 answer, 4-7 reasoning, 8 outside the vocabulary (a gap: its rows count for none)
VOCAB = pa.table({"where": ["answer"] * 4 + ["reasoning"] * 4, "term_id": pa.array(range(8), pa.int32())})


def _part(rng: np.random.Generator, name: str, step: int) -> dict[str, pa.Table]:
    """One part's cell tables: cells of two splits, two conditions, a few prompts (one prompt in two cells)."""
    cells, ct, pt = [], [], {}
    for split in ("train", "eval", None):
        for cond in ("a", "b"):
            for p in range(3):
                prompt = 1000 + p if cond == "a" or p else 999  # prompt 999 in several cells and steps
                key = hash((name, split, cond, p)) & (2**63 - 1)
                n = int(rng.integers(1, 9))
                n_r = int(rng.integers(0, n + 1))
                cells.append({"cell": key, "part": name, "step": step, "split": split, "condition": cond,
                              "task": None if p == 2 else f"t{p}", "prompt_key": prompt, "n": n, "n_r": n_r})
                for t in range(N_TERMS):
                    limit = n_r if 4 <= t < 8 else n
                    if limit and rng.random() < 0.6:
                        ct.append((key, t, int(rng.integers(1, limit + 1))))
                # a prompt's terms are those of its text: the same in every part
                pt[prompt] = sorted(int(t) for t in np.random.default_rng(prompt).choice(N_TERMS, 3, replace=False)) \
                    if prompt != 999 else [1, 5, 8]
    cell_t = pa.table({k: [c[k] for c in cells] for k in cells[0]}).cast(pa.schema([
        ("cell", pa.uint64()), ("part", pa.string()), ("step", pa.int64()), ("split", pa.string()),
        ("condition", pa.string()), ("task", pa.string()), ("prompt_key", pa.uint64()), ("n", pa.int64()),
        ("n_r", pa.int64())]))
    ct_t = pa.table({"cell": pa.array([r[0] for r in ct], pa.uint64()),
                     "term_id": pa.array([r[1] for r in ct], pa.int32()), "x": pa.array([r[2] for r in ct], pa.int32())})
    pt_t = pa.table({"prompt_key": pa.array([k for k, v in pt.items() for _ in v], pa.uint64()),
                     "term_id": pa.array([t for v in pt.values() for t in v], pa.int32())})
    return {"cells": cell_t, "cellterms": ct_t, "promptterms": pt_t}


def _expected(tables: dict[str, pa.Table]) -> dict[tuple, list[int]]:
    """(key, term) -> the six sums, straight from the definitions."""
    where = {t: (1 if 4 <= t < 8 else 0) for t in range(8)}
    cells = {c["cell"]: c for c in tables["cells"].to_pylist()}
    out: dict[tuple, list[int]] = defaultdict(lambda: [0] * 6)

    def key(c):
        return (c["step"], c["split"] if c["split"] is not None else windowsums.NULL_SPLIT, c["task"] or "",
                c["condition"])

    for r in tables["cellterms"].to_pylist():
        if r["term_id"] not in where:
            continue
        c = cells[r["cell"]]
        nc = c["n_r"] if where[r["term_id"]] else c["n"]
        s = out[(key(c), r["term_id"])]
        s[0] += r["x"]
        s[1] += r["x"] ** 2
        s[2] += r["x"] * nc
    held = defaultdict(set)
    for r in tables["promptterms"].to_pylist():
        held[r["prompt_key"]].add(r["term_id"])
    for c in cells.values():
        for t in held[c["prompt_key"]]:
            nc = c["n_r"] if where.get(t) else c["n"]
            if t in where and nc > 0:
                s = out[(key(c), t)]
                s[3] += nc
                s[4] += nc * nc
                s[5] += 1
    return {k: v for k, v in out.items() if any(v)}


def _as_dict(s: windowsums.PartSums) -> dict[tuple, list[int]]:
    return {(tuple(s.keys[int(r[0])]), int(r[1])): [int(v) for v in r[2:]] for r in s.rows}


def _parts(n: int, seed: int = 0) -> list[tuple[str, dict[str, pa.Table]]]:
    rng = np.random.default_rng(seed)
    return [(f"p{i}", _part(rng, f"p{i}", i)) for i in range(n)]


def _read(parts):
    def read(names):
        sel = [t for name, t in parts if name in names]
        return tuple(pa.concat_tables([t[kind] for t in sel]) for kind in ("cells", "cellterms", "promptterms"))
    return read


@pytest.mark.parametrize("slots", [windowsums.DENSE_SLOTS, 1, 5 * len(VOCAB)])
@pytest.mark.parametrize("path", ["numpy", "numba"])
def test_part_sums_equal_the_definitions(path, slots, monkeypatch):
    """Whole, a key per pass (`DENSE_SLOTS` below the vocabulary: one key's terms), and a few keys per pass."""
    if path == "numba" and not kernels.available():
        pytest.skip("numba not installed")
    monkeypatch.setenv(kernels.ENV, path)
    monkeypatch.setattr(windowsums, "NUMBA_PARTS", 0)
    monkeypatch.setattr(windowsums, "DENSE_SLOTS", slots)
    monkeypatch.setattr(windowsums, "BLOCK", 7)  # the numpy path's blocks: rows and pairs cut anywhere
    parts = _parts(5)
    got = windowsums.part_sums(*_read(parts)({n for n, _ in parts}), windowsums._reasoning(VOCAB))
    assert sorted(got) == [n for n, _ in parts]
    for name, tables in parts:
        assert _as_dict(got[name]) == _expected(tables)
    # a prompt's terms unsorted and repeated: the numpy path makes them a set
    cells, ct, pt = _read(parts)({"p0"})
    shuffled = pa.table({"prompt_key": pa.concat_arrays([pt["prompt_key"].combine_chunks()] * 2),
                         "term_id": pa.concat_arrays([pt["term_id"].combine_chunks()] * 2)})
    again = windowsums.part_sums(cells, ct, shuffled.take(np.argsort(np.asarray(shuffled["prompt_key"]),
                                                                       kind="stable")[::-1].copy()),
                                 windowsums._reasoning(VOCAB))
    assert _as_dict(again["p0"]) == _expected(parts[0][1])


def test_a_cell_of_no_part_is_an_error():
    parts = _parts(1)
    cells, ct, pt = _read(parts)({"p0"})
    with pytest.raises(ValueError, match="missing"):
        windowsums.part_sums(cells.slice(1), ct, pt, windowsums._reasoning(VOCAB))


def test_cached_in_chunks_grown_and_rebuilt(tmp_path):
    parts = _parts(6, seed=1)
    entries = [(name, {"cells": None}) for name, _ in parts]
    reads: list[set[str]] = []
    read = _read(parts)

    def counting(names):
        reads.append(set(names))
        return read(names)

    cache = tmp_path / "window_sums"
    direct = {name: _expected(t) for name, t in parts}

    def check(got, wanted):
        assert [n for n, _ in parts if n in wanted] == [n for n, _ in parts if n in wanted]
        assert [_as_dict(s) for s in got] == [direct[n] for n, _ in parts if n in wanted]

    check(windowsums.window_sums(entries[:3], {"p0", "p2"}, VOCAB, counting, cache), {"p0", "p2"})
    assert reads == [{"p0", "p2"}]
    doc = json.loads((cache / "manifest.json").read_text())
    assert [c["parts"] for c in doc["chunks"]] == [["p0", "p2"]]
    # asked again: from the memory-mapped chunk, nothing read
    check(windowsums.window_sums(entries[:3], {"p0", "p2"}, VOCAB, counting, cache), {"p0", "p2"})
    assert len(reads) == 1
    # the run grew and the window moved: only the parts not held are read, a chunk of their own
    check(windowsums.window_sums(entries[:5], {"p2", "p3", "p4"}, VOCAB, counting, cache), {"p2", "p3", "p4"})
    assert reads[-1] == {"p3", "p4"}
    doc = json.loads((cache / "manifest.json").read_text())
    assert [c["parts"] for c in doc["chunks"]] == [["p0", "p2", "p3", "p4"]]  # [2] then [2]: carried into one
    check(windowsums.window_sums(entries[:6], {"p5"}, VOCAB, counting, cache), {"p5"})
    doc = json.loads((cache / "manifest.json").read_text())
    assert [c["parts"] for c in doc["chunks"]] == [["p0", "p2", "p3", "p4"], ["p5"]]
    check(windowsums.window_sums(entries[:6], {"p0", "p4", "p5"}, VOCAB, counting, cache), {"p0", "p4", "p5"})
    assert reads[-1] == {"p5"} and len(reads) == 3
    # a torn chunk: what is asked for is computed again, and cached anew
    first = cache / doc["chunks"][0]["name"]
    first.write_bytes(first.read_bytes()[:100])
    check(windowsums.window_sums(entries[:6], {"p0", "p4"}, VOCAB, counting, cache), {"p0", "p4"})
    assert reads[-1] == {"p0", "p4"}
    assert [c["parts"] for c in json.loads((cache / "manifest.json").read_text())["chunks"]] == [["p0", "p4"]]
    # a missing chunk
    (cache / json.loads((cache / "manifest.json").read_text())["chunks"][0]["name"]).unlink()
    check(windowsums.window_sums(entries[:6], {"p4"}, VOCAB, counting, cache), {"p4"})
    assert reads[-1] == {"p4"}
    # a part that left the run
    check(windowsums.window_sums(entries[:6], {"p0"}, VOCAB, counting, cache), {"p0"})
    assert reads[-1] == {"p0"}
    check(windowsums.window_sums(entries[1:6], {"p1", "p4"}, VOCAB, counting, cache), {"p1", "p4"})
    assert reads[-1] == {"p1", "p4"}
    # another vocabulary: not read
    other = pa.table({"where": ["answer"] * 8, "term_id": pa.array(range(8), pa.int32())})
    windowsums.window_sums(entries[1:6], {"p1"}, other, counting, cache)
    assert reads[-1] == {"p1"}


def test_not_cached_without_a_directory():
    parts = _parts(2, seed=2)
    got = windowsums.window_sums([(n, {}) for n, _ in parts], {"p1"}, VOCAB, _read(parts), None)
    assert [_as_dict(s) for s in got] == [_expected(parts[1][1])]


@pytest.mark.parametrize("options", [{}, {"max_window_rollouts": 300}])
def test_emerging_window_statistics_equal_the_sql_over_every_row(tmp_path, monkeypatch, options):
    """`_term_sums_cached` (the per-part sums, corrected for clusters of several cells) gives the very numbers of
    `_term_sums_sql` (every (cell, term) row of the window parts), for every n-gram of both `where`s; with
    thinned windows too, warm after new parts (the cache grown) and cold."""
    sys_path = str(Path(__file__).parent / "detectors")
    monkeypatch.syspath_prepend(sys_path)
    from emerging_equivalence import SIZE

    from rlaudit.detectors import AuditConfig, emerging, run_detectors
    from rlaudit.organisms import run as simulate_run
    from rlaudit.store import Store

    seen = {"calls": 0, "several": 0}
    cached = emerging._term_sums_cached

    def row_of(scope, term_ids, kept):
        scope.con.register("row_of", pa.table({"term_id": pa.array(term_ids[kept], pa.int32()),
                                               "idx": pa.array(kept, pa.int64())}))

    def both(scope, where, kept_terms, term_ids, out):
        every = np.arange(len(term_ids))  # every n-gram, not only those the trend screen keeps
        row_of(scope, term_ids, every)
        a = tuple(np.zeros_like(o) for o in out)
        b = tuple(np.zeros_like(o) for o in out)
        cached(scope, where, every, term_ids, a)
        emerging._term_sums_sql(scope, where, every, term_ids, b)
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
        assert a[0].any() and a[3].any()
        seen["calls"] += 1
        seen["several"] += scope.con.execute("SELECT count(*) FROM wcl WHERE NOT single").fetchall()[0][0] > 0
        row_of(scope, term_ids, kept_terms)
        cached(scope, where, kept_terms, term_ids, out)

    monkeypatch.setattr(emerging, "_term_sums_cached", both)
    table = simulate_run("goblin_persona", seed=0, run_name="sim", **SIZE).canonical()
    store = Store(tmp_path / "s")
    steps = np.asarray(table["step"])
    config = AuditConfig(detectors=["emerging"], options={"emerging": options})
    last = int(steps.max())
    for lo, hi in ((0, 10), (10, 20), (20, last)):
        store.append("sim", table.filter(pa.array((steps >= lo) & (steps < hi))), key=f"{lo}")
    for _ in range(2):  # cold, then warm: the new part's sums added
        errors = [f.fields for f in run_detectors(store, "sim", config) if f.kind == "audit_error"]
        assert not errors, errors
        store.append("sim", table.filter(pa.array(steps == last)), key="last")
    assert seen["calls"] >= 3 and seen["several"] >= 1
    assert any((p / "manifest.json").is_file() for p in (tmp_path / "s").rglob("window_sums"))


def test_sums_beyond_32_bits_are_cached_and_read_back(tmp_path, monkeypatch):
    """A chunk whose sums need 64 bits is stored as int64 and mapped read-only: reading it back (and merging it
    with a new chunk) copies the rows instead of changing them in place."""
    big = 3 * 2 ** 40
    keys = [(1, "train", "", "c"), (2, "train", "", "c")]

    def fake_sums(cells, cellterms, promptterms, reasoning):
        names = sorted(set(cells["part"].to_pylist()))
        return {n: windowsums.PartSums(keys, np.array([[1, 3, big + i, 1, 2, 3, 4, 5], [0, 4, 7, 8, 9, 1, 2, 3]],
                                                      np.int64)) for i, n in enumerate(names)}

    monkeypatch.setattr(windowsums, "part_sums", fake_sums)
    parts = _parts(4, seed=2)
    entries = [(name, {"cells": None}) for name, _ in parts]
    cache = tmp_path / "window_sums"
    reads: list[set[str]] = []

    def counting(names):
        reads.append(set(names))
        return _read(parts)(names)

    first = [_as_dict(s) for s in windowsums.window_sums(entries[:2], {"p0", "p1"}, VOCAB, counting, cache)]
    assert np.load(next(cache.glob("*.npy")), mmap_mode="r").dtype == np.int64
    again = [_as_dict(s) for s in windowsums.window_sums(entries[:2], {"p0", "p1"}, VOCAB, counting, cache)]
    assert again == first and reads == [{"p0", "p1"}]
    grown = windowsums.window_sums(entries[:4], {"p0", "p1", "p2", "p3"}, VOCAB, counting, cache)
    assert [_as_dict(s) for s in grown][:2] == first
    assert [_as_dict(s) for s in windowsums.window_sums(entries[:4], {"p0", "p3"}, VOCAB, counting, cache)] == [
        first[0], _as_dict(grown[3])]
    assert reads == [{"p0", "p1"}, {"p2", "p3"}]


def test_a_batch_of_parts_stops_at_batch_steps(monkeypatch):
    """Parts that span several steps (an ingest groups step files) are summed in batches of at most BATCH_STEPS
    steps: a batch's dense sums grow with its keys, a few per step. The sums are those of one batch."""
    parts = _parts(6, seed=3)
    reads: list[set[str]] = []
    read = _read(parts)

    def counting(names):
        reads.append(set(names))
        return read(names)

    monkeypatch.setattr(windowsums, "BATCH_STEPS", 10)
    spans = {"p0": 4, "p1": 4, "p2": 4, "p3": 12, "p4": 1, "p5": 1}
    got = windowsums.window_sums([(n, {}) for n, _ in parts], {n for n, _ in parts}, VOCAB, counting, None, spans)
    assert sorted(map(sorted, reads)) == [["p0", "p1"], ["p2"], ["p3"], ["p4", "p5"]]
    assert [_as_dict(s) for s in got] == [_expected(t) for _, t in parts]


def test_a_stack_offsets_keys_in_a_type_that_holds_them():
    """Key indices offset by the keys of the parts before (40,000 each here) do not fit 16 bits even where every
    sum does: the stack is int32, its rows each part's with the offset, as a chunk file holds them."""
    n = 40_000
    keys = [(s, "train", "", "c") for s in range(n)]
    rows = [np.array([[n - 1, 3, 5, 1, 2, 3, 4, 5], [0, 4, 7, 8, 9, 1, 2, 3]], np.int64) for _ in range(2)]
    stacked = windowsums._stack([windowsums.PartSums(keys, r) for r in rows])
    assert stacked.rows.dtype == np.int32 and stacked.ranges == [[0, 2, 0, n], [2, 4, n, 2 * n]]
    assert stacked.rows[:, 0].tolist() == [n - 1, 0, 2 * n - 1, n] and stacked.rows[:, 1:].tolist() == (
        np.concatenate(rows)[:, 1:].tolist())
    few = [r.copy() for r in rows]
    for r in few:
        r[0, 0] = 1
    small = windowsums._stack([windowsums.PartSums(keys[:2], r) for r in few])
    assert small.rows.dtype == np.uint16 and small.rows[:, 0].tolist() == [1, 0, 3, 2]


def test_a_cold_computation_is_cached_a_batch_at_a_time_and_read_back_mapped(tmp_path, monkeypatch):
    """Window parts computed in several batches: each batch is cached as a chunk as it comes (full chunks are
    not merged back into one) and every part's sums are read back from the mapped chunks, equal to the
    definitions and to the sums held in memory without a cache; `release` leaves them readable."""
    parts = _parts(7, seed=4)
    entries = [(name, {}) for name, _ in parts]
    monkeypatch.setattr(windowsums, "BATCH_STEPS", 2)
    monkeypatch.setattr(windowsums, "FULL_ROWS", 1)  # every chunk is full
    cache = tmp_path / "window_sums"
    got = windowsums.window_sums(entries, {n for n, _ in parts}, VOCAB, _read(parts), cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert [c["parts"] for c in manifest["chunks"]] == [["p0", "p1"], ["p2", "p3"], ["p4", "p5"], ["p6"]]
    assert all(isinstance(s, windowsums._InChunk) for s in got)
    want = [_expected(t) for _, t in parts]
    assert [_as_dict(s) for s in got] == want
    windowsums.release(got)
    assert [_as_dict(s) for s in got] == want
    held = windowsums.window_sums(entries, {n for n, _ in parts}, VOCAB, _read(parts), None)
    assert [_as_dict(s) for s in held] == want
    # without FULL_ROWS the batches' chunks merge as a binary counter (and read the same)
    monkeypatch.setattr(windowsums, "FULL_ROWS", 1 << 40)
    merged = tmp_path / "merged"
    got = windowsums.window_sums(entries, {n for n, _ in parts}, VOCAB, _read(parts), merged)
    assert [len(c["parts"]) for c in json.loads((merged / "manifest.json").read_text())["chunks"]] == [4, 2, 1]
    assert [_as_dict(s) for s in got] == want
