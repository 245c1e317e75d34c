"""The audit's memory budget: how much memory this process may still use, and the shares of it that DuckDB and
the detectors' in-memory samples get.

Why: an audit must not take its machine (or its container) down on a run too large for it. DuckDB spills to disk
beyond its memory limit, so its limit must sit inside whatever limit the process runs under; and the few
analyses that need rows in NumPy (attribution's frames, monitorability's labelled sample) draw a bounded sample
of prompt groups instead of holding the whole run, with the sampling stated in their findings.

The budget is the first of:

1. `RLAUDIT_MEMORY` (e.g. "3GB"): the memory this process may use, in total;
2. the cgroup memory limit of the process (v2 `memory.max`, v1 `memory.limit_in_bytes`), minus what the cgroup
   already uses;
3. the address-space limit (`RLIMIT_AS`, `ulimit -v`, `prlimit --as`), minus the address space already mapped
   (a Python process with DuckDB and Arrow loaded maps ~1.2 GB, mostly never resident).

With none of them set there is no budget: DuckDB gets `DEFAULT_DUCKDB` (1 GB) and the samples their default
sizes, which keep a cold 1M-rollout audit within 2 GB of RSS (`benchmarks/audit_memory.py`).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import queue
import re
import resource
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: DuckDB's memory limit per connection when no budget is set (`RLAUDIT_DUCKDB_MEMORY` overrides it).
DEFAULT_DUCKDB = 1 << 30
#: Share of the budget each DuckDB database may take (a detector may hold two connections at once), and the
#: floor below which DuckDB cannot work at all.
DUCKDB_SHARE = 0.3
DUCKDB_FLOOR = 128 << 20
#: Share of the budget for the rows an analysis holds in NumPy (attribution's frames, monitorability's sample).
SAMPLE_SHARE = 0.15

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of "3GB", "512 MiB", "2g", "1073741824"."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        from .errors import RlauditError

        raise RlauditError(f"memory size {text!r}: give a number with an optional unit (KB, MB, GB), e.g. 3GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _read_int(path: Path, signed: bool = False) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() or (signed and text.startswith("-") and text[1:].isdigit()) else None


def _cgroup_available() -> tuple[int, str] | None:
    """(bytes left under the cgroup memory limit, where the limit was read) or None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            d = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit, used = _read_int(d / "memory.max"), _read_int(d / "memory.current")
        elif "memory" in controllers.split(","):  # v1
            d = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit, used = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
        else:
            continue
        if limit is not None and limit < (1 << 60):  # "max" or the v1 page-rounded infinity: no limit
            return max(0, limit - (used or 0)), f"cgroup limit {limit >> 20:,} MB ({d})"
    return None


def _mapped_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def budget() -> tuple[int, str] | None:
    """(bytes this process may still allocate, the source of the limit), or None when nothing limits it."""
    env = os.environ.get("RLAUDIT_MEMORY")
    if env:
        return max(0, parse_size(env) - _resident_bytes()), f"RLAUDIT_MEMORY={env}"
    found = [b for b in (_cgroup_available(),) if b is not None]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append((max(0, soft - _mapped_bytes()), f"address-space limit (RLIMIT_AS) {soft >> 20:,} MB"))
    return min(found) if found else None


#: glibc malloc arenas the process may use (`cap_malloc_arenas`), and under a memory budget.
MALLOC_ARENAS = 4
MALLOC_ARENAS_BUDGET = 2

_arrow_pool_chosen = False  # (`arrow_pool`: once per process)


def prepare() -> tuple[int, str] | None:
    """Fit the process to its budget before the audit's threads start, and return the budget.

    Always: glibc gets at most MALLOC_ARENAS malloc arenas (`cap_malloc_arenas`). Under a budget, two: each arena
    is reserved 64 MB at a time, so every DuckDB database (about ten threads each) would map ~500 MB of address
    space it never uses; under an address-space limit that alone aborts the process ("cannot allocate memory for
    thread-local data") before any data is read. Arrow's memory pool: `arrow_pool`. Called by the CLI and
    `audit_store`; harmless when called again."""
    threads_setting()
    from .kernels import setting

    setting()  # a bad RLAUDIT_KERNEL stops the command here too (without importing numba)
    b = budget()
    cap_malloc_arenas(MALLOC_ARENAS if b is None else MALLOC_ARENAS_BUDGET)
    arrow_pool("system" if b is not None else "jemalloc")
    return b


def arrow_pool(backend: str) -> None:
    """Make `backend` ("system" or "jemalloc") Arrow's default memory pool, once per process, unless
    ARROW_DEFAULT_MEMORY_POOL names one. Buffers allocated before (module constants, a library caller's tables)
    stay valid: each Arrow buffer is freed to the pool it came from.

    Why: under a budget, the system allocator: mimalloc, Arrow's default, reserves a 1 GB arena at its first
    allocation (set through the environment where pyarrow is not imported yet, so that mimalloc never starts).
    Otherwise jemalloc, where pyarrow has it: the cold 1M-rollout audit under mimalloc spent ~1.5% of its CPU
    zeroing huge pages that mimalloc faulted in again after purging them (`perf`: `clear_page_erms` under
    `mi_page_free_list_extend`; all page zeroing 2.9% -> 2.3% under jemalloc), and its peak RSS was 20-230 MB
    lower under jemalloc in six of seven pairs measured (3 MB higher in one); the time within the VM's noise
    (docs/performance.md, session 37)."""
    global _arrow_pool_chosen
    if _arrow_pool_chosen or "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    _arrow_pool_chosen = True
    if backend == "system" and "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.system_memory_pool() if backend == "system" else pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without jemalloc keeps its default
        pass


_arenas_capped: int | None = None


def cap_malloc_arenas(n: int = MALLOC_ARENAS) -> None:
    """Let glibc's malloc use at most `n` arenas (mallopt M_ARENA_MAX), unless `MALLOC_ARENA_MAX` is set.

    Why: glibc gives threads up to eight arenas per core, and what each keeps after a detector has freed its
    memory (pages around chunks still live, which `malloc_trim` cannot return) adds up: on a 2-core machine a
    1M-rollout audit spread over 12 arenas, which held ~120 MB resident between detectors, and every stage after
    the emerging detector started from ~630 MB resident instead of ~490 MB with four arenas (measured with
    smaps; the per-detector peaks fell by as much), at no measurable CPU cost. glibc fixes
    its arena limit once more than eight arenas exist, so this must run before the audit's threads start (the
    CLI's `prepare()`); `run_detectors` calls it too, for library callers, and then it bounds only the arenas
    still to come. Never raises a lower cap set before (a budget's). A no-op where glibc is absent."""
    global _arenas_capped
    if os.environ.get("MALLOC_ARENA_MAX") or (_arenas_capped is not None and _arenas_capped <= n):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return
    _arenas_capped = n


def duckdb_limit() -> int:
    """DuckDB's memory limit in bytes: `RLAUDIT_DUCKDB_MEMORY` if set, else DEFAULT_DUCKDB, lowered to
    DUCKDB_SHARE of the budget when there is one (never below DUCKDB_FLOOR)."""
    env = os.environ.get("RLAUDIT_DUCKDB_MEMORY")
    if env:
        return parse_size(env)
    b = budget()
    if b is None:
        return DEFAULT_DUCKDB
    return max(DUCKDB_FLOOR, min(DEFAULT_DUCKDB, int(b[0] * DUCKDB_SHARE)))


def sample_bytes(default: int) -> tuple[int, str | None]:
    """Bytes an analysis may hold in NumPy rows: `default`, or SAMPLE_SHARE of the budget when that is less;
    with the source of the budget when it was the budget that decided."""
    b = budget()
    if b is None or b[0] * SAMPLE_SHARE >= default:
        return default, None
    return max(1 << 20, int(b[0] * SAMPLE_SHARE)), b[1]


#: Most threads per-part work (the CoT scan of stored parts) runs on: the cores the process may use, at most this.
MAX_WORKERS = 4


def threads_setting() -> int | None:
    """The thread count the user set with `RLAUDIT_THREADS` (every per-part pool follows it), or None. Checked
    by `prepare()` too, so a bad value stops the command before any work rather than failing one detector."""
    env = os.environ.get("RLAUDIT_THREADS")
    if not env:
        return None
    if not env.strip().isdigit() or int(env) < 1:
        from .errors import RlauditError

        raise RlauditError(f"RLAUDIT_THREADS={env!r}: give a whole number of threads >= 1")
    return int(env)


_LOCAL = threading.local()


@contextlib.contextmanager
def at_most(n: int) -> Iterator[None]:
    """Within the block, `workers` gives at most `n` in this thread, and a DuckDB connection set up here by
    `duck.connect` runs at most `n` threads: for work run beside other work (an audit's background
    computations, `detectors.run_detectors`), which should fill a core the other leaves idle, not start a pool of
    its own (its threads' memory on top of the other's peak, and their time taken from the other's)."""
    old = getattr(_LOCAL, "most", None)
    _LOCAL.most = max(1, int(n)) if old is None else min(old, max(1, int(n)))
    try:
        yield
    finally:
        _LOCAL.most = old


def thread_limit() -> int | None:
    """The limit of an enclosing `at_most` of this thread, or None."""
    return getattr(_LOCAL, "most", None)


def workers(per_worker: int) -> int:
    """Threads for per-part work that holds about `per_worker` bytes per thread (numpy and Arrow release the GIL,
    so parts scan in parallel): `RLAUDIT_THREADS` if set, else the usable cores (at most MAX_WORKERS), fewer when
    the memory budget's SAMPLE_SHARE cannot hold that many parts at once, and never fewer than one; at most the
    limit of an enclosing `at_most` of this thread."""
    n = _workers(per_worker)
    most = thread_limit()
    return n if most is None else min(n, most)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (else the machine's cores), and no more than its cgroup's
    CPU quota (`cgroup_cpu_quota`) gives, rounded up. A container started with `--cpus 2` (Kubernetes: a CPU limit
    of 2) on a 64-core host sees 64 cores in `os.cpu_count()` and in its affinity; sized by those, a fleet spawned
    64 audit processes (each with its own memory) and every pool ran 32 threads on two cores' worth of time."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else max(1, cores)


_CPU_QUOTA: list[float | None] = []


def cgroup_cpu_quota() -> float | None:
    """The CPUs' worth of time per second this process's cgroup (or an enclosing one) may use, or None where no quota
    is set: the smallest of cgroup v2's `cpu.max` (quota and period, "max" for none) up the hierarchy, or cgroup
    v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1 for none). Read once per process (a container's quota does
    not change under it; pools ask for their size often)."""
    if not _CPU_QUOTA:
        _CPU_QUOTA.append(_read_cpu_quota(Path("/proc/self/cgroup"), Path("/sys/fs/cgroup")))
    return _CPU_QUOTA[0]


def _read_cpu_quota(cgroup_file: Path, root: Path) -> float | None:
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: every level from the process's cgroup up to the root may set one
            d = root / path.lstrip("/")
            while True:
                quotas.append(_v2_quota(d / "cpu.max"))
                if d == root or root not in d.parents:
                    break
                d = d.parent
        elif "cpu" in controllers.split(","):  # v1
            d = root / controllers / path.lstrip("/")
            quota, period = _read_int(d / "cpu.cfs_quota_us", signed=True), _read_int(d / "cpu.cfs_period_us")
            if quota is not None and quota > 0 and period:
                quotas.append(quota / period)
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _v2_quota(path: Path) -> float | None:
    """CPUs of a cgroup v2 `cpu.max` file ("QUOTA PERIOD"; "max PERIOD": none), or None."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit() or int(fields[1]) == 0:
        return None
    return int(fields[0]) / int(fields[1])


def _workers(per_worker: int) -> int:
    setting = threads_setting()
    if setting is not None:
        return setting
    n = max(1, min(MAX_WORKERS, usable_cores()))
    b = budget()
    if b is not None:
        n = max(1, min(n, int(b[0] * SAMPLE_SHARE) // max(1, per_worker)))
    return n


def round_robin(produce: Callable[[int], Iterator[Any]], n: int, count: int, name: str = "rlaudit"
                ) -> Iterator[Any]:
    """The `count` results of `n` producers in the order 0, 1, ..., n-1, 0, 1, ...: producer k (`produce(k)`,
    an iterator, run in a thread of its own where n > 1) gives results k, k + n, k + 2n, ... For work that pays
    a fixed cost per producer rather than per job (attribution's batches: one streamed query per thread instead
    of one per batch). Each producer waits while one of its results waits for the caller, so memory stays
    bounded by the thread count, as with `in_order`; a producer's error is raised to the caller at its turn."""
    if n <= 1:
        yield from produce(0)
        return
    slots: list[queue.Queue[tuple[bool, Any]]] = [queue.Queue(maxsize=1) for _ in range(n)]
    stop = threading.Event()

    def put(k: int, item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots[k].put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(k: int) -> None:
        results = produce(k)
        try:
            for item in results:
                if not put(k, (True, item)):
                    return
            put(k, (False, RuntimeError(f"{name}: producer {k} gave fewer results than its share")))
        except BaseException as exc:  # noqa: BLE001  (raised again in the caller's thread)
            put(k, (False, exc))
        finally:
            getattr(results, "close", lambda: None)()  # a generator's own cleanup (its query), on this thread

    threads = [threading.Thread(target=run, args=(k,), name=f"{name}-{k}", daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    try:
        for i in range(count):
            ok, item = slots[i % n].get()
            if not ok:
                raise item
            yield item
    finally:
        stop.set()
        for t in threads:
            t.join()


def in_order(compute: Callable[[Any], Any], jobs: Iterable[Any], n: int, name: str = "rlaudit") -> Iterator[Any]:
    """`compute` of each job, in the jobs' order: by `n` threads where n > 1 (`workers`), at most one result per
    thread waiting for the caller, so memory stays bounded by the thread count, not the run (`Executor.map`
    submits every job at once and keeps every result until it is taken)."""
    if n <= 1:
        yield from map(compute, jobs)
        return
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix=name) as pool:
        pending: collections.deque[Future[Any]] = collections.deque()
        for job in jobs:
            pending.append(pool.submit(compute, job))
            if len(pending) > n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class SharedJobs:
    """`compute(i)` for i in range(count), worked through by the thread that owns the jobs (`run`) and by any
    thread that `help`s meanwhile: each takes the next job not yet taken. Where the owner computes beside other
    work with one worker (an audit's background thread, `at_most(1)`), a thread that would wait for its result
    can work on it instead of leaving its core idle (`detectors._Background.wait`)."""

    def __init__(self, compute: Callable[[int], Any], count: int):
        self._compute = compute
        self._count = count
        self._next = 0
        self._left = count  # jobs not yet finished
        self._results: list[Any] = [None] * count
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self._count or self._error is not None:
                return None
            self._next += 1
            return self._next - 1

    def help(self) -> None:
        """Compute jobs on this thread until none is left to take (an error stops every thread, `run` raises it)."""
        while (i := self._take()) is not None:
            try:
                value = self._compute(i)
            except BaseException as exc:  # noqa: BLE001  (raised again by `run`, in the owner's thread)
                with self._lock:
                    self._error = self._error or exc
                    self._left -= 1 + (self._count - self._next)  # the jobs no one will take
                    self._next = self._count
                    self._finished.notify_all()
                return
            with self._lock:
                self._results[i] = value
                self._left -= 1
                self._finished.notify_all()

    def run(self) -> list[Any]:
        """Every job's result, in order, once all are computed (on this thread and any helping)."""
        self.help()
        with self._lock:
            while self._left > 0:
                self._finished.wait()
            if self._error is not None:
                raise self._error
        return self._results


_SHARED = threading.local()


@contextlib.contextmanager
def sharing(slot: list[SharedJobs]) -> Iterator[None]:
    """Within the block, `shared_jobs` on this thread puts the jobs it runs into `slot` (a list another thread
    may read and `help`)."""
    old = getattr(_SHARED, "slot", None)
    _SHARED.slot = slot
    try:
        yield
    finally:
        _SHARED.slot = old


def shared_jobs(compute: Callable[[int], Any], count: int) -> list[Any]:
    """`[compute(i) for i in range(count)]` on this thread, which other threads may help with where an enclosing
    `sharing` block publishes the jobs; `compute` must be safe to run on several threads at once."""
    jobs = SharedJobs(compute, count)
    slot = getattr(_SHARED, "slot", None)
    if slot is not None:
        slot.append(jobs)
    try:
        return jobs.run()
    finally:
        if slot is not None:
            slot.remove(jobs)
