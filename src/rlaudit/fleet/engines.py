"""Where a pass's run tasks execute. Every engine runs `worker.run_task` unchanged: one task per run.

- `inline`: in the scanner's own process, one run after the other (tests, tiny fleets, debugging).
- `local` (default): a pool of worker processes on this machine (spawned, never forked: DuckDB and pyarrow
  hold threads), kept across passes so a pass does not pay for interpreter start-up.
- `ray`: one Ray task per run on a Ray cluster (`--address auto` joins a running cluster, `ray://host:10001`
  a remote one; none starts a local one). Needs the `ray` extra. Workers must see the store and the run
  directories at the same paths (a shared file system), and rlaudit importable (same image or `runtime_env`).

Results come back as tasks finish. A task whose worker died (a killed process, a lost Ray node) is run again in
the same pass, up to `max_retries` times (Ray's own task retries; the local engine's fresh pool); beyond that it
comes back as a failed `RunOutcome` and the run is tried again on the next pass. The store's ingest is atomic per
file, so nothing is lost or doubled either way.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import RlauditError
from ..memory import usable_cores
from .worker import RunOutcome, RunTask, run_task

log = logging.getLogger("rlaudit.fleet")

ENGINES = ("local", "inline", "ray")


class Engine:
    name = "engine"
    workers = 1

    def run(self, tasks: list[RunTask]) -> Iterator[tuple[RunTask, RunOutcome]]:
        raise NotImplementedError

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[tuple[Any, Any, str]]:
        """(item, fn(item), "") for every item as it finishes, or (item, None, error) when the worker running it
        died. `fn` must be a picklable module-level function (the shards of a run: `shard.prepare_shard`)."""
        for item in items:
            yield item, fn(item), ""

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.name} ({self.workers} worker{'s' * (self.workers != 1)})"


class InlineEngine(Engine):
    name = "inline"

    def run(self, tasks: list[RunTask]) -> Iterator[tuple[RunTask, RunOutcome]]:
        for task in tasks:
            yield task, run_task(task)


#: niceness of the worker processes a scanner starts (local pool, a Ray cluster of its own): below the trainers
#: that may share the machine, above batch jobs at the default 19
WORKER_NICENESS = 5


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:  # below the trainers that may share the machine
        os.nice(WORKER_NICENESS)
    except OSError:
        pass


class LocalEngine(Engine):
    """A pool of `workers` spawned processes. When a worker dies (killed, out of memory) the pool breaks and
    every task it held fails with it. Those tasks run again in the same pass on a fresh pool, each alone, so a
    run that kills its worker every time takes no other run down with it again: one that breaks the pool while
    alone gets `max_retries` more tries (as Ray retries a task whose worker died), then fails for this pass and
    is tried on the next."""

    name = "local"
    #: what a worker runs per task (a module-level function, pickled by reference; tests put a crashing one here)
    task_fn: Callable[[RunTask], RunOutcome] = staticmethod(run_task)

    def __init__(self, workers: int | None = None, max_retries: int = 2):
        self.workers = max(1, workers or usable_cores())
        self.max_retries = max_retries
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker)
        return self._pool

    def run(self, tasks: list[RunTask]) -> Iterator[tuple[RunTask, RunOutcome]]:
        if not tasks:
            return
        pending: dict[Future, tuple[RunTask, ProcessPoolExecutor | None]] = {}
        todo = list(tasks)
        broke: dict[str, int] = {}  # run -> times a pool broke while it held the run's task
        suspects: set[str] = set()  # runs whose task was in a pool that broke: they run alone from then on
        # Submit a bounded window: a pass over 1,000 runs does not queue 1,000 pickled tasks at once.
        while todo or pending:
            while todo and len(pending) < 2 * self.workers and not self._must_wait(todo[0], pending, suspects):
                task = todo.pop(0)
                pool = self._executor()
                try:
                    pending[pool.submit(self.task_fn, task)] = (task, pool)
                except BrokenProcessPool:
                    self._reset(pool)
                    pending[_failed_future(task, "worker pool broken")] = (task, None)
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                task, pool = pending.pop(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    self._reset(pool)  # the pool this task was on; a fresh one takes the next submissions
                    broke[task.name] = broke.get(task.name, 0) + 1
                    # a task that was not alone may only have shared the pool with the one that died: it runs
                    # again, alone; one that broke the pool alone is to blame, and has `max_retries` retries
                    if task.name not in suspects or broke[task.name] <= self.max_retries:
                        suspects.add(task.name)
                        todo.insert(0, task)  # its attempt log tells the rerun that an attempt died
                        continue
                    outcome = RunOutcome(name=task.name, ok=False, error=f"worker process died {broke[task.name]} "
                                         "times (tried again next pass)")
                except Exception as exc:  # noqa: BLE001
                    outcome = RunOutcome(name=task.name, ok=False, error=f"{type(exc).__name__}: {exc}")
                yield task, outcome

    @staticmethod
    def _must_wait(task: RunTask, pending: dict[Future, tuple[RunTask, Any]], suspects: set[str]) -> bool:
        """Whether `task` must wait before it is submitted: a suspect runs with no other task beside it (so a
        pool that breaks under it is its own doing), and nothing is submitted beside a running suspect."""
        return bool(pending) and (task.name in suspects or any(t.name in suspects for t, _ in pending.values()))

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[tuple[Any, Any, str]]:
        pool = self._executor()
        futures = {pool.submit(fn, item): item for item in items}
        for fut in _as_done(futures):
            item = futures[fut]
            try:
                yield item, fut.result(), ""
            except BrokenProcessPool:
                self._reset()
                yield item, None, "worker process died"
            except Exception as exc:  # noqa: BLE001
                yield item, None, f"{type(exc).__name__}: {exc}"

    def _reset(self, pool: ProcessPoolExecutor | None = None) -> None:
        """Drop the current pool (or `pool`, if it is still the current one: futures of a pool that broke
        earlier must not take down its replacement)."""
        if self._pool is not None and (pool is None or pool is self._pool):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _as_done(futures: dict[Future, Any]) -> Iterator[Future]:
    from concurrent.futures import as_completed

    yield from as_completed(list(futures))


def _failed_future(task: RunTask, why: str) -> Future:
    fut: Future = Future()
    fut.set_result(RunOutcome(name=task.name, ok=False, error=why))
    return fut


class RayEngine(Engine):
    """One Ray task per run (`num_cpus=1`, retried up to `max_retries` times when its worker dies)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, max_retries: int = 2,
                 init_kwargs: dict[str, Any] | None = None):
        try:
            import ray
        except ImportError:
            raise RlauditError("--engine ray needs Ray: pip install 'rlaudit[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "ignore_reinit_error": True, **(init_kwargs or {})}
            if address:
                kwargs["address"] = address
            else:
                # a cluster of our own: its workers at the local engine's niceness (Ray's default is 15, below
                # everything else on the machine, so a shared machine starved the scan); a cluster we join
                # keeps its own setting
                os.environ.setdefault("RAY_worker_niceness", str(WORKER_NICENESS))
                if workers:
                    kwargs["num_cpus"] = workers
            ray.init(**kwargs)
        self.workers = int(ray.cluster_resources().get("CPU", workers or 1))
        self.address = address
        self._retries = max_retries
        self._remote = ray.remote(num_cpus=1, max_retries=max_retries)(run_task)

    def describe(self) -> str:
        return f"ray ({self.workers} CPUs{', ' + self.address if self.address else ', local cluster'})"

    def run(self, tasks: list[RunTask]) -> Iterator[tuple[RunTask, RunOutcome]]:
        ray = self.ray
        refs = {self._remote.remote(t): t for t in tasks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker or node: the run is tried next pass
                    outcome = RunOutcome(name=task.name, ok=False,
                                         error=f"ray task failed ({type(exc).__name__}): {str(exc)[:300]}")
                yield task, outcome

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[tuple[Any, Any, str]]:
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=self._retries)(fn)
        refs = {remote.remote(item): item for item in items}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                item = refs.pop(ref)
                try:
                    yield item, ray.get(ref), ""
                except Exception as exc:  # noqa: BLE001 - a lost worker or node
                    yield item, None, f"ray task failed ({type(exc).__name__}): {str(exc)[:300]}"

    def close(self) -> None:
        pass  # the cluster (or the local one ray.init started) lives as long as the driver


def make_engine(name: str = "local", workers: int | None = None, address: str | None = None) -> Engine:
    if name == "local":
        return LocalEngine(workers)
    if name == "inline":
        return InlineEngine()
    if name == "ray":
        return RayEngine(address=address, workers=workers)
    raise RlauditError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
