"""Items 3-7: live auditing under faults (early files, torn alerts, full disks, raising reward functions,
hostile webhooks)."""

from __future__ import annotations

import errno
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from rlaudit.live import LiveConfig, LiveHook, watch
from rlaudit.store import Store
from tests.readers.trainer_files import verl_step


def _quiet(**kw):
    return LiveConfig(detectors=[], every_step=(), background=None, **kw)


# ---------------------------------------------------------------- item 3
def test_watch_does_not_decide_the_layout_on_an_empty_first_file(tmp_path):
    src = tmp_path / "rollout_data"
    src.mkdir()
    (src / "1.jsonl").write_text("")  # verl opened the file, nothing written yet
    store = Store(tmp_path / "store")
    polls = {"n": 0}

    def sleep(_):
        polls["n"] += 1
        if polls["n"] == 1:
            (src / "1.jsonl").write_text('{"input": "q", "out')  # a first line still being written
        elif polls["n"] == 2:
            (src / "1.jsonl").unlink()
            verl_step(src, 1, ["q1", "q2"], ["a", "b"], [1.0, 0.0])
            verl_step(src, 2, ["q1", "q2"], ["a", "b"], [1.0, 0.0])

    result = watch(src, store, "v", max_polls=4, interval=0, sleep=sleep, config=_quiet())
    assert store.manifest("v")["format"] == "verl"
    assert result.rows == 4


def test_cli_runs_rm(tmp_path):
    from typer.testing import CliRunner

    from rlaudit.cli import app

    src = tmp_path / "d"
    verl_step(src, 1, ["q"], ["a"], [1.0])
    store = Store(tmp_path / "store")
    store.ingest(src, run="d", format="canonical")
    with pytest.raises(Exception, match="runs rm d"):
        store.ingest(src, run="d", format="verl")
    res = CliRunner().invoke(app, ["runs", "rm", "d", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    assert store.runs() == []
    assert store.ingest(src, run="d", format="verl").rows_added == 1


# ---------------------------------------------------------------- item 4
def _goblin_finding(run="r"):
    from rlaudit.findings import Finding

    return Finding(kind="emerging_behavior", run=run, severity="high", title="goblin",
                   fields={"behavior": "goblin", "behavior_spec": "goblin"})


def test_torn_alerts_file_does_not_stop_training(tmp_path):
    from rlaudit.live import make_alerts

    path = tmp_path / "alerts.jsonl"
    first = make_alerts(path)
    first.process([_goblin_finding()], step=3)
    data = path.read_bytes()
    path.write_bytes(data + '{"key": "x", "title": "gobelin é'.encode()[:-1])  # cut inside a UTF-8 character
    hook = LiveHook(tmp_path / "store", "r", alerts_path=path, config=_quiet())  # must not raise
    assert hook.auditor.alerts.sent  # what was sent before is still known
    again = make_alerts(path)
    assert again.process([_goblin_finding()], step=4) == []  # not repeated
    f2 = _goblin_finding()
    f2.fields["behavior_spec"] = "gremlin"
    assert len(again.process([f2], step=5)) == 1
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[-1])["key"].endswith("gremlin")  # a new line, not glued to the torn one


# ---------------------------------------------------------------- item 6
def test_wrap_rewards_when_one_function_raises(tmp_path):
    hook = LiveHook(tmp_path / "store", "w", config=_quiet())

    def good(prompts, completions, **kw):
        return [1.0] * len(completions)

    def flaky(prompts, completions, **kw):
        if "boom" in completions[0]:
            raise ValueError("grader down")
        return [0.5] * len(completions)

    wrapped = hook.wrap_rewards([good, flaky])
    for step in range(20):
        completions = [f"boom {step}" if step % 2 else f"fine {step}", "x"]
        for fn in wrapped:
            try:
                fn(["p", "q"], completions)
            except ValueError:
                pass
    hook.close()
    store = Store(tmp_path / "store")
    assert store.summary("w").rows == 40  # every batch logged, the failed function's signal n/a
    vals = store.query("SELECT rewards['flaky'] AS f FROM rollouts", runs=["w"]).column(0).to_pylist()
    assert sum(v != v for v in vals) == 20 and sum(v == 0.5 for v in vals) == 20


def test_wrap_rewards_pending_is_bounded(tmp_path):
    from rlaudit.live.hooks import RewardRecorder

    hook = LiveHook(tmp_path / "store", "w", config=_quiet())
    rec = RewardRecorder(hook, [lambda p, c: [1.0] * len(c), lambda p, c: [0.0] * len(c)], True, 1)
    batches = [[f"c{i}"] for i in range(50)]  # kept alive: ids stay distinct
    for b in batches:
        rec.wrapped[0](["p"], b)  # the second function never scores these
    assert len(rec._pending) <= rec.max_pending


# ---------------------------------------------------------------- item 5
def _batch(step):
    return (["q1", "q2"], [f"a{step}", "b"], {"r": [1.0, 0.0]})


def test_disk_full_steps_are_spooled_retried_and_named(tmp_path, monkeypatch):
    real = Store._write_part
    full = {"on": False}

    def write_part(self, *a, **k):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Store, "_write_part", write_part)
    hook = LiveHook(tmp_path / "store", "full", config=_quiet())
    for step in range(8):
        full["on"] = step in (3, 4, 5)
        alerts = hook.log_rollouts(step, *_batch(step))
        if step == 5:
            [gap] = [f for f in hook.findings if f.get("problem") == "steps_not_stored"]
            assert gap["missing_steps"] == [3, 4, 5] and "3-5" in gap.title and "No space" in gap.title
            assert any(a.kind == "audit_error" for a in alerts) or gap.severity == "medium"
    hook.close()
    assert not [f for f in hook.findings if f.get("problem") == "steps_not_stored"]
    assert Store(tmp_path / "store").summary("full").rows == 16  # nothing lost


def test_store_still_unwritable_at_close_spills_outside(tmp_path, monkeypatch):
    monkeypatch.setenv("RLAUDIT_SPOOL_DIR", str(tmp_path / "spool"))
    hook = LiveHook(tmp_path / "store", "ro", config=_quiet())
    hook.log_rollouts(0, *_batch(0))

    def read_only(self, *a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Store, "_write_part", read_only)
    for step in (1, 2):
        hook.log_rollouts(step, *_batch(step))
    hook.close()
    [gap] = [f for f in hook.findings if f.get("problem") == "steps_not_stored"]
    assert gap["missing_steps"] == [1, 2] and gap["spool_dir"]
    monkeypatch.undo()
    store = Store(tmp_path / "store2")
    store.ingest(gap["spool_dir"], run="ro", format="canonical")
    assert store.summary("ro").rows == 4


def test_watch_survives_a_store_it_cannot_write(tmp_path, monkeypatch):
    src = tmp_path / "dump"
    verl_step(src, 1, ["q1", "q2"], ["a", "b"], [1.0, 0.0])
    real = Store._write_part
    polls = {"n": 0}

    def write_part(self, *a, **k):
        if polls["n"] < 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Store, "_write_part", write_part)
    statuses = []

    def sleep(_):
        polls["n"] += 1

    result = watch(src, tmp_path / "store", "w", max_polls=4, interval=0, sleep=sleep, config=_quiet(),
                   on_poll=statuses.append)
    assert "cannot write the store" in statuses[0].waiting
    assert result.rows == 2
