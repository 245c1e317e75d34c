"""Alert dedupe, escalation, sinks, and the webhook against a local HTTP server."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from rlaudit.errors import RlauditError
from rlaudit.findings import Finding
from rlaudit.live.alerts import AlertManager, JsonlSink, LogSink, WebhookSink, finding_key


def finding(severity="medium", spec="goblin", kind="emerging_behavior", **extra) -> Finding:
    return Finding(kind=kind, run="r", severity=severity, title=f"{spec} rising",
                   fields={"behavior": spec, "behavior_spec": spec, "prevalence_end": extra.pop("p", 0.5), **extra})


def test_key_ignores_changing_numbers_and_names_identity():
    a, b = finding(p=0.2), finding(p=0.7, severity="high")
    assert finding_key(a) == finding_key(b) == "emerging_behavior|r|behavior_spec=goblin"
    attr = finding(kind="reward_attribution", signal="persona")
    assert finding_key(attr) == "reward_attribution|r|behavior_spec=goblin|signal=persona"
    cot = Finding(kind="cot_grading", run="r", severity="high", title="t", fields={"grader": "judge", "method": "scan"})
    assert finding_key(cot) == "cot_grading|r|grader=judge|method=scan"


def test_first_crossing_once_then_escalation(tmp_path):
    sink = JsonlSink(tmp_path / "alerts.jsonl")
    mgr = AlertManager([sink], min_severity="medium")
    assert mgr.process([finding("low")], step=1) == []  # below threshold
    first = mgr.process([finding("medium")], step=2)
    assert [a.step for a in first] == [2] and not first[0].escalation
    assert mgr.process([finding("medium"), finding("low")], step=3) == []  # same key: no repeat
    rise = mgr.process([finding("high")], step=4)
    assert len(rise) == 1 and rise[0].escalation and rise[0].severity == "high"
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(x["step"], x["severity"]) for x in lines] == [(2, "medium"), (4, "high")]
    assert lines[0]["finding"]["behavior_spec"] == "goblin"
    # a restarted watcher reads the file back and does not alert again
    again = AlertManager([JsonlSink(tmp_path / "alerts.jsonl")])
    assert again.process([finding("high")], step=9) == []


def test_kinds_filter_and_bad_threshold():
    mgr = AlertManager([LogSink()], kinds=["cot_grading"])
    assert mgr.process([finding("high")]) == []
    with pytest.raises(RlauditError, match="min severity"):
        AlertManager(min_severity="urgent")


def test_log_sink_writes_the_training_log(caplog):
    with caplog.at_level(logging.WARNING, logger="rlaudit.live"):
        AlertManager([LogSink()]).process([finding("high")], step=7)
    assert "HIGH" in caplog.text and "at step 7" in caplog.text and "goblin rising" in caplog.text


def test_broken_sink_is_logged_not_raised(tmp_path, caplog):
    class Boom:
        def send(self, alert):
            raise OSError("disk full")

        def close(self):
            raise OSError("still full")

    good = JsonlSink(tmp_path / "a.jsonl")
    mgr = AlertManager([Boom(), good])
    with caplog.at_level(logging.WARNING, logger="rlaudit.live"):
        alerts = mgr.process([finding("high")])
        mgr.close()
    assert len(alerts) == 1 and (tmp_path / "a.jsonl").read_text().count("\n") == 1
    assert "disk full" in caplog.text and "still full" in caplog.text


class _Recorder(BaseHTTPRequestHandler):
    received: list = []
    delay = 0.0

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        type(self).received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    _Recorder.received, _Recorder.delay = [], 0.0
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_posts_json(http_server):
    url = f"http://127.0.0.1:{http_server.server_port}/hook"
    sink = WebhookSink(url, timeout=2)
    AlertManager([sink]).process([finding("high"), finding("medium", spec="gremlin")], step=5)
    assert sink.flush(5)
    sink.close()
    assert sink.delivered == 2 and sink.failed == 0
    paths = {r[0] for r in _Recorder.received}
    assert paths == {"/hook"} and {r[1] for r in _Recorder.received} == {"application/json"}
    bodies = dict((r[2]["alert"]["finding"]["behavior_spec"], r[2]["text"]) for r in _Recorder.received)
    assert "rlaudit MEDIUM" in bodies["gremlin"] and "step 5" in bodies["gremlin"]
    assert "rlaudit HIGH" in bodies["goblin"]


def test_webhook_timeout_and_refused_are_logged_never_raised(http_server, caplog):
    _Recorder.delay = 1.0
    slow = WebhookSink(f"http://127.0.0.1:{http_server.server_port}/slow", timeout=0.2, retries=0)
    # a port nobody listens on: bind then close to get a free one
    probe = HTTPServer(("127.0.0.1", 0), _Recorder)
    dead_port = probe.server_port
    probe.server_close()
    dead = WebhookSink(f"http://127.0.0.1:{dead_port}/x", timeout=0.5, retries=1)
    mgr = AlertManager([slow, dead])
    with caplog.at_level(logging.WARNING, logger="rlaudit.live"):
        started = time.perf_counter()
        mgr.process([finding("high")], step=1)
        assert time.perf_counter() - started < 0.2  # delivery is off the training thread
        slow.flush(5)
        dead.flush(5)
    assert slow.failed == 1 and dead.failed == 1 and dead.delivered == 0
    assert "not delivered" in caplog.text
    mgr.close()


def test_webhook_rejects_non_http_url():
    with pytest.raises(RlauditError, match="http"):
        WebhookSink("file:///etc/passwd")
