"""Layout 5: a part keeps the reward signals its rollouts share as columns, and the map only for the others.

Every reader of a part must see the canonical `rewards` map it was given: Arrow (`join_rewards`, `read_part`),
DuckDB (`view_columns`) and the per-signal SQL the statistics read (`reward_sql`, `has_reward_sql`,
`same_signals_sql`), whatever mix of shared and differing signals, nulls and NaNs a part holds."""

from __future__ import annotations

import math

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlaudit.layout import (REWARD_PREFIX, conform, has_reward_sql, join_rewards, part_schema, part_signals,
                            reward_column, reward_sql, rewards_sql, same_signals_sql, split_rewards, view_columns)

MAP = pa.map_(pa.string(), pa.float64())
NAMES = ["acc", "fmt", "len", "it's", 'q"uote']
VALUES = st.one_of(st.none(), st.just(math.nan), st.floats(-5, 5, allow_nan=False))
SHARED = [(n, 1.0) for n in NAMES[:3]]


def _norm(rows: list) -> list:
    """Rows of a map as comparable lists (NaN != NaN; None and NaN kept apart)."""
    return [[(k, "nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in (r or [])] for r in rows]


def _stored(rows: list, signals: tuple[str, ...] | None = None) -> pa.Table:
    got, left, values = split_rewards(pa.array(rows, MAP), signals)
    return pa.table({"rewards": left, **{reward_column(s): v for s, v in zip(got, values)}})


# a row: mostly the run's three signals in order, sometimes another map (fewer, reordered, other keys; repeated
# keys only in Arrow: DuckDB refuses a map with a repeated key)
SHARED_ROW = st.tuples(*(VALUES for _ in range(3))).map(lambda v: list(zip(NAMES[:3], v)))
ROW = st.one_of(SHARED_ROW, st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=5), st.none())
DISTINCT_ROW = st.one_of(SHARED_ROW, st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=5,
                                              unique_by=lambda kv: kv[0]))


@given(st.lists(ROW, max_size=12))
def test_split_then_join_gives_back_every_map(rows):
    table = _stored(rows)
    assert _norm(join_rewards(table).to_pylist()) == _norm(rows)  # a null map (not canonical) as an empty one
    signals = part_signals(table.schema)
    shared = [r for r in rows if [k for k, _ in r or []] == list(signals)]
    assert table.column("rewards").null_count == len(shared)  # a shared row's map is not stored twice


ASKED = st.sampled_from([(), ("acc",), ("fmt", "acc"), tuple(NAMES[:3])])


@given(st.lists(DISTINCT_ROW, min_size=1, max_size=12), ASKED)
def test_any_signals_can_be_asked_for_and_sql_reads_what_arrow_reads(rows, signals):
    table = _stored(rows, signals)
    assert part_signals(table.schema) == signals
    want = _norm(rows)
    assert _norm(join_rewards(table).to_pylist()) == want
    con = duckdb.connect()
    con.register("part", table)
    fields = ", ".join(
        f"{reward_sql(s, 5, signals)} AS v{i}, {has_reward_sql(s, 5, signals)} AS h{i}" for i, s in enumerate(NAMES))
    same = same_signals_sql(tuple(NAMES[:3]), 5, signals)
    got = con.sql(f"SELECT map_entries(canonical) AS m, {fields}, {same} AS same FROM "
                  f"(SELECT *, {rewards_sql(5, signals)} AS canonical FROM part)").fetchall()
    for row, out in zip(rows, got):
        assert _norm([[(e["key"], e["value"]) for e in out[0]]]) == _norm([row])
        d = dict(row)
        for i, name in enumerate(NAMES):
            v, h = out[1 + 2 * i], out[2 + 2 * i]
            assert h == (name in d)
            assert _norm([[("x", v)]]) == _norm([[("x", d.get(name))]])
        assert out[-1] == ([k for k, _ in row] == NAMES[:3])


def test_a_table_of_other_signals_is_made_to_fit_a_parts_schema():
    first = _stored([SHARED, SHARED])
    other = _stored([[("x", 2.0)], SHARED])
    fitted = conform(other, first.schema)
    assert fitted.schema.equals(first.schema)
    assert _norm(join_rewards(fitted).to_pylist()) == _norm([[("x", 2.0)], SHARED])
    assert fitted.column("rewards").null_count == 1
    assert part_schema(("acc",)).names[-1] == REWARD_PREFIX + "acc"


def test_a_layout_5_part_read_without_its_signals_is_an_error():
    with pytest.raises(ValueError, match="reward signals"):
        view_columns(5)
    assert "rewards" in view_columns(4)
