"""training_health from per-part statistics equals training_health from the rollouts (the reference path,
`use_cache = False`): on simulated runs split into parts, on a step split across parts, under a scope, with token
counts and limits in metadata, and after a part is appended (only the new part is computed)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.detectors.training_health import TrainingHealthDetector


def _findings(store, run, use_cache, **config):
    TrainingHealthDetector.use_cache = use_cache
    try:
        found = run_detectors(store, run, AuditConfig(detectors=["training_health"], **config))
    finally:
        TrainingHealthDetector.use_cache = True
    assert not [f for f in found if f.kind == "audit_error"], [f.get("traceback") for f in found]
    return sorted((f.to_json() for f in found), key=lambda f: (f["check"], f.get("signal") or ""))


def _same(a, b, path="$"):
    """Equal, floats to 1e-9 relative (sums of per-part sums add in another order than a scan)."""
    if isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def _append_in_parts(store, run, table: pa.Table, cuts: list[int]) -> None:
    steps = np.array(table.column("step").to_pylist())
    bounds = [-math.inf, *cuts, math.inf]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        store.append(run, table.filter((steps > lo) & (steps <= hi)), key=f"{run}-{i}")


@pytest.mark.parametrize("scenario", ["easy_groups", "length_blowup", "eval_divergence", "broken_reward",
                                      "clean_basic", "goblin_persona"])
def test_cached_equals_the_rollouts(store, scenario):
    from rlaudit.organisms import run

    table = run(scenario, steps=30, prompts=8).canonical()
    _append_in_parts(store, scenario, table, [10, 20])
    ref = _findings(store, scenario, False)
    _same(_findings(store, scenario, True), ref)
    _same(_findings(store, scenario, True), ref)  # warm, from the cache
    _same(_findings(store, scenario, True, max_step=17), _findings(store, scenario, False, max_step=17))
    _same(_findings(store, scenario, True, split=None), _findings(store, scenario, False, split=None))


def test_a_step_split_across_parts_and_an_appended_part(store):
    from rlaudit.organisms import run

    table = run("easy_groups", steps=30, prompts=8).canonical()
    steps = np.array(table.column("step").to_pylist())
    idx = np.arange(table.num_rows)
    store.append("r", table.filter(steps < 12), key="a")
    store.append("r", table.filter((steps == 12) & (idx % 2 == 0)), key="b")  # step 12's groups in two parts
    store.append("r", table.filter(((steps == 12) & (idx % 2 == 1)) | ((steps > 12) & (steps < 30))), key="c")
    _same(_findings(store, "r", True), _findings(store, "r", False))
    cache = store.run_dir("r") / "derived" / "partstats" / "training_health"
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("v*/*.parquet")}
    store.append("r", table.filter(steps == 30), key="d")
    _same(_findings(store, "r", True), _findings(store, "r", False))
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("v*/*.parquet")}
    assert len(after) == 4 and all(after[k] == v for k, v in before.items())


@pytest.mark.parametrize("meta", ["tokens", "limit", "some", "finish"])
def test_token_counts_and_limits_in_metadata(store, meta):
    from tests.detectors.test_training_health import half, make_run, words

    def metadata(s, g, i):
        n = words(s, g, i).count("a")
        return {"tokens": {"completion_tokens": n},
                "limit": {"completion_tokens": n, "max_tokens": 20 + (g % 2) * 10},
                "some": {"completion_tokens": n} if g == 0 else {"x": 1},
                "finish": {"finish_reason": "length" if s > 8 and i < 3 else "stop"}}[meta]

    make_run(store, half, completion=words, metadata=metadata)
    make_run(store, half, completion=words, metadata=metadata, split="eval", append_to="eval")
    _same(_findings(store, "r", True), _findings(store, "r", False))
    _same(_findings(store, "r", True, max_step=9), _findings(store, "r", False, max_step=9))


def _reward_rows(step0: int, steps: int, per_step: int, rewards: np.ndarray) -> dict:
    n = steps * per_step
    return {"run": ["q"] * n, "rollout_id": [f"q:{step0}:{i}" for i in range(n)],
            "step": np.repeat(np.arange(step0, step0 + steps), per_step).tolist(),
            "split": ["train" if i % 10 else "eval" for i in range(n)], "group_id": [f"g{i // 4}" for i in range(n)],
            "sample_index": [i % 4 for i in range(n)], "condition": ["c"] * n, "system_prompt": [None] * n,
            "task": ["t"] * n, "prompt": ["p"] * n, "completion": ["c"] * n, "reasoning": [None] * n,
            "answer": ["a"] * n, "rewards": [[] for _ in range(n)], "reward": rewards.tolist(),
            "advantage": [None] * n, "grader_inputs": [[] for _ in range(n)], "metadata": [None] * n}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("discrete", [True, False])
def test_reward_quantiles_from_parts(store, seed, discrete):
    """Property: the q05 / q95 that split zero-variance groups, merged from per-part tables (steps split across
    parts, an eval split outside the scope, NaN and inf rewards left out), equal the exact 'lower' quantiles of
    the scope's finite rewards when every step has few distinct rewards, and lie within ALPHA of them, relative,
    when one step has more; the reference path (`_reward_quantiles`, from the rollouts) is exact."""
    from rlaudit.detectors.reward_stats import ALPHA
    from rlaudit.detectors.training_health import _reward_quantiles
    from rlaudit.detectors.training_stats import register_training_stats, reward_quantiles
    from rlaudit.derived.partstats import part_stats
    from rlaudit.schema import canonical_table

    rng = np.random.default_rng(seed)
    chunks = []
    for i, (step0, steps) in enumerate([(1, 3), (3, 4), (7, 2)]):  # step 3 is in two parts
        n = steps * 40
        r = rng.choice([0.0, 0.25, 1.0, -0.5], n) if discrete else np.concatenate(
            [rng.standard_cauchy(n - 10), np.zeros(5), rng.choice([0.0, 1.0], 5)])
        r[rng.random(n) < 0.03] = np.nan
        r[rng.random(n) < 0.01] = np.inf
        chunks.append(r)
        store.append("q", canonical_table(_reward_rows(step0, steps, 40, r)), key=f"p{i}")
    con = store.connect(["q"])
    con.execute("ALTER VIEW rollouts RENAME TO all_rollouts")
    con.execute("CREATE VIEW rollouts AS SELECT * FROM all_rollouts WHERE split = 'train' AND step <= 8")
    register_training_stats(con, part_stats(store, "q", "training_health"), "split = 'train' AND step <= 8", "TRUE")
    qs = (0.05, 0.95)
    got, ref = reward_quantiles(con, qs), _reward_quantiles(con, qs)
    x = np.array(con.execute("SELECT reward FROM rollouts WHERE isfinite(reward)").fetchnumpy()["reward"])
    for q in qs:
        exact = float(np.quantile(x, q, method="lower"))
        assert ref[q] == exact
        if discrete:
            assert got[q] == exact
        else:
            assert abs(got[q] - exact) <= ALPHA * abs(exact) + 1e-15, (q, got[q], exact)
    con.execute("CREATE OR REPLACE VIEW rollouts AS SELECT * FROM all_rollouts WHERE FALSE")
    register_training_stats(con, part_stats(store, "q", "training_health"), "FALSE", "FALSE")
    assert reward_quantiles(con, qs) is None and _reward_quantiles(con, qs) is None


@pytest.mark.parametrize("seed", range(6))
def test_ranked_quantiles_equal_lower_quantiles(seed):
    """Property: DuckDB's ranking of counted values (`ranked_quantiles`, what the cached path uses) gives the same
    'lower' quantiles as the plain walk over them (`lower_quantiles`) and as numpy over the expanded values, at
    the ends (q = 0, 1) and at ranks that fall on a value's last row; rows of count 0 are no values."""
    import duckdb

    from rlaudit.detectors.training_stats import lower_quantiles, ranked_quantiles

    rng = np.random.default_rng(seed)
    values = np.unique(np.round(rng.standard_normal(rng.integers(1, 40)), 2))
    counts = rng.integers(0, 5, len(values))
    counts[rng.integers(len(values))] += 1  # at least one row
    con = duckdb.connect()
    con.register("v", pa.table({"value": values, "n": counts}))
    qs = (0.0, 0.05, 0.25, 0.5, 0.95, 1.0)
    got = ranked_quantiles(con, "SELECT value, n FROM v", qs)
    kept = [(float(v), int(n)) for v, n in zip(values, counts) if n > 0]
    expanded = np.repeat(values, counts)
    assert got == lower_quantiles(kept, qs)
    assert got == {q: float(np.quantile(expanded, q, method="lower")) for q in qs}


def _with_group_ids(table: pa.Table, style: str) -> pa.Table:
    """`table` with its group ids rewritten: `step` as the readers name them (`<step>:<k>`, the rollups answer),
    `reused` the same ids at every step (clusters span steps: the groups and cells are read), `none` without."""
    import pyarrow.compute as pc

    ids = table.column("group_id").to_pylist()
    steps = table.column("step").to_pylist()
    local = [g.split("-", 1)[-1] for g in ids]
    new = {"step": [f"{s}:{k}" for s, k in zip(steps, local)], "reused": [f"g{k}" for k in local],
           "none": [None] * len(ids)}[style]
    return table.set_column(table.schema.get_field_index("group_id"), "group_id",
                            pc.cast(pa.array(new, pa.string()), table.schema.field("group_id").type))


@pytest.mark.parametrize("style", ["step", "reused", "none"])
@pytest.mark.parametrize("scenario", ["easy_groups", "length_blowup", "broken_reward"])
def test_rollups_equal_the_rollouts(store, monkeypatch, scenario, style):
    """The per-step rollups (kinds 5-7) give the findings of the rollouts; with step-named groups in one part per
    step they answer (no group or cell row is read), else the detector falls back to the group and cell rows."""
    from rlaudit.detectors import training_health as th
    from rlaudit.organisms import run

    table = _with_group_ids(run(scenario, steps=30, prompts=8).canonical(), style)
    _append_in_parts(store, scenario, table, [10, 20])
    used: list[tuple[str, bool]] = []
    zero, local = th.zero_steps, th.clusters_local
    monkeypatch.setattr(th, "zero_steps", lambda *a: used.append(("zero", (r := zero(*a)) is not None)) or r)
    monkeypatch.setattr(th, "clusters_local", lambda *a: used.append(("cells", (r := local(*a)))) or r)
    ref = _findings(store, scenario, False)
    _same(_findings(store, scenario, True), ref)
    if style == "step":
        assert used and all(ok for _, ok in used), used
    if style == "reused":
        assert ("cells", False) in used
    _same(_findings(store, scenario, True, max_step=17), _findings(store, scenario, False, max_step=17))
    # a step's groups split across two more parts: the groups and cells are read for it
    steps = np.array(table.column("step").to_pylist())
    extra = table.filter(steps == 30).set_column(
        table.schema.get_field_index("step"), "step", pa.array([31] * int((steps == 30).sum()), pa.int64()))
    if style == "step":
        extra = _with_group_ids(extra, "step")
    half = np.arange(extra.num_rows) % 2 == 0
    store.append(scenario, extra.filter(half), key=f"{scenario}-x")
    store.append(scenario, extra.filter(~half), key=f"{scenario}-y")
    used.clear()
    _same(_findings(store, scenario, True), _findings(store, scenario, False))
    if style == "step":
        assert ("cells", False) in used


def test_the_rollup_of_the_combined_parts_and_a_replaced_part(store, monkeypatch):
    """Once the parts are combined, a warm audit reads the small kinds from their rollup beside the combined file
    (`training_stats._small_rollup`) and the loose parts: the findings stay those of the rollouts as parts are
    added, and when a combined part is replaced (same key, other rows) no row of the old part is read."""
    import pyarrow.compute as pc

    from rlaudit.derived import partstats
    from rlaudit.organisms import run

    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    table = _with_group_ids(run("easy_groups", steps=30, prompts=8).canonical(), "step")
    steps = np.array(table.column("step").to_pylist())
    for i, (lo, hi) in enumerate([(0, 8), (8, 16), (16, 22), (22, 26), (26, 30)]):
        store.append("e", table.filter((steps > lo) & (steps <= hi)), key=f"k{i}")
        _same(_findings(store, "e", True), _findings(store, "e", False))
    cache = store.run_dir("e") / "derived" / "partstats" / "training_health"
    assert list(cache.glob("v*/combined.small-*.parquet")), "the combined parts were rolled up"
    # replace a combined part: the same steps with every reward flipped (other zero-variance groups)
    old = table.filter((steps > 8) & (steps <= 16))
    flipped = old.set_column(old.schema.get_field_index("reward"), "reward",
                             pc.subtract(pa.scalar(1.0), old.column("reward")))
    store.append("e", flipped, key="k1")
    _same(_findings(store, "e", True), _findings(store, "e", False))
    store.append("e", table.filter(steps > 30), key="k9")
    _same(_findings(store, "e", True), _findings(store, "e", False))
    mem = store.__class__(store.root)
    mem.persist_derived = False
    _same(_findings(mem, "e", True), _findings(store, "e", False))


@pytest.mark.parametrize("seed", range(3))
def test_group_ess_sums_with_logged_missing_and_mixed_advantages(store, seed):
    """Property: kind 0's ESS sums s1 = sum |a|, s2 = sum a^2 over a group's finite-reward rows (a the logged
    advantage, else (r - mean) / (sd + 1e-4)) equal a direct computation, for groups whose rows all log an
    advantage (summed with the group's statistics), none, and some (both through the join with the group)."""
    from rlaudit.derived.partstats import part_stats
    from rlaudit.schema import canonical_table

    rng = np.random.default_rng(seed)
    n = 8 * 24
    rewards = rng.normal(size=n)
    rewards[rng.random(n) < 0.05] = np.nan
    kind = np.repeat(np.arange(24) % 3, 8)  # 0: every row logs an advantage, 1: none, 2: some
    logged = (kind == 0) | ((kind == 2) & (rng.random(n) < 0.5))
    adv = np.where(logged, rng.normal(size=n), np.nan)
    rows = _reward_rows(1, 4, n // 4, rewards)
    rows["split"] = ["train"] * n
    rows["group_id"] = [f"g{i // 8}" for i in range(n)]
    rows["advantage"] = [float(a) if ok else None for a, ok in zip(adv, logged)]
    store.append("q", canonical_table(rows), key="q0")
    import duckdb

    con = duckdb.connect()
    part_stats(store, "q", "training_health").register(con, "t")
    got = {g: (s1, s2) for g, s1, s2 in con.execute("SELECT group_id, s1, s2 FROM t WHERE kind = 0").fetchall()}
    assert len(got) == 24
    for g in range(24):
        rows_g = np.arange(8 * g, 8 * g + 8)
        rows_g = rows_g[np.isfinite(rewards[rows_g])]
        r = rewards[rows_g]
        sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
        a = np.where(logged[rows_g], adv[rows_g], (r - r.mean()) / (sd + 1e-4))
        assert got[f"g{g}"] == (pytest.approx(np.abs(a).sum(), rel=1e-9), pytest.approx((a ** 2).sum(), rel=1e-9))


@pytest.mark.parametrize("batch", [5, 1 << 20])
def test_the_rollup_holds_each_small_kinds_rows_in_order_in_row_groups_of_one_kind(store, monkeypatch, batch):
    """The rollup is written kind by kind, `ROLLUP_BATCH` rows at a time: it holds exactly the combined file's
    rows of the small kinds, each kind's in their order, in row groups of one kind each (a filter on `kind`
    skips the others); the findings are those read from the parts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rlaudit.derived import partstats
    from rlaudit.detectors import training_stats
    from rlaudit.organisms import run

    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    monkeypatch.setattr(training_stats, "ROLLUP_BATCH", batch)
    monkeypatch.setattr(training_stats, "ROLLUP_GROUP", 16)
    table = _with_group_ids(run("easy_groups", steps=30, prompts=8).canonical(), "step")
    steps = np.array(table.column("step").to_pylist())
    for i, (lo, hi) in enumerate([(0, 8), (8, 16), (16, 22), (22, 30)]):
        store.append("e", table.filter((steps > lo) & (steps <= hi)), key=f"k{i}")
    _same(_findings(store, "e", True), _findings(store, "e", False))
    cache = store.run_dir("e") / "derived" / "partstats" / "training_health"
    rollup = next(cache.glob("v*/combined.small-*.parquet"))
    combined = pq.read_table(rollup.with_name("combined.parquet")).drop_columns(["_stem"])
    got = pq.read_table(rollup)
    for k in training_stats.SMALL:
        want = combined.filter(pc.equal(combined["kind"], k)).to_pylist()
        assert got.filter(pc.equal(got["kind"], k)).to_pylist() == want
    assert got.num_rows == sum(pc.sum(pc.equal(combined["kind"], k)).as_py() for k in training_stats.SMALL)
    assert got.num_rows > 2 * batch if batch == 5 else got.num_rows > 16
    assert got["kind"].to_pylist() == sorted(got["kind"].to_pylist())
    meta = pq.ParquetFile(rollup).metadata
    kind = meta.schema.names.index("kind")
    stats = [meta.row_group(i).column(kind).statistics for i in range(meta.num_row_groups)]
    assert meta.num_row_groups > len(training_stats.SMALL) and all(st.min == st.max for st in stats)


def test_parts_with_the_completions_facts_and_parts_without_give_the_same_statistics(store, tmp_path):
    """An ingested run (think blocks closed, unclosed and absent, a second close tag, text outside ASCII) gives the
    reference path's training_health from its per-part statistics, which read the completion's length and
    `</think>` test from the part (`layout.FACTS`, layout 4) and bound its spans without reading the completion;
    the same parts rewritten as layout 3 stored them (no facts: computed from the completion) give the same
    per-part statistics, row for row."""
    import shutil

    import duckdb

    from rlaudit.derived.partstats import part_stats
    from rlaudit.layout import FACTS, LAYOUT
    from tests.old_layouts import store_as_layout
    from tests.readers.trainer_files import trl_step

    completions = ["<think>plan é</think> answer", "</think>only close", "<think>cut off", "plain",
                   "  <think>a</think>  ", "x</think>y</think>", "答え</think> 👍🏽", "<think></think>"]
    out = tmp_path / "trl"
    for step in range(1, 4):
        trl_step(out, step, [f"p{step}-{i // 2}" for i in range(len(completions))], completions,
                 {"acc": [float((i + step) % 3) for i in range(len(completions))]})
    store.ingest(out, run="r")
    assert set(store.part_layouts("r").values()) == {LAYOUT}
    _same(_findings(store, "r", True), _findings(store, "r", False))

    def rows():
        con = duckdb.connect()
        part_stats(store, "r", "training_health").register(con, "t")
        return con.sql("SELECT * FROM t ORDER BY ALL").fetchall()

    stored = rows()
    store_as_layout(store, "r", {p.name for p in store.parts("r")}, 3, drop=tuple(FACTS))
    shutil.rmtree(store.run_dir("r") / "derived" / "partstats")
    assert set(store.part_layouts("r").values()) == {3}
    assert rows() == stored
