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
