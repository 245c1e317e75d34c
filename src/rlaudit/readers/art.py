"""OpenPipe ART trajectories: `{base_path}/{project}/models/{name}/trajectories/{split}/{step:04d}.parquet`.

Checked against openpipe-art 0.5.18 (PyPI, the newest release installable here). What writes the files:

- `art/model.py`, `Model.log(trajectories, split, step)`: writes `{Model._get_output_dir()}/trajectories/
  {split}/{step:04d}.parquet` (`_get_output_dir` = `{base_path}/{project}/models/{name}`); split is "train"
  for training batches and the caller's name (usually "val") for evaluations.
- `art/utils/trajectory_logging.py`, `write_trajectory_groups_parquet`: one row per `Trajectory` of every
  `TrajectoryGroup`, zstd Parquet with columns group_index (int64, the group's position in the list),
  group_metadata / group_metrics (JSON text), group_logs (list<string>), reward (double), metrics / metadata /
  tools (JSON text), logs (list<string>) and messages: list<struct<role, content, tool_calls (JSON text of the
  OpenAI tool_calls), tool_call_id, trainable (bool)>>. `_flatten_message` marks a `Choice` (a completion the
  policy generated, which ART trains on) `trainable=True` and every plain message dict `trainable=False`,
  assistant messages included; a Choice's `reasoning_content` is not kept, so reasoning survives only inside
  the content (`<think>` tags).

Mapping (one row per trajectory):
- prompt: the messages before the first trainable one, rendered 'role: content'; system_prompt: the first
  system message. completion: from the first trainable message on, under rlaudit's multi-turn rule
  (`rlaudit.readers.messages.assistant_turns`): trainable assistant messages are the policy's turns (their
  `tool_calls` JSON gives `tool_calls`); every non-trainable message among them (tool results, user
  feedback, scripted assistant text) is context the policy did not write: `tool_outputs`.
- reward: `reward`. rewards: the numeric and boolean entries of `metrics` (bools as 0/1: ART's reward parts,
  e.g. `correct`); a trajectory without any gets `reward` as its one signal.
- advantage: not logged (ART's backend computes group-relative advantages when it trains) -> null, with a
  run note.
- group_id: "<step>:<group_index>"; sample_index: the order within the group in the file; step: the file name;
  split: `train` for the `train` directory, else `eval`.
- metadata: metadata, metrics that are not numbers, logs, group_metadata, group_metrics, group_logs, tools.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import register
from .base import ReadContext, Reader, SourceFile
from .messages import assistant_turns, content_text, render_message_list
from .records import BATCH_ROWS, BadField, integer, number, parsed_rows, rows_table
from .validate import open_parquet

_STEP = re.compile(r"^(\d+)\.parquet$")
# a model dir, its trajectories dir, a project dir or ART's base path
_PATTERNS = ("trajectories/*/*.parquet", "*/*.parquet", "models/*/trajectories/*/*.parquet",
             "*/models/*/trajectories/*/*.parquet")


def _trajectory_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source] if _STEP.match(source.name) and source.parent.parent.name == "trajectories" else []
    found = {p for pattern in _PATTERNS for p in source.glob(pattern)
             if _STEP.match(p.name) and p.parent.parent.name == "trajectories"}
    return sorted(found)


@register
class ArtReader(Reader):
    name = "art"
    description = "OpenPipe ART: models/<name>/trajectories/{split}/{step:04d}.parquet (messages with trainable)"

    @classmethod
    def detect(cls, source: Path) -> bool:
        return bool(_trajectory_files(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        out = [SourceFile(p, str(p.relative_to(root)), split="train" if p.parent.name == "train" else "eval",
                          step=int(_STEP.match(p.name).group(1))) for p in _trajectory_files(source)]
        return sorted(out, key=lambda f: (f.split != "train", f.step, f.relpath))

    def prepare(self, source: Path, ctx: ReadContext) -> None:
        ctx.note("ART logs no advantages (its backend computes them when it trains): advantage is empty")

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        pf = open_parquet(file, ctx, ("messages", "reward"),
                          "ART trajectory files have group_index, reward, metrics, messages, ...")
        if pf is None:
            return
        counts: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        line = 0
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
                records = list(enumerate(batch.to_pylist(), start=line + 1))
                line += len(records)
                for row in parsed_rows(records, lambda record: _row(record, file, ctx), file, ctx):
                    row["sample_index"] = counts.get(row["group_id"], 0)
                    counts[row["group_id"]] = row["sample_index"] + 1
                    rows.append(row)
                if len(rows) >= BATCH_ROWS:
                    yield rows_table(rows)
                    rows = []
        except (pa.ArrowInvalid, OSError) as exc:  # a truncated or corrupt file
            ctx.bad(file, line + 1 if line else None, f"unreadable Parquet data after row {line} ({exc})")
        if rows:
            yield rows_table(rows)


def _json_field(record: dict[str, Any], name: str) -> Any:
    value = record.get(name)
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise BadField(f"field {name!r}: expected JSON text, got {value[:60]!r} ({exc})") from None


def _row(record: dict[str, Any], file: SourceFile, ctx: ReadContext) -> dict[str, Any]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadField("field 'messages': expected a list of messages")
    reward = number(record.get("reward"), "reward", required=True)
    group = integer(record.get("group_index"), "group_index") or 0
    metrics = _json_field(record, "metrics") or {}
    if not isinstance(metrics, dict):
        raise BadField("field 'metrics': expected a JSON object")
    first = next((i for i, m in enumerate(messages) if m.get("trainable")), len(messages))
    context = messages[:first]
    turns = [_turn(m, i + first) for i, m in enumerate(messages[first:])]
    t = assistant_turns(turns, ctx.options.think_tags)
    system = next((content_text(m.get("content")) for m in context if m.get("role") == "system"), None)
    signals = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    metadata: dict[str, Any] = {"metrics": {k: v for k, v in metrics.items() if k not in signals}}
    for name in ("metadata", "group_metadata", "group_metrics", "tools"):
        metadata[name] = _json_field(record, name)
    for name in ("logs", "group_logs"):
        metadata[name] = record.get(name)
    return {"step": file.step, "split": file.split, "group_id": f"{file.step}:{group}", "system_prompt": system,
            "prompt": render_message_list([{"role": m.get("role"), "content": m.get("content")} for m in context]),
            "completion": t.completion, "reasoning": t.reasoning, "answer": t.answer, "tool_calls": t.tool_calls,
            "tool_outputs": t.tool_outputs, "rewards": signals or {"reward": reward}, "reward": reward,
            "metadata": {k: v for k, v in metadata.items() if v}}


def _turn(message: dict[str, Any], index: int) -> dict[str, Any]:
    """A message of the completion part: the policy's (trainable) turns stay assistant turns; anything else is
    context it did not write, which `assistant_turns` files under tool_outputs."""
    if not message.get("trainable"):
        role = message.get("role") or "context"
        return {"role": "context" if role == "assistant" else role, "content": message.get("content")}
    calls = message.get("tool_calls")
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except ValueError as exc:
            raise BadField(f"field 'messages[{index}].tool_calls': expected JSON text ({exc})") from None
    return {"role": "assistant", "content": message.get("content"), "tool_calls": calls or None}
