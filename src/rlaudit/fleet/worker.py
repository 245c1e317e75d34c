"""One run's share of a fleet pass: ingest what is new, cheap checks on the new steps, heavy detectors when due.

`run_task` is a plain function of a picklable `RunTask` returning a picklable `RunOutcome`, so every engine runs
the same code: in the scanner's process, in a local worker process, or as a Ray task. It drives the live
auditor (`rlaudit.live.LiveAuditor`), restored from the state the previous pass returned, so a fleet pass does
for each run exactly what `rlaudit watch` does for one:

- the store's ingest reads only new or changed files;
- the per-step detectors (CoT-grading scan) and the tracking of flagged behaviours run on the new parts only
  (known parts and their step ranges travel in the task, so nothing is re-read or re-indexed);
- the heavy detectors run on the bounded step sample when `every` steps have arrived since the last heavy audit,
  or when the run went quiet with unaudited steps (`final`).

Nothing raises: an error (unreadable run, a detector crash) comes back in `RunOutcome.error` / `errors`.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("rlaudit.fleet")


@dataclass
class RunTask:
    store: str
    name: str
    source: str
    format: str
    every: int = 10  # heavy detectors every N new steps
    final: bool = False  # run the heavy detectors on whatever is unaudited (the run went quiet)
    ingest: bool = True  # False: nothing changed on disk, only a due heavy audit
    detectors: list[str] | None = None
    split: str | None = "train"
    memory: dict[str, Any] = field(default_factory=dict)  # what the last pass left (see `_restore`)
    #: A file every attempt at this task appends its pid and host to before it starts (see `_note_attempt`):
    #: a retry (Ray re-running the task of a worker that died) knows the attempts before it, and a test or an
    #: operator can find the process running a run's task. "" for none.
    attempt_log: str = ""
    #: Defer the audit of a run whose new rows exceed this (None: never): the task only ingests and returns
    #: `deferred`, and the driver audits the run in step-range shards (`fleet.shard`), then calls `advance`.
    shard_rows: int | None = None
    #: Findings (JSON) of the driver's sharded audit of the whole run: the live auditor adopts them as its
    #: heavy audit and moves past every stored part without scanning them again (`_advance`).
    sharded: list[dict[str, Any]] | None = None


@dataclass
class RunOutcome:
    name: str
    ok: bool = True
    error: str = ""
    rows_added: int = 0
    files_read: int = 0
    files_skipped: int = 0
    bad_records: int = 0
    rows: int = 0
    steps: tuple[int, int] | None = None
    new_parts: int = 0
    new_rows: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)  # found this pass (cheap + heavy), JSON
    heavy_step: int | None = None  # the step a heavy audit ran at this pass
    errors: list[str] = field(default_factory=list)  # live-audit errors (the pass went on)
    memory: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # ingest, audit, total
    host: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)  # earlier attempts that died: pid, host, t
    deferred: bool = False  # ingested only: the driver audits this run in shards (see `RunTask.shard_rows`)


class _Capture:
    """An alert manager for the live auditor that keeps every finding it is given and sends nothing: the fleet
    driver deduplicates and alerts for the whole fleet."""

    def __init__(self) -> None:
        self.found: list[Any] = []

    def process(self, findings: Any, step: int | None = None) -> list[Any]:
        self.found.extend(findings)
        return []

    def close(self) -> None:
        pass


def run_task(task: RunTask) -> RunOutcome:
    """Do one run's share of a pass (see the module doc). Never raises."""
    import socket

    from ..readers.processes import in_this_process

    t0, c0 = time.perf_counter(), time.process_time()
    out = RunOutcome(name=task.name, host=socket.gethostname(), memory=dict(task.memory))
    try:
        out.attempts = _note_attempt(task.attempt_log, out.host)
        with in_this_process():  # the fleet runs a task per core: no parse workers of its own beside them
            _run(task, out)
    except Exception as exc:  # noqa: BLE001 - one bad run never stops the fleet
        out.ok = False
        out.error = f"{type(exc).__name__}: {exc}"
        log.debug("fleet: run %s failed\n%s", task.name, traceback.format_exc())
    out.seconds["total"] = time.perf_counter() - t0
    out.seconds["cpu"] = time.process_time() - c0  # every thread of the worker (DuckDB's too); one task at a time
    return out


def _note_attempt(path: str, host: str) -> list[dict[str, Any]]:
    """Append this attempt (pid, host, time) to the task's attempt log and return the attempts before it.

    A task that returns removes nothing: the driver deletes the log once it has the outcome. So the lines
    before ours are attempts that never returned: their worker died and the engine (Ray's `max_retries`)
    ran the task again. One short line per attempt, appended with O_APPEND (atomic for such writes)."""
    import json
    import os

    if not path:
        return []
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fh.seek(0)
        before = [json.loads(line) for line in fh.read().splitlines() if line.strip()]
        fh.write(json.dumps({"pid": os.getpid(), "host": host, "t": time.time()}) + "\n")
    return before


def _run(task: RunTask, out: RunOutcome) -> None:
    from ..live.auditor import LiveAuditor, LiveConfig
    from ..store import Store

    store = Store(task.store)
    t0 = time.perf_counter()
    if task.ingest:
        from ..audit import _check_nothing_readable

        if store.has_run(task.name) and not _stored_rows(store, task.name):
            # a 0-row run: left by an attempt killed between its ingest of unreadable files and the check below
            # (which removes it). Read afresh, or the retry would find nothing new and call the run fine.
            store.delete(task.name)
        is_new = not store.has_run(task.name)
        # files grouped into parts as any ingest groups them (a first pass over a long run makes parts of
        # `Store.part_rows` for its sharded audit), not compacted: the auditor's memory knows parts by name
        report = store.ingest(task.source, run=task.name, format=task.format, compact=False)
        # a run of which nothing could be read is an error (as for `rlaudit audit`), not an empty run
        _check_nothing_readable(store, task.source, report, is_new, None)
        if not store.has_run(task.name):  # every file skipped (e.g. inside the store itself): say why
            from ..errors import RlauditError

            raise RlauditError(f"{task.source}: nothing ingested ({'; '.join(report.notes) or 'no rows'})")
        out.rows_added, out.files_read, out.files_skipped = report.rows_added, report.files_read, report.files_skipped
        out.bad_records = report.bad_records
    out.seconds["ingest"] = time.perf_counter() - t0
    if not store.has_run(task.name):
        return
    if task.shard_rows is not None and task.sharded is None:
        out.new_rows = _unknown_rows(store, task.name, task.memory)
        if out.new_rows > task.shard_rows:
            out.deferred = True
            return
    t1 = time.perf_counter()
    capture = _Capture()
    config = LiveConfig(every=task.every, detectors=task.detectors, background=None, split=task.split)
    auditor = LiveAuditor(store, task.name, config, alerts=capture)  # type: ignore[arg-type]
    _restore(auditor, task.memory)
    known = set(auditor.index.parts)
    if task.sharded is not None:
        _advance(auditor, task.sharded)
    else:
        auditor.update(final=task.final)
    new = [p for name, p in auditor.index.parts.items() if name not in known]
    out.new_parts, out.new_rows = len(new), sum(p.rows for p in new)
    out.findings = [f.to_json() for f in capture.found]
    if auditor.heavy_runs:
        out.heavy_step = auditor.heavy_runs[-1][0]
        out.seconds["heavy"] = auditor.heavy_runs[-1][1]
    out.errors = list(auditor.errors)
    out.seconds["audit"] = time.perf_counter() - t1
    out.memory = _save(auditor)
    lo = min((p.lo for p in auditor.index.parts.values() if p.rows), default=None)
    hi = auditor.index.max_step()
    out.rows = sum(p.rows for p in auditor.index.parts.values())
    out.steps = (int(lo), int(hi)) if lo is not None and hi is not None else None


def _stored_rows(store: Any, run: str) -> int:
    """Rows the run's manifest lists (nothing read but the manifest)."""
    return sum(int(e.get("rows") or 0) for e in store.manifest(run)["files"].values())


def _unknown_rows(store: Any, run: str, memory: dict[str, Any]) -> int:
    """Rows of the stored parts the auditor's memory does not know yet (from the manifest: nothing read)."""
    known = set((memory.get("parts") or {}))
    return sum(int(e.get("rows") or 0) for e in store.manifest(run)["files"].values()
               if e.get("part") and e["part"] not in known)


def _advance(auditor: Any, sharded: list[dict[str, Any]]) -> None:
    """Adopt the findings of the driver's sharded full audit as the heavy audit at the run's last step: index
    every stored part (footer statistics only), count the new parts for behaviours already tracked, and track
    the behaviours the audit flagged, as `LiveAuditor.update` would after a heavy audit. The per-step scans are
    not run again: the full audit covered every step."""
    from ..findings import Finding
    from ..live.sampling import StoreView

    lease = auditor.store.lease(auditor.run)
    try:
        new_parts = auditor.index.refresh(lease.manifest) if lease.manifest is not None else []
        step = auditor.index.max_step()
        if step is None:
            return
        if new_parts and auditor.tracker.tracked:
            auditor.tracker.update(StoreView(auditor.store, auditor.run, [p.path for p in new_parts]), auditor.run)
        auditor._last_heavy, auditor._fresh = step, False
        auditor._absorb(step, ([Finding.from_json(f) for f in sharded], 0.0))
    finally:
        lease.release()


# ---------------------------------------------------------------------------- the auditor's memory between passes
def _restore(auditor: Any, memory: dict[str, Any]) -> None:
    """Put back what the previous pass knew: part step ranges, the heavy schedule, tracked behaviours."""
    from ..behaviors import parse_behavior
    from ..live.sampling import PartInfo
    from ..live.tracking import Tracked

    parts_dir = auditor.store.run_dir(auditor.run) / "parts"
    listed = set()
    if memory.get("parts") and auditor.store.has_run(auditor.run):
        listed = {e["part"] for e in auditor.store.manifest(auditor.run)["files"].values() if e.get("part")}
    for name, (key, lo, hi, rows) in (memory.get("parts") or {}).items():
        if name in listed:  # a part replaced since (a re-read file) is new again
            auditor.index.parts[name] = PartInfo(key=key, path=parts_dir / name, lo=int(lo), hi=int(hi),
                                                 rows=int(rows))
    auditor._last_heavy = memory.get("last_heavy")
    auditor._fresh = bool(memory.get("fresh", False))
    for spec, t in (memory.get("tracked") or {}).items():
        tracked = Tracked(behavior=parse_behavior(spec), column=t["column"], label=t["label"])
        tracked.add([(s, c, n, h) for s, c, n, h in t["counts"]])
        tracked.looks = defaultdict(int, t.get("looks", {}))
        tracked.known = set(t.get("known", []))
        auditor.tracker.tracked[spec] = tracked


def _save(auditor: Any) -> dict[str, Any]:
    tracked = {}
    for spec, t in auditor.tracker.tracked.items():
        tracked[spec] = {"column": t.column, "label": t.label, "looks": dict(t.looks), "known": sorted(t.known),
                         "counts": [[s, c, n, h] for (s, c), (n, h) in sorted(t.counts.items())]}
    return {"parts": {name: [p.key, p.lo, p.hi, p.rows] for name, p in auditor.index.parts.items()},
            "last_heavy": auditor._last_heavy, "fresh": auditor._fresh, "tracked": tracked}

