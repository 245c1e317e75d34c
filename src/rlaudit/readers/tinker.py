"""Tinker cookbook RL rollout summaries: `{log_path}/iteration_NNNNNN/{train|eval_<label>}_rollout_summaries.jsonl`.

Checked against thinking-machines-lab/tinker-cookbook v0.6.1 (PyPI, 2026-11; same code as main at 9dfcc3a2,
2026-08-19). What writes the files:

- `tinker_cookbook/rl/rollout_logging.py`, `serialize_rollout_summaries`: one record per trajectory,
  {schema_version: 1, split, iteration, group_idx, traj_idx, tags, sampling_client_step, total_reward,
  final_reward, trajectory_metrics, steps: [{step_idx, ob_len, ac_len, reward, episode_done, metrics, logs}],
  final_ob_len}, passed through `_json_safe`.
- `tinker_cookbook/stores/training_store.py`, `TrainingRunStore.write_rollouts`: `json.dumps` per record,
  joined by newlines, into `iteration_{iteration:06d}/{base_name}_rollout_summaries.jsonl` (overwritten).
- `tinker_cookbook/rl/train.py`: training batches use base_name `train` and split "train"
  (`_maybe_export_rollout_summary_jsonl`); `RLTestSetEvaluator` runs use base_name `eval_<label>` and split
  "eval/<label>" (`run_single_evaluation`). Before cookbook #517 (2026-03) the same records went to flat files
  `{log_path}/{base_name}_iteration_NNNNNN_rollout_summaries.jsonl` (#389, `write_rollout_summaries_jsonl`); both
  layouts are read.
- `tinker_cookbook/rl/types.py`: `TrajectoryGroup.get_total_rewards()` = sum of the transitions' `reward`
  (`Env.step`) + `final_reward` (`EnvGroupBuilder.compute_group_rewards`); `Transition.metrics` are numbers
  (ProblemEnv logs its reward parts `format` and `correct`), `logs` are display strings.

What the records do NOT hold: any text. Observations and actions are logged as token counts only (`ob_len`,
`ac_len`); transcripts of a few groups per iteration go to `*_logtree.json`, an HTML-like trace with no
trajectory ids, which this reader does not read. So `prompt` is empty and `completion`/`answer` are the
assistant text the cookbook's tool-use env logs per turn (`tool_use/agent_tool_message_env.py`,
`logs["assistant_content"]`), else empty; the reader says so in a run note.

Mapping (one row per record):
- step: `iteration` (else the file name); split: `train` for base name `train`, else `eval`.
- group_id: "<iteration>:<group_idx>" (a group is one EnvGroupBuilder; GRPO centres rewards within it);
  sample_index: `traj_idx`; task: the first of `tags` (EnvGroupBuilder.logging_tags, most specific first).
- reward: `total_reward`. rewards: every numeric transition metric summed over the trajectory's transitions,
  plus `trajectory_metrics` (group-level metrics), except the one-hot `stop/<reason>` flags (metadata); a
  non-zero `final_reward` is the signal `group_reward`; a record with no signal at all gets `total_reward`.
- advantage: not logged. Training rows get `total_reward - mean(total_reward of its group)`, which is what
  `tinker_cookbook/rl/data_processing.py` `compute_advantages` trains on (the file holds whole groups); eval
  rows none.
- tool_calls / tool_outputs: the tool-use env's `logs["tool_call_<i>"]` ("name(arguments)") and
  `logs["tool_result_<i>"]` of every transition, in order.
- metadata: tags, sampling_client_step (the policy version that sampled: off-policy lag), split label, token
  counts per step, stop reason, and every other log string.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import register
from .base import ReadContext, Reader, SourceFile
from .jsonl import iter_json_records
from .records import BATCH_ROWS, integer, number, obj, parsed_rows, rows_table, seq, text

_NESTED = re.compile(r"^(?P<base>train|eval_.+)_rollout_summaries\.jsonl$")
_ITER_DIR = re.compile(r"^iteration_(\d+)$")
_FLAT = re.compile(r"^(?P<base>train|eval_.+)_iteration_(?P<it>\d+)_rollout_summaries\.jsonl$")
_TOOL = re.compile(r"^(?P<kind>tool_call|tool_result)_(?P<i>\d+)$")
_CALL = re.compile(r"(?s)^(?P<name>[^(]*)\((?P<args>.*)\)$")
_STOP = "stop/"


def _summary_files(source: Path) -> list[tuple[Path, int, str]]:
    """(file, iteration, base name) of every rollout-summary file of a run (or the one file given)."""
    candidates = [source] if source.is_file() else \
        [*source.glob("iteration_*/*_rollout_summaries.jsonl"), *source.glob("*_rollout_summaries.jsonl")]
    found = []
    for p in candidates:
        nested, flat, it_dir = _NESTED.match(p.name), _FLAT.match(p.name), _ITER_DIR.match(p.parent.name)
        if flat:
            found.append((p, int(flat.group("it")), flat.group("base")))
        elif nested and it_dir:
            found.append((p, int(it_dir.group(1)), nested.group("base")))
    return found


@register
class TinkerReader(Reader):
    name = "tinker"
    description = "Tinker cookbook RL: log_path/iteration_NNNNNN/{train,eval_*}_rollout_summaries.jsonl"
    parse_in_processes = True  # a record at a time in Python: a large run's files parsed on every core

    @classmethod
    def detect(cls, source: Path) -> bool:
        return bool(_summary_files(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        out = [SourceFile(p, str(p.relative_to(root)), split="train" if base == "train" else "eval", step=it)
               for p, it, base in _summary_files(source)]
        return sorted(out, key=lambda f: (f.split != "train", f.step, f.relpath))

    def prepare(self, source: Path, ctx: ReadContext) -> None:
        ctx.note("Tinker rollout summaries log token counts, not text: prompts are empty and completions hold "
                 "only the assistant text tool-use envs log (logs.assistant_content); transcripts of a few "
                 "groups per iteration are in *_logtree.json, which rlaudit does not read")
        ctx.note("Tinker logs no advantages: training rows get total_reward minus its group's mean "
                 "(tinker_cookbook.rl.data_processing.compute_advantages)")

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        rows = list(parsed_rows(iter_json_records(file, ctx), lambda record: _row(record, file), file, ctx))
        # an iteration's file is one training batch (a few thousand trajectories at most): advantages need
        # whole groups, so the file is read before its rows are emitted
        if file.split == "train":
            _advantages(rows)
        for start in range(0, len(rows), BATCH_ROWS):
            yield rows_table(rows[start:start + BATCH_ROWS])


def _row(record: dict[str, Any], file: SourceFile) -> dict[str, Any]:
    step = integer(record.get("iteration"), "iteration")
    step = file.step if step is None else step
    group_idx = integer(record.get("group_idx"), "group_idx", required=True)
    traj_idx = integer(record.get("traj_idx"), "traj_idx", required=True)
    total = number(record.get("total_reward"), "total_reward", required=True)
    final = number(record.get("final_reward"), "final_reward")
    tags = [str(t) for t in seq(record.get("tags"), "tags")]
    signals: dict[str, float] = {}
    stop: list[str] = []
    answers: list[str] = []
    calls: list[dict[str, str]] = []
    outputs: list[str] = []
    logs_kept: list[dict[str, Any]] = []
    lengths: list[list[int | None]] = []
    for i, step_rec in enumerate(seq(record.get("steps"), "steps", required=True)):
        where = f"steps[{i}]"
        step_rec = obj(step_rec, where)
        number(step_rec.get("reward"), f"{where}.reward")
        lengths.append([step_rec.get("ob_len"), step_rec.get("ac_len")])
        for key, value in obj(step_rec.get("metrics"), f"{where}.metrics").items():
            value = number(value, f"{where}.metrics.{key}")
            if value is None:
                continue
            if key.startswith(_STOP):
                stop.append(key[len(_STOP):])
            else:
                signals[key] = signals.get(key, 0.0) + value
        logs = obj(step_rec.get("logs"), f"{where}.logs")
        turn_calls: dict[int, str] = {}
        turn_outputs: dict[int, str] = {}
        other: dict[str, Any] = {}
        for key, value in logs.items():
            tool = _TOOL.match(key)
            if key == "assistant_content" and isinstance(value, str):
                answers.append(value)
            elif tool:
                (turn_calls if tool.group("kind") == "tool_call" else turn_outputs)[int(tool.group("i"))] = str(value)
            else:
                other[key] = value
        for _, call in sorted(turn_calls.items()):
            parsed = _CALL.match(call)
            calls.append({"name": parsed.group("name"), "arguments": parsed.group("args")} if parsed
                         else {"name": call, "arguments": ""})
        outputs += [out for _, out in sorted(turn_outputs.items())]
        if other:
            logs_kept.append({"step_idx": i, **other})
    for key, value in obj(record.get("trajectory_metrics"), "trajectory_metrics").items():
        value = number(value, f"trajectory_metrics.{key}")
        if value is not None:
            signals[key] = value
    if final:
        signals["group_reward"] = final
    if not signals:
        signals["total_reward"] = total
    answer = "\n".join(answers)
    metadata: dict[str, Any] = {"tags": tags, "split_label": text(record.get("split"), "split"),
                                "sampling_client_step": integer(record.get("sampling_client_step"),
                                                                "sampling_client_step"),
                                "token_lengths": lengths, "final_ob_len": record.get("final_ob_len")}
    if stop:
        metadata["stop_reason"] = stop[-1]
    if logs_kept:
        metadata["logs"] = logs_kept
    for key, value in record.items():
        if key not in _KNOWN:
            metadata[key] = value
    return {"step": step, "split": file.split, "group_id": f"{step}:{group_idx}", "sample_index": traj_idx,
            "task": tags[0] if tags else None, "prompt": "", "completion": answer, "answer": answer,
            "tool_calls": calls, "tool_outputs": outputs, "rewards": signals, "reward": total,
            "metadata": {k: v for k, v in metadata.items() if v is not None}}


_KNOWN = {"schema_version", "split", "iteration", "group_idx", "traj_idx", "tags", "sampling_client_step",
          "total_reward", "final_reward", "trajectory_metrics", "steps", "final_ob_len"}


def _advantages(rows: list[dict[str, Any]]) -> None:
    """compute_advantages: total reward minus the group's mean total reward."""
    totals: dict[str, list[float]] = {}
    for r in rows:
        totals.setdefault(r["group_id"], []).append(r["reward"])
    means = {g: sum(v) / len(v) for g, v in totals.items()}
    for r in rows:
        r["advantage"] = r["reward"] - means[r["group_id"]]

