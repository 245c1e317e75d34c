"""The fleet scanner: every RL run under some roots (directories or object-store prefixes), continuously,
incrementally and resumably, on one machine or a Ray cluster, alerting once per finding.

    rlaudit fleet scan ROOT... [--engine local|ray] [--every 60] [--until-idle S] [--alerts F.jsonl]
                               [--webhook URL] [--slack-webhook URL] [--report fleet.html]
    rlaudit fleet status [--json]

- `discovery`: runs under a root by layout (any reader);
- `objectstore`: object-store roots mirrored incrementally to local disk;
- `worker`: one run's share of a pass (ingest what is new, cheap per-step checks, heavy detectors when due),
  the same function on every engine;
- `engines`: inline, local processes, Ray tasks;
- `state`: what survives a restart (run states, alert keys sent, the alert outbox);
- `scheduler`: `FleetScanner`, the passes;
- `report`: the fleet page.
"""

from __future__ import annotations

from .discovery import RunSource, discover, discover_all
from .engines import Engine, InlineEngine, LocalEngine, RayEngine, make_engine
from .scheduler import FleetConfig, FleetScanner, PassResult
from .state import FleetState, RunState
from .worker import RunOutcome, RunTask, run_task

__all__ = ["RunSource", "discover", "discover_all", "Engine", "InlineEngine", "LocalEngine", "RayEngine",
           "make_engine", "FleetConfig", "FleetScanner", "PassResult", "FleetState", "RunState", "RunOutcome",
           "RunTask", "run_task"]
