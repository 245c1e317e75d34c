"""The audit's in-memory DuckDB connections: cursors of databases kept for the process, not a database a query.

Why not `duckdb.connect()` each time: every in-memory database DuckDB opens or closes, and every change of its
memory limit or threads, and every worker thread of it that idles for half a second, calls glibc's
`malloc_trim(0)`, which hands back to the OS every free page of *every* malloc arena of the process: NumPy's
arrays, Python's objects, numba's. The next allocations fault those pages in again, zeroed. A cold `rlaudit
audit` of 1M rollouts opened ~20 databases, each with a worker and 8 async I/O threads, and set their memory
limits: ~7 GB of pages handed back (`perf` on `madvise`), 0.92-0.98M minor page faults; with these connections
0.61-0.62M, and the cold audit ~7% less wall time (docs/performance.md, session 45).

So `connect` hands out a cursor of a database from a pool, one per (memory limit, threads, spill directory),
created with those settings and never changed, and takes the database back when the cursor is collected
(at most MAX_IDLE kept). A
database is used by one caller at a time, as a fresh database was, so each keeps its own memory limit. Its
threads are `threads`, else those of the enclosing `memory.at_most`, else `default_threads()`: one fewer than the
usable cores, because an audit runs two streams of work at once (the detectors and a background thread:
`detectors.run_detectors`), and because on a 2-core machine that means no worker thread at all, hence none of
the idle trims. Nor async I/O threads (DuckDB 2.0 starts 8 a database for remote reads; idle, they trim too).

What rlaudit's callers keep to: every table, view, type or macro they create is TEMP (dropped with the cursor;
a plain one would outlive it in the pooled database: `tests/test_duck.py` checks the sources), and they never SET
threads, memory_limit or temp_directory (they ask `connect` for them). A database that comes back otherwise (a
user's `CREATE VIEW` on `Store.connect`'s connection) is closed, not handed out again.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import duckdb

from .memory import duckdb_limit, thread_limit, usable_cores

#: Idle databases kept, of any settings (~7 MB each); the one idle longest is closed when a cursor brings back one
#: more (a process that audits many stores, each with its spill directory, keeps the recent ones only).
MAX_IDLE = 12

_Key = tuple[int, int, str | None]


#: What a database handed back must still show to be handed out again: its settings, and no table or view outside
#: the temp schema (a caller's `CREATE VIEW` would be seen by the next one: `Store.connect` is public API).
_STATE_SQL = """SELECT current_setting('threads'), current_setting('memory_limit'), current_setting('temp_directory'),
    (SELECT count(*) FROM duckdb_tables() WHERE NOT temporary)
    + (SELECT count(*) FROM duckdb_views() WHERE NOT temporary AND NOT internal)"""


class _Pool:
    """Idle databases with their settings (`_Key`), oldest first, of this process only: after a fork, the
    parent's are not used. Each is handed out again only while its state is as it was made (`_STATE_SQL`,
    ~0.7 ms); else it is closed."""

    def __init__(self) -> None:
        # re-entrant: a cursor collected by the garbage collector while this thread holds the lock hands its
        # database back from within (`weakref.finalize`)
        self.lock = threading.RLock()
        self.idle: list[tuple[_Key, duckdb.DuckDBPyConnection, tuple]] = []
        self.pid = os.getpid()
        self.opened = 0  # databases opened by this process (tests count them)

    def take(self, key: _Key) -> tuple[duckdb.DuckDBPyConnection, tuple]:
        while True:
            with self.lock:
                if self.pid != os.getpid():
                    self.idle, self.pid, self.opened = [], os.getpid(), 0
                i = next((i for i in range(len(self.idle) - 1, -1, -1) if self.idle[i][0] == key), None)
                _, db, made = self.idle.pop(i) if i is not None else (key, None, ())
            if db is None:
                break
            if db.execute(_STATE_SQL).fetchall()[0] == made:
                return db, made
            db.close()  # settings changed or objects left behind: not for the next caller
        limit, threads, spill = key
        db = database(f"{limit}MB", threads, spill)
        with self.lock:
            self.opened += 1
        return db, db.execute(_STATE_SQL).fetchall()[0]

    def give(self, key: _Key, db: duckdb.DuckDBPyConnection, made: tuple, pid: int) -> None:
        if pid != os.getpid():
            return
        with self.lock:
            self.idle.append((key, db, made))
            surplus = self.idle[:-MAX_IDLE] if len(self.idle) > MAX_IDLE else []
            del self.idle[:len(surplus)]
        for _, old, _ in surplus:
            old.close()


_POOL = _Pool()


def default_threads() -> int:
    """DuckDB threads of a connection outside any `memory.at_most`: one fewer than the usable cores, at least one."""
    return max(1, usable_cores() - 1)


def database(memory_limit: str, threads: int, spill: str | None) -> duckdb.DuckDBPyConnection:
    """A new in-memory database with these settings in its config, and no async I/O threads: set on an open
    database, the thread count relaunches DuckDB's threads and the memory limit trims the process's heap (module
    doc). The pool's databases, and those a caller must own (the MCP sandbox, whose settings it then locks)."""
    config: dict[str, str | int] = {"memory_limit": memory_limit, "threads": threads, "async_threads": 0}
    if spill is not None:
        config["temp_directory"] = spill
    return duckdb.connect(":memory:", config=config)


def settings(root: str | Path | None = None, at_most: int | None = None, threads: int | None = None
             ) -> tuple[int, int, str | None]:
    """(memory limit in MB, threads, spill directory) of a connection: the limit `memory.duckdb_limit()`, lowered to
    `at_most` bytes for work that streams; the threads as `connect` says; the spill directory `<root>/.tmp`
    (created here) where a store root is given, else DuckDB's own."""
    limit = duckdb_limit() if at_most is None else min(duckdb_limit(), at_most)
    if threads is None:
        threads = thread_limit() or default_threads()
    spill = None
    if root is not None:
        tmp = Path(root) / ".tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            spill = str(tmp)
        except OSError:  # a read-only store: DuckDB spills where it would anyway
            pass
    return max(1, limit >> 20), max(1, int(threads)), spill


def connect(root: str | Path | None = None, *, at_most: int | None = None, threads: int | None = None
            ) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection of its own for the caller (temp objects, registered tables and results are its own),
    with the memory limit, threads and spill directory of `settings`, on a pooled database (see module doc), and
    no progress bar (front ends draw their own). Close it, or let it go: the database returns to the pool when
    the cursor is collected."""
    key = settings(root, at_most, threads)
    db, made = _POOL.take(key)
    cur = db.cursor()
    weakref.finalize(cur, _POOL.give, key, db, made, os.getpid())
    cur.execute("SET enable_progress_bar = false")  # the connection's own setting, not the pooled database's
    return cur


_SHARED: list = []  # (pid, database) of `cursor`
_SHARED_LOCK = threading.Lock()


def cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of this process's one single-threaded database, for work that creates nothing in its catalog and
    runs alongside anything (RE2 calls on a few texts, a reader's column mapping of one table): ~0.3 ms, against
    ~15 ms for a database of its own. Its memory limit is DuckDB's default: such work is small."""
    with _SHARED_LOCK:
        if not _SHARED or _SHARED[0][0] != os.getpid():
            _SHARED[:] = [(os.getpid(), duckdb.connect(":memory:", config={"threads": 1, "async_threads": 0}))]
        return _SHARED[0][1].cursor()


def idle_databases() -> dict[_Key, list[duckdb.DuckDBPyConnection]]:
    """The pool's idle databases by settings (a copy), for tests that check what callers left in them."""
    out: dict[_Key, list[duckdb.DuckDBPyConnection]] = {}
    with _POOL.lock:
        for key, db, _ in _POOL.idle:
            out.setdefault(key, []).append(db)
    return out


def close_idle() -> int:
    """Close the pool's idle databases (a long-lived process that wants their memory back, a test that wants a
    pool of its own); the number closed."""
    with _POOL.lock:
        dbs = [db for _, db, _ in _POOL.idle]
        _POOL.idle.clear()
    for db in dbs:
        db.close()
    return len(dbs)


def opened() -> int:
    """Databases `connect` opened in this process so far."""
    return _POOL.opened
