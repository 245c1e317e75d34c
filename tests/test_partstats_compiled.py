"""The per-part statistics' compiled form (`partstats.CompiledKind`, `derived/grouped.py`) equals the kinds' SQL,
row for row (floats to 1e-12 relative: sums over groups may add in another order), on generated parts: stored as
the store writes them now (layout 5: reward columns, spans, facts) or as a layout-1 part, with NULL, NaN and
infinite rewards and advantages, signals missing from some rollouts, empty conditions, tasks or not,
rollouts with and without group ids (cluster keys that name their step or not), metadata with token counts,
limits, finish reasons or not JSON at all, reasoning with and without an answer, and steps with more distinct
rewards than the sketch keeps. Deterministic under the CI Hypothesis profile."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canonical_parts import canonical_part
from rlaudit.derived import grouped, partstats
from rlaudit.detectors.reward_stats import DISCRETE_MAX
from rlaudit.kernels import use_numba
from rlaudit.layout import part_signals
from rlaudit.schema import ROLLOUT_SCHEMA

pytestmark = pytest.mark.skipif(not use_numba(), reason="the compiled form runs where numba does")

_KINDS = ("run_stats", "reward_health", "training_health", "attribution_meta")
_VALUES = st.sampled_from([None, float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1.0, -2.5, 1e-3, 7.0])
_NAMES = ("acc", "fmt", "len'gth")
_META = [None, json.dumps({"completion_tokens": 5, "max_tokens": 5}), json.dumps({"finish_reason": "length"}),
         json.dumps({"stop_reason": "stop", "max_completion_tokens": 9}), json.dumps({"truncated": "true"}),
         json.dumps({"token_lengths": [[0, 3], [1, 4]]}), "not json"]
_TEXTS = ["<think>why so</think> the answer", "<think>cut off", "plain answer", "", "<think></think>"]


@st.composite
def _rollout(draw, step: int, busy_value: float | None, same: bool):
    keys = list(_NAMES) if same else draw(st.permutations(_NAMES).flatmap(lambda q: st.integers(0, 3).map(
        lambda k: q[:k])))
    values = [busy_value if busy_value is not None and j == 0 else draw(_VALUES) for j in range(len(keys))]
    group = draw(st.sampled_from([None, "g1", "g2", f"{step}:g"]))
    return dict(rewards=list(zip(keys, values)), reward=busy_value if busy_value is not None else draw(_VALUES),
                advantage=draw(st.sampled_from([None, float("nan"), 0.5, -1.0])), step=step,
                split=draw(st.sampled_from(["train", "eval"])),
                condition=draw(st.sampled_from(["", "c1", "c2"])), task=draw(st.sampled_from([None, "t"])),
                prompt=draw(st.sampled_from(["p1", "p2"])), group_id=group,
                metadata=draw(st.sampled_from(_META)), text=draw(st.sampled_from(_TEXTS)),
                grader_inputs=draw(st.sampled_from([[], [("judge", "x")], [("judge", "x"), ("rm", "y")]])))


@st.composite
def _parts(draw):
    """1-3 parts of 1-14 rollouts (one with a busy step: more distinct rewards than the sketch keeps)."""
    same = draw(st.booleans())
    parts = []
    for p in range(draw(st.integers(1, 3))):
        busy = draw(st.booleans()) and p == 0
        n = DISCRETE_MAX + 3 if busy else draw(st.integers(1, 14))
        parts.append([draw(_rollout(step=draw(st.integers(1, 2)), busy_value=float(i + 2) ** 1.5 if busy else None,
                                    same=same)) for i in range(n)])
    return parts


def _write(rows: list[dict], path, spans: bool) -> tuple[int, tuple[str, ...]]:
    n = len(rows)

    def col(name: str, typ: pa.DataType | None = None) -> pa.Array:
        return pa.array([r[name] for r in rows], typ or ROLLOUT_SCHEMA.field(name).type)

    part = canonical_part([(r["text"], None, None) for r in rows], spans=spans,
                          **{c: col(c) for c in ("rewards", "reward", "advantage", "step", "split", "condition",
                                                 "task", "prompt", "group_id", "metadata", "grader_inputs")},
                          rollout_id=pa.array([f"{path.stem}-{i}" for i in range(n)]))
    pq.write_table(part, path)
    return (5, part_signals(part.schema)) if spans else (1, ())


def _sorted(table: pa.Table) -> pa.Table:
    keys = [(c, "ascending") for c in table.column_names if not pa.types.is_list(table.schema.field(c).type)]
    return table.sort_by(keys)


def _assert_equal(sql: pa.Table, compiled: pa.Table, kind: str) -> None:
    assert compiled.schema == sql.schema, kind
    assert compiled.num_rows == sql.num_rows, kind
    a, b = _sorted(sql), _sorted(compiled)
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            assert pc.is_null(x).equals(pc.is_null(y)), (kind, name)
            xs, ys = (np.asarray(pc.fill_null(v, 0.0).to_numpy(zero_copy_only=False)) for v in (x, y))
            assert np.allclose(xs, ys, rtol=1e-12, atol=0, equal_nan=True), (kind, name)
        else:
            assert x.equals(y), (kind, name, x.to_pylist()[:5], y.to_pylist()[:5])


@settings(max_examples=60, deadline=None)
@given(_parts(), st.booleans(), st.booleans())
def test_the_compiled_statistics_equal_the_queries(tmp_path_factory, parts, spans, direct):
    """`direct`: the sketch's buckets counted in a dense array (`grouped.BUCKET_SLOTS`), else by probing."""
    root = tmp_path_factory.mktemp("compiled")
    paths = [root / f"p{i}.parquet" for i in range(len(parts))]
    layouts = {path.name: _write(rows, path, spans) for rows, path in zip(parts, paths)}
    kinds = [partstats.kind(k) for k in _KINDS]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(partstats, "_use_compiled", lambda: False)
        sql = partstats._compute(paths, layouts, kinds, root)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(partstats, "_use_compiled", lambda: True)
        m.setattr(grouped, "BUCKET_SLOTS", grouped.BUCKET_SLOTS if direct else 0)
        compiled = partstats._compute(paths, layouts, kinds, root)
    for k in _KINDS:
        _assert_equal(sql[k].table, compiled[k].table, k)


def test_the_compiled_form_runs_where_numba_does(tmp_path):
    """An audit's statistics take the compiled form (no `src` table) where every kind has one."""
    path = tmp_path / "p.parquet"
    layouts = {path.name: _write([dict(rewards=[("acc", 1.0)], reward=1.0, advantage=None, step=1, split="train",
                                       condition="c", task=None, prompt="p", group_id="g", metadata=None,
                                       text="<think>a</think> b", grader_inputs=[])], path, True)}
    executed: list[str] = []

    class Spy:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *a):
            executed.append(sql)
            return self.con.execute(sql, *a)

        def __getattr__(self, name):
            return getattr(self.con, name)

    import duckdb

    with duckdb.connect() as con:
        got = partstats._compute([path], layouts, [partstats.kind(k) for k in _KINDS], tmp_path, Spy(con))
    assert not any("CREATE OR REPLACE TEMP TABLE src" in s for s in executed)
    assert got["run_stats"].table.num_rows > 0
