"""End to end: the real `rlaudit mcp` server in a subprocess, driven by the MCP client library over stdio and
over HTTP on 127.0.0.1. Every tool, its errors (unknown run, bad spec, forbidden and slow queries), paging,
the resources, and the bearer token."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

mcp = pytest.importorskip("mcp", reason="the MCP SDK is not installed (pip install 'rlaudit[mcp]')")

import anyio  # noqa: E402
import httpx2  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from rlaudit.mcp.server import TOOL_NAMES  # noqa: E402

from .conftest import TOKEN, server_args, server_env  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mcp]


class Session:
    def __init__(self, client):
        self.client = client
        self.sizes: dict[str, int] = {}

    async def ok(self, tool: str, **args):
        r = await self.client.call_tool(tool, args)
        text = r.content[0].text
        assert not r.is_error, f"{tool}({args}): {text}"
        self.sizes[tool] = max(self.sizes.get(tool, 0), len(text.encode()))
        assert r.structured_content == json.loads(text)
        return json.loads(text)

    async def err(self, tool: str, **args) -> str:
        r = await self.client.call_tool(tool, args)
        assert r.is_error, f"{tool}({args}) should fail, got {r.content[0].text[:300]}"
        return r.content[0].text


async def exercise(client) -> dict[str, int]:
    """Every tool with its errors and paging; returns the largest answer per tool."""
    s = Session(client)
    tools = {t.name for t in (await client.list_tools()).tools}
    assert tools == set(TOOL_NAMES)

    runs = await s.ok("list_runs")
    assert {r["run"] for r in runs["runs"]} == {"cot", "goblin"}
    page1 = await s.ok("list_runs", limit=1)
    page2 = await s.ok("list_runs", limit=1, cursor=page1["next_cursor"])
    assert page1["next_cursor"] and page2["next_cursor"] is None and page1["runs"] != page2["runs"]
    assert "no run 'nope'" in await s.err("describe_run", run="nope")

    d = await s.ok("describe_run", run="goblin")
    assert d["rows"] > 0 and "nerdy_rm" in d["signals"] and d["findings_by_severity"]["high"] >= 1

    f = await s.ok("findings", run="goblin", behavior="goblin", min_severity="low", limit=3)
    assert f["findings"] and f["total"] >= len(f["findings"])
    kinds = {x["kind"] for x in (await s.ok("findings", run="goblin", limit=50))["findings"]}
    assert {"emerging_behavior", "reward_attribution"} <= kinds
    attr = (await s.ok("findings", run="goblin", kind="reward_attribution", min_severity="high"))["findings"][0]
    assert attr["signal"] == "nerdy_rm" and attr["condition"].startswith("nerdy")
    if f["next_cursor"]:
        more = await s.ok("findings", run="goblin", behavior="goblin", min_severity="low", limit=3,
                          cursor=f["next_cursor"])
        assert {x["id"] for x in more["findings"]}.isdisjoint(x["id"] for x in f["findings"])
    assert "severity" in await s.err("findings", min_severity="urgent")
    assert "cursor" in await s.err("findings", run="goblin", cursor="garbage!")

    ex = await s.ok("explain_finding", finding_id=attr["id"], evidence_limit=2)
    assert ex["statistics"]["signal"] == "nerdy_rm" and len(ex["evidence"]) == 2 and ex["next_cursor"]
    ex2 = await s.ok("explain_finding", finding_id=attr["id"], evidence_limit=2, evidence_cursor=ex["next_cursor"])
    assert ex2["evidence"][0]["rollout_id"] != ex["evidence"][0]["rollout_id"] or \
        ex2["evidence"][0]["step"] != ex["evidence"][0]["step"]
    assert "RUN#N" in await s.err("explain_finding", finding_id="nonsense")
    assert "no 'goblin#999'" in await s.err("explain_finding", finding_id="goblin#999")

    hits = await s.ok("search_rollouts", run="goblin", behavior="goblin", limit=2)
    assert hits["total"] > 2 and len(hits["matches"]) == 2 and hits["next_cursor"]
    assert all("goblin" in m["snippet"].lower() for m in hits["matches"])
    nxt = await s.ok("search_rollouts", run="goblin", behavior="goblin", limit=2, cursor=hits["next_cursor"])
    assert {m["rollout_id"] for m in nxt["matches"]}.isdisjoint(m["rollout_id"] for m in hits["matches"])
    scoped = await s.ok("search_rollouts", run="goblin", behavior="re:gremlins?", step_min=20, step_max=25,
                        condition="none", limit=5)
    assert all(20 <= m["step"] <= 25 and m["condition"] == "none" for m in scoped["matches"])
    assert "invalid RE2" in await s.err("search_rollouts", run="goblin", behavior="re:(unclosed")
    assert "style feature" in await s.err("search_rollouts", run="goblin", behavior="style:nope")
    assert "allowed only from the modules" in await s.err("search_rollouts", run="goblin", behavior="os:getcwd")
    assert "no run" in await s.err("search_rollouts", run="nope", behavior="goblin")

    rid = hits["matches"][0]["rollout_id"]
    r = await s.ok("get_rollout", run="goblin", rollout_id=rid)
    assert r["rollout_id"] == rid and "nerdy_rm" in r["rewards"] and "answer" in r and r["lengths"]["answer"] > 0
    part = await s.ok("get_rollout", run="goblin", rollout_id=rid, field="completion", offset=5)
    assert part["offset"] == 5 and part["length"] == r["lengths"]["completion"]
    assert "no rollout" in await s.err("get_rollout", run="goblin", rollout_id="missing:0")

    p = await s.ok("prevalence", run="goblin", behavior="goblin", points=5)
    nerdy = next(c for c in p["by_condition"] if c.startswith("nerdy"))
    curve = p["by_condition"][nerdy]
    assert len(p["bins"]) == 5 and len(curve["raw"]) == 5 and len(curve["rescaled"]) == 5
    assert curve["raw"][-1] > curve["raw"][0]

    c = await s.ok("compare_conditions", run="goblin", behavior="goblin")
    assert c["conditions"][0]["condition"] == nerdy and "nerdy_rm" in c["conditions"][0]["condition_only_signals"]
    assert "early" in await s.err("compare_conditions", run="goblin", behavior="goblin", early=0.9)

    em = await s.ok("emerging", run="goblin", limit=3)
    assert em["behaviors"] and all(b["kind"] in ("emerging_behavior", "generalization") for b in em["behaviors"])

    t = await s.ok("trace", run="goblin", behavior="goblin", n_boot=100)
    assert t["top_signal"] == "nerdy_rm" and t["condition"] == nerdy and t["severity"] in ("medium", "high")
    assert "where" in await s.err("trace", run="goblin", behavior="goblin", where="everywhere")

    cot = await s.ok("cot_exposure", run="cot")
    assert cot["exposures"] and cot["exposures"][0]["exposure_rate"] > 0.5
    assert (await s.ok("cot_exposure", run="goblin"))["exposures"] == []

    pr = await s.ok("probe_grader", grader="probe_graders:full_completion", run="cot", samples=12)
    assert pr["cot_sensitive"] is True
    pr2 = await s.ok("probe_grader", grader="probe_graders:answer_only", run="cot", samples=12)
    assert pr2["cot_sensitive"] is False
    assert "not from a module" in await s.err("probe_grader", grader="os:getcwd", run="cot")

    q = await s.ok("query", sql="SELECT run, count(*) AS n FROM rollouts GROUP BY run ORDER BY run", limit=1)
    assert q["columns"] == ["run", "n"] and q["rows"][0][0] == "cot" and q["next_cursor"]
    q2 = await s.ok("query", sql="SELECT run, count(*) AS n FROM rollouts GROUP BY run ORDER BY run", limit=1,
                    cursor=q["next_cursor"])
    assert q2["rows"][0][0] == "goblin" and q2["next_cursor"] is None
    q3 = await s.ok("query", sql="SELECT count(*) FROM rollouts", run="cot")
    assert q3["rows"][0][0] == (await s.ok("describe_run", run="cot", findings=False))["rows"]
    for sql in ["COPY (SELECT 1) TO '/tmp/rlaudit-mcp-test.csv'", "SELECT * FROM read_csv('/etc/passwd')",
                "ATTACH '/tmp/x.duckdb'", "INSTALL httpfs", "LOAD httpfs", "PRAGMA database_list",
                "CREATE TABLE t AS SELECT 1", "SET enable_external_access = true",
                "SELECT * FROM read_parquet('/tmp/*.parquet')"]:
        msg = await s.err("query", sql=sql)
        assert "read-only" in msg or "disabled" in msg, (sql, msg)
    assert "timeout" in await s.err("query", sql="SELECT count(*) FROM range(1000000000000) a, range(1000) b")

    for uri, needle in [("rlaudit://schema", "rollout_id"), ("rlaudit://behavior-specs", "style:"),
                        ("rlaudit://findings-schema", "reward_attribution")]:
        res = await client.read_resource(uri)
        assert needle in res.contents[0].text
    return s.sizes


def test_stdio_every_tool(mcp_store):
    async def main():
        params = StdioServerParameters(command=sys.executable, args=server_args(mcp_store), env=server_env())
        async with Client(params) as client:
            return await exercise(client)

    sizes = anyio.run(main)
    assert max(sizes.values()) <= 24_000  # Limits.max_answer_bytes


def test_http_every_tool_with_token(http_server):
    async def main():
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
            async with Client(streamable_http_client(http_server, http_client=http)) as client:
                return await exercise(client)

    sizes = anyio.run(main)
    assert max(sizes.values()) <= 24_000


def test_http_rejects_missing_or_wrong_token(http_server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx2.post(http_server, headers={**headers, "Content-Type": "application/json",
                                              "Accept": "application/json, text/event-stream"},
                        content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        assert r.status_code == 401


def test_http_off_loopback_needs_token(mcp_store):
    proc = subprocess.run([sys.executable, *server_args(mcp_store), "--transport", "http", "--host", "0.0.0.0",
                           "--port", "1"], env={**server_env(), "RLAUDIT_MCP_TOKEN": ""}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--token" in proc.stderr
