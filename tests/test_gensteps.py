"""The generalization detector's per-run caches: per-part sums of the reported terms' rollouts at risk
(`rlaudit.derived.gensteps`) and the recurring prompts (`rlaudit.derived.repeats`) equal the whole run's SQL over
every part's cell tables, as built, read back, grown by a new part, and rebuilt when a part left or a chunk tore."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rlaudit.derived import gensteps, repeats, termcells, tokens
from rlaudit.organisms import run as simulate_run
from rlaudit.store import Store


def _table() -> pa.Table:
    return simulate_run("goblin_persona", steps=10, prompts=6, generations=4, seed=3, run_name="r").canonical()


def _store(tmp_path, persist: bool = True, shared: bool = True) -> Store:
    """Two parts; with `shared`, both hold rollouts of step 4 (their cells' rows must add up)."""
    table = _table()
    store = Store(tmp_path / ("s" if persist else "m"))
    store.persist_derived = persist
    step = np.asarray(table["step"].to_numpy())
    first = (step < 4) | ((step == 4) & (np.arange(len(step)) % 2 == 0)) if shared else step <= 4
    store.append("r", table.filter(pa.array(first & (step < 8))), key="a")
    store.append("r", table.filter(pa.array(~first & (step < 8))), key="b")
    return store


def _cells(store: Store) -> tuple[termcells.TermCells, duckdb.DuckDBPyConnection]:
    cells = termcells.term_cells(store, "r", tokens.term_sets(store, "r"))
    con = duckdb.connect()
    for kind in (*termcells.KINDS, *termcells.LIST_KINDS):  # made from the flat lists
        cells.register(con, kind, kind)
    return cells, con


def _terms(store: Store, k: int) -> list[int]:
    """Terms held by some prompts (so that some cells are not at risk) and by many rollouts."""
    _, con = _cells(store)
    return [r[0] for r in con.sql(f"""SELECT term_id FROM cellterms SEMI JOIN promptterms USING (term_id)
                                      GROUP BY 1 ORDER BY sum(x) DESC, 1 LIMIT {k}""").fetchall()]


def _sums(store: Store, terms: list[int]) -> tuple[list[tuple], list[tuple]]:
    """(per-key sums of `gensteps.step_sums`, the same from the whole run's cell tables), sorted."""
    cells, con = _cells(store)
    con.register("got", gensteps.step_sums(cells, con, terms))
    ids = ", ".join(map(str, terms))
    got = con.sql(f"""SELECT term_id, step, split, condition, task_key, sum(n), sum(n_r), sum(x) FROM got
                      WHERE term_id IN ({ids}) GROUP BY ALL HAVING sum(n) > 0 ORDER BY ALL""").fetchall()
    ref = con.sql(f"""
        WITH c AS (SELECT cell, any_value(step) AS step, any_value(split) AS split, any_value(condition) AS condition,
                          coalesce(any_value(task), '') AS task_key, any_value(prompt_key) AS prompt_key,
                          sum(n) AS n, sum(n_r) AS n_r FROM cells WHERE condition IS NOT NULL GROUP BY cell),
             t AS (SELECT unnest([{ids}]) AS term_id),
             x AS (SELECT cell, term_id, sum(x) AS x FROM cellterms GROUP BY ALL)
        SELECT t.term_id, step, split, condition, task_key, sum(n), sum(n_r), sum(coalesce(x.x, 0))
        FROM c CROSS JOIN t LEFT JOIN x ON x.cell = c.cell AND x.term_id = t.term_id
        WHERE c.prompt_key NOT IN (SELECT prompt_key FROM promptterms p WHERE p.term_id = t.term_id)
        GROUP BY ALL HAVING sum(n) > 0 ORDER BY ALL""").fetchall()
    return got, ref


def _clusters(store: Store, terms: list[int]) -> tuple[list[tuple], list[tuple]]:
    """The cluster columns per key, against the cells' own sums (a store whose parts share no step)."""
    cells, con = _cells(store)
    con.register("got", gensteps.step_sums(cells, con, terms))
    ids = ", ".join(map(str, terms))
    got = con.sql(f"""SELECT term_id, step, split, condition, sum(xx), sum(xn), sum(xn_r), sum(nn), sum(nn_r),
                             sum(g), sum(g_r) FROM got WHERE term_id IN ({ids}) GROUP BY ALL ORDER BY ALL""").fetchall()
    ref = con.sql(f"""
        WITH t AS (SELECT unnest([{ids}]) AS term_id),
             c AS (SELECT c.*, t.term_id, coalesce(x.x, 0) AS xv FROM cells c CROSS JOIN t
                   LEFT JOIN cellterms x ON x.cell = c.cell AND x.term_id = t.term_id
                   WHERE c.condition IS NOT NULL
                     AND c.prompt_key NOT IN (SELECT prompt_key FROM promptterms p WHERE p.term_id = t.term_id))
        SELECT term_id, step, split, condition, sum(xv * xv), sum(xv * n), sum(xv * n_r), sum(n * n),
               sum(n_r * n_r), count(*) FILTER (WHERE n > 0), count(*) FILTER (WHERE n_r > 0)
        FROM c GROUP BY ALL ORDER BY ALL""").fetchall()
    return got, ref


def _recurring(store: Store) -> tuple[list[int], list[int]]:
    cells, con = _cells(store)
    got = repeats.recurring(cells, con).tolist()
    ref = [r[0] for r in con.sql("SELECT prompt_key FROM cells GROUP BY 1 HAVING count(*) > 1 ORDER BY 1").fetchall()]
    return got, ref


def _dir(store: Store, name: str) -> Path:
    return next((store.run_dir("r") / "derived" / "termcells").iterdir()) / name


def _chunk_parts(store: Store, name: str) -> list[list[str]]:
    return [c["parts"] for c in json.loads((_dir(store, name) / "manifest.json").read_text())["chunks"]]


def _add(store: Store, step: int, lo: int, key: str) -> None:
    table = _table()
    store.append("r", table.filter(pc.equal(table["step"], step)).slice(lo, 4), key=key)


def test_step_sums_are_cached_per_run_and_grow_with_new_parts_and_terms(tmp_path):
    store = _store(tmp_path)
    a, b, c = _terms(store, 3)
    got, ref = _sums(Store(store.root), [a, b])
    assert got == ref and len(got) > 10
    manifest = _dir(store, "gen_steps") / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    assert _sums(Store(store.root), [a]) == _sums(Store(store.root), [a])  # a subset: read, not rebuilt
    assert manifest.stat().st_mtime_ns == mtime
    _add(store, 9, 0, "c")  # a new part: a chunk of its own
    got, ref = _sums(Store(store.root), [a, b])
    assert got == ref and [len(p) for p in _chunk_parts(store, "gen_steps")] == [2, 1]
    _add(store, 4, 0, "d")  # a third part sharing step 4
    got, ref = _sums(Store(store.root), [a, b])
    assert got == ref and [len(p) for p in _chunk_parts(store, "gen_steps")] == [4]
    got, ref = _sums(Store(store.root), [c])  # a term added: every part, one chunk
    assert got == ref
    doc = json.loads(manifest.read_text())
    assert sorted(doc["info"]["terms"]) == sorted({a, b, c}) and len(doc["chunks"]) == 1


def test_cluster_columns_are_the_cells_own_sums(tmp_path):
    store = _store(tmp_path, shared=False)
    terms = _terms(store, 2)
    got, ref = _clusters(store, terms)
    assert got == ref and any(r[4] > 0 for r in got)
    _add(store, 9, 0, "c")
    assert _clusters(Store(store.root), terms) == _clusters(Store(store.root), terms)
    got, ref = _clusters(Store(store.root), terms)
    assert got == ref


def test_step_sums_are_rebuilt_when_a_part_leaves_or_a_chunk_is_torn(tmp_path):
    store = _store(tmp_path)
    terms = _terms(store, 2)
    got, ref = _sums(Store(store.root), terms)
    assert got == ref
    manifest = _dir(store, "gen_steps") / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["chunks"].append(dict(doc["chunks"][0], parts=["gone-part"]))  # the same rows again, of a part gone
    manifest.write_text(json.dumps(doc))
    assert _sums(Store(store.root), terms) == (got, ref)
    chunk = manifest.parent / json.loads(manifest.read_text())["chunks"][0]["name"]
    chunk.write_bytes(chunk.read_bytes()[:100])  # torn
    assert _sums(Store(store.root), terms) == (got, ref)
    chunk = manifest.parent / json.loads(manifest.read_text())["chunks"][0]["name"]
    chunk.unlink()
    assert _sums(Store(store.root), terms) == (got, ref)


def test_step_sums_of_an_in_memory_store(tmp_path):
    store = _store(tmp_path, persist=False)
    got, ref = _sums(store, _terms(store, 2))
    assert got == ref and len(got) > 10
    assert not list((store.run_dir("r") / "derived").rglob("gen_steps"))


def test_recurring_prompts_are_cached_per_run_and_grow_with_new_parts(tmp_path):
    store = _store(tmp_path)
    got, ref = _recurring(Store(store.root))
    assert got == ref and len(ref) > 0  # six prompts over eight steps, and step 4 in both parts
    _add(store, 9, 0, "c")  # its prompts recur from the earlier steps
    got, ref = _recurring(Store(store.root))
    assert got == ref and [len(p) for p in _chunk_parts(store, "prompt_repeats")] == [2, 1]
    _add(store, 9, 4, "d")
    assert _recurring(Store(store.root)) == _recurring(Store(store.root))
    got, ref = _recurring(Store(store.root))
    assert got == ref and [len(p) for p in _chunk_parts(store, "prompt_repeats")] == [4]


def test_recurring_prompts_found_across_chunks_only(tmp_path):
    """A prompt seen once in the cached part and again in a new part (of the same step) recurs."""
    table = _table()
    store = Store(tmp_path / "s")
    step = table.filter(pc.equal(table["step"], 1))
    half = pa.array(np.arange(len(step)) % 2 == 0)
    store.append("r", step.filter(half), key="a")
    got, ref = _recurring(Store(store.root))
    assert got == ref
    store.append("r", step.filter(pc.invert(half)), key="b")  # the other rollouts of the same prompts
    again, ref = _recurring(Store(store.root))
    assert again == ref and len(ref) > len(got)


def test_recurring_prompts_rebuilt_when_a_part_leaves_or_a_chunk_is_torn(tmp_path):
    store = _store(tmp_path)
    got, ref = _recurring(Store(store.root))
    manifest = _dir(store, "prompt_repeats") / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["chunks"].append(dict(doc["chunks"][0], parts=["gone-part"]))
    manifest.write_text(json.dumps(doc))
    assert _recurring(Store(store.root)) == (got, ref)
    chunk = manifest.parent / json.loads(manifest.read_text())["chunks"][0]["name"]
    chunk.write_bytes(chunk.read_bytes()[:100])  # torn
    assert _recurring(Store(store.root)) == (got, ref)


def test_recurring_prompts_of_an_in_memory_store(tmp_path):
    store = _store(tmp_path, persist=False)
    got, ref = _recurring(store)
    assert got == ref and len(ref) > 0
