"""Per-part cell tables (`rlaudit.derived.termcells`) equal the per-rollout aggregates they stand for."""

from __future__ import annotations

from pathlib import Path

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rlaudit.derived import termcells, tokens
from rlaudit.organisms import run as simulate_run
from rlaudit.store import Store


def _store(tmp_path, persist=True) -> Store:
    table = simulate_run("goblin_persona", steps=8, prompts=6, generations=4, seed=3, run_name="r").canonical()
    store = Store(tmp_path / ("s" if persist else "m"))
    store.persist_derived = persist
    # two parts share step 4 (each holds some of its rollouts): their cells must add up
    step = np.asarray(table["step"].to_numpy())
    half = np.arange(len(step)) % 2 == 0
    first = (step < 4) | ((step == 4) & half)
    store.append("r", table.filter(pa.array(first)), key="a")
    store.append("r", table.filter(pa.array(~first)), key="b")
    return store


def _merged(cells: termcells.TermCells) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for kind in (*termcells.KINDS, *termcells.LIST_KINDS):  # made from the flat lists (not cached)
        cells.register(con, kind, kind)
    return con


def _direct(store: Store) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("rt", tokens.rollout_terms(store, "r"))
    return con


def _check(store: Store) -> termcells.TermCells:
    sets = tokens.term_sets(store, "r")
    cells = termcells.term_cells(store, "r", sets)
    got, ref = _merged(cells), _direct(store)
    key = termcells.CELL
    a = got.sql("""SELECT cell, sum(n) AS n, sum(n_r) AS n_r, sum(answer__length) AS al,
                          sum(reasoning__length__q) AS rq FROM cells GROUP BY cell ORDER BY cell""").fetchall()
    b = ref.sql(f"""SELECT {key} AS cell, count(*), count(*) FILTER (WHERE has_reasoning), sum(answer__length),
                           sum(reasoning__length * reasoning__length) FILTER (WHERE has_reasoning)
                    FROM rt GROUP BY ALL ORDER BY cell""").fetchall()
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x[:3] == y[:3] and np.isclose(x[3], y[3]) and np.isclose(x[4] or 0, y[4] or 0)
    # every style sum and sum of squares (whole numbers: exact), reasoning ones NULL in cells without reasoning
    cols = [f"{c}{q}" for c, _, _ in tokens.style_columns() for q in ("", "__q")]
    a = got.sql(f"""SELECT cell, {", ".join(f"sum({c})" for c in cols)} FROM cells GROUP BY cell ORDER BY cell
                 """).fetchall()
    exprs = []
    for c, where, _ in tokens.style_columns():
        filt = " FILTER (WHERE has_reasoning)" if where == "reasoning" else ""
        exprs += [f"sum({c}){filt}", f"sum({c} * {c}){filt}"]
    b = ref.sql(f"SELECT {key} AS cell, {', '.join(exprs)} FROM rt GROUP BY ALL ORDER BY cell").fetchall()
    assert a == b
    a = got.sql("SELECT cell, term_id, sum(x) FROM cellterms GROUP BY ALL ORDER BY ALL").fetchall()
    b = ref.sql(f"""SELECT cell, term_id, count(*) FROM (
                        SELECT {key} AS cell, unnest(answer_terms) AS term_id FROM rt
                        UNION ALL SELECT {key}, unnest(reasoning_terms) FROM rt WHERE has_reasoning)
                    GROUP BY ALL ORDER BY ALL""").fetchall()
    assert a == b and len(a) > 100
    a = got.sql("SELECT DISTINCT prompt_key, term_id FROM promptterms ORDER BY ALL").fetchall()
    b = ref.sql("SELECT DISTINCT prompt_key, unnest(prompt_terms) AS t FROM rt ORDER BY ALL").fetchall()
    assert a == b and len(a) > 10
    # a few terms' prompts, gathered from the lists: the same rows as the whole table's of those terms
    few = sorted({t for _, t in a})[::7]
    cells.register(got, "promptterms", "few_pt", term_ids=few)
    assert got.sql("SELECT DISTINCT prompt_key, term_id FROM few_pt ORDER BY ALL").fetchall() == [
        r for r in a if r[1] in set(few)]
    return cells


def test_cell_tables_equal_the_per_rollout_aggregates(tmp_path):
    store = _store(tmp_path)
    cells = _check(store)
    files = [p[kind] for _, p in cells.parts for kind in termcells.KINDS]
    assert all(f.is_file() for f in files)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = termcells.term_cells(Store(store.root), "r", tokens.term_sets(Store(store.root), "r"))
    assert [p[k] for _, p in again.parts for k in termcells.KINDS] == files  # read back, not recomputed
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_in_memory_store_gets_the_same_tables(tmp_path):
    store = _store(tmp_path, persist=False)
    cells = _check(store)
    assert all(isinstance(p[k], pa.Table) for _, p in cells.parts for k in termcells.KINDS)
    assert not (store.run_dir("r") / "derived" / "termcells").exists()


def test_a_replaced_part_is_reduced_again_and_its_old_files_pruned(tmp_path):
    store = _store(tmp_path)
    _check(store)
    table = simulate_run("goblin_persona", steps=8, prompts=6, generations=4, seed=4, run_name="r").canonical()
    store.append("r", table.filter(pc.greater_equal(table["step"], 6)), key="b")  # replaces part b
    _check(store)
    vdirs = list((store.run_dir("r") / "derived" / "termcells").iterdir())
    stems = {p.stem for p in store.parts("r")}
    assert len(vdirs) == 1 and {f.name.split(".")[0] for f in vdirs[0].iterdir()} <= stems
    sets = tokens.term_sets(store, "r")
    tdir = Path(sets.parts[0][1]["terms"]).parent
    # (per part files; the run's own caches are directories: the step counts' `rollup/`, `segments/`)
    assert {f.name.split(".")[0] for f in tdir.iterdir() if f.is_file()} <= stems


def test_window_rows_files_of_earlier_versions_are_removed(tmp_path):
    """Earlier versions cached each window part's rollouts with their term lists beside its term sets
    (`<part>.rows.parquet`); nothing reads them now, and the next term sets of the run remove them (the term
    sets themselves stay cached)."""
    store = _store(tmp_path)
    sets = tokens.term_sets(store, "r")
    tdir = Path(sets.parts[0][1]["terms"]).parent
    stale = [tdir / f"{name.removesuffix('.parquet')}.rows.parquet" for name, _ in sets.parts]
    for f in stale:
        f.write_bytes(b"PAR1")
    stamps = {f: f.stat().st_mtime_ns for f in tdir.glob("*.terms.parquet")}
    again = tokens.term_sets(store, "r")
    assert not [f for f in stale if f.exists()]
    assert {f: f.stat().st_mtime_ns for f in tdir.glob("*.terms.parquet")} == stamps
    assert [n for n, _ in again.parts] == [n for n, _ in sets.parts]


def test_a_shard_reduces_its_parts_and_prunes_nothing(tmp_path):
    store = _store(tmp_path)
    _check(store)  # every part reduced
    vdir = next((store.run_dir("r") / "derived" / "termcells").iterdir())
    before = sorted(f.name for f in vdir.iterdir())
    one = {store.parts("r")[0].name}
    fresh = Store(store.root)
    shard = termcells.term_cells(fresh, "r", tokens.term_sets(fresh, "r", only=one), prune=False)
    assert [name for name, _ in shard.parts] == sorted(one)
    assert sorted(f.name for f in vdir.iterdir()) == before


def test_term_sets_bring_their_cell_tables(tmp_path):
    """A cold audit's cell tables come from the term-set computation, written beside the term sets."""
    store = _store(tmp_path)
    cells = _check(store)
    assert len(cells.cellterms()) > 100
    assert all(termcells.cached(Path(files["terms"]), name) for name, files in tokens.term_sets(store, "r").parts)
    assert not list(store.run_dir("r").rglob("*cellterms*"))  # made from the term sets when asked, never stored


def test_cellterms_of_some_terms_are_those_rows_of_every_term(tmp_path):
    """`TermCells.cellterms` cut to some term ids (the focus readers' scan, which cuts the term lists first)
    gives exactly the rows of those ids among every term's rows, part by part, in the same order; ids outside
    the vocabulary or absent give nothing."""
    for persist in (True, False):
        store = _store(tmp_path / str(persist), persist=persist)
        cells = termcells.term_cells(store, "r", tokens.term_sets(store, "r"))
        whole = cells.cellterms()
        ids = sorted(set(whole["term_id"].to_pylist()))
        for some in (ids[::3], ids[:1], [ids[-1], 10**6], []):
            got = cells.cellterms(term_ids=some)
            want = whole.filter(pc.is_in(whole["term_id"], pa.array(some, pa.int32())))
            assert got.schema == termcells.SCHEMAS["cellterms"]
            assert sorted(got.to_pylist(), key=str) == sorted(want.to_pylist(), key=str)
            assert len(got) == len(want) > 0 or not some or some == ids[:0]
        one = cells.parts[0][0]
        assert cells.cellterms({one}).equals(termcells.part_cellterms(dict(cells.parts)[one][termcells.LISTS]))


def test_term_sets_cached_without_cell_tables_are_computed_again(tmp_path, monkeypatch):
    """Term sets whose cell tables are gone (an older version, a removed file) do not count as cached: the
    part is computed again whole, term sets and cell tables."""
    import shutil

    store = _store(tmp_path)
    tokens.term_sets(store, "r")
    shutil.rmtree(store.run_dir("r") / "derived" / "termcells")
    computed: list[str] = []
    real = tokens._compute_parts
    monkeypatch.setattr(tokens, "_compute_parts",
                        lambda paths, *a, **k: computed.extend(p.name for p in paths) or real(paths, *a, **k))
    fresh = Store(store.root)
    cells = _check(fresh)
    assert sorted(computed) == sorted(p.name for p in store.parts("r"))
    assert all(p[k].is_file() for _, p in cells.parts for k in termcells.KINDS)
    computed.clear()
    _check(Store(store.root))  # cached whole now: nothing computed
    assert computed == []


def test_missing_cell_tables_of_a_listed_part_are_a_clear_error(tmp_path):
    """Cell tables removed after the term sets were listed (while an audit runs): an error naming the part,
    not a silently empty table."""
    import shutil

    import pytest

    store = _store(tmp_path)
    sets = tokens.term_sets(store, "r")
    shutil.rmtree(store.run_dir("r") / "derived" / "termcells")
    with pytest.raises(FileNotFoundError, match="cell tables of part"):
        termcells.term_cells(Store(store.root), "r", sets)


def test_term_sets_hold_no_prompt_terms_per_rollout(tmp_path):
    """The prompts' terms are kept once per prompt (`promptterms`), not copied into every rollout's row;
    `rollout_terms` joins them back for small runs and tests."""
    store = _store(tmp_path)
    sets = tokens.term_sets(store, "r")
    assert "prompt_terms" not in sets.part_table(0, "terms").column_names
    rows = tokens.rollout_terms(store, "r")
    assert rows.column_names[-1] == "prompt_terms"
    assert sum(len(v) for v in rows.column("prompt_terms").to_pylist()) > 0


def test_term_lists_are_kept_once_and_read_back_as_computed(tmp_path):
    """The cached term-set files hold no term lists (they are in the parts' flat `TermLists`, with each rollout's
    rid): read back (`part_table`, `with_lists`) they are the lists an in-memory store keeps as computed, row
    for row; `holding` names the rollouts of a term as those lists do; with no part, the columns are still
    those of a computed part."""
    store, memory = _store(tmp_path), _store(tmp_path, persist=False)
    sets, ref_sets = tokens.term_sets(store, "r"), tokens.term_sets(memory, "r")
    first = Path(sets.parts[0][1]["terms"])
    assert not set(tokens.LIST_COLUMNS) & set(pq.read_schema(first).names)
    lists = termcells.TermLists.load(termcells.lists_file(first.parent, sets.parts[0][0]))
    assert np.array_equal(lists.rid, np.asarray(pq.read_table(first, columns=["rid"])["rid"].to_numpy(), np.uint64))
    got = pa.concat_tables([sets.part_table(i, "terms") for i in range(len(sets.parts))])
    ref = pa.concat_tables([ref_sets.part_table(i, "terms") for i in range(len(ref_sets.parts))])
    assert got.select(ref.column_names).equals(ref)
    for where, col in zip(tokens.WHERES, tokens.LIST_COLUMNS):
        counts = pc.value_counts(pc.list_flatten(ref.column(col))).to_pylist()
        top = [c["values"] for c in sorted(counts, key=lambda c: -c["counts"])[:3]]
        for term in top:
            want = sorted(r["rid"] for r in ref.select(["rid", col]).to_pylist() if term in r[col])
            assert sorted(sets.holding(where, term).column("rid").to_pylist()) == want
            assert sorted(ref_sets.holding(where, term).column("rid").to_pylist()) == want
        # every (rollout, term) of a few terms at once, a term asked twice and one no rollout holds among them
        asked = [*top, top[0], max(c["values"] for c in counts) + 1]
        want = sorted((r["rid"], t) for r in ref.select(["rid", col]).to_pylist() for t in set(top) if t in r[col])
        for s in (sets, ref_sets):
            got = s.pairs(where, asked)
            assert got.schema.names == ["rid", "term_id"] and sorted(zip(*got.to_pydict().values())) == want
            assert s.pairs(where, []).num_rows == 0
    tokens._EMPTY.clear()  # as in a process that computed no part: the fixed columns
    assert tokens._empty_terms().schema.equals(ref.schema)


def _focus(store: Store, terms: set[int]) -> tuple[list[tuple], list[tuple]]:
    """(rows of `TermCells.focus`, the same rows scanned from every part's cell terms), sorted."""
    cells = termcells.term_cells(store, "r", tokens.term_sets(store, "r"))
    con = _merged(cells)
    cells.focus(con, terms, "f")
    ids = ", ".join(map(str, sorted(terms)))
    got = con.sql("SELECT cell, term_id, sum(x) FROM f GROUP BY ALL ORDER BY ALL").fetchall()
    ref = con.sql(f"SELECT cell, term_id, sum(x) FROM cellterms WHERE term_id IN ({ids}) GROUP BY ALL ORDER BY ALL"
                  ).fetchall()
    return got, ref


def _focus_file(store: Store) -> Path:
    """The focus cache's manifest (`chunks`)."""
    return next((store.run_dir("r") / "derived" / "termcells").iterdir()) / "focus" / "manifest.json"


def _focus_meta(store: Store) -> tuple[list[int], list[list[str]]]:
    """The focus cache's terms and its chunks' parts."""
    doc = json.loads(_focus_file(store).read_text())
    return doc["info"]["terms"], [c["parts"] for c in doc["chunks"]]


def _common_terms(store: Store, k: int) -> list[int]:
    cells = termcells.term_cells(store, "r", tokens.term_sets(store, "r"))
    con = _merged(cells)
    return [r[0] for r in con.sql(f"SELECT term_id FROM cellterms GROUP BY 1 ORDER BY sum(x) DESC, 1 LIMIT {k}"
                                  ).fetchall()]


def test_focus_rows_are_cached_per_run_and_grow_with_new_parts_and_terms(tmp_path):
    """The focus cache equals a scan of every part's cell terms: when first built, when read back unchanged
    (not rewritten), after a part is added (a chunk of its own), after several are added at once, and when
    terms are added (earlier ones kept; one chunk)."""
    store = _store(tmp_path)
    a, b, c = _common_terms(store, 3)
    got, ref = _focus(Store(store.root), {a, b})
    assert got == ref and len(got) > 10
    path = _focus_file(store)
    mtime = path.stat().st_mtime_ns
    assert _focus(Store(store.root), {a}) == _focus(Store(store.root), {a})  # a subset: read, not rebuilt
    assert path.stat().st_mtime_ns == mtime
    n_parts = len(store.parts("r"))
    table = simulate_run("goblin_persona", steps=10, prompts=6, generations=4, seed=5, run_name="r").canonical()
    # new parts, small enough for the vocabulary to be kept (`tokens.REUSE_GROWTH`): one, then two at once
    store.append("r", table.filter(pc.equal(table["step"], 9)).slice(0, 4), key="c")
    got, ref = _focus(Store(store.root), {a, b})
    assert got == ref and path.stat().st_mtime_ns != mtime
    assert [len(p) for p in _focus_meta(store)[1]] == [n_parts, 1]
    store.append("r", table.filter(pc.equal(table["step"], 9)).slice(4, 4), key="d")
    store.append("r", table.filter(pc.equal(table["step"], 8)).slice(0, 4), key="e")
    got, ref = _focus(Store(store.root), {a, b})
    # chunks of 2, 1 and 2 parts: merged as a binary counter carries (1 <= 2, then 2 <= 3)
    assert n_parts == 2 and got == ref and [len(p) for p in _focus_meta(store)[1]] == [5]
    got, ref = _focus(Store(store.root), {c})
    assert got == ref
    terms, chunked = _focus_meta(store)
    assert sorted(terms) == sorted({a, b, c}) and len(chunked) == 1
    assert sorted(chunked[0]) == sorted(p.name for p in store.parts("r"))


def test_focus_cache_is_rebuilt_when_a_part_leaves_or_a_chunk_is_torn(tmp_path):
    """A cache listing a part the run no longer holds (its rows would count it), or with a torn or missing
    chunk, is rebuilt."""
    store = _store(tmp_path)
    a, b = _common_terms(store, 2)
    got, ref = _focus(Store(store.root), {a, b})
    assert got == ref and len(got) > 5
    path = _focus_file(store)
    doc = json.loads(path.read_text())
    doc["chunks"].append(dict(doc["chunks"][0], parts=["gone-part"]))  # the same rows again, of a part gone
    path.write_text(json.dumps(doc))
    assert _focus(Store(store.root), {a, b}) == (got, ref)
    chunk = path.parent / json.loads(path.read_text())["chunks"][0]["name"]
    chunk.write_bytes(chunk.read_bytes()[:100])  # torn
    assert _focus(Store(store.root), {a, b}) == (got, ref)
    chunk = path.parent / json.loads(path.read_text())["chunks"][0]["name"]
    chunk.unlink()
    assert _focus(Store(store.root), {a, b}) == (got, ref)


def test_focus_rows_of_an_in_memory_store(tmp_path):
    store = _store(tmp_path, persist=False)
    a, b = _common_terms(store, 2)
    got, ref = _focus(store, {a, b})
    assert got == ref and len(got) > 10
    assert not (store.run_dir("r") / "derived" / "termcells").exists()


def test_focus_keeps_at_most_focus_terms(tmp_path, monkeypatch):
    monkeypatch.setattr(termcells, "FOCUS_TERMS", 3)
    store = _store(tmp_path)
    terms = _common_terms(store, 5)
    _focus(Store(store.root), set(terms[:2]))
    got, ref = _focus(Store(store.root), set(terms[2:]))  # 2 + 3 > 3: only the wanted ones are kept
    assert got == ref
    assert sorted(_focus_meta(store)[0]) == sorted(terms[2:])


def test_focus_rows_are_reused_within_an_audit(tmp_path):
    """A second detector asking the same `TermCells` for the same (or fewer) terms gets the rows built by the
    first, without reading or writing the cache again."""
    store = _store(tmp_path)
    a, b = _common_terms(store, 2)
    cells = termcells.term_cells(store, "r", tokens.term_sets(store, "r"))
    con = _merged(cells)
    cells.focus(con, {a, b}, "f1")
    _focus_file(store).unlink()  # the manifest
    cells.focus(con, {b}, "f2")
    assert not _focus_file(store).exists()
    assert con.sql("SELECT * FROM f2 ORDER BY ALL").fetchall() == con.sql(
        f"SELECT * FROM f1 WHERE term_id = {b} ORDER BY ALL").fetchall()


def _segment_run(tmp_path, monkeypatch, fanout=2):
    """The test store cold with FANOUT `fanout` (its two parts make one segment), and a copy of it whose term
    sets are computed with no segment planned (every per-part file written, as before segments from memory)."""
    import shutil

    from rlaudit.derived import segments

    store = _store(tmp_path)
    shutil.copytree(store.root, tmp_path / "files")
    monkeypatch.setattr(segments, "FANOUT", 10 ** 6)
    ref = tokens.term_sets(Store(tmp_path / "files"), "r")
    monkeypatch.setattr(segments, "FANOUT", fanout)
    return store, ref


def test_a_cold_audit_writes_its_segments_from_memory_and_no_per_part_files(tmp_path, monkeypatch):
    """Term sets computed for every part (a cold audit): the kinds read through segments (per-step counts, cell
    tables) are written once, into segments from memory, not also as per-part files; the segments hold each
    part's rows as a range equal to the file that would have been written, and the views read them without
    merging anything."""
    from rlaudit.derived import segments

    store, ref = _segment_run(tmp_path, monkeypatch)
    sets = tokens.term_sets(store, "r")
    files = {name: {**p, **termcells.cached(Path(p["terms"]), name)} for name, p in sets.parts}
    want = {name: {**p, **termcells.cached(Path(p["terms"]), name)} for name, p in ref.parts}
    for kind in ("counts", *termcells.KINDS):
        paths = [Path(files[name][kind]) for name, _ in sets.parts]
        assert not any(p.is_file() for p in paths), kind  # written once: into the segment
        assert all(Path(f["terms"]).is_file() for f in files.values())
        seg = list((paths[0].parent / "segments" / kind).glob("L1-*.parquet"))
        assert len(seg) == 1, kind
        whole = pa.concat_tables([pq.read_table(want[name][kind]) for name, _ in sets.parts])
        assert pq.read_table(seg[0]).replace_schema_metadata(None).cast(whole.schema).equals(whole), kind
        for name, _ in sets.parts:  # each part's range
            assert segments.read_member(Path(files[name][kind]), kind).cast(whole.schema).equals(
                pq.read_table(want[name][kind])), kind
    merges = []
    monkeypatch.setattr(segments, "_write", lambda *a, **k: merges.append(a))
    _check(store)
    assert not merges
    _check(Store(store.root))  # another process: cached, from the segments
    assert not merges


def test_parts_held_by_a_segment_only_are_read_alone_and_cached(tmp_path, monkeypatch):
    """A part whose tables a segment holds (no files): a reader of that part alone (the window's cell terms,
    the focus scan of new parts) gets exactly its rows, and the part counts as cached (nothing recomputed)."""
    store, ref = _segment_run(tmp_path, monkeypatch)
    sets = tokens.term_sets(store, "r")
    cells = termcells.term_cells(store, "r", sets)
    ref_cells = termcells.term_cells(Store(tmp_path / "files"), "r", ref)
    for name, _ in sets.parts:
        for kind in (*termcells.KINDS, *termcells.LIST_KINDS):
            got, want = duckdb.connect(), duckdb.connect()
            cells.register(got, kind, "v", only={name})
            ref_cells.register(want, kind, "v", only={name})
            assert sorted(got.sql("SELECT * FROM v").fetchall()) == sorted(want.sql("SELECT * FROM v").fetchall())
    computed: list[str] = []
    real = tokens._compute_parts
    monkeypatch.setattr(tokens, "_compute_parts",
                        lambda paths, *a, **k: computed.extend(p.name for p in paths) or real(paths, *a, **k))
    _check(Store(store.root))
    assert computed == []


def test_a_replaced_part_of_a_segment_gives_the_tables_of_a_cold_run(tmp_path, monkeypatch):
    """A part replaced after a cold audit wrote its tables into a segment with another part's: every table
    equals a cold computation of the new run (the old part's rows are not read: a replaced part changes the
    vocabulary, so every part is computed again under a new id; `tests/core/test_segments.py` checks that a
    segment missing a member is not read whole in any case)."""
    import shutil

    store, _ = _segment_run(tmp_path, monkeypatch)
    _check(store)
    table = simulate_run("goblin_persona", steps=8, prompts=6, generations=4, seed=4, run_name="r").canonical()
    store.append("r", table.filter(pc.greater_equal(table["step"], 6)), key="b")  # replaces part b
    cold = tmp_path / "cold"
    shutil.copytree(store.root, cold)
    shutil.rmtree(Store(cold).run_dir("r") / "derived")
    computed: list[str] = []
    real = tokens._compute_parts
    monkeypatch.setattr(tokens, "_compute_parts",
                        lambda paths, *a, **k: computed.extend(p.name for p in paths) or real(paths, *a, **k))
    again = Store(store.root)
    _check(again)
    assert sorted(computed) == sorted(p.name for p in store.parts("r"))
    con = _merged(termcells.term_cells(again, "r", tokens.term_sets(again, "r")))
    ref = _merged(termcells.term_cells(Store(cold), "r", tokens.term_sets(Store(cold), "r")))
    for kind in (*termcells.KINDS, *termcells.LIST_KINDS):
        cols = "* EXCLUDE (part)" if kind == "cells" else "*"
        assert sorted(con.sql(f"SELECT {cols} FROM {kind}").fetchall()) == sorted(
            ref.sql(f"SELECT {cols} FROM {kind}").fetchall()), kind


def test_term_lists_round_trip_and_count_as_the_term_sets_do(tmp_path):
    """`TermLists` written and read back are the same arrays (ids beyond 16 bits kept in a wider type), and
    `part_cellterms` counts a reasoning term only in rollouts with reasoning, a term once per rollout, per cell;
    cut to some ids, the same counts of those ids."""
    cell = np.array([7, 7, 9, 9, 9], np.uint64)
    has_reasoning = np.array([True, False, True, True, False])
    answer = (np.array([0, 2, 3, 3, 5, 6]), np.array([1, 70_000, 1, 1, 70_000, 2]))
    reasoning = (np.array([0, 1, 2, 3, 3, 4]), np.array([5, 5, 5, 5]))
    rid = np.array([11, 12, 13, 14, 2**64 - 1], np.uint64)
    lists = termcells.TermLists.of(cell, has_reasoning, [answer, reasoning], rid)
    back = termcells.TermLists.load(lists.save(tmp_path / "p.termlists.npy"))
    for a, b in zip((lists.cell, lists.has_reasoning, lists.rid, *lists.lists[0], *lists.lists[1]),
                    (back.cell, back.has_reasoning, back.rid, *back.lists[0], *back.lists[1])):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    assert back.lists[0][1].dtype == np.int32 and back.lists[1][1].dtype == np.uint16
    # one place only: rid and that place's lists read, the other arrays skipped (empty, of their types)
    for i, place in enumerate(("answer", "reasoning")):
        one = termcells.TermLists.load(tmp_path / "p.termlists.npy", only=place)
        assert np.array_equal(one.rid, back.rid) and all(np.array_equal(a, b) and a.dtype == b.dtype
                                                         for a, b in zip(one.lists[i], back.lists[i]))
        other = one.lists[1 - i]
        assert len(one.cell) == len(one.has_reasoning) == len(other[0]) == len(other[1]) == 0
        assert other[1].dtype == back.lists[1 - i][1].dtype
    # the rollouts only: cells and both places' lists, not `rid` (nor the prompts')
    rollouts = termcells.TermLists.load(tmp_path / "p.termlists.npy", only="rollouts")
    assert np.array_equal(rollouts.cell, back.cell) and np.array_equal(rollouts.has_reasoning, back.has_reasoning)
    assert all(np.array_equal(a, b) for p, q in zip(rollouts.lists, back.lists) for a, b in zip(p, q))
    assert len(rollouts.rid) == 0
    rows = sorted((r["cell"], r["term_id"], r["x"]) for r in termcells.part_cellterms(back).to_pylist())
    # cell 7: rows 0 (reasoning) and 1 (none): answer 1, 70000, 1 -> 1 x2, 70000 x1; reasoning 5 counted in row 0
    # only. Cell 9: rows 2, 3 (reasoning), 4: answer 1 (row 3), 70000 and 2 (row 4); reasoning 5 in row 2 (row 4's
    # has no reasoning)
    assert rows == [(7, 1, 2), (7, 5, 1), (7, 70_000, 1), (9, 1, 1), (9, 2, 1), (9, 5, 1), (9, 70_000, 1)]
    some = sorted((r["cell"], r["term_id"], r["x"])
                  for r in termcells.part_cellterms(back, np.array([5, 70_000])).to_pylist())
    assert some == [r for r in rows if r[1] in (5, 70_000)]


def test_prompt_lists_round_trip_and_give_the_prompts_of_the_terms_asked(tmp_path):
    """The prompts' lists (keys, offsets, ids) written and read back alone (`only="prompt"`: nothing else read)
    are the same arrays; `part_prompt_terms` gives every (prompt, term) pair, or those of the ids asked (an id
    no prompt holds, or beyond every id, gives nothing)."""
    keys = np.array([2**64 - 5, 3, 8], np.uint64)
    off, ids = np.array([0, 2, 2, 5]), np.array([4, 70_000, 1, 4, 9])  # prompt 3 holds no term
    lists = termcells.TermLists.of(np.array([1], np.uint64), np.array([True]), [(np.array([0, 0]), np.zeros(0))] * 2,
                                   np.array([1], np.uint64), (keys, off, ids))
    back = termcells.TermLists.load(lists.save(tmp_path / "p.termlists.npy"), only="prompt")
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(lists.prompts, back.prompts))
    assert len(back.rid) == len(back.cell) == len(back.lists[0][1]) == 0
    rows = [(r["prompt_key"], r["term_id"]) for r in termcells.part_prompt_terms(back).to_pylist()]
    assert rows == [(2**64 - 5, 4), (2**64 - 5, 70_000), (8, 1), (8, 4), (8, 9)]
    some = termcells.part_prompt_terms(tmp_path / "p.termlists.npy", np.array([4, 5, 80_000]))
    assert sorted((r["prompt_key"], r["term_id"]) for r in some.to_pylist()) == [(8, 4), (2**64 - 5, 4)]
    assert termcells.part_prompt_terms(back, np.array([], np.int64)).num_rows == 0
    # the ids held by some prompt, kept apart: a part whose prompts hold none of the terms asked is not read further
    assert back.held.tolist() == [1, 4, 9, 70_000]
    skipped = termcells.TermLists.load(tmp_path / "p.termlists.npy", only="prompt", terms=np.array([2, 5, 80_000]))
    assert len(skipped.prompts[0]) == len(skipped.prompts[2]) == 0 and skipped.held.tolist() == [1, 4, 9, 70_000]
    assert termcells.part_prompt_terms(tmp_path / "p.termlists.npy", np.array([2, 5, 80_000])).num_rows == 0


def test_a_damaged_term_lists_file_is_an_error_naming_it(tmp_path):
    """A term-lists file cut short after it was written: an error that names the file and says what to do, and
    removing it as told gets the part computed again (the same rows)."""
    import pytest

    from rlaudit.errors import RlauditError

    store = _store(tmp_path)
    tokens.term_sets(store, "r")
    f = next((store.run_dir("r") / "derived" / "termcells").rglob(f"*.{termcells.LISTS}.npy"))
    whole = termcells.part_cellterms(f)
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(RlauditError, match=f"{f.name}: cached term lists unreadable.*delete the file"):
        termcells.part_cellterms(f)
    f.unlink()
    tokens.term_sets(Store(store.root), "r")
    assert termcells.part_cellterms(f).equals(whole)


def test_a_part_without_its_term_lists_is_computed_again(tmp_path, monkeypatch):
    """A part whose flat term lists are gone (the cell tables there) does not count as cached: computed again."""
    store = _store(tmp_path)
    tokens.term_sets(store, "r")
    gone = next((store.run_dir("r") / "derived" / "termcells").rglob(f"*.{termcells.LISTS}.npy"))
    gone.unlink()
    computed: list[str] = []
    real = tokens._compute_parts
    monkeypatch.setattr(tokens, "_compute_parts",
                        lambda paths, *a, **k: computed.extend(p.name for p in paths) or real(paths, *a, **k))
    _check(Store(store.root))
    assert [name.split(".")[0] for name in computed] == [gone.name.split(".")[0]]


def test_ranges_are_each_range_one_after_another(monkeypatch):
    """`_ranges` of ranges end to end (a view), with gaps, out of order and empty, on both paths (the numpy one
    forced: numba may be imported by other tests already), equals the ranges' values concatenated."""
    from rlaudit import kernels as compiled_kernels

    values = np.arange(100, 160, dtype=np.int64)
    cases = [([0, 5, 12], [5, 12, 20]), ([3, 10, 10], [8, 10, 14]), ([20, 0], [25, 4]), ([], []), ([7], [7])]
    for compiled in (False, True):
        if compiled:
            monkeypatch.undo()
            compiled_kernels.preload()
        else:
            monkeypatch.setattr(termcells.kernels, "gather_spans", lambda *a: None)
        for lo, hi in cases:
            lo, hi = np.array(lo, np.int64), np.array(hi, np.int64)
            want = np.concatenate([values[a:b] for a, b in zip(lo, hi)]) if len(lo) else values[:0]
            got = termcells._ranges(values, lo, hi)
            assert got.dtype == values.dtype and got.tolist() == want.tolist()
