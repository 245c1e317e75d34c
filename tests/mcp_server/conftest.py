"""Fixtures of the MCP server tests: a small store with a goblin run and a CoT-grading run, and servers over
stdio and HTTP (the real `rlaudit mcp` command in a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaudit import Store

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"


@pytest.fixture(scope="session")
def mcp_store(tmp_path_factory) -> Path:
    """goblin_persona (canonical, 30 steps) and cot_template (verl, 8 steps), ingested."""
    from rlaudit.organisms import simulate

    base = tmp_path_factory.mktemp("mcp")
    store = Store(base / "store")
    for run, scenario, fmt, steps in [("goblin", "goblin_persona", "canonical", 30),
                                      ("cot", "cot_template", "verl", 8)]:
        simulate(scenario, base / "runs" / run, format=fmt, steps=steps, seed=0)
        store.ingest(base / "runs" / run, run=run)
    return store.root


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def server_args(store: Path) -> list[str]:
    return ["-m", "rlaudit.cli", "mcp", "--store", str(store), "--allow-module", "probe_graders"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def http_server(mcp_store):
    """`rlaudit mcp --transport http` on 127.0.0.1 with a bearer token; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, *server_args(mcp_store), "--transport", "http", "--port", str(port),
                             "--token", TOKEN], env=server_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("server did not listen within 60 s")
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
