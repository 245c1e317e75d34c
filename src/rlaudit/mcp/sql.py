"""Read-only SQL over the store's views, for the `query` tool.

Layers, each sufficient for what it blocks:
1. Only one statement, and only SELECT (including WITH, FROM-first, DESCRIBE, SUMMARIZE) or EXPLAIN, as
   DuckDB's own parser classifies it: COPY, ATTACH, INSTALL/LOAD, PRAGMA, SET, CREATE, INSERT... are refused
   before anything runs.
2. The connection (a fresh in-memory database per query, holding only the views) runs with
   `enable_external_access = false`, the store's part files as the only `allowed_paths`, extension
   auto-install/auto-load and community extensions off, and `lock_configuration = true`, so a SELECT cannot
   read other files (`read_csv('/etc/passwd')`, `glob`), load code, or turn any of this back on.
3. A timer interrupts the query after `Limits.query_timeout` seconds; `memory_limit` and one thread bound
   what it can take from the machine. Rows come back a page at a time, text cells clipped.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import duckdb

from ..errors import RlauditError
from ..findings import jsonable
from .. import duck
from ..store import Store
from .limits import Limits, clip, decode_cursor, encode_cursor

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def check_statement(sql: str) -> None:
    """Refuse anything but one SELECT/EXPLAIN statement (RlauditError says what was refused)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise RlauditError(f"query does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise RlauditError(f"query must be exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind not in ALLOWED:
        raise RlauditError(f"query is read-only: only SELECT (or EXPLAIN) statements are allowed, got "
                           f"{kind.name}")


def sandboxed(store: Store, runs: list[str] | None, limits: Limits) -> duckdb.DuckDBPyConnection:
    """A connection with the store's views (`rollouts`, `rewards_long`) and nothing else reachable: on a database
    of its own, not one of the audit's pooled ones (`rlaudit.duck`), since the settings below lock it for good."""
    con = duck.database(limits.query_memory, 1, duck.settings(store.root)[2])
    store.rollouts_view(con, runs)
    store.rewards_view(con, runs)
    parts = [str(p) for r in (runs if runs is not None else store.runs()) for p in store.parts(r)]
    quoted = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in parts) + "]"
    for setting in ([f"SET allowed_paths = {quoted}"] if parts else []) + [
        "SET enable_external_access = false",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET allow_community_extensions = false",
        "SET lock_configuration = true",
    ]:
        con.execute(setting)
    return con


def run_query(store: Store, sql: str, limits: Limits, runs: list[str] | None = None, limit: int | None = None,
              cursor: str | None = None) -> dict[str, Any]:
    """Run read-only `sql`; one page of rows: {columns, rows, row_count, truncated, next_cursor, seconds}."""
    check_statement(sql)
    for r in runs or []:
        store.manifest(r)  # unknown run: a clear error
    limit = max(1, min(int(limit or limits.query_rows), limits.query_rows))
    offset = decode_cursor(cursor, "query:" + sql)
    if offset > limits.query_max_offset:
        raise RlauditError(f"cursor skips {offset} rows; at most {limits.query_max_offset} (add a WHERE or "
                           "ORDER BY ... LIMIT to the query instead)")
    con = sandboxed(store, runs, limits)
    timer = threading.Timer(limits.query_timeout, con.interrupt)
    started = time.perf_counter()
    timer.start()
    try:
        try:
            res = con.execute(sql)
            columns = [d[0] for d in res.description or []]
            if offset:
                res.fetchmany(offset)
            rows = res.fetchmany(limit + 1)
        except duckdb.InterruptException:
            raise RlauditError(f"query interrupted after the {limits.query_timeout:g} s timeout; narrow it (WHERE "
                               "step BETWEEN ..., LIMIT) or aggregate") from None
        except duckdb.Error as exc:
            msg = str(exc).splitlines()[0]
            if time.perf_counter() - started >= limits.query_timeout:
                msg += f" (after the {limits.query_timeout:g} s timeout)"
            raise RlauditError(f"query failed: {msg}") from None
    finally:
        timer.cancel()
        con.close()
    more = len(rows) > limit
    rows = rows[:limit]
    clipped = 0

    def cell(v: Any) -> Any:
        nonlocal clipped
        if isinstance(v, str) and len(v) > limits.query_cell_chars:
            clipped += 1
            return clip(v, limits.query_cell_chars)
        return v

    out_rows = [[cell(v) for v in jsonable(list(r))] for r in rows]
    return {"columns": columns, "rows": out_rows, "row_count": len(out_rows), "offset": offset,
            "next_cursor": encode_cursor(offset + len(rows), "query:" + sql) if more else None,
            "clipped_cells": clipped, "seconds": round(time.perf_counter() - started, 3)}
