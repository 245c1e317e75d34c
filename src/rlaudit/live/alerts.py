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
import urllib.parse
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
IDENTITY_FIELDS = ("behavior_spec", "grader", "signal", "problem", "check", "method", "source_condition",
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
        with open(self.path, "ab") as fh:
            if fh.tell() and not _ends_with_newline(self.path):  # a torn last line (full disk): start a new one
                fh.write(b"\n")
            fh.write((json.dumps(alert.to_json(), ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))
            fh.flush()

    def sent(self) -> dict[str, str]:
        """key -> highest severity already alerted, from the file (unreadable lines are skipped)."""
        if not self.path.is_file():
            return {}
        out: dict[str, str] = {}
        for line in self.path.read_bytes().splitlines():  # bytes: a line torn inside a UTF-8 character is skipped
            try:
                obj = json.loads(line)
                key, severity = obj["key"], obj["severity"]
            except (ValueError, KeyError, TypeError, RecursionError):
                continue
            if severity in SEVERITY_RANK and SEVERITY_RANK[severity] > SEVERITY_RANK.get(out.get(key, "info"), -1):
                out[key] = severity
        return out

    def close(self) -> None:
        pass


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


class _NoCrossOriginRedirect(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same origin and only when it keeps the method and body (307/308): a 301/302
    would turn the POST into a bodiless GET, and another origin must never receive the webhook's credentials."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        if code in (307, 308) and _origin(newurl) == _origin(req.full_url):
            return urllib.request.Request(newurl, data=req.data, headers=dict(req.header_items()),
                                          method=req.get_method())
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {_origin(newurl)} not followed", headers, fp)


_OPENER = urllib.request.build_opener(_NoCrossOriginRedirect)


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def redact_url(url: str) -> str:
    """A webhook URL safe for logs: its origin only (Slack-style tokens live in the path, others in the query or
    the user info)."""
    try:
        origin = _origin(url)
    except ValueError:
        return "<webhook>"
    rest = urllib.parse.urlsplit(url)
    return origin + ("/<redacted>" if rest.path.strip("/") or rest.query else "")


def default_webhook_spool(url: str) -> Path:
    """Where alerts a webhook could not take are kept for the next run (keyed by a hash of the URL)."""
    import hashlib
    import os

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlaudit"
    return base / f"webhook-undelivered-{hashlib.sha256(url.encode()).hexdigest()[:16]}.jsonl"


class WebhookSink:
    """POSTs each alert as JSON (`{"text": summary, "alert": {...}}`) to `url` from a background thread.

    Delivery is best effort: `timeout` seconds per attempt, `retries` more attempts with a short back-off. An
    alert that could not be delivered (endpoint down, a redirect to another origin, the queue full, `close`
    before its turn) is appended to `spool` (a JSONL file) and sent first by the next sink for this URL;
    logs name the endpoint by its origin only, never the secret part of the URL. Redirects are followed only
    within the same origin and only when they keep the POST (307/308), so credentials never travel elsewhere.
    """

    def __init__(self, url: str, timeout: float = 5.0, retries: int = 1, headers: dict[str, str] | None = None,
                 max_pending: int = 1000, spool: str | Path | None = None, backoff: float = 0.2):
        if not url.startswith(("http://", "https://")):
            raise RlauditError(f"webhook URL must start with http:// or https://, got {redact_url(url)!r}")
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.shown = redact_url(url)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.delivered = 0
        self.failed = 0
        self.undelivered: list[Alert] = []  # kept in `spool` for the next run
        self.spool = Path(spool) if spool is not None else default_webhook_spool(url)
        self._spool_lock = threading.Lock()
        self._inflight: Alert | None = None
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_pending)
        earlier = self._take_spool()
        self._thread = threading.Thread(target=self._work, name="rlaudit-webhook", daemon=True)
        self._thread.start()
        for alert in earlier:
            self.send(alert)
        if earlier:
            log.info("rlaudit webhook %s: re-sending %d alert(s) undelivered in an earlier run", self.shown,
                     len(earlier))

    def _take_spool(self) -> list[Alert]:
        try:
            data = self.spool.read_bytes()
            self.spool.unlink()
        except OSError:
            return []
        out = []
        for line in data.splitlines():
            try:
                out.append(Alert(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return out

    def _keep(self, alert: Alert, why: str) -> None:
        self.failed += 1
        self.undelivered.append(alert)
        try:
            with self._spool_lock:
                self.spool.parent.mkdir(parents=True, exist_ok=True)
                with open(self.spool, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(alert.to_json(), ensure_ascii=False) + "\n")
        except OSError as exc:
            log.warning("rlaudit webhook %s: alert not delivered (%s) and not kept (%s): %s", self.shown, why,
                        exc, alert.summary())

    def send(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            log.warning("rlaudit webhook %s: queue full, alert kept for later: %s", self.shown, alert.summary())
            self._keep(alert, "queue full")

    def _work(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                self._inflight = alert
                self._post(alert)
            finally:
                self._inflight = None
                self._queue.task_done()

    def _post(self, alert: Alert) -> None:
        body = json.dumps(self.payload(alert), ensure_ascii=False).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:  # noqa: S310 - user URL
                    response.read()
                self.delivered += 1
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                why = str(exc).replace(self.url, self.shown)
                redirected = isinstance(exc, urllib.error.HTTPError) and 300 <= exc.code < 400
                if attempt == self.retries or redirected:
                    log.warning("rlaudit webhook %s: alert not delivered (%s), kept in %s: %s", self.shown, why,
                                self.spool, alert.summary())
                    self._keep(alert, why)
                    return
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
        """Deliver what is queued within `timeout`; what is left is kept in `spool` (and reported)."""
        self.flush(timeout)
        left: list[Alert] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            if item is not None:
                left.append(item)
        inflight = self._inflight
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=0.5)
        if self._thread.is_alive() and inflight is not None:
            left.insert(0, inflight)  # may still arrive: delivered at least once
        for alert in left:
            self._keep(alert, "not sent before close")
        if left:
            log.warning("rlaudit webhook %s: %d alert(s) not delivered within %.0f s; kept in %s and sent at the "
                        "next start", self.shown, len(left), timeout, self.spool)


class SlackSink(WebhookSink):
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat, Discord's /slack endpoint): a readable
    message with severity, run, finding and a link into the report (`link(alert)` -> URL or None). Same delivery
    as `WebhookSink` (background thread, retries with back-off, undelivered alerts spooled, URL redacted in logs,
    failures logged, never raised)."""

    _ICON = {"high": ":red_circle:", "medium": ":large_orange_circle:", "low": ":large_blue_circle:",
             "info": ":white_circle:"}

    def __init__(self, url: str, link: Any = None, **kwargs: Any):
        self.link = link  # before super().__init__: it may re-send spooled alerts at once
        super().__init__(url, **kwargs)

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
                except Exception as exc:  # noqa: BLE001 - a damaged alerts file must not stop training
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
        spool = Path(f"{alerts_path}.undelivered") if alerts_path else None
        sinks.append(WebhookSink(webhook, timeout=webhook_timeout, spool=spool))
    return AlertManager(sinks, min_severity=min_severity, kinds=kinds)
