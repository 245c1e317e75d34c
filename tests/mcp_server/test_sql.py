"""The `query` tool's sandbox, without the MCP SDK: each thing it must refuse is tried."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from rlaudit.errors import RlauditError
from rlaudit.mcp.limits import Limits
from rlaudit.mcp.sql import run_query
from rlaudit.mcp.tools import Tools
from rlaudit.schema import canonical_table


@pytest.fixture
def small_store(store, tmp_path):
    rows = [{"run": "r", "rollout_id": f"f:{i}", "step": i // 4, "split": "train", "condition": "none",
             "prompt": "p", "completion": f"<think>t{i}</think>a goblin {i}", "answer": f"a goblin {i}",
             "reasoning": f"t{i}", "rewards": {"rm": float(i)}, "grader_inputs": {}} for i in range(16)]
    store.append("r", canonical_table(rows), key="k")
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n")
    return store


FORBIDDEN = [
    ("COPY (SELECT 1) TO '{tmp}/out.csv'", "only SELECT"),
    ("COPY rollouts TO '{tmp}/out.parquet'", "only SELECT"),
    ("SELECT * FROM read_csv('{tmp}/secret.csv')", "disabled"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "disabled"),
    ("SELECT * FROM read_parquet('{tmp}/*.parquet')", "disabled"),
    ("SELECT * FROM read_text('/etc/hostname')", "disabled"),
    ("SELECT * FROM glob('/etc/*')", "disabled"),
    ("ATTACH '{tmp}/x.duckdb' AS x", "only SELECT"),
    ("INSTALL httpfs", "only SELECT"),
    ("LOAD httpfs", "only SELECT"),
    ("PRAGMA database_list", "only SELECT"),
    ("CREATE TABLE t AS SELECT 1", "only SELECT"),
    ("CREATE VIEW v AS SELECT 1", "only SELECT"),
    ("INSERT INTO rollouts SELECT * FROM rollouts", "only SELECT"),
    ("SET enable_external_access = true", "only SELECT"),
    ("RESET enable_external_access", "only SELECT"),
    ("SELECT 1; COPY (SELECT 1) TO '{tmp}/x.csv'", "exactly one statement"),
    ("SELECT * FROM query('CREATE TABLE z AS SELECT 1')", "query failed"),
]


@pytest.mark.parametrize("sql,reason", FORBIDDEN)
def test_forbidden(small_store, tmp_path, sql, reason):
    with pytest.raises(RlauditError, match=reason):
        run_query(small_store, sql.format(tmp=tmp_path), Limits())
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.duckdb").exists()


def test_configuration_is_locked(small_store):
    from rlaudit.mcp.sql import sandboxed

    con = sandboxed(small_store, None, Limits())
    with pytest.raises(Exception, match="(?i)lock|cannot change"):
        con.execute("SET enable_external_access = true")
    for setting in ("threads", "memory_limit"):
        with pytest.raises(Exception, match="(?i)lock|cannot change"):
            con.execute(f"SET {setting} = 4")
    con.close()


def test_sandbox_opens_with_its_limits(small_store):
    """One thread, the query memory limit and the store's spill directory, from the database's own config (set on an
    open database they relaunched DuckDB's threads and trimmed the process's heap: `rlaudit.duck`)."""
    import duckdb

    from rlaudit.mcp.sql import sandboxed

    con = sandboxed(small_store, None, Limits(query_memory="300MB"))
    threads, limit, spill = con.execute("SELECT current_setting('threads'), current_setting('memory_limit'), "
                                        "current_setting('temp_directory')").fetchall()[0]
    con.close()
    reference = duckdb.connect(config={"memory_limit": "300MB"})
    assert threads == 1 and limit == reference.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    reference.close()
    assert Path(spill) == Path(small_store.root) / ".tmp"


def test_select_paging_and_clipping(small_store):
    limits = Limits(query_cell_chars=5)
    first = run_query(small_store, "SELECT rollout_id, answer FROM rollouts ORDER BY step, rollout_id", limits, limit=10)
    assert first["row_count"] == 10 and first["columns"] == ["rollout_id", "answer"] and first["next_cursor"]
    assert first["clipped_cells"] == 10 and first["rows"][0][1].endswith("…")
    second = run_query(small_store, "SELECT rollout_id, answer FROM rollouts ORDER BY step, rollout_id", limits,
                       limit=10, cursor=first["next_cursor"])
    assert second["row_count"] == 6 and second["next_cursor"] is None
    assert {r[0] for r in first["rows"]}.isdisjoint(r[0] for r in second["rows"])
    with pytest.raises(RlauditError, match="another listing"):
        run_query(small_store, "SELECT 1", limits, cursor=first["next_cursor"])
    # the store's own files stay readable through the views, and so do the reward map and rewards_long
    got = run_query(small_store, "SELECT sum(value) FROM rewards_long", limits)
    assert got["rows"] == [[120.0]]


def test_timeout(small_store):
    with pytest.raises(RlauditError, match="timeout"):
        run_query(small_store, "SELECT count(*) FROM range(1000000000000) a, range(1000) b", Limits(query_timeout=0.5))


def test_tools_are_read_only(small_store):
    tools = Tools(small_store.root)
    with pytest.raises(RlauditError, match="read-only"):
        tools.store.ingest("/nonexistent")
    with pytest.raises(RlauditError, match="read-only"):
        tools.store.append("r", pa.table({}), key="x")


def test_missing_sdk_is_a_clear_error(monkeypatch):
    import sys

    from rlaudit.mcp.server import require_mcp

    monkeypatch.setitem(sys.modules, "mcp", None)
    with pytest.raises(RlauditError, match="extra 'mcp'"):
        require_mcp()


def test_tools_without_sdk(small_store):
    """The tools are plain Python: usable (and tested) without the MCP SDK."""
    tools = Tools(small_store.root)
    hits = tools.search_rollouts("r", "goblin", limit=3)
    assert hits["total"] == 16 and len(hits["matches"]) == 3 and hits["next_cursor"]
    assert hits["matches"][0]["step"] == 3  # newest first
    with pytest.raises(RlauditError, match="allowed only from the modules"):
        tools.prevalence("r", "os.path:exists")
    r = tools.get_rollout("r", "f:0")
    assert r["answer"] == "a goblin 0" and r["rewards"] == {"rm": 0.0}
