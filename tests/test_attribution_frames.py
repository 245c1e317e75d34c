"""`load_frames` builds its frames one column at a time (bounded memory); they must equal `Frame.build`'s."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_attribution import make_run

from rlaudit.attribution import trace
from rlaudit.attribution.trace import Frame, _group_key, attribute, load_frames
from rlaudit.store import sql_string
from rlaudit.behaviors import parse_behavior


def _reference(con, items):
    """The previous implementation: fetch everything, then sort every column with `Frame.build`."""
    n, n_group, n_reward, n_adv, n_tasks = con.execute(
        "SELECT count(*), count(group_id), count(reward), count(advantage), count(DISTINCT task) FROM rollouts"
    ).fetchall()[0]
    signals = [r[0] for r in con.execute(
        "SELECT DISTINCT unnest(map_keys(rewards)) AS s FROM rollouts ORDER BY s").fetchall() if r[0] is not None]
    key, grouping, group_key, warnings = _group_key(con, n, n_group)
    exprs = [beh.sql(where) for beh, where in items]
    texts = sorted({where for (_, where), e in zip(items, exprs) if e is None})
    beh_cols = "".join(f", {e} AS _b{i}" for i, e in enumerate(exprs) if e is not None)
    text_cols = "".join(f", coalesce({w}, '') AS _text_{w}" for w in texts)
    sig_cols = "".join(f", CAST(rewards[{sql_string(s)}] AS DOUBLE) AS _s{i}" for i, s in enumerate(signals))
    table = con.sql(f"SELECT {key} AS _group, step, condition, task, rollout_id, reward, advantage"
                    f"{beh_cols}{text_cols}{sig_cols} FROM rollouts").to_arrow_table()
    cond = pc.dictionary_encode(table.column("condition").combine_chunks())
    task = pc.dictionary_encode(table.column("task").combine_chunks())

    def floats(col):
        return pc.fill_null(table.column(col), float("nan")).to_numpy(zero_copy_only=False).astype(float)

    base = Frame.build(
        table.column("_group").to_numpy(zero_copy_only=False),
        step=table.column("step").to_numpy(zero_copy_only=False).astype(np.int64),
        condition=cond.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        condition_names=[str(c) for c in cond.dictionary.to_pylist()],
        task=pc.fill_null(task.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64),
        task_names=[str(t) for t in task.dictionary.to_pylist()] if n_tasks else [],
        behavior=np.zeros(n), components={s: floats(f"_s{i}") for i, s in enumerate(signals)},
        reward=floats("reward") if n_reward else None, advantage=floats("advantage") if n_adv else None,
        rollout_id=table.column("rollout_id").combine_chunks(), grouping=grouping, group_key=group_key,
        warnings=warnings)
    return [replace(base, behavior=(floats(f"_b{i}") if e is not None
                                    else beh.values(table.column(f"_text_{w}")))[base.order])
            for i, ((beh, w), e) in enumerate(zip(items, exprs))]


def _equal(a, b) -> None:
    for f in fields(Frame):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        elif isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{f.name}[{k}]")
        elif isinstance(x, (pa.Array, pa.ChunkedArray)):
            assert x.equals(y), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("group_ids", [True, False])
def test_frames_and_attribution_equal_the_reference(store, group_ids):
    store.append("sim", make_run(seed=3, with_advantage=True, group_ids=group_ids), key="part-0")
    store.append("sim", make_run(seed=4, with_advantage=True, group_ids=group_ids, conditions=("plain", "pirate")),
                 key="part-1")
    third = make_run(seed=5, with_advantage=True, group_ids=group_ids)
    i = third.schema.get_field_index("task")
    store.append("sim", third.set_column(i, third.schema.field(i), pa.nulls(third.num_rows, pa.string())),
                 key="part-2")  # no task
    python = replace(parse_behavior("goblin"), kind="python", pattern=None, func=lambda t: "goblin" in t)
    items = [(parse_behavior("goblin"), "answer"), (parse_behavior("length"), "answer"),
             (parse_behavior(r"re:\bgob\w+"), "answer"), (python, "answer")]
    con = store.connect(["sim"])
    con.execute("SET threads = 2")
    new, ref = load_frames(con, items), _reference(con, items)
    for a, b in zip(new, ref):
        _equal(a, b)
    for (beh, where), a, b in zip(items, new, ref):
        ta = attribute(a, beh, where=where, run="sim", n_boot=200, seed=0).to_json()
        tb = attribute(b, beh, where=where, run="sim", n_boot=200, seed=0).to_json()
        assert json.dumps(ta, sort_keys=True, default=str) == json.dumps(tb, sort_keys=True, default=str)


def test_frames_beyond_the_memory_for_frames_hold_a_sample_of_whole_groups(store):
    """A run whose frames would not fit is traced on a random share of its comparison groups: every sampled
    group is complete (its rows equal the full frame's rows of that group), and the warning says so."""
    store.append("sim", make_run(seed=3, steps=20, groups_per_condition=30, bias=0.8), key="part-0")
    items = [(parse_behavior("goblin"), "answer")]
    con = store.connect(["sim"])
    [full] = load_frames(con, items)
    assert not any("Traced on a random" in w for w in full.warnings)
    n = len(full.group)
    [part] = load_frames(con, items, max_bytes=int(n * (8 * 12 + 64) * trace.WORKING_SET) // 4)
    assert 0.1 * n < len(part.group) < 0.45 * n
    assert any("Traced on a random" in w and "comparison groups" in w for w in part.warnings)
    ids = set(part.rollout_id.to_pylist())
    full_ids = np.array(full.rollout_id.to_pylist(), dtype=object)
    kept = np.isin(full_ids, list(ids))
    # whole groups: a group of the full frame is either entirely in the sample or not at all
    for g in np.unique(full.group):
        in_group = kept[full.group == g]
        assert in_group.all() or not in_group.any()
    a = attribute(full, items[0][0], where="answer", run="sim", n_boot=200, seed=0)
    b = attribute(part, items[0][0], where="answer", run="sim", n_boot=200, seed=0)
    assert a.top.signal == b.top.signal
    assert any("Traced on a random" in w for w in b.warnings)


def test_a_run_beyond_the_memory_for_frames_is_traced_on_whole_steps_chosen_for_good(tmp_path):
    """With enough steps, a run whose frames would not fit is traced on a random share of its steps: only those
    steps are read, every rollout of a kept step is in, the steps kept stay kept as the run grows, and the
    intervals resample steps (the point estimates are those of the same rows resampled by group)."""
    from rlaudit.store import Store

    store = Store(tmp_path / "store")
    store.append("sim", make_run(seed=3, steps=120, groups_per_condition=4, bias=0.8), key="part-0")
    items = [(parse_behavior("goblin"), "answer")]
    con = store.connect(["sim"])
    [full] = load_frames(con, items)
    assert not full.step_clusters
    n = len(full.group)
    budget = int(n * (8 * 12 + 64) * trace.WORKING_SET) // 4
    [part] = load_frames(con, items, max_bytes=budget)
    assert part.step_clusters
    assert any("steps" in w and "resample the kept steps" in w for w in part.warnings)
    kept = np.unique(part.step)
    assert trace.MIN_SAMPLED_STEPS <= len(kept) < 0.45 * len(np.unique(full.step))
    for s in kept:  # whole steps
        assert (part.step == s).sum() == (full.step == s).sum()
    # the run grows: with the same memory, the share falls, and the kept steps are among those kept before
    more = make_run(seed=4, steps=240, groups_per_condition=4, bias=0.8)
    store.append("sim", more.filter(pc.greater(more["step"], 120)), key="part-1")
    con = store.connect(["sim"])
    [grown] = load_frames(con, items, max_bytes=budget)
    old = np.unique(grown.step)[np.unique(grown.step) <= 120]
    assert set(old.tolist()) <= set(kept.tolist()) and len(old) < len(kept)
    # point estimates: those of the same rows; intervals and p-values: from the per-step sums
    beh = items[0][0]
    a = attribute(part, beh, where="answer", run="sim", n_boot=200, seed=0)
    b = attribute(replace(part, step_clusters=False), beh, where="answer", run="sim", n_boot=200, seed=0)
    for sa, sb in zip(a.signals, b.signals):
        assert sa.signal == sb.signal and sa.paired_preference == pytest.approx(sb.paired_preference)
        assert sa.pressure == pytest.approx(sb.pressure)
    prep = trace.Prepared.of(part)
    labels = trace.behavior_labels(prep.groups, part.behavior, False)
    adv = trace._Advantage.of(prep.groups, prep.total, part.behavior, "group")
    d = trace._group_stats(prep, labels, adv)[a.top.signal]
    step_of_group = np.unique(part.step[prep.groups.starts], return_inverse=True)[1]
    u = np.bincount(step_of_group, weights=d["u"])
    pairs = np.bincount(step_of_group, weights=d["pairs"])
    assert math.isclose(a.top.p_value, trace._preference_p(u, pairs), rel_tol=1e-9)
    assert not math.isclose(a.top.p_value, trace._preference_p(d["u"], d["pairs"]), rel_tol=1e-3)
    assert a.top.paired_preference_ci != pytest.approx(b.signal(a.top.signal).paired_preference_ci, rel=1e-3)
