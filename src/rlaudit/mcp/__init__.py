"""rlaudit as an MCP server: read-only investigation tools for coding agents (`rlaudit mcp`, docs/agents.md).

- `tools.Tools`: the tools as plain Python methods returning small JSON-able dicts (no SDK needed).
- `limits`: answer budgets, paging cursors, clipping.
- `sql`: the read-only, file-less, time-limited `query` tool.
- `server`: registration with the official MCP SDK (`pip install 'rlaudit[mcp]'`), stdio and HTTP transports.
"""

from .limits import Limits
from .tools import ReadOnlyStore, Tools

__all__ = ["Limits", "ReadOnlyStore", "Tools"]
