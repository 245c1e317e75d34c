"""The fleet scanner on local directories: discovery, incremental passes, dedup, restarts, sinks, report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from rlaudit.fleet import FleetConfig, FleetScanner, InlineEngine, LocalEngine, discover, discover_all
from rlaudit.fleet.state import FleetState
from rlaudit.live.alerts import AlertManager, JsonlSink, SlackSink, WebhookSink
from rlaudit.store import Store

from .helpers import SRC, alert_lines, copy_upto, free_port, rlaudit_cmd, run_cli, wait_for

ROWS_PER_STEP = 8 * 4  # prompts x generations of the simulated runs
CHEAP = ["cot_grading"]  # heavy detectors in most tests: the CoT scan + screen (fast); the per-step scan alerts


def _scanner(store: Path, root: Path, alerts: Path, engine=None, **kw) -> FleetScanner:
    manager = AlertManager([JsonlSink(alerts)], min_severity="medium")
    return FleetScanner(store, [root], engine or InlineEngine(), manager, FleetConfig(detectors=CHEAP, **kw))


def test_discovery_by_layout(tmp_path, full_fleet):
    runs = {r.name: r.format for r in discover(full_fleet)}
    assert runs == {"team-a.cot": "prime-rl", "team-b.clean": "verl", "team-b.template": "trl"}
    # a generic table directory beside a config is the run; a run given as the root is itself
    canon = tmp_path / "root" / "exp1"
    (canon / "steps").mkdir(parents=True)
    (canon / "config.yaml").write_text("x: 1\n")
    (canon / "steps" / "step_00001.jsonl").write_text(json.dumps({"step": 1, "prompt": "p", "completion": "c"}) + "\n")
    assert [(r.name, r.format) for r in discover(tmp_path / "root")] == [("exp1", "canonical")]
    assert [(r.name, r.format) for r in discover(full_fleet / "team-b" / "clean")] == [("clean", "verl")]
    # two roots holding a run of the same name: prefixed with the root's name, never merged
    for lab in ("lab-a", "lab-b"):
        shutil.copytree(full_fleet / "team-b" / "clean", tmp_path / lab / "clean")
    both = discover_all([("lab-a", tmp_path / "lab-a"), ("lab-b", tmp_path / "lab-b")])
    assert sorted(r.name for r in both) == ["lab-a.clean", "lab-b.clean"]


def test_incremental_passes_and_dedup(tmp_path, full_fleet):
    root, store, alerts = tmp_path / "root", tmp_path / "store", tmp_path / "alerts.jsonl"
    copy_upto(full_fleet, root, 8)
    scanner = _scanner(store, root, alerts)
    p1 = scanner.run_pass()
    assert (p1.runs, p1.new_runs, p1.audited, p1.failed, p1.heavy) == (3, 3, 3, 0, 3)
    assert p1.rows_added == 3 * 8 * ROWS_PER_STEP
    alerted = {a.run for a in p1.alerts}
    assert alerted == {"team-a.cot", "team-b.template"}  # both CoT leaks; the clean control is silent
    p2 = scanner.run_pass()  # nothing changed: no run costs anything
    assert (p2.audited, p2.skipped, p2.rows_added, len(p2.alerts)) == (0, 3, 0, 0)
    copy_upto(full_fleet, root, 9, only="team-b/clean")  # one new step in one run
    p3 = scanner.run_pass()
    assert (p3.audited, p3.skipped, p3.rows_added, p3.heavy) == (1, 2, ROWS_PER_STEP, 0)  # cheap checks only
    assert scanner.state.runs["team-b.clean"].pending and scanner.state.runs["team-b.clean"].last_step == 9
    p4 = scanner.run_pass()  # the run went quiet with an unaudited step: its final heavy audit, nothing read
    assert (p4.audited, p4.heavy, p4.rows_added) == (1, 1, 0)
    p5 = scanner.run_pass()
    assert p5.audited == 0
    scanner.config.idle_after, scanner.config.idle_every = 0.0, 1000  # quiet runs: listed every 1000th pass
    copy_upto(full_fleet, root, 10, only="team-b/clean")
    assert scanner.run_pass().audited == 0  # not even listed
    scanner.config.idle_after = None
    copy_upto(full_fleet, root, 16)  # every run grows: new cheap findings are the same keys, not new alerts
    p6 = scanner.run_pass()
    assert p6.audited == 3 and p6.rows_added == (2 * 8 + 7) * ROWS_PER_STEP  # incl. the step skipped while idle
    keys = [(a["key"], a["severity"]) for a in alert_lines(alerts)]
    assert len(keys) == len(set(keys)) and len(keys) == len(p1.alerts) + len(p6.alerts)
    store_rows = Store(store).summary("team-b.clean").rows
    assert store_rows == 16 * ROWS_PER_STEP  # nothing doubled
    scanner.close()


def test_local_engine_matches_inline(tmp_path, fleet_root):
    a = _scanner(tmp_path / "s1", fleet_root, tmp_path / "a1.jsonl")
    b = _scanner(tmp_path / "s2", fleet_root, tmp_path / "a2.jsonl", engine=LocalEngine(workers=2))
    try:
        ra, rb = a.run_pass(), b.run_pass()
    finally:
        a.close()
        b.close()
    assert rb.failed == 0 and rb.audited == 3
    assert sorted(x.key for x in ra.alerts) == sorted(x.key for x in rb.alerts)
    assert {r.host for r in b.state.runs.values()}


def test_bad_run_is_reported_and_others_scanned(tmp_path, fleet_root):
    bad = fleet_root / "team-c" / "broken"
    (bad / "completions").mkdir(parents=True)
    (bad / "config.json").write_text("{}")
    (bad / "completions" / "completions_00001.parquet").write_bytes(b"PAR1 this is not parquet")
    scanner = _scanner(tmp_path / "store", fleet_root, tmp_path / "alerts.jsonl")
    res = scanner.run_pass()
    assert (res.runs, res.audited, res.failed) == (4, 3, 1)
    broken = scanner.state.runs["team-c.broken"]
    assert broken.status == "error" and "team-c.broken" in res.errors and broken.error
    assert all(scanner.state.runs[r].status == "ok" for r in ("team-a.cot", "team-b.clean", "team-b.template"))
    res2 = scanner.run_pass()  # a failed run is tried again each pass; the others cost nothing
    assert (res2.audited, res2.failed, res2.skipped) == (0, 1, 3)
    good = next((fleet_root / "team-b" / "template" / "completions").glob("completions_00001.parquet"))
    (bad / "completions" / "completions_00001.parquet").write_bytes(good.read_bytes())
    res3 = scanner.run_pass()
    assert (res3.audited, res3.failed) == (1, 0) and scanner.state.runs["team-c.broken"].status == "ok"
    scanner.close()


def test_unreadable_run_left_by_a_killed_attempt_stays_an_error(tmp_path, fleet_root):
    """An attempt killed between its ingest of an unreadable run (a 0-row run with quarantined records) and the
    check that removes it: the retry reads the run afresh and reports it, never calls it fine with 0 rows."""
    from rlaudit.store import Store

    bad = fleet_root / "team-c" / "broken"
    (bad / "completions").mkdir(parents=True)
    (bad / "config.json").write_text("{}")
    (bad / "completions" / "completions_00001.parquet").write_bytes(b"PAR1 this is not parquet")
    store = Store(tmp_path / "store")
    store.ingest(bad, run="team-c.broken", format="trl")  # what the killed attempt had committed
    assert store.has_run("team-c.broken") and store.summary("team-c.broken").rows == 0
    scanner = _scanner(tmp_path / "store", fleet_root, tmp_path / "alerts.jsonl")
    try:
        res = scanner.run_pass()
    finally:
        scanner.close()
    assert res.failed == 1 and "could be read" in res.errors["team-c.broken"]
    assert scanner.state.runs["team-c.broken"].status == "error" and not store.has_run("team-c.broken")


class _Hook(BaseHTTPRequestHandler):
    fail_first = 0
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(500)
            self.end_headers()
            return
        type(self).bodies.append(body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_sinks_retry_and_a_dead_sink_never_stops_the_scan(tmp_path, fleet_root):
    _Hook.fail_first, _Hook.bodies = 2, []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens
    slack = SlackSink(f"http://127.0.0.1:{server.server_port}/slack", retries=3, backoff=0.05,
                      link=lambda a: f"https://reports.example/fleet_runs/{a.run}.html", spool=tmp_path / "s.jsonl")
    sinks = [WebhookSink(dead, retries=2, backoff=0.05, timeout=1.0, spool=tmp_path / "dead.jsonl"), slack,
             JsonlSink(tmp_path / "a.jsonl")]
    scanner = FleetScanner(tmp_path / "store", [fleet_root], InlineEngine(), AlertManager(sinks),
                           FleetConfig(detectors=CHEAP))
    try:
        res = scanner.run_pass()
    finally:
        scanner.close()
        server.shutdown()
    assert res.audited == 3 and len(res.alerts) >= 2
    assert sinks[0].failed == len(res.alerts) and sinks[0].delivered == 0  # dead endpoint: given up, spooled
    assert len(alert_lines(tmp_path / "dead.jsonl")) == len(res.alerts)  # sent first by the next scanner
    assert slack.delivered == len(res.alerts) == len(_Hook.bodies)  # 2 failures, retried with back-off
    text = _Hook.bodies[0]["text"]
    assert "rlaudit HIGH" in text and "team-" in text and "<https://reports.example/fleet_runs/" in text
    assert len(alert_lines(tmp_path / "a.jsonl")) == len(res.alerts)


def _spawn_scan(root: Path, store: Path, alerts: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(rlaudit_cmd("fleet", "scan", str(root), "--store", str(store), "--engine", "inline",
                                        "--alerts", str(alerts), "--detector", "cot_grading", *extra),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _passes(store: Path) -> int:
    try:
        return json.loads((store / "fleet" / "state.json").read_text()).get("passes", 0)
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("when", ["between-passes", "mid-pass"])
def test_killed_scanner_resumes_without_realerting_or_rereading(tmp_path, fleet_root, when):
    store, alerts = tmp_path / "store", tmp_path / "alerts.jsonl"
    proc = _spawn_scan(fleet_root, store, alerts, "--every", "0.2")
    try:
        if when == "between-passes":
            assert wait_for(lambda: _passes(store) >= 1, timeout=300)
        else:  # some runs done, the pass not finished
            runs_dir = store / "fleet" / "runs"
            assert wait_for(lambda: runs_dir.is_dir() and len(list(runs_dir.glob("*.json"))) >= 1, timeout=300,
                            every=0.02)
            assert _passes(store) == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = alert_lines(alerts)
    done_before = {n for n, r in FleetState(store).runs.items() if r.status == "ok"}
    res = run_cli("fleet", "scan", str(fleet_root), "--store", str(store), "--engine", "inline", "--alerts",
                  str(alerts), "--detector", "cot_grading", "--max-passes", "1")
    assert res.returncode == 0, res.stderr
    after = alert_lines(alerts)
    keys = [(a["key"], a["severity"]) for a in after]
    assert len(keys) == len(set(keys)), "an alert was sent twice"
    assert {a["run"] for a in after} == {"team-a.cot", "team-b.template"}
    state = FleetState(store)
    assert all(r.status == "ok" for r in state.runs.values())
    audited = int(res.stderr.split(" audited")[0].rsplit(" ", 1)[-1])
    assert audited == 3 - len(done_before)  # runs finished before the kill are neither re-read nor re-audited
    if when == "between-passes":
        assert after == before
    for run in state.runs:
        assert Store(store).summary(run).rows == 16 * ROWS_PER_STEP  # nothing lost, nothing doubled


@pytest.mark.slow
def test_cli_status_and_report(tmp_path, fleet_root):
    store, page = tmp_path / "store", tmp_path / "out" / "fleet.html"
    page.parent.mkdir()
    res = run_cli("fleet", "scan", str(fleet_root), "--store", str(store), "--engine", "inline",
                  "--detector", "cot_grading", "--report", str(page))
    assert res.returncode == 0, res.stderr
    assert "pass 1: 3 runs (3 new), 3 audited" in res.stderr
    status = run_cli("fleet", "status", "--store", str(store), "--json")
    obj = json.loads(status.stdout)
    by_run = {r["run"]: r for r in obj["runs"]}
    assert set(by_run) == {"team-a.cot", "team-b.clean", "team-b.template"}
    assert by_run["team-a.cot"]["findings"]["high"] >= 1 and by_run["team-b.clean"]["findings"]["high"] == 0
    assert by_run["team-b.clean"]["last_step"] == 16 and by_run["team-b.clean"]["rows"] == 16 * ROWS_PER_STEP
    html = page.read_text()
    assert html.count('<tr id="run-') == 3 and "<svg" in html
    for run in ("team-a.cot", "team-b.template"):  # runs with findings link to their own report
        assert f'href="fleet_runs/{run}.html"' in html and (page.parent / "fleet_runs" / f"{run}.html").is_file()
    assert not (page.parent / "fleet_runs" / "team-b.clean.html").exists()
    idle = run_cli("fleet", "scan", str(fleet_root), "--store", str(store), "--engine", "inline",
                   "--detector", "cot_grading", "--every", "0.1", "--until-idle", "0.5")
    assert idle.returncode == 0, idle.stderr
    assert "pass 2: 3 runs (0 new), 0 audited (0 heavy), 3 unchanged" in idle.stderr and "0 alert(s)" in idle.stdout
    table = run_cli("fleet", "status", "--store", str(store))
    assert "team-b.template" in table.stdout
    assert run_cli("fleet", "status", "--store", str(tmp_path / "none")).returncode == 2


@pytest.mark.slow
def test_worker_killed_mid_pass(tmp_path, fleet_root):
    """A local worker process killed while it audits: the runs its pool held run again within the pass (each
    alone, on a fresh pool), with nothing lost, doubled or alerted twice, and the dead attempt in the state."""
    alerts = tmp_path / "alerts.jsonl"
    engine = LocalEngine(workers=2)
    scanner = _scanner(tmp_path / "store", fleet_root, alerts, engine=engine)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("p", scanner.run_pass()))
    t.start()
    # wait until a worker is busy with a run (its store run directory exists), then kill that worker
    runs = tmp_path / "store" / "runs"
    assert wait_for(lambda: runs.is_dir() and any(runs.iterdir()) and engine._pool is not None
                    and engine._pool._processes, timeout=300, every=0.02)
    victim = next(iter(engine._pool._processes))
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=600)
    p1 = result["p"]
    assert p1.failed == 0 and p1.retried, (p1.errors, p1.retried)
    assert sum(r.failures for r in scanner.state.runs.values()) >= 1
    assert all("died mid-task" in scanner.state.runs[name].last_failure for name in p1.retried)
    p2 = scanner.run_pass()
    assert p2.failed == 0 and p2.audited == 0  # nothing was left for the next pass
    assert all(r.status == "ok" for r in scanner.state.runs.values())
    scanner.close()
    keys = [(a["key"], a["severity"]) for a in alert_lines(alerts)]
    assert len(keys) == len(set(keys)) and {a["run"] for a in alert_lines(alerts)} == {"team-a.cot", "team-b.template"}
    for run in scanner.state.runs:
        assert Store(tmp_path / "store").summary(run).rows == 16 * ROWS_PER_STEP


def test_outbox_is_delivered_once_after_a_kill(tmp_path, fleet_root):
    """Alerts recorded as sent but not yet delivered when the scanner died are delivered on restart, and a JSONL
    sink that already has them is not written twice."""
    store, alerts = tmp_path / "store", tmp_path / "alerts.jsonl"
    first = _scanner(store, fleet_root, alerts)
    res = first.run_pass()
    first.close()
    assert res.alerts
    state = FleetState(store)  # as if the scanner died after saving the outbox, before delivering to a 2nd sink
    state.outbox = [a.to_json() for a in res.alerts]
    state.save()
    other = tmp_path / "other.jsonl"
    manager = AlertManager([JsonlSink(alerts), JsonlSink(other)])
    again = FleetScanner(store, [fleet_root], InlineEngine(), manager, FleetConfig(detectors=CHEAP))
    res2 = again.run_pass()
    again.close()
    assert res2.audited == 0 and not res2.alerts and FleetState(store).outbox == []
    assert len(alert_lines(alerts)) == len(res.alerts)  # already there: not repeated
    assert [a["key"] for a in alert_lines(other)] == [a.key for a in res.alerts]  # delivered exactly once


class _Killed(BaseException):
    """Stands for SIGKILL at a chosen point (a BaseException: nothing in the scanner catches it)."""


@pytest.mark.parametrize("point", ["before-alerts-saved", "after-alerts-saved", "after-run-saved",
                                   "before-delivery"])
def test_kill_at_each_point_of_a_result(tmp_path, fleet_root, monkeypatch, point):
    """Deterministic version of the mid-pass kill: the scanner dies at each step of absorbing the first result
    that brings alerts; a new scanner then sends every alert exactly once."""
    store, alerts = tmp_path / "store", tmp_path / "alerts.jsonl"
    scanner = _scanner(store, fleet_root, alerts)
    armed = {"on": True}

    def trip() -> None:
        if armed["on"]:
            armed["on"] = False
            raise _Killed(point)

    orig_save, orig_detail = FleetState.save, FleetState.save_run_detail
    orig_dispatch = AlertManager.dispatch

    def save(self):
        if self.outbox and point == "before-alerts-saved":
            trip()
        orig_save(self)

    def save_detail(self, run, detail):
        if self.outbox and point == "after-alerts-saved":
            trip()
        orig_detail(self, run, detail)
        if self.outbox and point == "after-run-saved":
            trip()

    def dispatch(self, alert):
        if point == "before-delivery":
            trip()
        orig_dispatch(self, alert)

    monkeypatch.setattr(FleetState, "save", save)
    monkeypatch.setattr(FleetState, "save_run_detail", save_detail)
    monkeypatch.setattr(AlertManager, "dispatch", dispatch)
    with pytest.raises(_Killed):
        scanner.run_pass()
    assert not armed["on"]
    monkeypatch.undo()
    again = _scanner(store, fleet_root, alerts)
    again.run_pass()
    again.close()
    sent = alert_lines(alerts)
    keys = [(a["key"], a["severity"]) for a in sent]
    assert len(keys) == len(set(keys)), "an alert was sent twice"
    assert {a["run"] for a in sent} == {"team-a.cot", "team-b.template"}, "an alert was lost"
    assert all(r.status == "ok" for r in FleetState(store).runs.values())
