"""Summary and report curves from per-part counts (`runstats`): equal to a direct scan of the rollouts, also
after a part is appended, and computed only for the new part; a store that cannot be written still works."""

from __future__ import annotations

import math
import numpy as np
import pytest

from rlaudit.report.data import TOTAL, condition_counts, reward_curves
from rlaudit.store import Store


def _direct_curves(store, run, max_points=500):
    """The curves as the report computed them before the cache: one query over every rollout."""
    sql = """
    WITH scoped AS (SELECT * FROM rollouts r WHERE r.split = 'train'
                    OR NOT EXISTS (SELECT 1 FROM rollouts t WHERE t.split = 'train')),
    bounds AS (SELECT min(step) AS lo, greatest(1, ceil((max(step) - min(step) + 1) / ?))::BIGINT AS width FROM scoped),
    long AS (SELECT step, unnest(map_keys(rewards)) AS signal, unnest(map_values(rewards)) AS value FROM scoped
             UNION ALL SELECT step, ? AS signal, reward AS value FROM scoped)
    SELECT l.signal, (l.step - b.lo) // b.width AS bucket, avg(l.step) AS x,
           avg(l.value) FILTER (WHERE l.value IS NOT NULL AND NOT isnan(l.value)) AS y
    FROM long l, bounds b GROUP BY ALL ORDER BY 1, 2"""
    out = {}
    for signal, _b, x, y in [tuple(r.values()) for r in store.query(sql, [max_points, TOTAL], runs=[run]).to_pylist()]:
        xs, ys = out.setdefault(signal, ([], []))
        xs.append(float(x))
        ys.append(None if y is None or not math.isfinite(y) else float(y))
    return {s: c for s, c in out.items() if any(v is not None for v in c[1])}


def _close(a, b):
    assert sorted(a) == sorted(b)
    for s in a:
        assert a[s][0] == pytest.approx(b[s][0], rel=1e-12)
        assert [v is None for v in a[s][1]] == [v is None for v in b[s][1]]
        assert [v for v in a[s][1] if v is not None] == pytest.approx([v for v in b[s][1] if v is not None], rel=1e-9)


@pytest.mark.parametrize("max_points", [500, 7])
def test_summary_and_curves_equal_a_direct_scan_after_an_append(store, max_points):
    from rlaudit.organisms import run

    table = run("broken_reward", steps=30, prompts=8).canonical()
    steps = np.array(table.column("step").to_pylist())
    store.append("r", table.filter(steps <= 20), key="a")
    first = store.summary("r")
    assert first.steps == (1, 20)
    _close(reward_curves(store, ["r"], max_points)["r"], _direct_curves(store, "r", max_points))
    cache = store.run_dir("r") / "derived" / "partstats" / "run_stats"
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("v*/*.parquet")}
    store.append("r", table.filter(steps > 20), key="b")
    s = store.summary("r")
    assert (s.rows, s.steps) == (table.num_rows, (1, 30))
    assert s.conditions == store.query("SELECT DISTINCT condition FROM rollouts ORDER BY 1", runs=["r"]).column(0).to_pylist()
    assert s.signals == store.query("SELECT DISTINCT unnest(map_keys(rewards)) FROM rollouts ORDER BY 1",
                                    runs=["r"]).column(0).to_pylist()
    assert s.graders == store.query("SELECT DISTINCT unnest(map_keys(grader_inputs)) FROM rollouts ORDER BY 1",
                                    runs=["r"]).column(0).to_pylist()
    _close(reward_curves(store, ["r"], max_points)["r"], _direct_curves(store, "r", max_points))
    assert condition_counts(store, ["r"])["r"] == {r["c"]: r["n"] for r in store.query(
        "SELECT coalesce(condition, '(none)') AS c, count(*) AS n FROM rollouts GROUP BY c", runs=["r"]).to_pylist()}
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("v*/*.parquet")}
    assert len(after) == 2 and all(after[k] == v for k, v in before.items())


def test_a_store_that_keeps_derived_data_in_memory(store):
    from rlaudit.organisms import run

    store.append("r", run("goblin_persona", steps=12, prompts=4).canonical(), key="a")
    store.persist_derived = False
    s = store.summary("r")
    assert s.rows == store.query("SELECT count(*) FROM rollouts", runs=["r"]).column(0)[0].as_py()
    assert not (store.run_dir("r") / "derived" / "partstats").exists()


def test_an_empty_run_summarises_as_empty(store):
    from rlaudit.schema import ROLLOUT_SCHEMA

    store.append("e", ROLLOUT_SCHEMA.empty_table(), key="a")
    s = store.summary("e")
    assert s.rows == 0 and s.steps is None and s.conditions == [] and s.signals == []


def test_a_report_opens_one_run_stats_connection_per_run(store, monkeypatch):
    """The report's queries of the run statistics (curves, condition counts) share a connection per run
    (`RunStats`), with the same results as each query on a connection of its own; leaving it closes them."""
    import duckdb

    from rlaudit.audit import AuditResult
    from rlaudit.derived import runstats
    from rlaudit.organisms import run
    from rlaudit.report import build_report_html
    from rlaudit.report.data import RunStats

    for name, organism in (("a", "broken_reward"), ("b", "goblin_persona")):
        store.append(name, run(organism, steps=10, prompts=4).canonical(), key=name)
    alone = {r: (reward_curves(store, [r], 50)[r], condition_counts(store, [r])[r]) for r in ("a", "b")}
    opened = []
    real = runstats.connect_run_stats
    monkeypatch.setattr(runstats, "connect_run_stats", lambda *a, **k: opened.append(a[1]) or real(*a, **k))
    with RunStats(store) as stats:
        curves = reward_curves(store, ["a", "b"], 50, stats)
        counts = condition_counts(store, ["a", "b"], stats)
        held = list(stats._open.values())
    assert sorted(opened) == ["a", "b"]
    for r in ("a", "b"):
        _close(curves[r], alone[r][0])
        assert counts[r] == alone[r][1]
    with pytest.raises(duckdb.ConnectionException):  # closed on leaving
        held[0].execute("SELECT 1")
    result = AuditResult(runs=[store.summary("a"), store.summary("b")], findings=[])
    opened.clear()
    html = build_report_html(store, result)
    assert sorted(opened) == ["a", "b"] and "run-1-rewards" in html
