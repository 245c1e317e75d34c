"""An audit under a hard memory limit degrades instead of dying (issue 20, item 15).

`rlaudit audit` runs in a subprocess whose address space is capped (`RLIMIT_AS`, as `ulimit -v` or `prlimit --as`
would): every allocation beyond the cap fails, which is how a memory budget bites without a cgroup. Before
`rlaudit.memory`, the process aborted under such a cap before it read any data: every DuckDB database starts
about ten threads, glibc gives each thread that allocates its own malloc arena (64 MB of address space each),
and the thread that found no room died with "cannot allocate memory for thread-local data" (exit 127, no
findings). DuckDB's memory limit was a fixed 1 GB whatever the cap, so a run whose tables outgrew the room left
would have failed inside DuckDB instead of spilling to disk.

Now the budget is read from the limit: two malloc arenas, DuckDB's limit a share of what is left (it spills
beyond that), and the in-memory samples of attribution and monitorability sized to it. The audit must complete
with the same findings as without the cap, and never end in a traceback, a MemoryError or a signal.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from rlaudit.organisms import simulate

#: the address-space cap: room for the interpreter, its libraries and thread stacks (~0.8 GB mapped on a 2-core
#: machine once DuckDB runs) plus ~1.2 GB for data; the audit of the run below needs ~0.3 GB resident
CAP = int(os.environ.get("RLAUDIT_TEST_AS_CAP", 2_000_000_000))


def _audit(args: list[str], cap: int | None, env: dict[str, str]) -> subprocess.CompletedProcess:
    def limit() -> None:
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run([sys.executable, "-c", "from rlaudit.cli import main; main()", "audit", *args],
                          capture_output=True, text=True, env=env, preexec_fn=limit, timeout=600)


def _summary(path: Path) -> list[tuple[str, str, str]]:
    found = json.loads(path.read_text())["findings"]
    return sorted((f["kind"], f["severity"], f["title"]) for f in found)


@pytest.fixture(scope="module")
def goblin_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("budget") / "goblin"
    simulate("goblin_persona", out, format="trl", seed=0)
    return out


def test_audit_under_an_address_space_cap_completes_with_the_same_findings(goblin_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RLAUDIT_MEMORY", None)
    env.pop("RLAUDIT_DUCKDB_MEMORY", None)
    free = _audit([str(goblin_run), "--store", str(tmp_path / "s1"), "--json", str(tmp_path / "free.json")],
                  None, env)
    assert free.returncode == 0, free.stderr[-2000:]
    capped = _audit([str(goblin_run), "--store", str(tmp_path / "s2"), "--json", str(tmp_path / "capped.json"),
                     "--report", str(tmp_path / "capped.html")], CAP, env)
    out = capped.stdout + capped.stderr
    # never killed (a negative status is a signal; 127/134 are glibc's and the C runtime's aborts)
    assert capped.returncode == 0, f"exit {capped.returncode}: {out[-3000:]}"
    assert "Traceback" not in out and "MemoryError" not in out and "Out of Memory" not in out
    assert _summary(tmp_path / "capped.json") == _summary(tmp_path / "free.json")
    kinds = {k for k, sev, _ in _summary(tmp_path / "capped.json") if sev in ("medium", "high")}
    assert {"emerging_behavior", "reward_attribution"} <= kinds  # the goblin tic, found and traced
    assert (tmp_path / "capped.html").stat().st_size > 0


def test_duckdb_limit_follows_an_address_space_cap():
    """In a process capped at CAP, DuckDB's limit is a share of the room left (not the fixed 1 GB), and the
    connections of the store use it."""
    code = ("import duckdb, json; from rlaudit.memory import duckdb_limit, prepare; "
            "from rlaudit.store import bound_memory; b = prepare(); con = duckdb.connect(); bound_memory(con); "
            "print(json.dumps([b, duckdb_limit(), con.execute(\"SELECT current_setting('memory_limit')\")"
            ".fetchall()[0][0]]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RLAUDIT_MEMORY", None)
    env.pop("RLAUDIT_DUCKDB_MEMORY", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (room, source), limit, setting = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "RLIMIT_AS" in source
    assert 0 < room < CAP and 128 << 20 <= limit <= room * 0.3 < 1 << 30  # the room shrinks as DuckDB maps
    value, unit = setting.split()
    assert 128 << 20 <= float(value) * {"MiB": 1 << 20, "GiB": 1 << 30}[unit] <= room * 0.3 + (1 << 20)


def test_budget_from_the_environment_and_bad_values(monkeypatch):
    from rlaudit.errors import RlauditError
    from rlaudit.memory import budget, duckdb_limit, parse_size

    assert parse_size("3GB") == 3 << 30 and parse_size("512 MiB") == 512 << 20 and parse_size("1024") == 1024
    with pytest.raises(RlauditError, match="memory size"):
        parse_size("lots")
    monkeypatch.delenv("RLAUDIT_DUCKDB_MEMORY", raising=False)
    monkeypatch.setenv("RLAUDIT_MEMORY", "100TB")
    room, source = budget()
    assert source == "RLAUDIT_MEMORY=100TB" and room > 99 << 40
    assert duckdb_limit() == 1 << 30  # a large budget keeps the 1 GB default
    monkeypatch.setenv("RLAUDIT_DUCKDB_MEMORY", "300MB")
    assert duckdb_limit() == 300 << 20  # the explicit override wins


def test_a_bad_budget_is_a_one_line_error_of_the_cli(tmp_path):
    env = {**os.environ, "RLAUDIT_MEMORY": "lots", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", "from rlaudit.cli import main; main()", "runs", "--store",
                           str(tmp_path / "s")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "memory size 'lots'" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


_ARENAS = """
import ctypes, json, os, tempfile, threading
import numpy as np
from rlaudit.memory import prepare
prepare()
barrier = threading.Barrier(12)
def work():
    barrier.wait()  # all alive at once: each new thread asks glibc for an arena of its own
    keep = [np.ones(1 << 14) for _ in range(64)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(12)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fclose(ctypes.c_void_p(fp))
print(json.dumps(open(path).read().count("<heap nr=")))
os.unlink(path)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc arenas")
def test_malloc_arenas_are_capped_without_a_budget():
    """Without any budget, `prepare()` still caps glibc's malloc arenas at MALLOC_ARENAS: twelve threads that
    allocate at once share them (glibc's own limit, eight per core, would give each its own arena, and each
    keeps memory the others cannot reuse). `MALLOC_ARENA_MAX`, when set, is left to decide."""
    from rlaudit.memory import MALLOC_ARENAS

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for key in ("RLAUDIT_MEMORY", "RLAUDIT_DUCKDB_MEMORY", "MALLOC_ARENA_MAX"):
        env.pop(key, None)

    def heaps(extra: dict[str, str]) -> int:
        proc = subprocess.run([sys.executable, "-c", _ARENAS], capture_output=True, text=True, timeout=120,
                              env={**env, **extra})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    assert heaps({}) <= MALLOC_ARENAS
    assert heaps({"MALLOC_ARENA_MAX": "12"}) > MALLOC_ARENAS  # the user's setting wins


_POOL = """
import json, sys
from rlaudit.memory import prepare
if sys.argv[1] == "imported":
    import pyarrow
    kept = pyarrow.array(["allocated before prepare()"])  # from Arrow's default pool
prepare()
import pyarrow as pa
pa.array(list(range(1000)))  # an allocation from the default pool
prepare()  # again: harmless
print(json.dumps(pa.default_memory_pool().backend_name))
if sys.argv[1] == "imported":
    assert kept.to_pylist() == ["allocated before prepare()"]
    del kept  # freed to its own pool
"""


@pytest.mark.parametrize("imported", ["imported", "not imported"])
def test_arrow_pool_is_chosen_by_prepare(imported):
    """`prepare()` makes jemalloc Arrow's pool without a budget (where pyarrow has it), the system allocator under
    a budget, and leaves a pool named by ARROW_DEFAULT_MEMORY_POOL alone; whether or not pyarrow was imported
    first (and had allocated), and a second call changes nothing."""
    import pyarrow as pa

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for key in ("RLAUDIT_MEMORY", "RLAUDIT_DUCKDB_MEMORY", "ARROW_DEFAULT_MEMORY_POOL"):
        env.pop(key, None)

    def backend(extra: dict[str, str]) -> str:
        proc = subprocess.run([sys.executable, "-c", _POOL, imported], capture_output=True, text=True,
                              timeout=120, env={**env, **extra})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Unsupported backend" not in proc.stderr  # Arrow's warning for a pool it was not built with
        return json.loads(proc.stdout.strip().splitlines()[-1])

    try:
        pa.jemalloc_memory_pool()
        fast = "jemalloc"
    except NotImplementedError:  # prepare() then leaves the build's default pool, read in a process of its own
        code = "import json, pyarrow; print(json.dumps(pyarrow.default_memory_pool().backend_name))"
        fast = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                         env=env, check=True).stdout)
    assert backend({}) == fast
    assert backend({"RLAUDIT_MEMORY": "100TB"}) == "system"
    assert backend({"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}) == "mimalloc"
    assert backend({"ARROW_DEFAULT_MEMORY_POOL": "system", "RLAUDIT_MEMORY": "100TB"}) == "system"
