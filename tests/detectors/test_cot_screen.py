"""The statistical CoT-grading screen: identical answers, scores that track the reasoning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from cot_synth import make_run
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.audit import audit_store
from rlaudit.detectors import AuditConfig


def screen_findings(store, table):
    run = table.column("run")[0].as_py()
    store.append(run, table, "p")
    result = audit_store(store, [run], AuditConfig(detectors=["cot_grading"], options={"cot_grading": {}}))
    assert not result.of_kind("audit_error")
    return [f for f in result.of_kind("cot_grading") if f["method"] == "screen"]


def no_grader_inputs(table):
    import pyarrow as pa

    from rlaudit.schema import ROLLOUT_SCHEMA
    return table.set_column(table.schema.get_field_index("grader_inputs"), "grader_inputs",
                            pa.array([[]] * table.num_rows, ROLLOUT_SCHEMA.field("grader_inputs").type))


def run_with(score, seed=0, steps=12):
    table, _ = make_run(run=f"screen{seed}", steps=steps, groups=8, group_size=8, seed=seed, score=score,
                        restate=False)
    return no_grader_inputs(table)


def answer_only(reasoning, answer, rng):
    return float(len(answer) % 5)


def stochastic_answer_only(reasoning, answer, rng):
    return float(len(answer) % 5) + rng.normal(0, 1.0)


def likes_long_reasoning(reasoning, answer, rng):
    return float(len(answer) % 5) + len(reasoning) / 300 + rng.normal(0, 0.3)


def likes_a_word(reasoning, answer, rng):
    return float(len(answer) % 5) + (1.0 if " planet " in f" {reasoning.lower()} " else 0.0)


@pytest.mark.parametrize("score", [answer_only, stochastic_answer_only])
def test_graders_that_read_only_the_answer_are_not_flagged(store, score):
    for seed in range(2):
        assert screen_findings(store, run_with(score, seed=seed)) == []


@pytest.mark.parametrize("score,feature", [(likes_long_reasoning, "length"), (likes_a_word, "planet")])
def test_scores_tracking_reasoning_are_flagged_as_statistical(store, score, feature):
    (f,) = screen_findings(store, run_with(score, seed=1))
    assert f["method"] == "screen" and f["statistical"] is True
    assert f.severity in ("low", "medium")
    assert "statistical" in f.title.lower() and "Statistical evidence only" in f.explanation
    assert feature in f["feature"]
    assert f["q_value"] <= 0.05 and f["pairs"] >= 20 and f["share_different"] > 0.2
    assert f.evidence and f.evidence[0].data["pair_rollout_id"]


def test_signals_covered_by_the_scan_are_not_screened(store):
    table, _ = make_run(run="both", groups=8, group_size=8, seed=2, score=likes_long_reasoning, restate=False)
    store.append("both", table, "p")
    found = audit_store(store, ["both"], AuditConfig(detectors=["cot_grading"])).of_kind("cot_grading")
    assert all(f["method"] == "scan" for f in found)  # clean grader inputs: no finding at all
    assert found == []


def test_sampled_pairs_are_fetched_from_duckdb_as_the_whole_table_sampled(store, monkeypatch):
    """Beyond `screen_max_pairs` the pairs stay in DuckDB and only the sample comes to Python: the same pairs,
    in the same order, as sampling the whole pair table in Python (the previous implementation)."""
    import numpy as np

    from rlaudit.cot import screen as cot_screen

    seen = []
    original = cot_screen.test_signal
    monkeypatch.setattr(cot_screen, "test_signal", lambda pairs, *a: seen.append(pairs) or original(pairs, *a))
    table = run_with(likes_long_reasoning, seed=1)
    store.append(table.column("run")[0].as_py(), table, "p")
    con = store.connect()
    cot_screen.screen(con, "screen1", {"screen_max_pairs": 25}, seed=7)
    full = con.sql(f"SELECT * FROM ({cot_screen._PAIRS_SQL}) ORDER BY signal, _k",
                   params={"skip": []}).to_arrow_table()
    assert seen and all(s.num_rows <= 25 for s in seen)
    for sub in seen:
        signal = sub.column("signal")[0].as_py()
        mine = full.filter(pa.compute.equal(full.column("signal"), signal)).drop_columns(["_k"])
        pick = np.sort(np.random.default_rng(7).choice(mine.num_rows, 25, replace=False))
        assert sub.column("id_a").to_pylist() == mine.take(pick).column("id_a").to_pylist()


@pytest.mark.parametrize("where", ["TRUE", "step <= 7"])
def test_cached_answer_keys_give_the_same_pairs_and_findings(store, where):
    """The screen from per-part cached answer keys (`screen_keys`) equals the screen that hashes every answer,
    on a run with many identical-answer pairs, and again after the run grows by a part (only that part hashed)."""
    from rlaudit.cot import screen as cot_screen
    from rlaudit.cot.screen_keys import screen_keys

    table = run_with(likes_long_reasoning, seed=1, steps=12)
    run = table.column("run")[0].as_py()
    steps = table.column("step").to_numpy()
    store.append(run, table.filter(pa.array(steps <= 9)), "p1")
    for last in (False, True):
        if last:
            store.append(run, table.filter(pa.array(steps > 9)), "p2")
        con = store.connect([run])
        con.execute("ALTER VIEW rollouts RENAME TO all_rollouts")
        con.execute(f"CREATE VIEW rollouts AS SELECT * FROM all_rollouts WHERE {where}")
        keys = screen_keys(store, run, where)
        assert keys is not None
        pairs = {}
        for k in (None, keys):
            sql = cot_screen._PAIRS_SQL if k is None else \
                cot_screen._COARSE_CACHED.format(keys=k) + cot_screen._PAIRS_TAIL
            pairs[k] = con.sql(f"SELECT * FROM ({sql}) ORDER BY signal, _k", params={"skip": []}).fetchall()
        assert len(pairs[None]) > 20 and pairs[None] == pairs[keys]
        plain = cot_screen.screen(con, run, {}, seed=3)
        cached = cot_screen.screen(con, run, {}, seed=3, keys=keys)
        assert plain and [f.to_json() for f in plain] == [f.to_json() for f in cached]
        con.close()
    cache = store.run_dir(run) / "derived" / "cot_screen"
    assert len(list(cache.glob("*/*.parquet"))) == 2


def test_answer_hash_is_equal_for_answers_the_screen_calls_equal():
    from rlaudit.cot.screen_keys import answer_hash

    same = ["The answer is 42.", "the  answer is\n42.", " THE ANSWER\tIS 42. ", "the answer is 42."]
    other = ["The answer is 43.", "The answer is 42", "Die Antwort ist 42.", "", None, "ÄÖÜ 42", "äöü 42"]
    h = answer_hash(pa.array(same + other, pa.string()))
    assert len(set(h[:4].tolist())) == 1
    assert len(set(h[4:].tolist())) == len(other) - 2  # '' and None hash alike; 'ÄÖÜ' lowers to 'äöü'
    assert h[4 + other.index("")] == h[4 + other.index(None)] and h[-1] == h[-2]
    long = pa.array(["x" * 5000 + "a", "x" * 5000 + "b"])
    assert answer_hash(long)[0] != answer_hash(long)[1]


@pytest.mark.parametrize("where", ["TRUE", "step <= 7"])
def test_candidate_rows_give_the_same_pairs_and_findings(store, monkeypatch, where):
    """The screen from the per-part candidate rows (`screen_sets`: rows whose group and answer key repeat in
    their part) equals the screen from every key while the parts share no prompt group, through new indexes as
    parts are added; a group spread over two parts makes `candidate_keys` decline (every key is grouped)."""
    from rlaudit.cot import screen as cot_screen
    from rlaudit.cot import screen_sets
    from rlaudit.cot.screen_keys import cache_dir, screen_keys

    monkeypatch.setattr(screen_sets, "INDEX_AT", 2)
    table = run_with(likes_long_reasoning, seed=1, steps=12)
    run = table.column("run")[0].as_py()
    steps = table.column("step").to_numpy()
    for i, (lo, hi) in enumerate([(0, 3), (4, 6), (7, 9), (10, 12)]):
        store.append(run, table.filter(pa.array((steps >= lo) & (steps <= hi))), f"p{i}")
        con = store.connect([run])
        con.execute("ALTER VIEW rollouts RENAME TO all_rollouts")
        con.execute(f"CREATE VIEW rollouts AS SELECT * FROM all_rollouts WHERE {where}")
        keys = screen_keys(store, run, where)
        cand = screen_sets.candidate_keys(store, run, cache_dir(store, run), where)
        assert keys is not None and cand is not None
        plain = cot_screen.screen(con, run, {}, seed=3, keys=keys)
        assert [f.to_json() for f in plain] == [f.to_json() for f in cot_screen.screen(con, run, {}, seed=3,
                                                                                         keys=cand)]
        con.close()
    assert plain
    assert list((cache_dir(store, run) / "sets" / "index").glob("*.npy"))
    other = store.__class__(store.root.parent / "spread")
    rows = np.arange(table.num_rows)
    other.append(run, table.filter(pa.array(rows % 2 == 0)), "even")  # every group in both parts
    other.append(run, table.filter(pa.array(rows % 2 == 1)), "odd")
    assert screen_keys(other, run, where) is not None
    assert screen_sets.candidate_keys(other, run, cache_dir(other, run), where) is None


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([None, "g0", "g1", "g2"]), st.integers(0, 3)), max_size=30))
def test_candidate_rows_are_the_repeated_group_and_key_pairs(rows):
    """`screen_sets._repeated` (one sort of the keys, then only the rows whose key repeats) gives exactly the
    rows whose (group, key) occurs twice or more, as the grouped count it replaced did; a null group is a group
    of its own value, as in a group-by."""
    from collections import Counter

    from rlaudit.cot.screen_sets import _repeated

    groups = pa.array([g for g, _ in rows], pa.string())
    codes = pc.fill_null(pc.dictionary_encode(groups).indices, -1).to_numpy(zero_copy_only=False)
    keys = np.array([k for _, k in rows], np.uint64)
    count = Counter(rows)
    assert _repeated(codes, keys).tolist() == [i for i, r in enumerate(rows) if count[r] >= 2]


def test_parts_without_candidates_write_no_candidate_file(store):
    """A part whose groups have no repeated answer writes its group hashes only; the candidate keys are then
    an empty selection with the keys' columns (the screen finds no set), not a failure."""
    import duckdb

    from rlaudit.cot import screen_sets
    from rlaudit.cot.screen_keys import cache_dir, screen_keys

    table = run_with(answer_only, seed=2, steps=3)
    run = table.column("run")[0].as_py()
    answers = pa.array([f"answer {i}" for i in range(table.num_rows)])  # all distinct
    store.append(run, table.set_column(table.schema.get_field_index("answer"), "answer", answers), "p")
    assert screen_keys(store, run, "TRUE") is not None
    cand = screen_sets.candidate_keys(store, run, cache_dir(store, run), "TRUE")
    sets = cache_dir(store, run) / "sets"
    assert list(sets.glob("*.groups.npy")) and not list(sets.glob("*.parquet"))
    assert duckdb.sql(f"SELECT rollout_id, group_id, ck FROM {cand}").fetchall() == []


def test_a_run_whose_prompt_groups_span_parts_is_screened_from_every_key(store):
    """Where the parts share prompt groups (`candidate_keys` declines), the detector groups every answer key,
    which `screen_keys` then computes and caches per part: the same screen findings as the run in one part,
    where only the candidate rows are cached (the scan hands their columns over; no keys are written)."""
    from rlaudit.cot.screen_keys import cache_dir

    table = run_with(likes_long_reasoning, seed=1, steps=12)
    run = table.column("run")[0].as_py()
    whole = screen_findings(store, table)
    assert whole and not list(cache_dir(store, run).glob("*.parquet"))
    spread = store.__class__(store.root.parent / "spread")
    rows = np.arange(table.num_rows)
    spread.append(run, table.filter(pa.array(rows % 2 == 0)), "even")  # every group in both parts
    spread.append(run, table.filter(pa.array(rows % 2 == 1)), "odd")
    result = audit_store(spread, [run], AuditConfig(detectors=["cot_grading"], options={"cot_grading": {}}))
    assert [f.to_json() for f in result.of_kind("cot_grading") if f["method"] == "screen"] == \
        [f.to_json() for f in whole]
    assert len(list(cache_dir(spread, run).glob("*.parquet"))) == 2
