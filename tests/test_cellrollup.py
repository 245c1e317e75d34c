"""The per-run rollups of the cell tables (`rlaudit.derived.cellrollup`) equal the whole-run SQL over every
part's cell tables they replace: when built, read back, grown by new parts, after a part left, with a torn or
missing chunk, and for a store that keeps derived data in memory."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from test_termcells import _common_terms, _store

from rlaudit.derived import cellrollup, termcells, tokens
from rlaudit.organisms import run as simulate_run
from rlaudit.store import Store

KEY = "step, split, task, condition"


def _cells(store: Store) -> tuple[termcells.TermCells, duckdb.DuckDBPyConnection]:
    return termcells.term_cells(store, "r", tokens.term_sets(store, "r")), duckdb.connect()


def _strata(store: Store) -> tuple[list, list]:
    cells, con = _cells(store)
    con.register("got", cellrollup.strata(cells, con))
    for kind in (*termcells.KINDS, *termcells.LIST_KINDS):  # made from the flat lists
        cells.register(con, kind, kind)
    cols = "sum(n), sum(n_r), sum(answer__length), sum(reasoning__length__q), count(DISTINCT part)"
    got = con.sql(f"SELECT {KEY}, {cols} FROM got GROUP BY ALL ORDER BY ALL").fetchall()
    ref = con.sql(f"SELECT {KEY}, {cols} FROM cells GROUP BY ALL ORDER BY ALL").fetchall()
    return got, ref


def _focus(store: Store, terms: set[int]) -> tuple[list, list]:
    """(rollup, whole-run SQL): per term and key, the rollouts of cells whose prompt holds the term, and those
    of the other cells containing it (a cell held by two parts summed first, as `emerging.Scope` summed it)."""
    cells, con = _cells(store)
    con.register("got", cellrollup.focus(cells, con, terms))
    for kind in (*termcells.KINDS, *termcells.LIST_KINDS):  # made from the flat lists
        cells.register(con, kind, kind)
    con.register("want", pa.table({"term_id": pa.array(sorted(terms), pa.int32())}))
    got = con.sql(f"""SELECT term_id, {KEY}, sum(n_held), sum(n_r_held), sum(x) FROM got
                      SEMI JOIN want USING (term_id) GROUP BY ALL HAVING sum(n_held) > 0 OR sum(x) > 0
                      ORDER BY ALL""").fetchall()
    ref = con.sql(f"""
        WITH c AS (SELECT cell, {KEY}, prompt_key, sum(n) AS n, sum(n_r) AS n_r FROM cells GROUP BY ALL),
             f AS (SELECT cell, term_id, sum(x) AS x FROM cellterms SEMI JOIN want USING (term_id) GROUP BY ALL),
             p AS (SELECT DISTINCT prompt_key, term_id FROM promptterms SEMI JOIN want USING (term_id))
        SELECT w.term_id, {KEY}, sum(c.n) FILTER (WHERE held), sum(c.n_r) FILTER (WHERE held),
               sum(coalesce(f.x, 0)) FILTER (WHERE NOT held)
        FROM (SELECT c.*, w.term_id, EXISTS (SELECT 1 FROM p WHERE p.prompt_key = c.prompt_key
                                             AND p.term_id = w.term_id) AS held FROM c CROSS JOIN want w) c
        JOIN want w USING (term_id) LEFT JOIN f ON f.cell = c.cell AND f.term_id = w.term_id
        GROUP BY ALL HAVING sum(c.n) FILTER (WHERE held) > 0 OR sum(coalesce(f.x, 0)) FILTER (WHERE NOT held) > 0
        ORDER BY ALL""").fetchall()
    return [tuple(v or 0 for v in r) for r in got], [tuple(v or 0 for v in r) for r in ref]


def _prompts(store: Store, terms: set[int]) -> tuple[list, list]:
    """(cached, whole-run SQL): the distinct (term, prompt) pairs of the prompts holding the terms."""
    cells, con = _cells(store)
    con.register("got", cellrollup.prompts(cells, con, terms))
    cells.register(con, "promptterms", "promptterms")
    con.register("want", pa.table({"term_id": pa.array(sorted(terms), pa.int32())}))
    got = con.sql("SELECT DISTINCT term_id, prompt_key FROM got SEMI JOIN want USING (term_id) ORDER BY ALL").fetchall()
    ref = con.sql("SELECT DISTINCT term_id, prompt_key FROM promptterms SEMI JOIN want USING (term_id) ORDER BY ALL"
                  ).fetchall()
    return got, ref


def _manifest(store: Store, name: str):
    d = next((store.run_dir("r") / "derived" / "termcells").iterdir()) / "rollup" / name
    return d / "manifest.json"


def _add_step(store: Store, key: str, step: int, start: int) -> None:
    table = simulate_run("goblin_persona", steps=10, prompts=6, generations=4, seed=5, run_name="r").canonical()
    store.append("r", table.filter(pc.equal(table["step"], step)).slice(start, 4), key=key)


def test_rollups_equal_the_whole_run_sql_and_grow_by_new_parts(tmp_path):
    store = _store(tmp_path)  # two parts sharing step 4
    a, b, c = _common_terms(store, 3)
    got, ref = _strata(Store(store.root))
    assert got == ref and len(got) > 8
    got, ref = _focus(Store(store.root), {a, b})
    assert got == ref and len(got) > 8 and any(r[-1] for r in got) and any(r[-3] for r in got)
    path = _manifest(store, "focus")
    mtime = path.stat().st_mtime_ns
    assert _focus(Store(store.root), {a}) == _focus(Store(store.root), {a})  # a subset: read, not rebuilt
    assert path.stat().st_mtime_ns == mtime
    got, ref = _prompts(Store(store.root), {a, b})
    assert got == ref and len(got) > 2
    _add_step(store, "c", 9, 0)
    checks = (("strata", lambda: _strata(Store(store.root))), ("focus", lambda: _focus(Store(store.root), {a, b})),
              ("prompts", lambda: _prompts(Store(store.root), {a, b})))
    for name, check in checks:
        got, ref = check()
        assert got == ref
        chunked = [ch["parts"] for ch in json.loads(_manifest(store, name).read_text())["chunks"]]
        assert [len(p) for p in chunked] == [2, 1]  # the new part: a chunk of its own
    assert _focus(Store(store.root), {c})[0] == _focus(Store(store.root), {c})[1]  # a term added: every part,
    assert _prompts(Store(store.root), {c})[0] == _prompts(Store(store.root), {c})[1]  # one chunk, earlier kept
    for name in ("focus", "prompts"):
        doc = json.loads(_manifest(store, name).read_text())
        assert sorted(doc["info"]["terms"]) == sorted({a, b, c}) and len(doc["chunks"]) == 1
    assert _focus(Store(store.root), {a, b, c}) == _focus(Store(store.root), {a, b, c})


def test_rollups_are_recomputed_when_a_part_leaves_or_a_chunk_is_torn_or_missing(tmp_path):
    store = _store(tmp_path)
    a, b = _common_terms(store, 2)
    def every() -> tuple:
        return _strata(Store(store.root)), _focus(Store(store.root), {a, b}), _prompts(Store(store.root), {a, b})

    first = every()
    assert all(got == ref and got for got, ref in first)
    for name in ("strata", "focus", "prompts"):
        path = _manifest(store, name)
        doc = json.loads(path.read_text())
        doc["chunks"].append(dict(doc["chunks"][0], parts=["gone-part"]))  # the same rows again, of a part gone
        path.write_text(json.dumps(doc))
        assert every() == first
        chunk = path.parent / json.loads(path.read_text())["chunks"][0]["name"]
        chunk.write_bytes(chunk.read_bytes()[:100])  # torn
        assert every() == first
        chunk = path.parent / json.loads(path.read_text())["chunks"][0]["name"]
        chunk.unlink()
        assert every() == first


def test_rollups_of_an_in_memory_store(tmp_path):
    store = _store(tmp_path, persist=False)
    a, b = _common_terms(store, 2)
    got, ref = _strata(store)
    assert got == ref and len(got) > 8
    got, ref = _focus(store, {a, b})
    assert got == ref and len(got) > 8
    got, ref = _prompts(store, {a, b})
    assert got == ref and len(got) > 2


def test_scope_sums_from_the_rollups_equal_those_of_every_cell(tmp_path):
    """`emerging.Scope`'s per-stratum sums (`strata_values`, from the rollups) equal the same sums over every
    cell in scope (`cell_values`: the views over every part's cells), for n-grams and style features, with two
    parts sharing a step; so do the conditions by traffic and the rollouts."""
    from rlaudit.detectors import AuditConfig, DetectContext
    from rlaudit.detectors.emerging import Params, Scope

    store = _store(tmp_path)
    terms = _common_terms(store, 4)
    scope = Scope(DetectContext(store=store, run="r", config=AuditConfig(detectors=["emerging"])), Params())
    assert scope.shared
    asked = [(w, "ngram", t) for t in terms for w in ("answer", "reasoning")]
    asked += [(w, "style", f) for w in ("answer", "reasoning") for f in ("length", "list")]
    sums = "SELECT condition, task, si, win, s, sum(n), sum(x) FROM ({}) GROUP BY ALL ORDER BY ALL"
    for where, ftype, key in asked:
        got = scope.con.execute(sums.format(scope.strata_values(where, ftype, key))).fetchall()
        ref = scope.con.execute(sums.format(scope.cell_values(where, ftype, key))).fetchall()
        assert got == ref and got, (where, ftype, key)
    assert scope.conditions == [r[0] for r in scope.con.execute(
        "SELECT condition FROM tcells GROUP BY 1 ORDER BY sum(n) DESC, 1").fetchall()]
    for where in ("answer", "reasoning"):
        n = scope.n_col(where)
        assert scope.rollouts(where) == scope.con.execute(f"SELECT sum({n}) FROM tcells").fetchall()[0][0] > 0
    scope.close()
