"""Live auditing while a run trains: hooks, a TRL callback, a directory watcher and alert sinks.

- `LiveHook`: the plain Python API (`log_rollouts` per step, or `wrap_rewards` around reward functions).
- `RlauditCallback`: a `transformers.TrainerCallback` for TRL's GRPOTrainer (needs the `trl` extra).
- `watch`: follow a run directory while a trainer writes it (`rlaudit watch DIR`).
- `LiveAuditor`, `LiveConfig`, `StepSample`: the schedule underneath (cheap checks every step, heavy detectors
  every few steps on a bounded sample of the run).
- `AlertManager` and its sinks (`LogSink`, `JsonlSink`, `WebhookSink`).
"""

from __future__ import annotations

from typing import Any

from .alerts import Alert, AlertManager, JsonlSink, LogSink, SlackSink, WebhookSink, finding_key, make_alerts
from .auditor import LiveAuditor, LiveConfig
from .hooks import LiveHook
from .sampling import StepSample
from .watch import WatchResult, watch


def __getattr__(name: str) -> Any:
    if name == "RlauditCallback":  # imports transformers: only when asked for
        from .trl_callback import RlauditCallback

        return RlauditCallback
    raise AttributeError(name)


__all__ = ["Alert", "AlertManager", "JsonlSink", "LogSink", "SlackSink", "WebhookSink", "finding_key", "make_alerts",
           "LiveAuditor", "LiveConfig", "LiveHook", "StepSample", "WatchResult", "watch", "RlauditCallback"]
