"""Live auditing of a TRL GRPO run: a `transformers.TrainerCallback`.

    from rlaudit.live import RlauditCallback

    args = GRPOConfig(..., log_completions=True, logging_steps=1)
    trainer = GRPOTrainer(..., args=args, callbacks=[RlauditCallback(alerts_path="alerts.jsonl")])

With `log_completions=True`, GRPOTrainer writes `{output_dir}/completions/completions_{step:05d}.parquet` at each
logging step, *after* the callbacks' `on_log` of that step has run. The callback therefore picks a step's file
up at the end of the next step (`on_step_end`), and the last one at `on_train_end`, where it also runs a final
heavy audit. Each file is read with rlaudit's TRL reader and appended to the store, then `LiveAuditor.update`
audits (see `rlaudit.live.auditor`). Only the file names of the last few steps are probed, never a listing of
all files: finding a step's file costs the same at step 10 and at step 10,000 (the store's bookkeeping of a
step does grow with the run: docs/live.md).

The callback reads with its own `TrlReader`, whose run-level facts come from the trainer itself rather than
from trainer_state.json / training_args.bin: the GRPOConfig (`reward_weights`, `num_iterations`,
`steps_per_generation`, `num_generations`, ...), `on_log` (the `rewards/<name>/mean` keys name the reward
functions, so numeric `log_extra` columns are metadata) and `on_evaluate` (an eval at step N overwrote
`completions_N.parquet` with eval rollouts: those rows are split=eval). Chat completions (message lists with
`reasoning_content`/`thinking`, `tool_calls` and tool messages) are read as in `rlaudit.readers.trl`.

Every hook catches its own exceptions and logs them: the trainer never sees an rlaudit error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..conditions import ConditionRule
from ..readers.base import ReadOptions, SourceFile
from ..readers.trl import TrlReader
from ..readers.trl_run import ARG_KEYS, TrlRun
from ..store import Store
from ..text import ThinkTags
from .alerts import Alert, AlertManager, make_alerts
from .auditor import LiveAuditor, LiveConfig, guarded

log = logging.getLogger("rlaudit.live")

#: How far back (in steps) each poll looks for completion files it has not seen: covers logging_steps gaps.
LOOKBACK = 64


class RlauditCallback(TrainerCallback):
    """Feeds TRL's per-step completion logs to a `LiveAuditor` and raises alerts during training."""

    def __init__(self, store: Store | str | Path = ".rlaudit", run: str | None = None, *,
                 alerts_path: str | Path | None = None, webhook: str | None = None, min_severity: str = "medium",
                 config: LiveConfig | None = None, alerts: AlertManager | None = None,
                 think_tags: ThinkTags | None = None, conditions: list[ConditionRule] | None = None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.run = run
        self.config = config or LiveConfig()
        self._alerts = alerts or make_alerts(alerts_path, webhook, min_severity)
        self.think_tags = think_tags or ThinkTags()
        self.conditions = list(conditions or [])
        self.auditor: LiveAuditor | None = None
        self.completions_dir: Path | None = None
        self.options = ReadOptions(think_tags=self.think_tags)
        self.seen: set[int] = set()
        self.reader = TrlReader()
        self.seconds = 0.0  # time the trainer spent in this callback during training (read, store, per-step checks)
        self.final_seconds = 0.0  # the final audit at the end of training
        self.errors: list[str] = []
        self._logged_errors: set[tuple[str, str, str]] = set()

    # -- results ---------------------------------------------------------------
    @property
    def alerts(self) -> list[Alert]:
        return self._alerts.history

    @property
    def findings(self) -> list:
        return self.auditor.findings if self.auditor else []

    # -- trainer events ----------------------------------------------------------
    @guarded()
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not getattr(state, "is_world_process_zero", True):
            return  # one auditor per run: TRL writes completion logs from the main process only
        output_dir = Path(args.output_dir)
        self.completions_dir = output_dir / "completions"
        run = self.run or output_dir.resolve().name
        self.auditor = LiveAuditor(self.store, run, self.config, self._alerts)
        self.auditor.labeler.rules = self.conditions
        self.errors = self.auditor.errors  # one error list for the callback and its auditor
        self.options = ReadOptions(think_tags=self.think_tags, group_size=getattr(args, "num_generations", None))
        self.reader = TrlReader(run_from_args(args))
        if not getattr(args, "log_completions", False):
            log.warning("rlaudit: log_completions=False in the trainer arguments, so TRL writes no completion "
                        "logs and the live audit sees nothing; set log_completions=True (and logging_steps=1 "
                        "for per-step auditing)")
        log.info("rlaudit: live audit of run %r in %s (heavy detectors every %d steps)", run, self.store.root,
                 self.config.every)

    @guarded()
    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        """`rewards/<name>/mean` keys name GRPOTrainer.reward_func_names (the reward signals)."""
        names = {k[len("rewards/"):-len("/mean")] for k in (logs or {})
                 if k.startswith("rewards/") and k.endswith("/mean")}
        if names:
            self.reader.run.reward_names = (self.reader.run.reward_names or set()) | names

    @guarded()
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """GRPOTrainer.log writes the eval rollouts to this step's completions file: they are eval rows."""
        if self.reader.run.eval_steps is None:
            self.reader.run.eval_steps = set()
        self.reader.run.eval_steps.add(int(state.global_step))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        self.poll(state.global_step)
        self.seconds += time.perf_counter() - started

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        self.poll(state.global_step)
        self.finish()
        self.final_seconds = time.perf_counter() - started

    # -- work --------------------------------------------------------------------
    @guarded(default=list)
    def poll(self, global_step: int) -> list[Alert]:
        """Append completion files of recent steps not seen yet, then audit."""
        if self.auditor is None or self.completions_dir is None:
            return []
        appended = []
        for step in range(max(1, global_step - LOOKBACK), global_step + 1):
            if step in self.seen:
                continue
            path = self.completions_dir / f"completions_{step:05d}.parquet"
            if not path.is_file():
                continue
            self.seen.add(step)
            relpath = f"completions/{path.name}"
            table = self.auditor.read_file(self.reader, SourceFile(path, relpath, step=step), self.options)
            if table is not None and table.num_rows:
                self.auditor.append(step, table, key=relpath)
                appended.append(step)
        return self.auditor.update(max(appended)) if appended else []

    @guarded(default=list)
    def finish(self) -> list[Alert]:
        """Final heavy audit and alert flush (called by on_train_end)."""
        return self.auditor.close() if self.auditor else []


def run_from_args(args: Any) -> TrlRun:
    """Run-level facts from the live trainer's GRPOConfig (evals and reward names arrive through events)."""
    values = {k: getattr(args, k) for k in ARG_KEYS if hasattr(args, k)}
    if isinstance(values.get("reward_weights"), tuple):
        values["reward_weights"] = list(values["reward_weights"])
    logging_steps = values.get("logging_steps")
    return TrlRun(eval_steps=set(), args=values,
                  logging_steps=logging_steps if isinstance(logging_steps, int) else None)
