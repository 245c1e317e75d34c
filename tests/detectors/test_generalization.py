"""Cross-condition generalisation: a tic learnt under one persona and expressed under the others."""

from __future__ import annotations

import pytest
from emerging_synth import Scenario, Tic, make_run

from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.detectors.generalization import figures

PERSONAS = {"nerdy": 0.1, "default": 0.9}


def spread(store, sc: Scenario) -> tuple[list, list]:
    run = make_run(store, sc)
    found = run_detectors(store, run, AuditConfig(detectors=["generalization"]))
    errors = [f for f in found if f.kind == "audit_error"]
    assert not errors, errors[0].fields["traceback"]
    return [f for f in found if f.kind == "emerging_behavior"], [f for f in found if f.kind == "generalization"]


def goblins(**kw) -> Scenario:
    tic = Tic("goblin", 0.0, 0.7, onset=4, conditions={"nerdy": 1.0, "default": 0.35}, onsets={"default": 9})
    return Scenario(steps=30, groups=30, conditions=PERSONAS, tics=[tic], seed=1, **kw)


@pytest.fixture(scope="module")
def rewarded(tmp_path_factory):
    from rlaudit.store import Store

    return spread(Store(tmp_path_factory.mktemp("gen") / "store"), goblins(reward_signal="nerdy_rm"))


def test_a_persona_tic_that_spreads_is_traced_to_its_source(rewarded):
    _, gen = rewarded
    assert len(gen) == 1
    g = gen[0]
    assert (g["source_condition"], g["target_condition"]) == ("nerdy", "default")
    assert g["source_reason"] == "reward" and g["rewarded_by"] == "nerdy_rm" and not g["paid_in_target"]
    assert g["severity"] if False else g.severity == "high"
    assert g["correlation"] > 0.8
    assert 0 <= g["lag_steps"] <= 8  # planted: the default persona starts 5 steps later
    assert g["mention_share"] > 2 * g["traffic_share"]
    assert g["target_prevalence_start"] < 0.02 and g["target_prevalence_end"] > 0.15
    assert set(g["series"]) == {"nerdy", "default"} and len(g["series"]["nerdy"]["prevalence"]) == 30
    assert g["behavior_spec"] == "goblin" and g["where"] == "answer"


def test_figures_are_built_from_the_fields_alone(rewarded):
    import plotly.graph_objects as go

    _, gen = rewarded
    raw, scaled = figures(gen[0].to_json())
    assert isinstance(raw, go.Figure) and isinstance(scaled, go.Figure)
    assert {t.name for t in raw.data} == {"nerdy (source)", "default (target)"}
    assert len(scaled.data) == 2 and "r = " in scaled.layout.title.text


def test_without_a_reward_the_source_is_where_mentions_exceed_traffic(store):
    _, gen = spread(store, goblins())
    assert [(g["source_condition"], g["target_condition"], g["source_reason"]) for g in gen] == \
        [("nerdy", "default", "lift")]
    assert gen[0]["rewarded_by"] is None


def test_a_tic_that_rose_everywhere_alike_has_no_source(store):
    tic = Tic("goblin", 0.0, 0.6, onset=6)
    found, gen = spread(store, Scenario(steps=30, groups=30, conditions={"a": 0.5, "b": 0.5}, tics=[tic]))
    assert any(f["behavior"] == "goblin" and f.severity == "high" for f in found)
    assert gen == []


def test_one_condition_gives_no_generalization(store):
    _, gen = spread(store, Scenario(tics=[Tic("goblin", 0.0, 0.6, onset=6)]))
    assert gen == []


def test_a_target_ahead_of_its_source_is_leading_not_lagging_by_a_negative_number():
    from rlaudit.detectors.generalization import _lag_words

    assert _lag_words(-3) == "leading by 3 steps"
    assert _lag_words(2) == "lagging by 2 steps"
    assert _lag_words(1) == "lagging by 1 step"
    assert "-" not in _lag_words(-1)


def test_the_baseline_ends_at_the_onset_when_the_early_window_reaches_past_it(store):
    """With many steps the early window (a fifth of the run) holds part of the rise; the spread test's baseline
    ends at discovery's onset instead, so the target's starting prevalence is the level before the tic."""
    tic = Tic("goblin", 0.0, 0.5, onset=6, conditions={"nerdy": 1.0, "default": 0.35}, onsets={"default": 9})
    sc = Scenario(steps=100, groups=10, conditions=PERSONAS, tics=[tic], seed=3, reward_signal="nerdy_rm")
    emerging, gen = spread(store, sc)
    onset = next(f for f in emerging if f["behavior"] == "goblin")["onset_step"]
    assert len(gen) == 1 and gen[0]["target_condition"] == "default"
    g = gen[0]
    assert 4 <= g["baseline_steps"] < 20  # the early window would be 20 steps
    assert g["baseline_steps"] == onset - 1 or g["baseline_steps"] == onset  # steps before the onset step
    assert g["target_prevalence_start"] < 0.03 and g.severity in ("medium", "high")


@pytest.mark.parametrize("max_step", [None, 24])
def test_condition_signals_from_the_cached_rows_equal_the_rewards(tmp_path, monkeypatch, max_step):
    """Which signals apply in one condition only, from training_health's per-part rows (kind 8, through the
    rollup of the combined parts' small rows) as from the rewards of a store that keeps nothing."""
    import numpy as np
    import pyarrow as pa

    from rlaudit.derived import partstats
    from rlaudit.detectors import generalization
    from rlaudit.store import Store

    monkeypatch.setattr(partstats, "COMPACT_AT", 2)
    store = Store(tmp_path / "store")
    run = make_run(store, goblins(reward_signal="nerdy_rm"))
    table = store.table(run)
    steps = np.array(table.column("step").to_pylist())
    store.delete(run)
    # a signal with NaN and missing values in one condition, and a NULL condition
    rewards = [list(r.items()) if isinstance(r, dict) else list(r or []) for r in table.column("rewards").to_pylist()]
    conds = table.column("condition").to_pylist()
    for i, r in enumerate(rewards):
        r.append(("sparse", float("nan") if i % 3 == 0 else None if i % 3 == 1 else 1.0) if conds[i] == "nerdy"
                 else ("sparse", float("nan")))
    table = table.set_column(table.schema.get_field_index("rewards"), "rewards",
                             pa.array(rewards, table.schema.field("rewards").type))
    for i, lo in enumerate(range(0, 30, 6)):
        store.append(run, table.filter(pa.array((steps > lo) & (steps <= lo + 6))), key=f"p{i}")
    seen: dict[bool, list] = {}
    signals = generalization._condition_signals

    def spy(ctx, scope):
        out = signals(ctx, scope)
        seen[getattr(scope.store, "persist_derived", True)] = out
        return out

    monkeypatch.setattr(generalization, "_condition_signals", spy)
    config = AuditConfig(detectors=["generalization"], max_step=max_step)
    run_detectors(store, run, config)
    run_detectors(store, run, config)  # warm, from the rollup
    assert list((store.run_dir(run) / "derived" / "partstats" / "training_health").glob("v*/combined.small-*"))
    mem = Store(store.root)
    mem.persist_derived = False
    run_detectors(mem, run, config)
    assert seen[True] == seen[False] and seen[True].get("sparse") == "nerdy", seen


def _per_step_over_cells(scope, cells):
    """The per-condition, per-step sums as summed over every cell in scope (before `gensteps`)."""
    import numpy as np

    cidx = {c: i for i, c in enumerate(scope.conditions)}
    x, q, n = (np.zeros((len(cidx), scope.n_steps)) for _ in range(3))
    for c, si, nn, xx, qq in scope.con.execute(f"""SELECT condition, si, sum(n), sum(x), sum(q) FROM ({cells})
                                                   GROUP BY ALL""").fetchall():
        n[cidx[c], si], x[cidx[c], si], q[cidx[c], si] = nn, xx or 0, qq or 0
    return x, q, n


def _clusters_over_cells(scope, cells, base):
    """The cluster sums as grouped over every window cell (before `gensteps` and `repeats`)."""
    import numpy as np

    cidx = {c: i for i, c in enumerate(scope.conditions)}
    t, w = scope.n_steps, scope.window
    out = np.zeros((6, len(cidx), 2, max(scope.n_strata, 1)))
    win = f"CASE WHEN si < {base} THEN 0 WHEN si >= {t - w} THEN 1 END"
    for c, wi, st, *v in scope.con.execute(f"""
            SELECT condition, win, s, sum(x), sum(x * x), sum(x * nc), sum(nc), sum(nc * nc), count(*)
            FROM (SELECT condition, {win} AS win, s, prompt_key, sum(x) AS x, sum(n) AS nc FROM ({cells})
                  WHERE {win} IS NOT NULL GROUP BY ALL) GROUP BY ALL""").fetchall():
        out[:, cidx[c], wi, st] = v
    return tuple(out)


@pytest.mark.parametrize("layout", ["parts", "shared_step", "recurring_prompts"])
def test_cached_sums_equal_the_sums_over_every_cell(tmp_path, monkeypatch, layout):
    """The per-condition series and cluster sums read from the per-part caches (`gensteps`, `repeats`) equal
    those summed over every cell in scope: cold, and warm after a new part; with parts sharing a step (whose
    cells' rows add up) and with prompts that recur across steps (clusters of several cells)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from rlaudit.detectors import generalization
    from rlaudit.store import Store

    store = Store(tmp_path / "store")
    run = make_run(store, goblins(reward_signal="nerdy_rm"))
    table = store.table(run)
    store.delete(run)
    if layout == "recurring_prompts":  # 12 prompts, each asked at many steps
        prompts = [f"Question {hash(p) % 12}" for p in table.column("prompt").to_pylist()]
        table = table.set_column(table.schema.get_field_index("prompt"), "prompt", pa.array(prompts))
    steps = np.array(table.column("step").to_pylist())
    half = np.arange(len(steps)) % 2 == 0
    for i, lo in enumerate(range(0, 24, 6)):
        keep = (steps > lo) & (steps <= lo + 6)
        if layout == "shared_step" and i == 1:
            keep |= (steps == lo + 7) & half  # this part and the next both hold rollouts of one step
        if layout == "shared_step" and i == 2:
            keep &= ~((steps == lo + 1) & half)
        store.append(run, table.filter(pa.array(keep)), key=f"p{i}")
    checked, shared = [], set()
    per_step, clusters = generalization._per_step, generalization._cluster_sums

    def spy_per_step(scope, where, ftype, k, cells):
        got = per_step(scope, where, ftype, k, cells)
        for a, b in zip(got, _per_step_over_cells(scope, cells)):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        checked.append("per_step")
        return got

    def spy_clusters(scope, where, ftype, k, cells, base):
        got = clusters(scope, where, ftype, k, cells, base)
        for a, b in zip(got, _clusters_over_cells(scope, cells, base)):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        checked.append("clusters")
        shared.add(scope.shared)
        return got

    monkeypatch.setattr(generalization, "_per_step", spy_per_step)
    monkeypatch.setattr(generalization, "_cluster_sums", spy_clusters)
    config = AuditConfig(detectors=["generalization"])
    cold = run_detectors(store, run, config)
    assert checked.count("clusters") >= 1 and any(f.kind == "generalization" for f in cold)
    store.append(run, table.filter(pc.greater(table["step"], 24)), key="p9")  # one new part
    warm = run_detectors(store, run, config)
    assert checked.count("clusters") >= 2 and any(f.kind == "generalization" for f in warm)
    assert shared == {layout == "shared_step"}
    if layout == "recurring_prompts":  # the clusters of several cells were grouped
        import duckdb

        from rlaudit.derived import termcells, tokens

        cells = termcells.term_cells(store, run, tokens.term_sets(store, run))
        assert len(generalization.repeats.recurring(cells, duckdb.connect())) > 0
