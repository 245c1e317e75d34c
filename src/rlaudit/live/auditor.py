"""The live audit loop shared by the TRL callback, the Python hooks and `rlaudit watch`.

Each training step brings new rows (appended by a hook, or ingested from trainer log files). `LiveAuditor.update`
then does two kinds of work, both with a cost that does not grow with the length of the run:

- *every step*, on the new step's rows only: the per-step detectors (`LiveConfig.every_step`, by default the CoT
  grading scan: did a grader see reasoning in this step? skipped for steps without grader inputs) and the
  tracking of behaviours already flagged (`tracking.BehaviorTracker`: per-condition prevalence counts, spread
  test);
- *every `every` steps* (and at the end), all detectors (emerging behaviours, attribution, generalization,
  the CoT screen...) on a bounded sample of the run (`sampling.StepSample`: first, evenly spread and latest
  steps), through a read-only `StoreView`, so they run unchanged; by default in a worker process at a lower
  CPU priority, so training neither waits for them nor shares the GIL with them.

Findings go to an `AlertManager`, which alerts once per finding key. Nothing here may stop training: every
public method catches exceptions, logs them (each distinct failure once, then counts it) and returns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import os
import threading
import time
import traceback
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from ..conditions import ConditionLabeler, ConditionRule
from ..detectors import DETECTORS, AuditConfig, Detector, ordered, run_detectors
from ..findings import Finding, rank
from ..readers import get_reader
from ..readers.base import BadRecord, ReadContext, Reader, ReadOptions, SourceFile, finalize
from ..store import IngestReport, Store
from .alerts import Alert, AlertManager, finding_key, make_alerts
from .sampling import PartIndex, StepSample, StoreView
from .tracking import BehaviorTracker
from .worker import WorkerExecutor

log = logging.getLogger("rlaudit.live")
T = TypeVar("T")


@dataclass
class LiveConfig:
    """What runs when. `detectors` (None: every registered detector) are the heavy ones, run every `every`
    steps on `sample`; `every_step` detectors run on each new step's rows alone. Detector options and the split
    are passed through `AuditConfig`."""

    every: int = 10
    detectors: list[str] | None = None
    every_step: tuple[str, ...] = ("cot_grading",)
    #: Option overrides for the per-step pass. The CoT screen is a statistical test: run on one step at a time
    #: it would be a new look every step (false alarms add up), so it runs only in the heavy pass.
    every_step_options: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"cot_grading": {"screen": False}})
    sample: StepSample = field(default_factory=StepSample)
    #: Where heavy audits run: "process" (default: a worker process at low CPU priority; training neither waits
    #: for them nor competes with them for the GIL), "thread" (a worker thread; shares the GIL), or None/False
    #: (in the caller, synchronously: deterministic, for tests and benchmarks).
    background: str | bool | None = "process"
    track: bool = True
    track_alpha: float = 0.01
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    split: str | None = "train"

    def __post_init__(self) -> None:
        from ..errors import RlauditError

        if self.every < 1:
            raise RlauditError(f"live audit interval must be >= 1 step, got {self.every}")
        if self.background is True:
            self.background = "process"
        if self.background not in ("process", "thread", None, False):
            raise RlauditError(f"background must be 'process', 'thread' or None, got {self.background!r}")


@dataclass
class StepTiming:
    step: int
    cheap: float  # seconds: per-step detectors + tracking
    heavy: float  # seconds the training thread spent on heavy audits (starting one in the background: ~0)
    rows: int  # new rows audited this update


def guarded(default: Any = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Catch, log (first time per distinct error) and count exceptions: rlaudit never breaks training."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def inner(self: Any, *args: Any, **kwargs: Any) -> T:
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the whole point: training goes on
                self.errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
                signature = (fn.__name__, type(exc).__name__, str(exc)[:200])
                if signature not in self._logged_errors:
                    self._logged_errors.add(signature)
                    log.error("rlaudit live %s failed (training continues): %s\n%s", fn.__name__, exc,
                              traceback.format_exc(limit=6))
                return default() if callable(default) else default

        return inner

    return wrap


class LiveAuditor:
    """Audits one run of a store while it grows. See the module doc for the schedule."""

    def __init__(self, store: Store | str, run: str, config: LiveConfig | None = None,
                 alerts: AlertManager | None = None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.run = run
        self.config = config or LiveConfig()
        self.alerts = alerts or make_alerts()
        self.index = PartIndex(self.store, run)
        self.tracker = BehaviorTracker(alpha=self.config.track_alpha, split=self.config.split)
        self.labeler = ConditionLabeler()
        self.findings: list[Finding] = []  # latest heavy findings plus every per-step finding seen
        self.timings: list[StepTiming] = []
        self.errors: list[str] = []
        self._logged_errors: set[tuple[str, str, str]] = set()
        self.heavy_runs: list[tuple[int, float]] = []  # (step audited, seconds) per heavy audit
        self._last_heavy: int | None = None
        self._fresh = False  # rows arrived since the last heavy audit started
        self._job: tuple[Future, int, Any] | None = None  # running background heavy audit, its step and lease
        self._executor: Executor | None = None
        self._thread_executor: Executor | None = None
        self._reported_errors: set[str] = set()
        self._spool: list[tuple[int, pa.Table, str]] = []  # (step, rows, key) the store could not take yet
        if self.config.background == "thread":
            _preload_kernels()
        self._spool_bytes = 0
        self.spool_limit = 512 << 20  # bytes kept in memory; older steps beyond it are dropped (and named)
        self.lost_steps: list[int] = []
        self.spool_dir: str | None = None
        self.store_error: str | None = None

    # ------------------------------------------------------------------ getting rows in
    @guarded()
    def append(self, step: int, table: pa.Table, key: str | None = None) -> int:
        """Store canonical rows of one step (key default 'live/step-<step>'); returns rows taken.

        A step the store cannot take (disk full, read-only or removed store) is spooled in memory and written
        on the next append, update or close; steps still unwritten are named in the findings (`audit_error`,
        problem `steps_not_stored`), and at close they are written to a spool directory outside the store."""
        self._spool.append((int(step), table, key or f"live/step-{int(step):08d}"))
        self._spool_bytes += table.nbytes
        self._flush_spool()
        return table.num_rows

    def _flush_spool(self) -> None:
        while self._spool:
            step, table, key = self._spool[0]
            try:
                self.store.append(self.run, table, key)
            except OSError as exc:
                if self.store_error is None:
                    log.error("rlaudit live: cannot write step %s to the store (%s); keeping it in memory and "
                              "retrying (training continues)", step, exc)
                    self.errors.append(f"store: cannot write step {step}: {type(exc).__name__}: {exc}")
                self.store_error = f"{type(exc).__name__}: {exc}"
                while self._spool_bytes > self.spool_limit and len(self._spool) > 1:
                    lost_step, lost, _ = self._spool.pop(0)
                    self._spool_bytes -= lost.nbytes
                    self.lost_steps.append(lost_step)
                return
            except Exception:
                self._spool.pop(0)  # a table the store rejects is not retried forever
                self._spool_bytes -= table.nbytes
                raise
            self._spool.pop(0)
            self._spool_bytes -= table.nbytes
        if self.store_error is not None:
            log.warning("rlaudit live: the store is writable again; spooled steps written")
        self.store_error = None

    def note_store_error(self, exc: BaseException | None) -> None:
        """For front ends that ingest files (watch): the store could not be written this time (None: it could)."""
        if exc is not None and self.store_error is None:
            log.error("rlaudit live: cannot write to the store (%s); retrying (training continues)", exc)
            self.errors.append(f"store: cannot write: {type(exc).__name__}: {exc}")
        self.store_error = None if exc is None else f"{type(exc).__name__}: {exc}"

    def missing_steps(self) -> list[int]:
        """Steps handed to `append` that the store does not hold: spooled (not yet written) or lost."""
        return sorted(set(self.lost_steps) | {s for s, _, _ in self._spool})

    def _gap_finding(self) -> Finding | None:
        missing = self.missing_steps()
        if not missing and self.store_error is None:
            return None
        where = f"steps {_ranges(missing)}" if missing else "new rows"
        lost = f"; {len(set(self.lost_steps))} step(s) were dropped from a full spool" if self.lost_steps else ""
        saved = f"; written to {self.spool_dir}" if self.spool_dir else ""
        return Finding(kind="audit_error", run=self.run, severity="medium",
                       title=f"{where} not stored ({self.store_error or 'store unavailable'}): audits do not "
                             f"see them",
                       explanation="The store could not be written (disk full, read-only or removed). Rows are "
                                   f"kept in memory and retried{lost}{saved}.",
                       fields={"problem": "steps_not_stored", "missing_steps": missing,
                               "lost_steps": sorted(set(self.lost_steps)), "error": self.store_error,
                               "spool_dir": self.spool_dir})

    def _spill(self) -> None:
        """At close: write what the store never took to a directory outside it (canonical Parquet, ingestible
        with `rlaudit ingest DIR --format canonical --run RUN`)."""
        if not self._spool:
            return
        import tempfile

        d = Path(os.environ.get("RLAUDIT_SPOOL_DIR") or tempfile.gettempdir()) / f"rlaudit-spool-{self.run}-{os.getpid()}"
        try:
            d.mkdir(parents=True, exist_ok=True)
            for step, table, key in self._spool:
                pq.write_table(table, d / (re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".parquet"))
            self.spool_dir = str(d)
            log.error("rlaudit live: %d step(s) could not be stored; written to %s", len(self._spool), d)
        except OSError as exc:
            log.error("rlaudit live: %d step(s) could not be stored nor spooled (%s): steps %s lost",
                      len(self._spool), exc, _ranges(self.missing_steps()))

    @guarded()
    def ingest(self, source: Any, format: str | None = None, options: ReadOptions | None = None,
               conditions: list[ConditionRule] | None = None) -> IngestReport | None:
        """Incrementally ingest trainer log files (only new or changed files are read)."""
        report = self.store.ingest(source, run=self.run, format=format, options=options, conditions=conditions,
                                   compact=False)
        if report.bad_records:
            log.warning("rlaudit: %d bad record(s) quarantined in %s (e.g. %s)", report.bad_records,
                        report.quarantine, "; ".join(report.bad_examples[:2]))
        return report

    @guarded()
    def read_file(self, format: str | Reader, file: SourceFile, options: ReadOptions | None = None) -> pa.Table | None:
        """Read one trainer log file with a registered reader (or a reader instance that holds run-level facts,
        like the TRL callback's) into canonical rows (bad records are logged)."""
        reader = get_reader(format) if isinstance(format, str) else format
        bad: list[BadRecord] = []
        ctx = ReadContext(run=self.run, options=options or ReadOptions(), labeler=self.labeler, on_bad=bad.append)
        tables = [finalize(raw, file, ctx) for raw in reader.read(file, ctx)]
        if bad:
            log.warning("rlaudit: %d bad record(s) in %s skipped (e.g. %s: %s)", len(bad), file.path,
                        bad[0].location, bad[0].reason)
        return pa.concat_tables(tables) if tables else None

    # ------------------------------------------------------------------ auditing
    @guarded(default=list)
    def update(self, step: int | None = None, final: bool = False) -> list[Alert]:
        """Audit what arrived since the last update; start the heavy detectors when due (or `final`)."""
        # A lease on the version read here: no part of it is deleted (by an ingest replacing a grown file) until
        # the cheap pass and, if one starts, the background heavy audit on it are done.
        if self._spool:
            with contextlib.suppress(Exception):
                self._flush_spool()
        gap = self._gap_finding()
        if gap is None:
            self.findings = [f for f in self.findings if f.get("problem") != "steps_not_stored"]
        alerts = self._publish([gap], step if step is not None else (self.index.max_step() or 0)) if gap else []
        lease = self.store.lease(self.run)
        try:
            return alerts + self._update(lease, step, final)
        finally:
            if self._job is None or self._job[2] is not lease:
                lease.release()

    def _update(self, lease: Any, step: int | None, final: bool) -> list[Alert]:
        started = time.perf_counter()
        new_parts = self.index.refresh(lease.manifest) if lease.manifest is not None else []
        latest = self.index.max_step()
        alerts: list[Alert] = []
        if latest is None:
            return alerts
        step = latest if step is None else min(int(step), latest)
        cheap: list[Finding] = []
        rows = sum(p.rows for p in new_parts)
        if new_parts:  # (tracking is tested only on new data: every test is a look that tightens the bound)
            self._fresh = True
            view = StoreView(self.store, self.run, [p.path for p in new_parts])
            cheap += self._every_step(view, step)
            cheap += self.tracker.check(self.run, step)
        alerts += self._publish(cheap, step)
        elapsed = time.perf_counter() - started
        t0 = time.perf_counter()
        alerts += self._collect(wait=final)
        due = final or self._last_heavy is None or step - self._last_heavy >= self.config.every
        if due and self._fresh and (self._job is None or final):
            self._fresh = False
            self._last_heavy = step
            chosen = self.config.sample.select(self.index.steps())
            paths = self.index.covering(chosen)
            if self.config.background and not final:
                names = self.config.detectors if self.config.detectors is not None else _registered()
                args = (self.store.root, self.run, paths, self._audit_config(step, names), ordered(names), chosen)
                job = self._pool(args).submit(heavy_audit, *args)
                self._job = (job, step, lease)
            else:
                alerts += self._absorb(step, self._heavy(step, paths, chosen))
        heavy = time.perf_counter() - t0
        self.timings.append(StepTiming(step=step, cheap=elapsed, heavy=heavy, rows=rows))
        return alerts

    def _every_step(self, view: StoreView, step: int) -> list[Finding]:
        found: list[Finding] = []
        names = [n for n in self.config.every_step if n in _registered() and self._applies(n, view)]
        if names:
            found += run_detectors(view, self.run, self._audit_config(step, names, self.config.every_step_options))
        if self.config.track and self.tracker.tracked:
            self.tracker.update(view, self.run)
        return found

    def _applies(self, detector: str, view: StoreView) -> bool:
        """Whether a per-step detector has anything to look at in the new rows. The CoT scan needs grader
        inputs (logged, or captured and merged); skipping it otherwise saves a database connection per step."""
        if detector != "cot_grading":
            return True
        from ..cot.capture import captured_inputs_path

        if captured_inputs_path(self.store, self.run).is_file():
            return True
        for path in view.parts(self.run):
            inputs = pq.read_table(path, columns=["grader_inputs"]).column("grader_inputs")
            if any(len(c) and c.offsets[-1].as_py() > c.offsets[0].as_py() for c in inputs.chunks):
                return True  # some row has at least one (grader, input) entry
        return False

    def _heavy(self, step: int, parts: list[Any], steps: list[int]) -> tuple[list[Finding], float]:
        names = self.config.detectors if self.config.detectors is not None else _registered()
        if not names:
            return [], 0.0
        return heavy_audit(self.store.root, self.run, parts, self._audit_config(step, names), ordered(names), steps)

    def _collect(self, wait: bool = False) -> list[Alert]:
        """Alerts from a finished background heavy audit (waiting for a running one when `wait`)."""
        if self._job is None:
            return []
        job, step, lease = self._job
        if not (wait or job.done()):
            return []
        self._job = None
        try:
            result = job.result()
            lease.release()
        except Exception as exc:  # noqa: BLE001 - a failed audit is logged; the next one is tried
            lease.release()
            self.errors.append(f"heavy audit: {type(exc).__name__}: {exc}")
            log.error("rlaudit live heavy audit failed (training continues): %s", exc)
            return []
        return self._absorb(step, result)

    def _absorb(self, step: int, result: tuple[list[Finding], float]) -> list[Alert]:
        found, seconds = result
        self.heavy_runs.append((step, seconds))
        if self.config.track:
            view = None
            for f in found:
                if f.kind == "emerging_behavior" and f.get("behavior_spec") not in self.tracker.tracked:
                    if view is None:
                        chosen = self.config.sample.select(self.index.steps())
                        view = StoreView(self.store, self.run, self.index.covering(chosen), chosen)
                    if self.tracker.follow(f, view, self.run):
                        log.info("rlaudit: now tracking '%s' every step", f.get("behavior") or f.get("behavior_spec"))
        return self._publish(found, step)

    def _publish(self, found: list[Finding], step: int) -> list[Alert]:
        self._report_errors(found)
        self._remember(found)
        return self.alerts.process(rank(found), step)

    def _pool(self, args: tuple = ()) -> Executor:
        """The executor for a heavy audit. A process is `worker.WorkerExecutor`: a fresh interpreter that never
        imports the trainer's `__main__` (spawn would re-run an unguarded training script; fork would copy a
        process holding torch / DuckDB threads). Detectors defined in `__main__` cannot reach such a process by
        reference: those audits run in a thread."""
        if self.config.background == "process" and WorkerExecutor.can_run(heavy_audit, *args):
            if self._executor is None:
                self._executor = WorkerExecutor()
            return self._executor
        if self._thread_executor is None:
            self._thread_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlaudit-audit",
                                                       initializer=_lower_priority)
        return self._thread_executor

    def _audit_config(self, step: int, detectors: list[str],
                      overrides: dict[str, dict[str, Any]] | None = None) -> AuditConfig:
        options = {name: dict(opts) for name, opts in self.config.options.items()}
        for name, opts in (overrides or {}).items():
            options.setdefault(name, {}).update(opts)
        return AuditConfig(max_step=step, split=self.config.split, detectors=detectors, options=options)

    def _remember(self, found: list[Finding]) -> None:
        """Keep the latest finding per key (what `findings` shows at any time)."""
        latest = {finding_key(f): f for f in self.findings}
        latest.update({finding_key(f): f for f in found})
        self.findings = rank(list(latest.values()))

    def _report_errors(self, found: list[Finding]) -> None:
        for f in found:
            if f.kind == "audit_error" and f.title not in self._reported_errors:
                self._reported_errors.add(f.title)
                log.warning("rlaudit live: %s (training continues)", f.title)

    @guarded(default=list)
    def close(self) -> list[Alert]:
        """Wait for a running heavy audit, run a final one on what the run holds, close the alert sinks."""
        try:
            if self._spool:
                with contextlib.suppress(Exception):
                    self._flush_spool()
                self._spill()
            return self.update(final=True)  # audits again only if rows arrived after the last heavy audit
        finally:
            for name in ("_executor", "_thread_executor"):
                executor = getattr(self, name)
                if executor is not None:
                    executor.shutdown(wait=True)
                    setattr(self, name, None)
            self.alerts.close()

    # ------------------------------------------------------------------ introspection
    def tracked_prevalence(self) -> dict[str, dict[str, float]]:
        return self.tracker.snapshot()


def heavy_audit(root: Any, run: str, parts: list[Any], config: AuditConfig,
                detectors: list[type[Detector]], steps: list[int] | None = None) -> tuple[list[Finding], float]:
    """Run detectors on a bounded view of a run (the rows of `steps` in `parts`; every row of them without):
    (findings, seconds). A plain function of picklable arguments, so it runs the same in the caller, a thread or
    a worker process. Detector classes travel by reference (module + name), so detectors registered at run time
    in the trainer process are known to the worker too."""
    t0 = time.perf_counter()
    for cls in detectors:
        if not any(d.name == cls.name for d in DETECTORS):
            DETECTORS.append(cls)
    view = StoreView(Store(root), run, parts, steps)
    return run_detectors(view, run, config), time.perf_counter() - t0


def _ranges(steps: list[int]) -> str:
    """'3-5, 9' for [3, 4, 5, 9]."""
    out: list[str] = []
    for s in steps:
        if out and int(out[-1].split("-")[-1]) == s - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ", ".join(out)


def _lower_priority() -> None:
    """Run the audit worker (and the threads it starts, e.g. DuckDB's) at a lower CPU priority than training:
    on a busy machine the trainer gets the cores first. Linux sets nice values per thread; elsewhere a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _registered() -> list[str]:
    return [d.name for d in ordered(None)] if DETECTORS else []


def _preload_kernels() -> None:
    """Load every compiled kernel (`kernels.preload`: the term sets', the style features', the CoT scan's,
    attribution's ranks; when numba is used) now, before training: a heavy audit in a background thread would
    otherwise import numba and load them there, holding the GIL for about half a second (several on a loaded
    machine) in the middle of a training step. A process audit loads them in its own interpreter."""
    from .. import kernels

    kernels.preload()
