"""Detectors: small modules with one job each, all called the same way.

A detector is a class with a `name`, the finding `kinds` it emits, the detectors it `requires` (whose findings
it reads, e.g. attribution traces the behaviours that emerging-behaviour discovery found) and
`detect(ctx) -> list[Finding]`. `DetectContext` gives it the store, the run, the audit config and the findings
of the detectors that ran before it. `run_detectors` runs every registered detector in dependency order and
isolates failures: a detector that crashes yields an `audit_error` finding instead of killing the audit.
"""

from __future__ import annotations

import functools
import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb

from ..findings import Finding

if TYPE_CHECKING:
    from ..derived.partstats import PartStats
    from ..memory import SharedJobs
    from ..store import Store


@dataclass
class AuditConfig:
    """Knobs shared by all detectors, plus per-detector options (`options[detector_name][key]`).

    `max_step` restricts every detector to steps <= max_step: how the benchmark measures detection latency and
    how live monitoring audits a run that is still growing.
    """

    max_step: int | None = None
    split: str | None = "train"
    detectors: list[str] | None = None  # None: all registered
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0

    def option(self, detector: str, key: str, default: Any) -> Any:
        return self.options.get(detector, {}).get(key, default)


@dataclass
class DetectContext:
    store: Store
    run: str
    config: AuditConfig
    findings: list[Finding] = field(default_factory=list)  # from detectors that ran earlier, this run
    # shared per-run scratch space; an item with a `users` attribute (detector names) is dropped, and closed if it
    # has `close()`, as soon as none of its users is still to run
    cache: dict[str, Any] = field(default_factory=dict)
    #: the kinds of per-part statistics this audit reads (`run_detectors` sets them from its detectors'
    #: `part_stats`): the first detector to ask for one computes the missing tables of all in one read of each part
    part_kinds: tuple[str, ...] = ()

    def part_stats(self, kind: str) -> PartStats:
        """This run's per-part statistics of `kind` (`rlaudit.derived.partstats`), computed where missing together with
        the other kinds of `part_kinds`."""
        from ..derived.partstats import part_stats

        return part_stats(self.store, self.run, kind, also=self.part_kinds)

    def connect(self, at_most: int | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection whose view `rollouts` holds this run's rows within the audit's step/split scope
        (the unfiltered rows stay available as `all_rollouts`); `at_most` as `Store.connect`."""
        # bound once, not renamed: see Store.connect
        con = self.store.connect([self.run], view="all_rollouts", at_most=at_most)
        con.execute(f"CREATE TEMP VIEW rollouts AS SELECT * FROM all_rollouts WHERE {self.scope_sql()}")
        # (over `rollouts`: cheap to bind on every connection, but it unnests `rewards` rebuilt as a map; a
        # detector that scans it over many rollouts asks `Store.rewards_view` for one read from the columns)
        con.execute(
            "CREATE OR REPLACE TEMP VIEW rewards_long AS SELECT run, rollout_id, step, group_id, condition, task, "
            "unnest(map_keys(rewards)) AS signal, unnest(map_values(rewards)) AS value FROM rollouts")
        return con

    def scope_sql(self) -> str:
        """The audit's step/split scope as a condition on `step` and `split` columns: of `rollouts`, and of
        derived tables that keep those keys (per-part statistics, cell tables)."""
        from ..derived.partstats import scope_sql

        return scope_sql(self.config.max_step, self.config.split)

    def option(self, detector: str, key: str, default: Any) -> Any:
        return self.config.option(detector, key, default)

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]


class Detector(ABC):
    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]
    description: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    #: the kinds of per-part statistics (`rlaudit.derived.partstats`) it reads through `DetectContext.part_stats`
    part_stats: ClassVar[tuple[str, ...]] = ()
    #: run right after the last of `requires` (it reads scratch they leave in `ctx.cache`, which is released once
    #: no later detector needs it: running it early frees that memory before the other detectors run)
    eager: ClassVar[bool] = False
    #: its `detect` is cheap once its `prefetch` has run: it reads cached per-part tables or scan results, not the
    #: parts. Where every detector still to run is light and the background thread has finished, `run_detectors`
    #: runs them on one more thread beside the one before them, whose end often runs on one core (attribution's
    #: evidence and bootstrap: at 1M rollouts ~0.8 s of its ~2.9), instead of after it
    light: ClassVar[bool] = False

    @abstractmethod
    def detect(self, ctx: DetectContext) -> list[Finding]:
        """Findings for `ctx.run`."""

    def prefetch(self, ctx: DetectContext) -> None:  # noqa: B027 - optional, a no-op by default
        """Optional: the part of `detect` that reads only the stored parts (never the findings of the detectors
        before it), which `run_detectors` runs in a background thread beside those detectors, before `detect`;
        it leaves its result in `ctx.cache` for `detect`, which must do the work itself where it finds none. It
        must touch only its own derived files and scratch."""


DETECTORS: list[type[Detector]] = []
#: per-part statistics an audit reads besides its detectors': the run summary and the report's curves
#: (`rlaudit.derived.runstats`), read after the detectors (`audit.audit_store`), so computed in the same read of
#: each part
AUDIT_PART_STATS = ("run_stats",)


def register(cls: type[Detector]) -> type[Detector]:
    if any(d.name == cls.name for d in DETECTORS):
        raise ValueError(f"detector {cls.name!r} registered twice")
    DETECTORS.append(cls)
    return cls


def ordered(names: list[str] | None = None) -> list[type[Detector]]:
    """Registered detectors (or the named ones plus what they require) in dependency order; all of them are taken
    by name, not in the order their modules registered them, which depends on what imported them first (a
    profiler that imported every module alphabetically ran cot_grading first and attribution last)."""
    by_name = {d.name: d for d in DETECTORS}
    wanted = sorted(by_name) if names is None else names
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        from ..errors import RlauditError

        raise RlauditError(f"unknown detector(s) {unknown}; known: {sorted(by_name)}")
    out: list[type[Detector]] = []

    def visit(name: str, stack: tuple[str, ...] = ()) -> None:
        if name in stack:
            raise ValueError(f"detector dependency cycle: {' -> '.join(stack + (name,))}")
        cls = by_name[name]
        if cls in out:
            return
        for dep in cls.requires:
            visit(dep, stack + (name,))
        out.append(cls)

    for n in wanted:
        visit(n)
    for cls in [c for c in out if c.eager and c.requires]:
        out.remove(cls)
        at = max(i for i, c in enumerate(out) if c.name in cls.requires)
        out.insert(at + 1, cls)
    return out


def run_detectors(store: Store, run: str, config: AuditConfig | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> list[Finding]:
    """Run the configured detectors on one run; a crashing detector becomes an `audit_error` finding.

    `progress(detector, done, total)` is called before each detector starts (done = detectors finished so far)
    and once at the end with detector "" and done == total, for progress bars in front ends.
    """
    from ..memory import cap_malloc_arenas

    cap_malloc_arenas()  # for library callers that skipped `memory.prepare()` (a no-op after it)
    config = config or AuditConfig()
    classes = ordered(config.detectors)
    kinds = [k for c in classes for k in c.part_stats]
    kinds += AUDIT_PART_STATS if kinds else ()
    ctx = DetectContext(store=store, run=run, config=config, part_kinds=tuple(dict.fromkeys(kinds)))
    _return_freed_memory()  # what ingest, a summary or the last audit's report freed (a long-lived process)
    background = _Background.start(ctx, classes)
    try:
        _run_each(ctx, classes, progress, background)
    finally:
        if background is not None:
            background.join()
    if progress:
        progress("", len(classes), len(classes))
    return ctx.findings


class _Background:
    """An audit's work on the stored parts alone, run in one background thread beside the detectors: the per-part
    statistics (`partstats`, for the first detector that reads them and every one after) and each later
    detector's `prefetch`, in the detectors' order. The detectors leave a core idle for stretches (emerging's
    single-threaded steps: ~2.8 of its ~9 s at 1M rollouts on 2 cores); this work fills them instead of running
    after them. It runs with `memory.at_most(1)` worker (a pool of its own would add its memory to the running
    detector's peak), and only where the budget gives a second worker. A detector whose turn comes before its
    prefetch started does the work itself, on every worker (`wait`). A failure here is dropped: the detector then
    computes what it needs itself and meets the error there."""

    def __init__(self, jobs: list[tuple[str, Callable[[], None]]]):
        self.jobs = jobs
        self.state = {name: "pending" for name, _ in jobs}
        self.done = {name: threading.Event() for name, _ in jobs}
        self.shared: dict[str, list[SharedJobs]] = {name: [] for name, _ in jobs}  # (`memory.sharing`)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="rlaudit-background", daemon=True)

    @classmethod
    def start(cls, ctx: DetectContext, classes: list[type[Detector]]) -> _Background | None:
        from ..derived.partstats import BATCH_MEMORY, part_stats
        from ..memory import workers

        if workers(BATCH_MEMORY) < 2:
            return None
        jobs: list[tuple[str, Callable[[], None]]] = []
        first = next((i for i, c in enumerate(classes) if c.part_stats), None)
        if first and getattr(ctx.store, "persist_derived", True):  # (else each kind is computed when asked)
            kinds = ctx.part_kinds
            jobs.append(("", lambda: part_stats(ctx.store, ctx.run, kinds[0], also=kinds)))
        for later in classes[1:]:  # the first detector would only wait for its own
            if later.prefetch is not Detector.prefetch:
                jobs.append((later.name, functools.partial(later().prefetch, ctx)))
        if not jobs:
            return None
        out = cls(jobs)
        out.thread.start()
        return out

    def _work(self) -> None:
        from ..memory import at_most, sharing

        with at_most(1):
            for name, job in self.jobs:
                with self.lock:
                    if self.state[name] != "pending":  # its detector's turn came first, or the audit stopped
                        continue
                    self.state[name] = "running"
                try:
                    with sharing(self.shared[name]):
                        job()
                except Exception:  # noqa: BLE001,S110 - the detector computes it again and reports the error
                    pass
                finally:
                    with self.lock:
                        self.state[name] = "done"
                    self.done[name].set()

    def running(self, detector: str) -> bool:
        """Whether `detector`'s prefetch is running now."""
        return self.state.get(detector) == "running"

    def wait(self, detector: str) -> None:
        """Return once `detector`'s prefetch has finished, or at once where it has none or has not started (it
        is then left to the detector). Meanwhile this thread works on the jobs the prefetch shares
        (`memory.shared_jobs`: the CoT scan's parts) instead of idling: the light detectors' thread waited ~6 s
        on one core at 10M rollouts while the background thread scanned the last parts alone."""
        with self.lock:
            if self.state.get(detector) == "pending":
                self.state[detector] = "skipped"
                return
        if detector in self.done:
            while not self.done[detector].wait(0.05):
                for jobs in list(self.shared[detector]):
                    jobs.help()

    def finish(self, unless: threading.Event) -> None:
        """Wait until the thread has run every job, or `unless` is set (checked every 20 ms)."""
        while not unless.is_set() and self.thread.is_alive():
            self.thread.join(0.02)

    def join(self) -> None:
        """Wait for the thread, skipping the jobs not started (an audit that failed does not need them)."""
        with self.lock:
            for name, state in self.state.items():
                if state == "pending":
                    self.state[name] = "skipped"
        self.thread.join()


def _run_each(ctx: DetectContext, classes: list[type[Detector]],
              progress: Callable[[str, int, int], None] | None, background: _Background | None) -> None:
    """Run `classes` in their order, except that a detector whose prefetch is still running in `background` lets a
    later one run first where it can (`_next`), and that the light detectors at the end run on a thread of their
    own beside the detector before them (`_beside`); `ctx.findings` ends in the detectors' order all the same."""
    pending = list(classes)
    found_by: dict[str, list[Finding]] = {}
    while pending:
        cls = _next(pending, found_by, background)
        pending.remove(cls)
        if progress:  # before a thread beside it starts: a front end sees this detector, then those beside it
            progress(cls.name, len(found_by), len(classes))
        beside = _beside(cls, pending) if background is not None else []
        helper, heavy_done = None, threading.Event()
        if beside:
            for later in beside:
                pending.remove(later)
            still = {cls.name} | {c.name for c in pending}  # what the helper must not release (`_run_light`)
            helper = threading.Thread(target=_run_light, args=(ctx, beside, progress, background, found_by,
                                                               len(classes), heavy_done, still),
                                      name="rlaudit-light", daemon=True)
            helper.start()
        try:
            _run_one(ctx, cls, None, background, found_by, len(classes))
        finally:
            heavy_done.set()
            if helper is not None:
                helper.join()
        # release shared scratch (e.g. the term-set scope of emerging/generalization) once no detector still to
        # run uses it: it can hold a large DuckDB table, and the detectors after it need the memory
        _release_scratch(ctx.cache, {c.name for c in pending})
        _return_freed_memory()
    ctx.findings[:] = [f for c in classes for f in found_by[c.name]]


def _beside(running: type[Detector], pending: list[type[Detector]]) -> list[type[Detector]]:
    """The detectors of `pending` to run beside `running`: all of them, where each is light and none needs
    `running`'s findings; else none (a heavy detector beside another would add its memory to the other's peak).
    `_run_each` asks only where a background thread computes (else one worker is all the budget gives), and the
    light ones start once it has finished (`_run_light`: their prefetches are done, and no third thread computes
    beside the two)."""
    if running.light or not all(c.light and running.name not in c.requires for c in pending):
        return []
    return list(pending)


def _run_light(ctx: DetectContext, classes: list[type[Detector]], progress: Callable[[str, int, int], None] | None,
               background: _Background | None, found_by: dict[str, list[Finding]], total: int,
               heavy_done: threading.Event, still: frozenset[str] | set[str] = frozenset()) -> None:
    """Run light detectors on this thread, with one worker (`memory.at_most`), once `background` has run every
    job or the detector they run beside has finished (`heavy_done`; a prefetch not started by then is theirs to
    do, as on the main thread): beside another detector, they fill the core it leaves idle instead of starting
    pools of their own. Waiting here, not before the heavy detector starts, lets them run as soon as the
    background thread's core is free: the 1M benchmark's background CoT scan ended during attribution, and the
    light ones then ran alone on one core (~0.4 s) after it. In `_next`'s order, as on the main thread: where the
    heavy one ends first, one whose prefetch still runs lets the others go (at 10M rollouts, in their given order
    the reward rollup waited for the CoT scan: ~10 s on one core). After each, the scratch that none of them
    still to run nor the detectors of `still` (the one beside, those after it) uses is released at once: the
    term-set scope once generalization has run, not when the detector beside ends."""
    from ..memory import at_most

    if background is not None:
        background.finish(heavy_done)
    with at_most(1):
        pending = list(classes)
        while pending:  # as `_run_each` orders them: one whose prefetch still runs lets the others go first
            cls = _next(pending, found_by, background)
            pending.remove(cls)
            _run_one(ctx, cls, progress, background, found_by, total)
            _release_scratch(ctx.cache, {c.name for c in pending} | set(still))


def _run_one(ctx: DetectContext, cls: type[Detector], progress: Callable[[str, int, int], None] | None,
             background: _Background | None, found_by: dict[str, list[Finding]], total: int) -> None:
    """Run one detector (after its prefetch, where that is running) and record its findings; a detector that raises
    yields an `audit_error` finding instead."""
    if progress:
        progress(cls.name, len(found_by), total)
    try:
        if background is not None:
            background.wait(cls.name)
        found = cls().detect(ctx)
    except Exception as exc:  # noqa: BLE001 - one broken detector must not hide the others' findings
        found = [Finding(
            kind="audit_error", run=ctx.run, severity="low", title=f"detector {cls.name} failed: {exc}",
            explanation="The detector raised an exception; its checks did not run on this run.",
            fields={"detector": cls.name, "traceback": traceback.format_exc(limit=8)})]
    found_by[cls.name] = found
    ctx.findings.extend(found)  # (one list operation: a detector on the other thread reads whole lists)


def _next(pending: list[type[Detector]], ran: dict[str, Any], background: _Background | None) -> type[Detector]:
    """The first of `pending` whose requirements have run, unless its prefetch is running in `background`: then
    the first such one whose prefetch is not (it does its own work, on every worker, beside the background
    thread), so that the audit never waits on one core while a detector could run. (A run of 10M rollouts: the
    background thread was still scanning for the CoT detector when its turn came, and the audit waited 14 s on
    one core, then as long again for the reward rollup.)"""
    ready = [c for c in pending if all(r in ran for r in c.requires)]
    if background is None:
        return ready[0]
    free = [c for c in ready if not background.running(c.name)] or ready
    # a heavy detector first where every other one can run beside it (`_beside`): the light ones then fill the
    # core it leaves idle instead of running alone before it (generalization on one core before attribution:
    # ~0.5 s at 1M rollouts with the other core idle)
    return next((c for c in free if _beside(c, [p for p in pending if p is not c])), free[0])


def _release_scratch(cache: dict[str, Any], later: set[str]) -> None:
    """Drop (and close) the items of `cache` whose users are none of the detectors still to run (`later`).

    A function of its own so that no reference to a dropped item outlives it: a loop variable left in
    `run_detectors` kept the last item dropped (the emerging scope, with the run's per-step term counts: 2.2 GB
    at 15,625 steps) alive through every detector after it."""
    for key in list(cache):
        users = getattr(cache[key], "users", None)
        if users is not None and not later & set(users):
            item = cache.pop(key)
            if hasattr(item, "close"):
                item.close()


def _return_freed_memory() -> None:
    """Hand memory freed by a detector back to the OS (glibc keeps freed heap pages for reuse, Arrow's
    pool its freed segments): the next detector starts from what is live, not from the last one's high-water
    mark. A no-op where glibc is absent."""
    global _malloc_trim
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


# Registration order is irrelevant (dependencies decide), but every detector module must be imported here,
# one import line per module. A family's detector lives with its family (attribution/, cot/).
from ..attribution import detector as attribution_detector  # noqa: E402,F401
from ..cot import detector as cot_grading_detector  # noqa: E402,F401
from . import emerging  # noqa: E402,F401
from . import generalization  # noqa: E402,F401
from . import monitorability  # noqa: E402,F401
from . import reward_health  # noqa: E402,F401
from . import training_health  # noqa: E402,F401

__all__ = ["AuditConfig", "DetectContext", "Detector", "DETECTORS", "register", "ordered", "run_detectors"]
