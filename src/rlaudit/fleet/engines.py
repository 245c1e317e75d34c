"""Where a pass's run tasks execute. Every engine runs `worker.run_task` unchanged: one task per run.

- `inline`: in the scanner's own process, one run after the other (tests, tiny fleets, debugging).
- `local` (default): a pool of worker processes on this machine (spawned, never forked: DuckDB and pyarrow
  hold threads), kept across passes so a pass does not pay for interpreter start-up.
- `ray`: one Ray task per run on a Ray cluster (`--address auto` joins a running cluster, `ray://host:10001`
  a remote one; none starts a local one). Needs the `ray` extra. Workers must see the store and the run
  directories at the same paths (a shared file system), and rlaudit importable (same image or `runtime_env`).

Results come back as tasks finish; a task whose worker died (a killed process, a lost Ray node) comes back as
a failed `RunOutcome`, and the run is simply tried again on the next pass: the store's ingest is atomic per
file, so nothing is lost or doubled.
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


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:  # below the trainers that may share the machine
        os.nice(5)
    except OSError:
        pass


class LocalEngine(Engine):
    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker)
        return self._pool

    def run(self, tasks: list[RunTask]) -> Iterator[tuple[RunTask, RunOutcome]]:
        if not tasks:
            return
        pool = self._executor()
        pending: dict[Future, RunTask] = {}
        todo = list(tasks)
        # Submit a bounded window: a pass over 1,000 runs does not queue 1,000 pickled tasks at once.
        while todo or pending:
            while todo and len(pending) < 2 * self.workers:
                task = todo.pop(0)
                try:
                    pending[pool.submit(run_task, task)] = task
                except BrokenProcessPool:
                    pending[_failed_future(task, "worker pool broken")] = task
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    outcome = RunOutcome(name=task.name, ok=False, error="worker process died (tried again "
                                         "next pass)")
                    self._reset()
                    pool = self._executor()
                except Exception as exc:  # noqa: BLE001
                    outcome = RunOutcome(name=task.name, ok=False, error=f"{type(exc).__name__}: {exc}")
                yield task, outcome

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

    def _reset(self) -> None:
        if self._pool is not None:
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
            elif workers:
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
