"""The fleet scanner: passes over every run under some roots, incremental, resumable, alerting once per finding.

A pass:

1. delivers alerts a killed scanner left in the outbox (`state`);
2. mirrors object-store roots (`objectstore`) and discovers runs by layout (`discovery`; known runs are not
   detected again);
3. picks the runs that need work: those whose rollout files changed (a signature of file names, sizes and
   mtimes: one stat per file, nothing read), those with unaudited steps that went quiet (their final heavy
   audit), and those that failed last time; every other run costs nothing;
4. runs one task per picked run on the engine (`worker.run_task`: ingest what is new, cheap checks on the new
   steps, heavy detectors when `every` steps arrived or the run went quiet);
5. as each result arrives: saves the run's state, deduplicates its findings against every alert ever sent (by
   `finding_key`: kind + run + what it is about; a rise in severity alerts again) and sends new alerts;
6. writes the fleet report (`--report`) and the pass summary.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RlauditError
from ..findings import SEVERITIES, SEVERITY_RANK, Finding, rank
from ..live.alerts import Alert, AlertManager, JsonlSink, WebhookSink, finding_key
from .discovery import NO_FILES, discover_all, source_signature
from .engines import Engine, InlineEngine
from .objectstore import ObjectMirror, is_remote
from .state import FleetState, RunState
from .worker import RunOutcome, RunTask

log = logging.getLogger("rlaudit.fleet")


@dataclass
class FleetConfig:
    every: int = 10  # heavy detectors every N new steps of a run
    detectors: list[str] | None = None
    split: str | None = "train"
    min_severity: str = "medium"
    report: Path | None = None
    run_reports: bool = True  # one HTML report per run next to the fleet page (rewritten when its findings change)
    report_url: str | None = None  # base URL the report directory is served at (links in chat alerts)
    s3_endpoint: str | None = None
    mirror: Path | None = None  # where object-store roots are mirrored (default: <store>-mirror beside the store)
    #: A run without new data for `idle_after` seconds is listed only every `idle_every` passes (finished runs
    #: then cost one listing per `idle_every` passes). None: every run is listed every pass.
    idle_after: float | None = None
    idle_every: int = 10
    #: A run with more new rows than this in one pass (a huge run found cold, or a big catch-up) is audited in
    #: step-range shards spread over the engine (`shard.sharded_audit`: the findings of an unsharded full audit)
    #: instead of by one task. None: never.
    shard_rows: int | None = 1_000_000


@dataclass
class PassResult:
    number: int
    seconds: float = 0.0
    runs: int = 0
    audited: int = 0
    skipped: int = 0  # unchanged runs: no task
    failed: int = 0
    new_runs: int = 0
    rows_added: int = 0
    heavy: int = 0  # runs whose heavy detectors ran
    alerts: list[Alert] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # run or root -> error
    timings: dict[str, float] = field(default_factory=dict)  # sync, discover, tasks, report
    cpu: float = 0.0  # CPU seconds the run tasks took (all engines report their workers' process time)
    synced: dict[str, dict[str, int]] = field(default_factory=dict)  # object-store root -> objects, downloaded...
    missing: int = 0  # runs whose source is gone (status `missing`)
    gone: list[str] = field(default_factory=list)  # runs that went missing this pass
    back: list[str] = field(default_factory=list)  # missing runs whose source came back this pass
    forgotten: list[str] = field(default_factory=list)  # missing runs `runs rm` removed from the store
    replaced: list[str] = field(default_factory=list)  # missing runs whose path came back holding another run
    retried: list[str] = field(default_factory=list)  # runs whose task died and was retried within this pass
    sharded: dict[str, int] = field(default_factory=dict)  # run -> shards it was audited in this pass

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "seconds": round(self.seconds, 3), "runs": self.runs,
                "audited": self.audited, "skipped": self.skipped, "failed": self.failed, "new_runs": self.new_runs,
                "rows_added": self.rows_added, "heavy": self.heavy, "alerts": len(self.alerts),
                "cpu": round(self.cpu, 3), "errors": self.errors, "synced": self.synced,
                "missing": self.missing, "gone": self.gone, "back": self.back, "forgotten": self.forgotten,
                "replaced": self.replaced, "retried": self.retried, "sharded": self.sharded,
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "finished": time.time()}


class _NullSink:
    def send(self, alert: Alert) -> None:
        pass

    def close(self) -> None:
        pass


class FleetScanner:
    """Scans the runs under `roots` into the store at `store` (see the module doc)."""

    def __init__(self, store: str | Path, roots: Sequence[str | Path], engine: Engine | None = None,
                 alerts: AlertManager | None = None, config: FleetConfig | None = None):
        self.store_root = Path(store).resolve()
        self.roots = [str(r) for r in roots]
        if not self.roots:
            raise RlauditError("give at least one ROOT (a directory or an s3:// prefix)")
        for r in self.roots:
            if not is_remote(r) and not Path(r).is_dir():
                raise RlauditError(f"{r}: not a directory (a fleet ROOT is a directory holding runs, or an "
                                   "s3:// prefix)")
        self.engine = engine or InlineEngine()
        self.alerts = alerts or AlertManager([_NullSink()])
        self.config = config or FleetConfig()
        self.state = FleetState(self.store_root)
        # Beside the store, never inside it: the store's ingest skips files inside the store itself.
        self._mirror_root = Path(self.config.mirror or self.store_root.with_name(self.store_root.name + "-mirror"))
        self._mirrors = {r: ObjectMirror(r, self._mirror_root, self.config.s3_endpoint)
                         for r in self.roots if is_remote(r)}
        self._dedup = AlertManager([_NullSink()], min_severity=self.config.min_severity)
        self._dedup.sent = self.state.sent  # one dict: what was ever sent, saved with the state
        self._saved = 0.0

    # ------------------------------------------------------------------ a pass
    def run_pass(self, final: bool = False) -> PassResult:
        """One pass over the fleet. `final`: run due heavy audits of every changed run now (a one-shot scan)."""
        t0 = time.perf_counter()
        state = self.state
        result = PassResult(number=state.passes + 1)
        self._deliver_outbox()
        self._clear_attempts(result.number)
        roots, origins = self._local_roots(result)
        t1 = time.perf_counter()
        known = {r.source: r.format for r in state.runs.values()}
        found = discover_all(roots, known=known, skip=[self.store_root, self._mirror_root])
        result.timings["discover"] = time.perf_counter() - t1
        result.runs = len(found)
        tasks: list[RunTask] = []
        signatures: dict[str, str] = {}
        self._forgotten(result)
        listed = {label for label, _ in roots if label not in result.errors}
        self._mark_gone({src.name for src in found}, listed, result)
        for src in found:
            rs = state.runs.get(src.name)
            if rs is None or rs.source != src.source:
                origin = next((m.origin(src.source) for root, m in origins.items() if src.root == root), "")
                rs = RunState(name=src.name, source=src.source, format=src.format, root=src.root, origin=origin)
                state.runs[src.name] = rs
                result.new_runs += 1
            if self._idle(rs, result.number):
                continue
            sig = source_signature(src.source, src.format)
            signatures[src.name] = sig
            if sig == NO_FILES:  # a known run directory emptied (an object store's deleted objects)
                self._missing(rs, result)
                continue
            if rs.status == "missing":
                if self._replaced(rs):  # another run now lives at that path: start afresh
                    self._restart(rs, result)
                    rs = RunState(name=src.name, source=src.source, format=src.format, root=src.root,
                                  origin=rs.origin)
                    state.runs[src.name] = rs
                    result.new_runs += 1
                else:
                    self._back(rs, result)
            changed = sig != rs.signature
            if changed or rs.status == "error":
                tasks.append(self._task(rs, ingest=True, final=final))
            elif rs.pending:  # quiet now, with steps no heavy audit has seen: the final audit
                tasks.append(self._task(rs, ingest=False, final=True))
        result.skipped = result.runs - len(tasks)
        state.save()
        t2 = time.perf_counter()
        deferred: list[tuple[RunTask, RunOutcome]] = []
        try:
            for task, outcome in self.engine.run(tasks):
                if outcome.ok and outcome.deferred:  # a huge run: ingested; audited in shards below
                    deferred.append((task, outcome))
                    continue
                self._absorb(task, outcome, signatures.get(task.name, ""), result)
            for task, outcome in deferred:
                self._absorb(task, self._sharded(task, outcome, result), signatures.get(task.name, ""), result)
        except Exception as exc:  # noqa: BLE001 - a lost engine (Ray head gone): this pass ends, the next retries
            result.errors["engine"] = f"{type(exc).__name__}: {exc}"
            log.error("fleet: engine %s failed mid-pass: %s", self.engine.name, exc)
        result.timings["tasks"] = time.perf_counter() - t2
        self._flush_sinks()
        state.outbox.clear()
        t3 = time.perf_counter()
        if self.config.report:
            from .report import write_fleet_report

            try:
                write_fleet_report(self, self.config.report)
            except Exception as exc:  # noqa: BLE001 - the report never stops the scan
                result.errors["report"] = f"{type(exc).__name__}: {exc}"
                log.error("fleet report failed: %s", exc)
        result.timings["report"] = time.perf_counter() - t3
        result.seconds = time.perf_counter() - t0
        state.passes = result.number
        state.last_pass = result.to_json()
        state.save()
        return result

    # ------------------------------------------------------------------ runs whose source went away
    def _mark_gone(self, found: set[str], listed: set[str], result: PassResult) -> None:
        """Runs no longer found under a root that was listed this pass are `missing`. Runs under a root that
        could not be listed (an unreachable bucket, an unmounted disk) keep their status: absence of evidence."""
        for name, rs in self.state.runs.items():
            if name in found:
                continue
            if rs.status == "missing":
                result.missing += 1
                continue
            root_ok = rs.root in listed and (is_remote(rs.root) or Path(rs.root).is_dir())
            if root_ok:
                self._missing(rs, result)

    def _missing(self, rs: RunState, result: PassResult) -> None:
        """Mark a run whose source is gone: it keeps its rows in the store and its open findings (`fleet status`
        and the page show it as `missing`), costs nothing more, and is resumed if its source comes back."""
        result.missing += 1
        if rs.status == "missing":
            return
        log.warning("fleet: run %s is missing: its source %s is gone (findings kept; `rlaudit fleet forget %s` "
                    "drops it)", rs.name, rs.origin or rs.source, rs.name)
        rs.status, rs.error = "missing", f"source gone: {rs.origin or rs.source}"
        rs.missing_since = time.time()
        rs.pending = False  # nothing more will arrive to audit
        result.gone.append(rs.name)

    def _back(self, rs: RunState, result: PassResult) -> None:
        """A missing run whose source is back: the usual signature test decides whether it is read again (the
        store reads only files it has not got; rows of files that did not come back stay stored)."""
        log.warning("fleet: run %s is back (%s)", rs.name, rs.origin or rs.source)
        rs.status, rs.error, rs.missing_since = "ok", "", 0.0
        rs.reappeared += 1
        result.back.append(rs.name)

    def _replaced(self, rs: RunState) -> bool:
        """Whether the source that came back is another run: none of the files the store read from it is there
        with the size it had (a run restarted from scratch at the same path). A restored copy of the same logs
        keeps its files' sizes."""
        import os

        from ..readers import get_reader
        from ..store import Store

        store = Store(self.store_root)
        if not store.has_run(rs.name):
            return False
        try:
            recorded = {rel: e.get("size") for rel, e in store.manifest(rs.name)["files"].items() if e.get("size")}
            files = get_reader(rs.format).files(Path(rs.source))
        except Exception:  # noqa: BLE001 - unreadable: the run task reports it
            return False
        if not recorded or not files:
            return False
        for f in files:
            try:
                if recorded.get(f.relpath) == os.stat(f.path).st_size:
                    return False
            except OSError:
                continue
        return True

    def _restart(self, rs: RunState, result: PassResult) -> None:
        """Forget a missing run whose path now holds another run (its rows, findings and alert keys), so the new
        run is read from scratch and alerted afresh, never mixed with the old one's rows."""
        from ..store import Store

        log.warning("fleet: run %s came back with none of its files: another run at %s; the old one's rows and "
                    "findings are dropped", rs.name, rs.origin or rs.source)
        store = Store(self.store_root)
        if store.has_run(rs.name):
            store.delete(rs.name)
        self.state.forget(rs.name)
        result.replaced.append(rs.name)

    def _forgotten(self, result: PassResult) -> None:
        """Missing runs removed from the store with `rlaudit runs rm` are dropped from the fleet state too."""
        from ..store import Store

        store = Store(self.store_root)
        for name in [n for n, rs in self.state.runs.items() if rs.status == "missing" and not store.has_run(n)]:
            log.warning("fleet: run %s was removed from the store; forgotten", name)
            self.state.forget(name)
            result.forgotten.append(name)

    def _idle(self, rs: RunState, number: int) -> bool:
        """Whether to leave a quiet run unlisted this pass (see `FleetConfig.idle_after`)."""
        cfg = self.config
        if cfg.idle_after is None or rs.status != "ok" or rs.pending or not rs.signature:
            return False
        return time.time() - max(rs.last_change, rs.first_seen) > cfg.idle_after and number % cfg.idle_every != 0

    def _local_roots(self, result: PassResult) -> tuple[list[tuple[str, Path]], dict[str, ObjectMirror]]:
        roots: list[tuple[str, Path]] = []
        t = time.perf_counter()
        for r in self.roots:
            mirror = self._mirrors.get(r)
            if mirror is None:
                roots.append((r, Path(r)))
                continue
            try:
                sync = mirror.sync()
                result.synced[r] = {"objects": sync.objects, "downloaded": sync.downloaded,
                                    "deleted": sync.deleted, "bytes": sync.bytes}
                log.info("fleet: %s: %d objects, %d downloaded (%d bytes), %d deleted", r, sync.objects,
                         sync.downloaded, sync.bytes, sync.deleted)
                roots.append((r, mirror.local))
            except Exception as exc:  # noqa: BLE001 - an unreachable bucket costs its runs, not the scan
                result.errors[r] = f"{type(exc).__name__}: {exc}"
                log.error("fleet: cannot sync %s: %s", r, exc)
                if mirror.local.is_dir():  # audit what was mirrored before
                    roots.append((r, mirror.local))
        result.timings["sync"] = time.perf_counter() - t
        return roots, self._mirrors

    def _task(self, rs: RunState, ingest: bool, final: bool) -> RunTask:
        detail = self.state.run_detail(rs.name)
        return RunTask(store=str(self.store_root), name=rs.name, source=rs.source, format=rs.format,
                       every=self.config.every, final=final, ingest=ingest, detectors=self.config.detectors,
                       split=self.config.split, memory=detail.get("memory", {}),
                       attempt_log=str(self.attempt_log(rs.name, self.state.passes + 1)),
                       shard_rows=self.config.shard_rows if ingest else None)

    def _sharded(self, task: RunTask, ingested: RunOutcome, result: PassResult) -> RunOutcome:
        """Audit a run the worker only ingested (more new rows than `shard_rows`) in step-range shards on the
        engine, then let the run's live auditor adopt the findings (`worker._advance`, in this process: it reads
        Parquet footers only). Shards of about `shard_rows` rows, at least one per engine worker."""
        import dataclasses
        import math

        from ..detectors import AuditConfig
        from ..store import Store
        from .shard import sharded_audit
        from .worker import run_task

        cfg = self.config
        shards = max(self.engine.workers, math.ceil(ingested.new_rows / max(1, cfg.shard_rows or 1)))
        # the fleet's per-step detector (the CoT-grading scan) is part of every pass: keep it in the full audit
        names = None if cfg.detectors is None else sorted(set(cfg.detectors) | {"cot_grading"})
        c0 = time.process_time()
        try:
            got = sharded_audit(Store(self.store_root), task.name, self.engine, shards,
                                AuditConfig(split=cfg.split, detectors=names))
        except Exception as exc:  # noqa: BLE001 - the run is tried again next pass (its rows are stored)
            return RunOutcome(name=task.name, ok=False, error=f"sharded audit failed: {type(exc).__name__}: {exc}",
                              host=ingested.host, seconds=ingested.seconds)
        cpu = time.process_time() - c0 + (0.0 if isinstance(self.engine, InlineEngine) else
                                          got.seconds.get("cpu_shards", 0.0))
        result.sharded[task.name] = len(got.plan)
        failed = [r.index for r in got.shards if not r.ok]
        log.warning("fleet: run %s: %d new rows audited in %d shard(s) in %.1f s%s", task.name, ingested.new_rows,
                    len(got.plan), got.seconds["total"],
                    f" (shards {failed} failed: the driver scanned their parts)" if failed else "")
        done = run_task(dataclasses.replace(task, ingest=False, attempt_log="",
                                            sharded=[f.to_json() for f in got.result.findings]))
        done.rows_added, done.files_read, done.files_skipped = (ingested.rows_added, ingested.files_read,
                                                                ingested.files_skipped)
        done.bad_records, done.attempts = ingested.bad_records, ingested.attempts
        done.seconds.update(ingest=ingested.seconds.get("ingest", 0.0), shards=got.seconds["shards"],
                            detectors=got.seconds["detectors"], shards_n=float(len(got.plan)))
        done.seconds["cpu"] = done.seconds.get("cpu", 0.0) + ingested.seconds.get("cpu", 0.0) + cpu
        return done

    def attempt_log(self, run: str, number: int) -> Path:
        """Where the attempts at `run`'s task of pass `number` note their pid (`worker._note_attempt`)."""
        return self.state.root / "attempts" / f"{number}-{run}.jsonl"

    def _clear_attempts(self, number: int) -> None:
        """Attempt logs of earlier passes (a scanner killed before it read them) are stale."""
        folder = self.state.root / "attempts"
        if folder.is_dir():
            for f in folder.iterdir():
                if not f.name.startswith(f"{number}-"):
                    f.unlink(missing_ok=True)

    def _failed(self, rs: RunState, why: str, number: int) -> None:
        """Count a failed or dead attempt at the run's task; `fleet status` shows the last one."""
        rs.failures += 1
        rs.last_failure, rs.last_failure_at = f"pass {number}: {why}"[:500], time.time()

    # ------------------------------------------------------------------ results
    def _absorb(self, task: RunTask, outcome: RunOutcome, signature: str, result: PassResult) -> None:
        state = self.state
        rs = state.runs[task.name]
        now = time.time()
        rs.last_audit = now
        rs.host = outcome.host
        rs.seconds = {k: round(v, 3) for k, v in outcome.seconds.items()}
        result.cpu += outcome.seconds.get("cpu", 0.0)
        if task.attempt_log:
            Path(task.attempt_log).unlink(missing_ok=True)
        for dead in outcome.attempts:  # attempts whose worker died; the engine ran the task again
            self._failed(rs, f"worker pid {dead.get('pid')} on {dead.get('host')} died mid-task; the "
                         f"{self.engine.name} engine ran the task again", result.number)
        if outcome.attempts and outcome.ok:
            result.retried.append(task.name)
            log.warning("fleet: run %s: %d attempt(s) died, retried within the pass", task.name,
                        len(outcome.attempts))
        if not outcome.ok:
            self._failed(rs, outcome.error, result.number)
            rs.status, rs.error = "error", outcome.error
            result.failed += 1
            result.errors[task.name] = outcome.error
            log.error("fleet: run %s failed: %s", task.name, outcome.error)
            self._save(throttle=1.0)
            return
        result.audited += 1
        result.rows_added += outcome.rows_added
        detail = state.run_detail(task.name)
        found = [Finding.from_json(f) for f in outcome.findings]
        # Order matters for a kill at any point: (1) new alerts are recorded as sent, with the alerts in the outbox,
        # while the run's saved signature is still the old one; (2) the run's memory is saved; (3) its summary
        # (new signature) is saved; (4) the alerts are delivered. Killed before (2), the run is redone from its old
        # memory and finds the same findings, already sent; killed later, the outbox is delivered on restart.
        last_step = outcome.steps[1] if outcome.steps else None
        new = self._dedup.process(found, last_step)
        if new:
            state.outbox.extend(a.to_json() for a in new)
            self._save()
        open_ = {finding_key(f): f for f in (Finding.from_json(f) for f in detail.get("findings", []))}
        open_.update({finding_key(f): f for f in found})
        findings = rank(list(open_.values()))
        state.save_run_detail(task.name, {"memory": outcome.memory, "findings": [f.to_json() for f in findings],
                                          "changed": bool(found) or not detail.get("findings")})
        rs.status, rs.error = "ok", ""
        rs.signature = signature if task.ingest else rs.signature
        rs.rows, rs.steps = outcome.rows, list(outcome.steps) if outcome.steps else None
        if outcome.new_rows or outcome.rows_added:
            rs.last_change = now
        if outcome.heavy_step is not None:
            rs.last_heavy_step, rs.last_heavy = outcome.heavy_step, now
            result.heavy += 1
        rs.pending = bool(outcome.memory.get("fresh"))
        rs.bad_records += outcome.bad_records
        rs.passes += 1
        rs.audit_errors = sum(1 for f in findings if f.kind == "audit_error") + len(outcome.errors)
        rs.findings = {s: n for s, n in Counter(f.severity for f in findings).items()}
        rs.top = _top(findings)
        # at most once a second without alerts: a run whose summary was not saved is redone cheaply after a kill
        # (its memory is saved; its files are ingested already)
        self._save(throttle=0.0 if new else 1.0)
        for alert in new:
            self.alerts.dispatch(alert)
        result.alerts.extend(new)

    def _save(self, throttle: float = 0.0) -> None:
        now = time.monotonic()
        if throttle and now - self._saved < throttle:
            return
        self.state.save()
        self._saved = now

    def _deliver_outbox(self) -> None:
        """Alerts a killed scanner recorded but may not have delivered."""
        if not self.state.outbox:
            return
        log.info("fleet: delivering %d alert(s) left by an interrupted scan", len(self.state.outbox))
        for obj in list(self.state.outbox):
            alert = Alert(**{k: obj[k] for k in Alert.__dataclass_fields__ if k in obj})
            for sink in self.alerts.sinks:
                try:
                    if isinstance(sink, JsonlSink):
                        before = sink.sent().get(alert.key)
                        if before is not None and SEVERITY_RANK[before] >= SEVERITY_RANK[alert.severity]:
                            continue  # delivered before the kill
                    sink.send(alert)
                except Exception as exc:  # noqa: BLE001
                    log.warning("fleet: alert sink %s failed (%s)", type(sink).__name__, exc)
        self._flush_sinks()
        self.state.outbox.clear()
        self.state.save()

    def _flush_sinks(self) -> None:
        for sink in self.alerts.sinks:
            if isinstance(sink, WebhookSink):
                sink.flush(timeout=60.0)

    # ------------------------------------------------------------------ continuous scanning
    def scan(self, every: float | None = None, until_idle: float | None = None, max_passes: int | None = None,
             on_pass: Callable[[PassResult], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> list[PassResult]:
        """Pass after pass, `every` seconds apart (one pass when no stop condition is given), until Ctrl-C,
        `until_idle` seconds without new rows in any run, or `max_passes` passes."""
        looping = every is not None or until_idle is not None or max_passes is not None
        interval = 60.0 if every is None else float(every)
        results: list[PassResult] = []
        last_new = time.monotonic()
        with self.state.lock():
            try:
                while True:
                    started = time.monotonic()
                    res = self.run_pass(final=not looping)
                    results.append(res)
                    if on_pass:
                        on_pass(res)
                    if res.rows_added or res.new_runs or res.heavy:
                        last_new = time.monotonic()
                    if not looping or (max_passes is not None and len(results) >= max_passes):
                        break
                    if until_idle is not None and time.monotonic() - last_new >= until_idle and not any(
                            r.pending for r in self.state.runs.values() if r.status == "ok"):
                        break
                    sleep(max(0.0, interval - (time.monotonic() - started)))
            except KeyboardInterrupt:
                pass
        return results

    def close(self) -> None:
        self.engine.close()
        self.alerts.close()


def _top(findings: list[Finding]) -> dict[str, Any] | None:
    """The top open finding with a small curve for the sparkline (or None)."""
    shown = [f for f in findings if f.kind != "audit_error"] or findings
    if not shown:
        return None
    f = shown[0]
    top = {"kind": f.kind, "severity": f.severity, "title": f.title[:300], "spark": None, "spark_of": ""}
    for g in shown[:20]:  # the curve of the most severe finding that has one (attribution findings have none)
        curve = spark(g)
        if curve:
            top["spark"], top["spark_of"] = curve, g.title[:200]
            break
    return top


def spark(f: Finding, points: int = 40) -> list[list[float]] | None:
    """[[steps...], [values...]] of the finding's main curve (the condition that rose most), <= `points`."""
    try:
        from ..report.figures import condition_curves, curve_of, downsample

        curves = condition_curves(f.fields)
        if curves:
            def rise(c: tuple[list[float], list[float | None]]) -> float:
                vals = [v for v in c[1] if v is not None]
                return (vals[-1] - vals[0]) if len(vals) > 1 else 0.0

            steps, values = max(curves.values(), key=rise)
        else:
            got = curve_of(f.fields, ("prevalence", "exposure_rate", "rate", "share", "value", "values"))
            if got is None:
                return None
            steps, values = got
        steps, values = downsample(steps, values, points)
        if len(steps) < 2:
            return None
        return [[float(s) for s in steps], [None if v is None else float(v) for v in values]]
    except Exception:  # noqa: BLE001 - a sparkline is a nicety
        return None


def severity_counts(rs: RunState) -> list[tuple[str, int]]:
    return [(s, rs.findings.get(s, 0)) for s in reversed(SEVERITIES)]
