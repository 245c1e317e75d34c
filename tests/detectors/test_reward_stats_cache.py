"""reward_health's per-part statistics: cached, in-memory and appended-to runs give the same findings, the
merged counts equal a direct scan of the rollouts, and the quantile sketch stays within its error bound."""

from __future__ import annotations

import math
import shutil

import duckdb
import numpy as np
import pytest

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.detectors.reward_stats import ALPHA, register_reward_stats, quantiles
from rlaudit.derived.partstats import part_stats
from rlaudit.schema import canonical_table


def _rows(step0: int, steps: int, per_step: int, rng: np.random.Generator, run: str = "r") -> dict:
    n = steps * per_step
    step = np.repeat(np.arange(step0, step0 + steps), per_step)
    judge = rng.normal(0.5, 0.2, n)
    judge[rng.random(n) < 0.01] *= 300  # out of range
    judge[rng.random(n) < 0.01] = np.nan
    judge[rng.random(n) < 0.002] = np.inf
    acc = (rng.random(n) < 0.4).astype(float)
    cond = rng.choice(["a", "b", "c"], n)
    persona = np.where(cond == "c", rng.uniform(0, 1, n), np.nan)  # applies to one condition only
    split = np.where(rng.random(n) < 0.1, "eval", "train")
    ids = [f"{run}:{step0}:{i}" for i in range(n)]
    return {
        "run": [run] * n, "rollout_id": ids, "step": step.tolist(), "split": split.tolist(),
        "group_id": [f"{s}-{i // 8}" for s, i in zip(step, range(n))], "sample_index": [i % 8 for i in range(n)],
        "condition": cond.tolist(), "system_prompt": [None] * n, "task": rng.choice(["x", "y"], n).tolist(),
        "prompt": ["p"] * n, "completion": ["c"] * n, "reasoning": [None] * n, "answer": ["a"] * n,
        "rewards": [[("judge", float(judge[i])), ("acc", float(acc[i])), ("persona", float(persona[i]))]
                    for i in range(n)],
        "reward": [0.0] * n, "advantage": [0.0] * n, "grader_inputs": [[] for _ in range(n)], "metadata": [None] * n,
    }


def _health(store, run="r", **config):
    found = run_detectors(store, run, AuditConfig(detectors=["reward_health"], **config))
    assert not [f for f in found if f.kind == "audit_error"], found
    return sorted((f.to_json() for f in found), key=lambda f: (f["signal"], f["problem"]))


def _cache(store, run="r"):
    return store.run_dir(run) / "derived" / "partstats" / "reward_health"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_uncached_and_appended_runs_agree(store, tmp_path, seed):
    from rlaudit.store import Store

    rng = np.random.default_rng(seed)
    for i in range(4):  # four parts
        store.append("r", canonical_table(_rows(1 + 5 * i, 5, 40, rng)), key=f"p{i}")
    cold = _health(store)
    assert cold, "the fixture has broken signals"
    assert len(list(_cache(store).glob("v*/*.parquet"))) == 4
    assert _health(store) == cold  # warm, from the cache
    assert _health(store, max_step=12) != cold  # the scope filters the cached rows
    shutil.rmtree(_cache(store))
    assert _health(store, max_step=12) == _health(store, max_step=12)

    store.append("r", canonical_table(_rows(21, 5, 40, rng)), key="p4")  # a new part: only its table is computed
    before = {p.name: p.stat().st_mtime_ns for p in _cache(store).glob("v*/*.parquet")}
    warm = _health(store)
    after = {p.name: p.stat().st_mtime_ns for p in _cache(store).glob("v*/*.parquet")}
    assert len(after) == 5 and all(after[k] == v for k, v in before.items())
    fresh = Store(tmp_path / "fresh")
    for i, key in enumerate(["p0", "p1", "p2", "p3", "p4"]):
        fresh.append("r", store.query(f"SELECT * FROM rollouts WHERE step BETWEEN {1 + 5 * i} AND {5 + 5 * i}",
                                      runs=["r"]), key=key)
    assert _health(fresh) == warm
    fresh.persist_derived = False  # in memory: the same tables, nothing written
    shutil.rmtree(_cache(fresh))
    assert _health(fresh) == warm and not _cache(fresh).exists()


def test_merged_counts_equal_a_direct_scan(store):
    rng = np.random.default_rng(5)
    for i in range(3):
        store.append("r", canonical_table(_rows(1 + 4 * i, 4, 30, rng)), key=f"p{i}")
    con = store.connect(["r"])
    register_reward_stats(con, part_stats(store, "r", "reward_health"), store.root, None, "train")
    got = con.execute("""SELECT signal, condition, step, sum(n), sum(nan), sum(inf), sum(finite), min(lo), max(hi)
                         FROM rh_cells GROUP BY ALL ORDER BY ALL""").fetchall()
    want = con.execute("""SELECT signal, coalesce(condition, ''), step, count(*), count(*) FILTER (isnan(v)),
                                 count(*) FILTER (isinf(v)), count(*) FILTER (isfinite(v)),
                                 min(v) FILTER (isfinite(v)), max(v) FILTER (isfinite(v))
                          FROM (SELECT condition, step, unnest(map_keys(rewards)) AS signal,
                                       coalesce(unnest(map_values(rewards)), 'NaN'::DOUBLE) AS v
                                FROM rollouts WHERE split = 'train') GROUP BY ALL ORDER BY ALL""").fetchall()
    assert got == want


@pytest.mark.parametrize("seed", range(6))
def test_sketch_quantiles_within_alpha_of_exact(seed):
    """Property: for any finite sample (mixed signs, zeros, heavy tails), the sketch's q is within ALPHA * |exact|
    of the exact quantile of the same rank."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_cauchy(500), np.zeros(rng.integers(0, 50)), -rng.lognormal(0, 3, 300),
                        rng.uniform(1e-6, 1e-3, 100)])
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT unnest(?::DOUBLE[]) AS v", [x.tolist()])
    from rlaudit.detectors.reward_stats import GAMMA
    con.execute(f"""CREATE TEMP TABLE rh_sketch AS SELECT 's' AS signal,
                    CASE WHEN v = 0 THEN 0.0 ELSE sign(v) * 2 * pow({GAMMA!r}, b) / {GAMMA + 1!r} END AS mid,
                    count(*) AS n FROM (SELECT v, CASE WHEN v = 0 THEN 0 ELSE
                        ceil(ln(abs(v)) / {math.log(GAMMA)!r})::INTEGER END AS b FROM t) GROUP BY ALL""")
    qs = (0.01, 0.05, 0.25, 0.5, 0.95, 0.99)
    est = quantiles(con, qs)["s"]
    for q in qs:
        exact = float(np.quantile(x, q, method="lower"))  # the value of rank floor(q (n - 1))
        assert abs(est[q] - exact) <= ALPHA * abs(exact) + 1e-15, (q, est[q], exact)


@pytest.mark.parametrize("seed", range(3))
def test_value_rows_are_the_distinct_values_of_the_steps_that_have_few(store, seed):
    """Property: kind 1 lists the distinct finite values with their rows for a (split, step, signal) with at most
    DISCRETE_MAX + 1 of them, else one NULL row with its finite rows, whatever the values: few levels, exactly
    DISCRETE_MAX + 1 or + 2 of them, many values in few sketch buckets (grouped by value), many in many buckets
    (decided from the sketch), with NaN and inf among them."""
    from rlaudit.detectors.reward_stats import DISCRETE_MAX

    rng = np.random.default_rng(seed)
    n = 400
    makers = {"few": lambda: rng.choice([0.0, 0.5, 1.0], n), "edge": lambda: rng.permutation(
        np.resize(np.arange(DISCRETE_MAX + 1) / 7, n)), "over": lambda: rng.permutation(
        np.resize(np.arange(DISCRETE_MAX + 2) / 7, n)), "narrow": lambda: 1 + rng.uniform(0, 0.01, n),
        "wide": lambda: rng.normal(0, 5, n)}
    values = {s: np.concatenate([make() for _ in range(2)]) for s, make in makers.items()}  # two steps
    for v in values.values():
        v[rng.random(2 * n) < 0.02] = np.nan
        v[rng.random(2 * n) < 0.01] = -np.inf
    rows = _rows(1, 2, n, rng)
    rows["rewards"] = [[(s, float(values[s][i])) for s in makers] for i in range(2 * n)]
    rows["split"] = ["train"] * (2 * n)
    store.append("r", canonical_table(rows), key="p0")
    con = duckdb.connect()
    part_stats(store, "r", "reward_health").register(con, "t")
    got = sorted(con.execute("SELECT step, signal, value, n FROM t WHERE kind = 1").fetchall(),
                 key=lambda r: (r[0], r[1], -math.inf if r[2] is None else r[2]))
    want = []
    for s, v in values.items():
        for step in (1, 2):
            x = v[(step - 1) * n:step * n]
            x = x[np.isfinite(x)]
            levels, counts = np.unique(x, return_counts=True)
            want += ([(step, s, float(a), int(c)) for a, c in zip(levels, counts)] if len(levels) <= DISCRETE_MAX + 1
                     else [(step, s, None, len(x))])
    want.sort(key=lambda r: (r[0], r[1], -math.inf if r[2] is None else r[2]))
    assert got == want
    kinds = dict(con.execute("SELECT signal, count(*) FROM t WHERE kind = 1 AND step = 1 GROUP BY signal").fetchall())
    assert kinds["edge"] == DISCRETE_MAX + 1 and kinds["over"] == 1 and kinds["narrow"] == 1


def _flip_rows(step: int, n: int, nan_share: float, rng: np.random.Generator, slot: int = 2) -> dict:
    """Rows of one step in condition 'a', task 'x', whose persona signal (`slot` 2; 1: acc) is NaN in `nan_share`
    of them: appended after other parts, they move the cell (persona, a, x) between applicable and not."""
    rows = _rows(step, 1, n, rng)
    rows["condition"] = ["a"] * n
    rows["task"] = ["x"] * n
    nan = rng.random(n) < nan_share
    for i, r in enumerate(rows["rewards"]):
        r[slot] = (r[slot][0], float("nan") if nan[i] else float(rng.uniform(0, 1)))
    return rows


@pytest.mark.parametrize("seed", [0, 1])
def test_rollup_of_the_whole_run_equals_merging_every_part(store, monkeypatch, seed):
    """The whole-run audit reads run-level rollups (`reward_rollup`) and the parts added since; a scoped audit
    that covers every step merges every part's rows. Both give the same findings, field by field, as parts are
    added whose cells are new, repeat a rolled-up cell, or move a rolled-up cell between applicable and not."""
    from rlaudit.derived import partstats

    monkeypatch.setattr(partstats, "COMPACT_AT", 3)  # a combined file (and its rollup) after three parts
    rng = np.random.default_rng(seed)
    every = {"max_step": 10**9}  # scoped: the per-part rows, merged (and the default split, 'train')
    for i in range(4):
        store.append("r", canonical_table(_rows(1 + 5 * i, 5, 40, rng)), key=f"p{i}")
    whole = _health(store)
    assert whole and whole == _health(store, **every)
    rollups = list(_cache(store).glob("v*/rollup/*.parquet"))
    assert rollups, "the combined parts were rolled up"
    for i, share in enumerate([1.0, 0.0, 0.0, 0.9]):  # (persona, a, x): not applicable, then applicable, ...
        store.append("r", canonical_table(_flip_rows(30 + i, 400, share, rng)), key=f"f{i}")
        whole = _health(store)
        assert whole == _health(store, **every), i
    nan = [f for f in whole if f["problem"] == "nan"]
    assert nan and all(f["evidence"] for f in nan)
    mem = store.__class__(store.root)
    mem.persist_derived = False  # nothing written: the loose parts in memory, no rollup
    assert _health(mem) == whole


@pytest.mark.parametrize("seed", [0, 1])
def test_a_signal_clean_when_rolled_up_that_later_has_nan(store, monkeypatch, seed):
    """acc has no NaN in the rolled-up parts (a signal without NaN has its cells kept ungrouped: no cell of it
    can change class), then NaN in rows of a cell it had before, enough to move that cell out of the applicable
    ones: the rollup's totals still equal merging every part's rows."""
    from rlaudit.derived import partstats

    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    rng = np.random.default_rng(seed)
    every = {"max_step": 10**9}
    for i in range(4):
        store.append("r", canonical_table(_rows(1 + 5 * i, 5, 40, rng)), key=f"p{i}")
    assert not [f for f in _health(store) if f["signal"] == "acc" and f["problem"] == "nan"]
    found = []
    for i, share in enumerate([0.3, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]):  # (acc, a, x): applicable, then not, ...
        store.append("r", canonical_table(_flip_rows(30 + i, 120, share, rng, slot=1)), key=f"f{i}")
        whole = _health(store)
        assert whole == _health(store, **every), i
        found.append([f["rows"] for f in whole if f["signal"] == "acc" and f["problem"] == "nan"])
    assert found[0] and found[0][0] > 0, "acc's NaN in an applicable cell is found"
    assert any(not f for f in found[1:]), "and its cell, mostly NaN later, leaves the applicable ones"


def test_rollup_keeps_the_values_of_discrete_signals_only(store, monkeypatch):
    """A signal with few values a step but many over the run (persona: uniform, ~13 rollouts a step) is no
    discrete signal, so the rollup keeps one NULL value row for it instead of every value (a run of small steps
    had as many as its rollouts, regrouped by every audit); a discrete signal (acc: 0 or 1) keeps its values. The
    findings equal those of the merged per-part rows, before and after parts are added to the collapsed rows."""
    import pyarrow.parquet as pq

    from rlaudit.derived import partstats

    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    rng = np.random.default_rng(5)
    for i in range(4):
        store.append("r", canonical_table(_rows(1 + 5 * i, 5, 40, rng)), key=f"p{i}")
    assert _health(store) == _health(store, max_step=10**9)
    (rollup,) = [f for f in _cache(store).glob("v*/rollup/*.parquet") if f.name.count(".") == 1]
    values = pq.read_table(rollup).filter(pq.read_table(rollup).column("kind").to_numpy() == 1).to_pylist()
    persona = [r for r in values if r["signal"] == "persona" and r["split"] == "train"]
    acc = sorted(r["value"] for r in values if r["signal"] == "acc" and r["split"] == "train")
    assert len(persona) == 1 and persona[0]["value"] is None and persona[0]["n"] > 65
    assert acc == [0.0, 1.0]
    for i in range(4, 8):
        store.append("r", canonical_table(_rows(1 + 5 * i, 5, 40, rng)), key=f"p{i}")
        assert _health(store) == _health(store, max_step=10**9), i
