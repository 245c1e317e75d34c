"""Alerts: tell a human when a finding first crosses its threshold while the run is still training.

A live audit re-runs detectors many times on a growing run, so the same finding comes back again and again.
`AlertManager` turns that stream into *alerts*: one per stable finding key (`finding_key`: kind + run + what the
finding is about, e.g. the behaviour and reward signal) the first time it reaches `min_severity`, and one more
if its severity later rises. Alerts go to sinks: the training log (`LogSink`), a JSONL file (`JsonlSink`,
which also remembers what was already sent so a restarted watcher does not repeat itself) and a webhook
(`WebhookSink`, JSON POST with a Slack-style `text` field, delivered from a background thread so a slow or dead
endpoint never stalls training). A sink that fails is logged and skipped; alerting never raises.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import RlauditError
from ..findings import SEVERITY_RANK, Finding, jsonable

log = logging.getLogger("rlaudit.live")

#: Kind-specific fields that say *what* a finding is about, in the order they enter its key. Values that change
#: from one audit to the next (prevalence, q-values, onset) are deliberately absent.
IDENTITY_FIELDS = ("behavior_spec", "grader", "signal", "problem", "method", "source_condition",
                   "target_condition", "detector")


def finding_key(finding: Finding) -> str:
    """A key that stays the same while a finding is re-detected on a growing run."""
    parts = [finding.kind, finding.run]
    fields = finding.fields
    if "behavior_spec" not in fields and "behavior" in fields:
        parts.append(f"behavior={fields['behavior']}")
    for name in IDENTITY_FIELDS:
        if fields.get(name) not in (None, ""):
            parts.append(f"{name}={fields[name]}")
    if len(parts) == 2:  # a kind with no identity fields: its title is the best we have
        parts.append(f"title={finding.title}")
    return "|".join(str(p) for p in parts)


@dataclass
class Alert:
    """One notification: a finding that crossed the threshold (or rose in severity) at `step`."""

    key: str
    kind: str
    run: str
    severity: str
    title: str
    step: int | None
    escalation: bool = False  # True when an earlier alert for this key had a lower severity
    time: float = field(default_factory=time.time)
    finding: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    def summary(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        rise = " (severity rose)" if self.escalation else ""
        return f"rlaudit {self.severity.upper()}{rise} [{self.kind}] {self.run}{where}: {self.title}"


class AlertSink(Protocol):
    def send(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


class LogSink:
    """Writes alerts to the training log through `logging` (WARNING, or ERROR for high severity)."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or log

    def send(self, alert: Alert) -> None:
        level = logging.ERROR if alert.severity == "high" else logging.WARNING
        self.logger.log(level, alert.summary())

    def close(self) -> None:
        pass


class JsonlSink:
    """Appends one JSON object per alert to a file (created with its directory)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def send(self, alert: Alert) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(alert.to_json(), ensure_ascii=False) + "\n")
            fh.flush()

    def sent(self) -> dict[str, str]:
        """key -> highest severity already alerted, from the file (unreadable lines are skipped)."""
        if not self.path.is_file():
            return {}
        out: dict[str, str] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                obj = json.loads(line)
                key, severity = obj["key"], obj["severity"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if severity in SEVERITY_RANK and SEVERITY_RANK[severity] > SEVERITY_RANK.get(out.get(key, "info"), -1):
                out[key] = severity
        return out

    def close(self) -> None:
        pass


class WebhookSink:
    """POSTs each alert as JSON (`{"text": summary, "alert": {...}}`) to `url` from a background thread.

    Delivery is best effort: `timeout` seconds per attempt, `retries` more attempts with a short back-off, then
    the alert is logged as undelivered. The queue is bounded (`max_pending`): when the endpoint cannot keep up,
    new alerts are dropped with a log line rather than buffered without limit.
    """

    def __init__(self, url: str, timeout: float = 5.0, retries: int = 1, headers: dict[str, str] | None = None,
                 max_pending: int = 1000, backoff: float = 0.2):
        if not url.startswith(("http://", "https://")):
            raise RlauditError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._work, name="rlaudit-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.failed += 1
            log.warning("rlaudit webhook: queue full, alert dropped: %s", alert.summary())

    def _work(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                self._post(alert)
            finally:
                self._queue.task_done()

    def _post(self, alert: Alert) -> None:
        body = json.dumps(self.payload(alert), ensure_ascii=False).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - user URL
                    response.read()
                self.delivered += 1
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if attempt == self.retries:
                    self.failed += 1
                    log.warning("rlaudit webhook %s: alert not delivered (%s): %s", self.url, exc, alert.summary())
                else:
                    time.sleep(self.backoff * 2 ** attempt)  # exponential back-off (0.2 s, 0.4 s... by default)

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The JSON body POSTed for an alert."""
        return {"text": alert.summary(), "alert": alert.to_json()}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until queued alerts are delivered or given up; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=0.5)


class SlackSink(WebhookSink):
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat, Discord's /slack endpoint): a readable
    message with severity, run, finding and a link into the report (`link(alert)` -> URL or None). Same delivery
    as `WebhookSink` (background thread, retries with back-off, failures logged, never raised)."""

    _ICON = {"high": ":red_circle:", "medium": ":large_orange_circle:", "low": ":large_blue_circle:",
             "info": ":white_circle:"}

    def __init__(self, url: str, link: Any = None, **kwargs: Any):
        super().__init__(url, **kwargs)
        self.link = link

    def payload(self, alert: Alert) -> dict[str, Any]:
        def esc(text: Any) -> str:  # Slack mrkdwn control characters
            return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        rise = " (severity rose)" if alert.escalation else ""
        where = f" at step {alert.step}" if alert.step is not None else ""
        lines = [f"{self._ICON.get(alert.severity, '')} *rlaudit {alert.severity.upper()}{rise}*: "
                 f"`{esc(alert.kind)}` in run *{esc(alert.run)}*{where}", esc(alert.title)]
        remedy = alert.finding.get("remedy") if isinstance(alert.finding, dict) else None
        if isinstance(remedy, str) and remedy:
            lines.append(f"What to do: {esc(remedy)}")
        url = None
        try:
            url = self.link(alert) if self.link else None
        except Exception:  # noqa: BLE001 - a link is a nicety
            url = None
        if url:
            lines.append(f"<{url}|Open the report>")
        return {"text": "\n".join(lines)}


class AlertManager:
    """Turns repeated findings into first-crossing alerts and fans them out to sinks.

    `min_severity` is the threshold; `kinds` (optional) restricts alerts to some finding kinds. Keys already
    alerted are remembered in memory and, when a `JsonlSink` is among the sinks, read back from its file.
    """

    def __init__(self, sinks: Sequence[AlertSink] = (), min_severity: str = "medium",
                 kinds: Iterable[str] | None = None):
        if min_severity not in SEVERITY_RANK:
            raise RlauditError(f"min severity must be one of {list(SEVERITY_RANK)}, got {min_severity!r}")
        self.sinks = list(sinks) or [LogSink()]
        self.min_rank = SEVERITY_RANK[min_severity]
        self.kinds = set(kinds) if kinds is not None else None
        self.sent: dict[str, str] = {}
        self.history: list[Alert] = []
        for sink in self.sinks:
            if isinstance(sink, JsonlSink):
                try:
                    self.sent.update(sink.sent())
                except OSError as exc:
                    log.warning("rlaudit: cannot read earlier alerts from %s: %s", sink.path, exc)

    def process(self, findings: Iterable[Finding], step: int | None = None) -> list[Alert]:
        """Alerts for findings that newly crossed the threshold or rose in severity; sent to every sink."""
        new: list[Alert] = []
        for finding in findings:
            rank_ = SEVERITY_RANK[finding.severity]
            if rank_ < self.min_rank or (self.kinds is not None and finding.kind not in self.kinds):
                continue
            key = finding_key(finding)
            before = self.sent.get(key)
            if before is not None and SEVERITY_RANK[before] >= rank_:
                continue
            self.sent[key] = finding.severity
            new.append(Alert(key=key, kind=finding.kind, run=finding.run, severity=finding.severity,
                             title=finding.title, step=step, escalation=before is not None,
                             finding=finding.to_json()))
        for alert in new:
            self.dispatch(alert)
        self.history.extend(new)
        return new

    def dispatch(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception as exc:  # noqa: BLE001 - a broken sink must not stop the others, nor training
                log.warning("rlaudit: alert sink %s failed (%s): %s", type(sink).__name__, exc, alert.summary())

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("rlaudit: closing alert sink %s failed: %s", type(sink).__name__, exc)


def make_alerts(alerts_path: str | Path | None = None, webhook: str | None = None,
                min_severity: str = "medium", kinds: Iterable[str] | None = None,
                logger: logging.Logger | None = None, webhook_timeout: float = 5.0) -> AlertManager:
    """The usual set of sinks: the log, plus a JSONL file and a webhook when given."""
    sinks: list[AlertSink] = [LogSink(logger)]
    if alerts_path:
        sinks.append(JsonlSink(alerts_path))
    if webhook:
        sinks.append(WebhookSink(webhook, timeout=webhook_timeout))
    return AlertManager(sinks, min_severity=min_severity, kinds=kinds)
