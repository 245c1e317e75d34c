"""examples/agent_investigation.py reaches the answer through MCP tools only, on the demo's goblin run (in the
demo's three-run store) and on an unseen simulated run (verl, another seed), in a handful of calls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("mcp", reason="the MCP SDK is not installed (pip install 'rlaudit[mcp]')")

from .conftest import ROOT, server_env  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mcp]


def test_agent_investigation_demo_and_unseen(tmp_path):
    out = tmp_path / "answers.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "agent_investigation.py"), "--setup",
                           str(tmp_path / "runs"), "--json", str(out)], env=server_env(), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    answers = json.loads(out.read_text())
    assert set(answers) == {"demo", "unseen"}
    for name, a in answers.items():
        assert a["check"] == "matches the ground truth", (name, a["check"])
        assert a["reward_signal"] == "nerdy_rm" and a["source_condition"] == "nerdy-playful-assistant"
        assert "goblin" in a["tic"]["behavior"] and len(a["spread_to"]) >= 2
        assert a["calls"] <= 10 and a["bytes"] <= 20_000, (name, a["calls"], a["bytes"])
    # every call is printed with its answer size, then the totals
    assert proc.stdout.count("] list_runs(") == 2 and "tool calls" in proc.stdout and " B" in proc.stdout
