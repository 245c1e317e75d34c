"""The audit's pooled DuckDB connections (`rlaudit.duck`): settings, reuse, isolation between callers, and the
rules rlaudit's own queries keep so that a pooled database comes back as it went out."""

from __future__ import annotations

import gc
import os
import re
from pathlib import Path

import pyarrow as pa
import pytest

from rlaudit import duck, memory

SRC = Path(__file__).resolve().parents[1] / "src" / "rlaudit"


def _setting(con, name: str):
    return con.execute(f"SELECT current_setting('{name}')").fetchall()[0][0]


def _mb(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"MiB": 1 << 20, "GiB": 1 << 30, "KiB": 1 << 10}[unit] / 1e6


def test_a_connection_has_the_settings_it_asks_for(tmp_path):
    con = duck.connect(tmp_path, at_most=300 << 20, threads=1)
    assert _setting(con, "threads") == 1
    assert _mb(_setting(con, "memory_limit")) == pytest.approx(300, rel=0.01)  # "300MB": DuckDB's MB is 10^6 bytes
    assert Path(_setting(con, "temp_directory")) == tmp_path / ".tmp" and (tmp_path / ".tmp").is_dir()
    # at_most never raises the limit above DuckDB's usual one
    big = duck.connect(at_most=1 << 40)
    assert _mb(_setting(big, "memory_limit")) == pytest.approx(memory.duckdb_limit() >> 20, rel=0.01)  # "<n>MB"


def test_threads_follow_the_enclosing_at_most_else_one_fewer_than_the_cores():
    with memory.at_most(1):
        assert _setting(duck.connect(), "threads") == 1
    assert _setting(duck.connect(), "threads") == max(1, memory.usable_cores() - 1) == duck.default_threads()


def test_a_database_is_reused_once_its_cursor_is_gone_and_callers_see_nothing_of_each_other(tmp_path):
    con = duck.connect(tmp_path, threads=1)
    con.execute("CREATE TEMP TABLE mine AS SELECT 42 AS x")
    con.register("arrow_rows", pa.table({"y": [1, 2]}))
    con.close()
    del con
    gc.collect()
    opened = duck.opened()
    again = duck.connect(tmp_path, threads=1)
    assert duck.opened() == opened  # the same settings: the idle database, not a new one
    names = {r[0] for r in again.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    names |= {r[0] for r in again.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert not names & {"mine", "arrow_rows"}
    # two callers at once get two databases; other settings another one
    other = duck.connect(tmp_path, threads=1)
    assert duck.opened() == opened + 1
    duck.connect(tmp_path, threads=1, at_most=64 << 20)
    assert duck.opened() == opened + 2
    del other


def test_a_database_left_changed_is_closed_not_handed_out(tmp_path):
    for change in ("CREATE VIEW left_behind AS SELECT 1", "SET threads = 3"):
        con = duck.connect(tmp_path, threads=1)
        con.execute(change)
        del con
        gc.collect()
        opened = duck.opened()
        fresh = duck.connect(tmp_path, threads=1)
        assert duck.opened() == opened + 1, change
        assert _setting(fresh, "threads") == 1
        assert not fresh.execute("SELECT * FROM duckdb_views() WHERE view_name = 'left_behind'").fetchall()
        del fresh
        gc.collect()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts the process's threads in /proc")
def test_a_single_threaded_database_starts_no_threads(tmp_path):
    """No worker or async I/O thread: DuckDB's idle workers call malloc_trim, which hands the process's freed heap
    back to the OS (see the module doc)."""
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": list(range(100_000))}), tmp_path / "t.parquet")
    before = len(os.listdir("/proc/self/task"))
    con = duck.connect(tmp_path, threads=1, at_most=(1 << 30) - (5 << 20))  # settings of its own: a new database
    assert con.execute(f"SELECT sum(x) FROM read_parquet('{tmp_path / 't.parquet'}')").fetchall()[0][0] == 4999950000
    assert len(os.listdir("/proc/self/task")) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_opens_databases_of_its_own(tmp_path):
    con = duck.connect(tmp_path, threads=1)
    del con
    gc.collect()
    assert duck.idle_databases()
    pid = os.fork()
    if pid == 0:  # the child: the parent's idle databases are not its own
        try:
            ok = duck.connect(tmp_path, threads=1).execute("SELECT 1").fetchall() == [(1,)] and duck.opened() == 1
        except BaseException:  # noqa: BLE001 - any failure is the child's exit status
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


_PLAIN_CREATE = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW|TYPE|MACRO|FUNCTION|SEQUENCE)\b", re.I)
_SETTINGS = re.compile(r"\bSET\s+(?:GLOBAL\s+)?(?:threads|memory_limit|temp_directory)\b", re.I)


def test_rlaudit_creates_only_temp_objects_and_leaves_the_pooled_settings_alone():
    """What `rlaudit.duck` asks of every query rlaudit runs (its own doc names what it forbids); the SQLite cache of
    LLM answers is not DuckDB, the MCP sandbox and `store.bound_memory` configure databases of their own."""
    plain, settings = [], []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text()
        if rel not in ("llm/core.py", "duck.py"):
            plain += [f"{rel}: {m.group(0)}" for m in _PLAIN_CREATE.finditer(text)]
        if rel not in ("store.py", "mcp/sql.py", "duck.py"):
            settings += [f"{rel}: {m.group(0)}" for m in _SETTINGS.finditer(text)]
    assert not plain and not settings


def test_a_whole_audit_hands_every_database_back_as_it_got_it(tmp_path):
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.organisms import simulate
    from rlaudit.store import Store

    simulate("goblin_persona", tmp_path / "run", format="canonical", seed=0)
    store = Store(tmp_path / "store")
    store.ingest(tmp_path / "run", run="r")
    duck.close_idle()  # those of the tests before, which may have left a view on purpose
    opened = duck.opened()
    found = run_detectors(store, "r", AuditConfig())
    gc.collect()
    assert not [f for f in found if f.kind == "audit_error"]
    assert duck.opened() - opened <= 12  # a database per kind of work, not per query
    assert duck.idle_databases()
    for key, db, made in duck._POOL.idle:
        assert db.execute(duck._STATE_SQL).fetchall()[0] == made, key



def test_the_pool_keeps_the_most_recent_databases_of_any_settings(tmp_path):
    duck.close_idle()
    cursors = [duck.connect(tmp_path / f"store{i}", threads=1) for i in range(duck.MAX_IDLE + 3)]
    for i in range(len(cursors)):  # handed back in order: store0 first
        cursors[i] = None
    gc.collect()
    kept = duck.idle_databases()
    assert sum(map(len, kept.values())) == duck.MAX_IDLE
    spills = {Path(spill).parent.name for _, _, spill in kept}
    assert spills == {f"store{i}" for i in range(3, duck.MAX_IDLE + 3)}  # the last ones handed back
