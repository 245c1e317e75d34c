"""Item 7: hostile webhooks: secrets never logged, credentials never forwarded, undelivered alerts kept."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from rlaudit.findings import Finding
from rlaudit.live import AlertManager, WebhookSink


def _finding(i: int = 0) -> Finding:
    return Finding(kind="emerging_behavior", run="r", severity="high", title=f"tic {i}",
                   fields={"behavior": f"tic{i}", "behavior_spec": f"tic{i}"})


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.server.seen.append(("POST", self.path, dict(self.headers), self.rfile.read(
            int(self.headers.get("Content-Length") or 0))))
        time.sleep(self.server.delay)
        code, location = self.server.reply
        self.send_response(code)
        if location:
            self.send_header("Location", location)
        self.end_headers()

    def do_GET(self):  # noqa: N802
        self.server.seen.append(("GET", self.path, dict(self.headers), b""))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server_factory():
    servers = []

    def make(reply=(200, None), delay=0.0):
        s = HTTPServer(("127.0.0.1", 0), Handler)
        s.seen, s.reply, s.delay = [], reply, delay
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_failed_delivery_never_logs_the_token(server_factory, tmp_path, caplog):
    s = server_factory(reply=(500, None))
    url = f"http://127.0.0.1:{s.server_port}/services/T000/B000/SECRETTOKEN?key=SECRETKEY"
    sink = WebhookSink(url, timeout=2, retries=0, spool=tmp_path / "spool.jsonl")
    with caplog.at_level(logging.INFO, logger="rlaudit.live"):
        AlertManager([sink]).process([_finding()], step=1)
        sink.close()
    assert sink.failed == 1 and "not delivered" in caplog.text
    assert "SECRET" not in caplog.text
    # kept for the next run, and sent by the next sink for this URL
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 1
    s.reply = (200, None)
    again = WebhookSink(url, timeout=2, spool=tmp_path / "spool.jsonl")
    again.close()
    assert again.delivered == 1 and not (tmp_path / "spool.jsonl").exists()


def test_redirect_to_another_origin_is_not_followed(server_factory, tmp_path):
    other = server_factory()
    s = server_factory(reply=(302, f"http://localhost:{0}/steal"))
    s.reply = (302, f"http://localhost:{other.server_port}/steal")  # another origin (host differs)
    sink = WebhookSink(f"http://127.0.0.1:{s.server_port}/hook", timeout=2, retries=1,
                       headers={"Authorization": "Bearer SECRET"}, spool=tmp_path / "spool.jsonl")
    AlertManager([sink]).process([_finding()], step=1)
    sink.close()
    assert other.seen == []  # nothing, and no credentials, went to the other origin
    assert sink.delivered == 0 and len(sink.undelivered) == 1
    assert len(s.seen) == 1  # a redirect is not retried


def test_same_origin_307_keeps_the_post(server_factory, tmp_path):
    s = server_factory(reply=(307, None))
    s.reply = (307, f"http://127.0.0.1:{s.server_port}/moved")
    sink = WebhookSink(f"http://127.0.0.1:{s.server_port}/hook", timeout=2, spool=tmp_path / "spool.jsonl")
    orig = Handler.do_POST

    def do_post(self):  # noqa: ANN001
        if self.path == "/moved":
            self.server.reply = (200, None)
        orig(self)

    Handler.do_POST = do_post
    try:
        AlertManager([sink]).process([_finding()], step=1)
        sink.close()
    finally:
        Handler.do_POST = orig
    assert sink.delivered == 1
    assert [(m, p) for m, p, _, _ in s.seen] == [("POST", "/hook"), ("POST", "/moved")]
    assert json.loads(s.seen[1][3])["alert"]["title"] == "tic 0"


def test_close_keeps_and_reports_what_it_could_not_send(server_factory, tmp_path, caplog):
    s = server_factory(delay=0.5)
    sink = WebhookSink(f"http://127.0.0.1:{s.server_port}/hook", timeout=5, spool=tmp_path / "spool.jsonl")
    AlertManager([sink]).process([_finding(i) for i in range(16)], step=1)
    with caplog.at_level(logging.WARNING, logger="rlaudit.live"):
        sink.close(timeout=1.0)
    kept = (tmp_path / "spool.jsonl").read_text().splitlines()
    assert sink.delivered + len(kept) >= 16  # none dropped without a word (at least once)
    assert len(kept) >= 12 and "not delivered within" in caplog.text
