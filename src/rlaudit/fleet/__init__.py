"""The fleet scanner: every RL run under some roots (directories or object-store prefixes), continuously,
incrementally and resumably, on one machine or a Ray cluster, alerting once per finding.

    rlaudit fleet scan ROOT... [--engine local|ray] [--every 60] [--until-idle S] [--alerts F.jsonl]
                               [--webhook URL] [--slack-webhook URL] [--report fleet.html]
    rlaudit fleet status [--json]
    rlaudit fleet forget RUN... | --missing
    rlaudit fleet audit RUN --shards N [--engine local|ray]

- `discovery`: runs under a root by layout (any reader);
- `objectstore`: object-store roots mirrored incrementally to local disk;
- `worker`: one run's share of a pass (ingest what is new, cheap per-step checks, heavy detectors when due),
  the same function on every engine;
- `engines`: inline, local processes, Ray tasks;
- `state`: what survives a restart (run states, alert keys sent, the alert outbox);
- `scheduler`: `FleetScanner`, the passes;
- `report`: the fleet page;
- `shard`: one large run's per-part scans split by step range over an engine, merged by the driver.
"""

from __future__ import annotations

from typing import Any

# Imported on first use: `rlaudit --help` (which registers the `fleet` commands) must not pay for DuckDB.
_EXPORTS = {
    "RunSource": "discovery", "discover": "discovery", "discover_all": "discovery",
    "Engine": "engines", "InlineEngine": "engines", "LocalEngine": "engines", "RayEngine": "engines",
    "make_engine": "engines", "FleetConfig": "scheduler", "FleetScanner": "scheduler", "PassResult": "scheduler",
    "sharded_audit": "shard", "plan": "shard",
    "FleetState": "state", "RunState": "state", "RunOutcome": "worker", "RunTask": "worker", "run_task": "worker",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)


__all__ = sorted(_EXPORTS)
