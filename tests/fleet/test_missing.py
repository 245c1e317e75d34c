"""Runs whose source disappears: `missing` in the status and on the page, no cost, findings kept; back when the
source returns; forgotten with `rlaudit fleet forget` or `rlaudit runs rm`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlaudit.fleet import FleetConfig, FleetScanner, InlineEngine
from rlaudit.fleet.report import status_rows
from rlaudit.fleet.state import FleetState
from rlaudit.live.alerts import AlertManager, JsonlSink
from rlaudit.store import Store

from .helpers import alert_lines, copy_upto, run_cli

ROWS_PER_STEP = 8 * 4


def _scanner(store: Path, root: Path, alerts: Path, **kw) -> FleetScanner:
    return FleetScanner(store, [root], InlineEngine(), AlertManager([JsonlSink(alerts)]),
                        FleetConfig(detectors=["cot_grading"], **kw))


def test_deleted_run_is_missing_keeps_findings_and_comes_back(tmp_path, full_fleet):
    root, store, alerts = tmp_path / "root", tmp_path / "store", tmp_path / "alerts.jsonl"
    copy_upto(full_fleet, root, 8)
    scanner = _scanner(store, root, alerts, report=tmp_path / "fleet.html")
    p1 = scanner.run_pass()
    assert p1.audited == 3 and p1.missing == 0
    leak = scanner.state.runs["team-a.cot"]
    findings_before = dict(leak.findings)
    assert findings_before.get("high"), findings_before
    sent_before = len(alert_lines(alerts))

    shutil.rmtree(root / "team-a" / "cot")  # the run's logs are deleted
    p2 = scanner.run_pass()
    assert p2.gone == ["team-a.cot"] and p2.missing == 1 and p2.audited == 0, p2.to_json()
    rs = scanner.state.runs["team-a.cot"]
    assert rs.status == "missing" and rs.missing_since > 0 and rs.findings == findings_before
    assert scanner.state.run_detail("team-a.cot")["findings"], "open findings are kept"
    assert Store(store).has_run("team-a.cot")  # and its rows
    html = (tmp_path / "fleet.html").read_text()
    assert 'id="run-team-a.cot" class="gone"' in html and ">missing<" in html
    assert 'href="fleet_runs/team-a.cot.html"' in html  # its report stays reachable
    row = {r["run"]: r for r in status_rows(FleetState(store))}["team-a.cot"]
    assert row["status"] == "missing" and row["missing_since"] and row["findings"]["high"] >= 1

    p3 = scanner.run_pass()  # costs nothing: no listing, no task, not reported gone again
    assert (p3.audited, p3.gone, p3.missing) == (0, [], 1)

    copy_upto(full_fleet, root, 8, only="team-a/cot")  # the same files come back: nothing to read
    p4 = scanner.run_pass()
    assert p4.back == ["team-a.cot"] and p4.audited == 0 and p4.missing == 0
    assert scanner.state.runs["team-a.cot"].status == "ok" and scanner.state.runs["team-a.cot"].reappeared == 1
    copy_upto(full_fleet, root, 10, only="team-a/cot")  # and it grows again: only the new steps are read
    p5 = scanner.run_pass()
    assert p5.audited == 1 and p5.rows_added == 2 * ROWS_PER_STEP
    assert Store(store).summary("team-a.cot").rows == 10 * ROWS_PER_STEP
    assert len(alert_lines(alerts)) == sent_before  # nothing alerted again
    scanner.close()


def test_emptied_run_directory_is_missing(tmp_path, full_fleet):
    """An object store's deleted objects leave an empty mirrored directory: missing, not an ingest error."""
    root, store = tmp_path / "root", tmp_path / "store"
    copy_upto(full_fleet, root, 4)
    scanner = _scanner(store, root, tmp_path / "a.jsonl")
    scanner.run_pass()
    for f in (root / "team-b" / "clean").rglob("*"):
        if f.is_file():
            f.unlink()
    p = scanner.run_pass()
    assert p.gone == ["team-b.clean"] and p.failed == 0 and not p.errors
    assert scanner.state.runs["team-b.clean"].status == "missing"
    scanner.close()


def test_unlistable_root_marks_nothing_missing(tmp_path, full_fleet):
    """A root that cannot be listed (an unmounted disk) is no evidence that its runs are gone."""
    root, store = tmp_path / "root", tmp_path / "store"
    copy_upto(full_fleet, root, 4)
    scanner = _scanner(store, root, tmp_path / "a.jsonl")
    scanner.run_pass()
    root.rename(tmp_path / "unmounted")
    p = scanner.run_pass()
    assert p.missing == 0 and all(r.status == "ok" for r in scanner.state.runs.values())
    scanner.close()


def test_forget_missing_runs(tmp_path, full_fleet):
    root, store, alerts = tmp_path / "root", tmp_path / "store", tmp_path / "alerts.jsonl"
    copy_upto(full_fleet, root, 6)
    scanner = _scanner(store, root, alerts)
    scanner.run_pass()
    scanner.close()
    shutil.rmtree(root / "team-a" / "cot")
    shutil.rmtree(root / "team-b" / "template")
    scanner = _scanner(store, root, alerts)
    assert sorted(scanner.run_pass().gone) == ["team-a.cot", "team-b.template"]
    scanner.close()
    # `fleet forget --missing`: state, findings, alert keys and store rows of the missing runs go
    assert run_cli("fleet", "forget", "--store", str(store), "nope").returncode == 2
    # an s3:// store is pulled first (tests/fleet/test_s3store.py); one that cannot be reached is a clear error
    s3 = run_cli("fleet", "forget", "--store", "s3://bucket/store", "--missing",
                 env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                      "AWS_MAX_ATTEMPTS": "1"})
    assert s3.returncode == 2 and "s3://bucket/store: cannot list" in s3.stderr, s3.stderr
    res = run_cli("fleet", "forget", "--store", str(store), "team-a.cot")
    assert res.returncode == 0, res.stderr
    state = FleetState(store)
    assert "team-a.cot" not in state.runs and not state.run_path("team-a.cot").exists()
    assert not any("|team-a.cot|" in k for k in state.sent) and any("|team-b.template|" in k for k in state.sent)
    assert not Store(store).has_run("team-a.cot")
    # `rlaudit runs rm` of a missing run: the scanner forgets it on its next pass
    assert run_cli("runs", "rm", "team-b.template", "--store", str(store)).returncode == 0
    scanner = _scanner(store, root, alerts)
    p = scanner.run_pass()
    assert p.forgotten == ["team-b.template"] and set(scanner.state.runs) == {"team-b.clean"}
    # a forgotten run found again is a new run: read from scratch and alerted afresh
    n_before = len(alert_lines(alerts))
    copy_upto(full_fleet, root, 6, only="team-a/cot")
    p = scanner.run_pass()
    assert p.new_runs == 1 and p.rows_added == 6 * ROWS_PER_STEP and len(alert_lines(alerts)) > n_before
    scanner.close()
    assert json.loads(run_cli("fleet", "status", "--store", str(store), "--json").stdout)["runs"]


def test_path_reused_by_another_run_is_read_afresh(tmp_path, full_fleet):
    """A missing run whose directory comes back holding another run (restarted from scratch): the old rows and
    findings are dropped, the new run is read alone, never mixed with the old one."""
    from rlaudit.organisms import simulate

    root, store = tmp_path / "root", tmp_path / "store"
    copy_upto(full_fleet, root, 8)
    scanner = _scanner(store, root, tmp_path / "a.jsonl")
    scanner.run_pass()
    assert scanner.state.runs["team-b.clean"].rows == 8 * ROWS_PER_STEP
    shutil.rmtree(root / "team-b" / "clean")
    assert scanner.run_pass().gone == ["team-b.clean"]
    simulate("clean_basic", root / "team-b" / "clean", format="verl", steps=5, prompts=8, generations=4, seed=7)
    p = scanner.run_pass()
    assert p.replaced == ["team-b.clean"] and p.new_runs == 1 and p.back == []
    assert Store(store).summary("team-b.clean").rows == 5 * ROWS_PER_STEP  # the new run only
    assert scanner.state.runs["team-b.clean"].status == "ok" and scanner.state.runs["team-b.clean"].last_step == 5
    scanner.close()
