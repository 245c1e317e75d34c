"""The MCP server: `rlaudit mcp` registers the tools of `tools.Tools` and three resources with the official
MCP Python SDK (`mcp.server.mcpserver.MCPServer`) and serves them over stdio or streamable HTTP.

HTTP binds 127.0.0.1 by default. On any other address a bearer token is required (`--token` or
`RLAUDIT_MCP_TOKEN`): every request must carry `Authorization: Bearer <token>`, checked in constant time before
the MCP app sees it. A token given on 127.0.0.1 is enforced too.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import json
import ipaddress
import sys
from pathlib import Path
from typing import Any

from ..errors import RlauditError
from ..findings import jsonable
from ..schema import schema_markdown
from .limits import Limits
from .tools import Tools, behavior_spec_doc, findings_schema_doc

TOOL_NAMES = ("list_runs", "describe_run", "findings", "explain_finding", "search_rollouts", "get_rollout",
              "prevalence", "compare_conditions", "emerging", "trace", "cot_exposure", "probe_grader", "query")

INSTRUCTIONS = """rlaudit audits RL runs of language models stored in one store (read-only here).
Start with list_runs and describe_run; findings lists what the audit found (ids RUN#N, explain_finding for
statistics and evidence). To follow a behaviour: search_rollouts (ids + snippets), prevalence and
compare_conditions (where and when it rose), trace (which reward signal pays for it), get_rollout (one rollout
whole). cot_exposure: graders that saw the reasoning. query: read-only SQL over views rollouts and rewards_long.
Behaviour specs: a word or phrase, re:REGEX (RE2), style:NAME (resource rlaudit://behavior-specs).
Answers are small; lists carry next_cursor: pass it back as cursor for more."""


def require_mcp() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise RlauditError("the MCP server needs the MCP Python SDK (rlaudit's extra 'mcp'): "
                           "pip install 'mcp>=2.3,<3'") from None


def build_server(tools: Tools) -> Any:
    """An MCPServer exposing `tools` (read-only) and the schema, behaviour-spec and findings-schema resources."""
    require_mcp()
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp_types import CallToolResult, TextContent, ToolAnnotations

    from .. import __version__

    server = MCPServer("rlaudit", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                open_world_hint=False)

    def wrap(method: Any) -> Any:
        """The tool as the SDK sees it: the method's parameters; its answer as compact JSON text plus the same
        object as structured content; RlauditError as a tool error (is_error, one line)."""
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> CallToolResult:
            try:
                answer = jsonable(method(*args, **kwargs))
            except RlauditError as exc:  # the caller's mistake: one line, no traceback
                raise ToolError(str(exc)) from None
            except (ValueError, TypeError, KeyError) as exc:
                raise ToolError(f"{type(exc).__name__}: {exc}") from None
            text = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
            return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=answer)

        sig = inspect.signature(method)
        call.__signature__ = sig.replace(return_annotation=CallToolResult)  # type: ignore[attr-defined]
        call.__annotations__ = {**method.__annotations__, "return": CallToolResult}
        return call

    for name in TOOL_NAMES:
        method = getattr(tools, name)
        server.add_tool(wrap(method), name=name, description=inspect.getdoc(method), annotations=read_only)

    @server.resource("rlaudit://schema", name="schema", mime_type="text/markdown",
                     description="The canonical rollout table: columns of the `rollouts` view.")
    def schema() -> str:
        return schema_markdown() + "\n\nView rewards_long: run, rollout_id, step, group_id, condition, task, " \
            "signal, value (one row per rollout and reward signal)."

    @server.resource("rlaudit://behavior-specs", name="behavior-specs", mime_type="text/plain",
                     description="The behaviour-spec language shared by search, prevalence, trace and alerts.")
    def behavior_specs() -> str:
        return behavior_spec_doc()

    @server.resource("rlaudit://findings-schema", name="findings-schema", mime_type="application/json",
                     description="Findings JSON: common keys, kinds, the key fields the tools list.")
    def findings_schema() -> str:
        return findings_schema_doc()

    return server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """ASGI middleware: 401 unless `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="rlaudit"')]})
                await send({"type": "http.response.body", "body": b'{"error": "missing or wrong bearer token"}'})
                return
        await self.app(scope, receive, send)


def http_app(server: Any, host: str, token: str | None) -> Any:
    """The streamable-HTTP ASGI app at /mcp, behind the bearer check when a token is set."""
    if not is_loopback(host) and not token:
        raise RlauditError(f"--host {host} is reachable from other machines: give --token (or RLAUDIT_MCP_TOKEN) "
                           "so that requests must carry it as a bearer token")
    from mcp.server.transport_security import TransportSecuritySettings

    security = None if is_loopback(host) else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(host=host, transport_security=security)
    return BearerAuth(app, token) if token else app


def serve(store: str | Path, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765,
          token: str | None = None, grader_modules: list[str] | None = None, findings_json: str | None = None,
          limits: Limits | None = None) -> None:
    """Run the server until stopped (stdio: until the client closes stdin)."""
    require_mcp()
    if not Path(store).is_dir():
        raise RlauditError(f"{store}: no store directory (ingest runs first with `rlaudit ingest --store {store}`)")
    tools = Tools(store, limits=limits, grader_modules=grader_modules, findings_json=findings_json)
    server = build_server(tools)
    if transport == "stdio":
        server.run("stdio")
        return
    if transport != "http":
        raise RlauditError(f"--transport must be stdio or http, got {transport!r}")
    app = http_app(server, host, token)
    import uvicorn

    print(f"rlaudit MCP server: http://{host}:{port}/mcp" + (" (bearer token required)" if token else ""),
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="on")
