"""`rlaudit watch DIR`: follow a run directory while a trainer writes it.

Each poll ingests what is new in DIR (the store's ingest is incremental: files already read with the same size
and modification time are skipped, a file that grew is re-read) and audits it with a `LiveAuditor`, which
alerts on findings that cross the threshold. The watch stops on Ctrl-C, after `until_idle` seconds without new
rows, or after `max_polls` polls; it then runs a final heavy audit.

A directory that does not exist yet, or holds no rollout file yet, is waited for: the trainer may not have
written its first step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..conditions import ConditionRule
from ..errors import RlauditError, UnknownLayoutError
from ..readers.base import ReadOptions
from ..store import Store
from .alerts import Alert, AlertManager, make_alerts
from .auditor import LiveAuditor, LiveConfig

log = logging.getLogger("rlaudit.live")


@dataclass
class WatchResult:
    run: str
    polls: int = 0
    rows: int = 0
    steps: tuple[int, int] | None = None
    alerts: list[Alert] = field(default_factory=list)
    stopped_by: str = ""  # "idle" | "max_polls" | "interrupt"
    auditor: LiveAuditor | None = None


@dataclass
class PollStatus:
    poll: int
    rows_added: int
    latest_step: int | None
    alerts: list[Alert]
    waiting: str = ""  # why nothing was read yet (no directory, no files)


def watch(source: str | Path, store: Store | str | Path = ".rlaudit", run: str | None = None, *,
          format: str | None = None, options: ReadOptions | None = None,
          conditions: list[ConditionRule] | None = None, interval: float = 5.0, until_idle: float | None = None,
          max_polls: int | None = None, config: LiveConfig | None = None, alerts: AlertManager | None = None,
          on_poll: Callable[[PollStatus], None] | None = None, sleep: Callable[[float], None] = time.sleep,
          ) -> WatchResult:
    """Follow `source` until interrupted, idle for `until_idle` seconds, or `max_polls` polls."""
    source = Path(source)
    if interval < 0:
        raise RlauditError(f"--interval must be >= 0 seconds, got {interval}")
    store = store if isinstance(store, Store) else Store(store)
    run = run or source.resolve().name
    auditor = LiveAuditor(store, run, config, alerts or make_alerts())
    result = WatchResult(run=run, auditor=auditor)
    last_new = time.monotonic()
    try:
        while True:
            result.polls += 1
            status = _poll(auditor, source, format, options, conditions, result.polls)
            result.rows += status.rows_added
            result.alerts += status.alerts
            if status.rows_added:
                last_new = time.monotonic()
            if on_poll:
                on_poll(status)
            if max_polls is not None and result.polls >= max_polls:
                result.stopped_by = "max_polls"
                break
            if until_idle is not None and time.monotonic() - last_new >= until_idle:
                result.stopped_by = "idle"
                break
            sleep(interval)
    except KeyboardInterrupt:
        result.stopped_by = "interrupt"
    result.alerts += auditor.close()
    if store.has_run(run):
        result.steps = store.summary(run).steps
    return result


def _poll(auditor: LiveAuditor, source: Path, format: str | None, options: ReadOptions | None,
          conditions: list[ConditionRule] | None, poll: int) -> PollStatus:
    if not source.exists():
        return PollStatus(poll, 0, auditor.index.max_step(), [], waiting=f"{source} does not exist yet")
    try:
        report = auditor.store.ingest(source, run=auditor.run, format=format, options=options,
                                      conditions=conditions, compact=False)
    except UnknownLayoutError:
        return PollStatus(poll, 0, auditor.index.max_step(), [], waiting=f"no rollout files in {source} yet")
    except RlauditError as exc:
        if "no " in str(exc) and "rollout files found" in str(exc):
            return PollStatus(poll, 0, auditor.index.max_step(), [], waiting=f"no rollout files in {source} yet")
        raise
    except OSError as exc:  # disk full, read-only or removed store: the files stay; the next poll reads them
        auditor.note_store_error(exc)
        alerts = auditor.update()  # says which data the audits miss
        return PollStatus(poll, 0, auditor.index.max_step(), alerts,
                          waiting=f"cannot write the store ({exc}); retrying next poll")
    auditor.note_store_error(None)
    if report.bad_records:
        log.warning("rlaudit: %d bad record(s) quarantined in %s (e.g. %s)", report.bad_records,
                    report.quarantine, "; ".join(report.bad_examples[:2]))
    alerts = auditor.update()  # also collects a finished background audit when nothing new arrived
    return PollStatus(poll, report.rows_added, auditor.index.max_step(), alerts)
