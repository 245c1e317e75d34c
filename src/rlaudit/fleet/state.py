"""The scanner's state, kept in the store so that a killed scanner resumes where it was.

    <store>/fleet/state.json        every run (source, layout, rows, last step, last audit, findings by
                                    severity, error), the alert keys already sent (key -> severity), the outbox
    <store>/fleet/runs/<run>.json   per run: open findings (latest per finding key) and the live auditor's
                                    memory (part step ranges, heavy schedule, tracked behaviour counts)
    <store>/fleet/.scan.lock        held by the running scanner: one scanner per store

Every file is replaced atomically (`atomic_write_text`), after each run's result arrives: first the alert keys
it adds to `sent` (with the alerts in the outbox), then the run's file, then the summary with the run's new
file signature (see `FleetScanner._absorb`). A scanner killed mid-pass loses at most the runs in flight; their
ingest is already committed in the store (nothing is read twice) and their findings, found again, are
deduplicated by key (nothing is alerted twice, nothing goes unalerted).

Alerts go through an outbox: the keys of a new alert are recorded in `sent` and the alert in `outbox` in one
write, then the alert is delivered and removed from the outbox. A scanner killed between the two delivers the
outbox on restart (JSONL sinks skip alerts already in their file; a webhook may see such an alert twice: at
least once, never lost).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RlauditError
from ..findings import jsonable
from ..store import atomic_write_text

STATE_VERSION = 1


@dataclass
class RunState:
    name: str
    source: str
    format: str
    root: str = ""
    origin: str = ""
    signature: str = ""  # of the source files when last ingested
    status: str = "new"  # new | ok | error | missing (its source is gone; findings kept, no cost)
    error: str = ""
    rows: int = 0
    steps: list[int] | None = None
    first_seen: float = field(default_factory=time.time)
    last_change: float = 0.0  # when new data last arrived
    last_audit: float = 0.0  # when the run was last audited (any pass that looked at it)
    last_heavy_step: int | None = None
    last_heavy: float = 0.0
    findings: dict[str, int] = field(default_factory=dict)  # severity -> open findings
    top: dict[str, Any] | None = None  # the top open finding: kind, severity, title, spark (steps, values)
    audit_errors: int = 0
    bad_records: int = 0  # quarantined by ingest (store's runs/<run>/quarantine.jsonl)
    passes: int = 0  # passes that audited this run
    pending: bool = False  # unaudited steps (a heavy audit is due when the run goes quiet)
    host: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    missing_since: float = 0.0  # when its source was first seen gone (0: present)
    reappeared: int = 0  # times its source came back after going missing
    #: Task attempts that failed or died (a killed worker, a lost node), whether the engine retried them in the
    #: same pass (Ray) or the run was redone on the next; the last one, with its pass, for `fleet status`.
    failures: int = 0
    last_failure: str = ""
    last_failure_at: float = 0.0

    @property
    def last_step(self) -> int | None:
        return self.steps[1] if self.steps else None

    def to_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunState:
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class FleetState:
    """Load, update and save the fleet state of a store (see the module doc)."""

    def __init__(self, store_root: str | Path):
        self.root = Path(store_root) / "fleet"
        self.runs: dict[str, RunState] = {}
        self.sent: dict[str, str] = {}
        self.outbox: list[dict[str, Any]] = []
        self.passes = 0
        self.updated = 0.0
        self.last_pass: dict[str, Any] = {}
        self.load()

    @property
    def path(self) -> Path:
        return self.root / "state.json"

    def run_path(self, run: str) -> Path:
        return self.root / "runs" / f"{run}.json"

    def load(self) -> None:
        if not self.path.is_file():
            return
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RlauditError(f"{self.path}: unreadable fleet state ({exc}); move it away to start afresh "
                               "(runs would be audited again, and their alerts sent again)") from None
        self.runs = {name: RunState.from_json(r) for name, r in obj.get("runs", {}).items()}
        self.sent = dict(obj.get("sent", {}))
        self.outbox = list(obj.get("outbox", []))
        self.passes = int(obj.get("passes", 0))
        self.updated = float(obj.get("updated", 0.0))
        self.last_pass = dict(obj.get("last_pass", {}))

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.updated = time.time()
        obj = {"version": STATE_VERSION, "updated": self.updated, "passes": self.passes,
               "last_pass": self.last_pass, "runs": {n: r.to_json() for n, r in sorted(self.runs.items())},
               "sent": dict(sorted(self.sent.items())), "outbox": self.outbox}
        atomic_write_text(self.path, json.dumps(jsonable(obj), indent=1))

    # ------------------------------------------------------------------ per-run details
    def run_detail(self, run: str) -> dict[str, Any]:
        path = self.run_path(run)
        if not path.is_file():
            return {"memory": {}, "findings": []}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {"memory": {}, "findings": []}  # the run is audited afresh (alerts stay deduplicated)

    def save_run_detail(self, run: str, detail: dict[str, Any]) -> None:
        path = self.run_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(jsonable(detail), ensure_ascii=True))

    def forget(self, run: str) -> None:
        """Drop a run from the fleet state: its summary, its open findings and memory, and the alert keys sent
        for it (a run of that name found later is a new run and alerts afresh)."""
        self.runs.pop(run, None)
        self.run_path(run).unlink(missing_ok=True)
        for key in [k for k in self.sent if k.split("|", 2)[1:2] == [run]]:
            del self.sent[key]

    # ------------------------------------------------------------------ one scanner per store
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".scan.lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RlauditError(f"another fleet scan is running on store {self.root.parent}; stop it first "
                                   "(one scanner per store)") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
