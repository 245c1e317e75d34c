"""tests/sendable_reports.py: a test whose report holds a lone surrogate or an odd type is reported by an xdist
worker (passed or failed, with its output) instead of killing the session with an INTERNALERROR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sendable_reports import sendable

TESTS = Path(__file__).resolve().parent

_CASES = '''
import logging

def test_logs_a_lone_surrogate():
    logging.getLogger("t").warning("a name with \\udcff in it")

def test_fails_on_a_lone_surrogate():
    assert "x\\udcff" == "y"

def test_a_thread_raises_a_lone_surrogate():
    import threading

    def fail():
        raise ValueError("bad \\udcff")

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()

def test_plain():
    pass
'''


def test_sendable_escapes_surrogates_and_odd_types():
    class Tag(int):
        pass

    data = {"a": "ok \udcff", "b": [("x", Tag(3), 1.5, None, True)], "c": {"\ud800": b"raw"}}
    out = sendable(data)
    assert out == {"a": "ok \\udcff", "b": [("x", "3", 1.5, None, True)], "c": {"\\ud800": b"raw"}}
    assert type(out["b"][0]) is tuple and type(out["b"][0][0]) is str


def test_an_xdist_worker_reports_tests_whose_reports_hold_lone_surrogates(tmp_path):
    """A log line, an assertion's diff and a thread's exception (a warning) with a lone surrogate."""
    (tmp_path / "test_cases.py").write_text(_CASES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "-p",
                           "sendable_reports", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, errors="backslashreplace",
                          timeout=120)
    out = done.stdout + done.stderr
    assert "INTERNALERROR" not in out, out
    assert "1 failed, 3 passed" in out and "1 warning" in out, out
    assert "test_fails_on_a_lone_surrogate" in out and "\\udcff" in out
