"""NeMo RL GRPO training-data dumps: `{log_dir}/train_data_step{N}.jsonl` (and `val_data_step{N}.jsonl`).

Checked against NVIDIA-NeMo/RL at 7ea279ab (2026-08-22; NeMo RL is not on PyPI). What writes the files:

- `nemo_rl/algorithms/grpo.py`, `grpo_train` ("Log training data", unless NeMo-Gym response logging is on):
  `log_data = {content: flat_messages["content"], rewards, input_lengths, token_ids, token_loss_mask,
  sample_loss_mask, advantages, generation_logprobs, prev_logprobs}` (+ `agent_ref` for NeMo-Gym agents, and
  with dynamic sampling `rewards` = the batch's `total_reward` and `filtered_rewards` the used ones), written as
  `train_data_step{total_steps + 1}.jsonl`. `validate` writes `val_data_step{step}.jsonl` with
  `{content: message logs as [{role, content}], rewards}`.
- `nemo_rl/utils/logger.py`, `Logger.log_batched_dict_as_jsonl`: one line per sample from
  `make_microbatch_iterator(1)`, so every value is wrapped in a one-element batch list (`"rewards": [1.0]`,
  `"content": [[...]]`, `"advantages": [[per token]]`), plus `"idx": i`; `json.dumps(..., default=str)`.
- `nemo_rl/data/llm_message_utils.py`, `batched_message_log_to_flat_message`: `content` is the list of the
  sample's message contents, in order, without roles. The data processors (`nemo_rl/data/processors.py`,
  e.g. `math_data_processor`) store the system message's raw text but each user message as its chat-template
  rendering *with the generation prompt* (`<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n`);
  generated turns are the decoded text (`experience/rollouts.py`, `generate_responses`,
  skip_special_tokens=True); multi-turn environment observations are templated like user messages.
- `nemo_rl/algorithms/advantage_estimator.py`, `GRPOAdvantageEstimator.compute_advantage`: one advantage per
  sample, `.expand`-ed over every token position.

Mapping (one row per line):
- Turns: a content string is a generated turn when the string before it ends with an assistant header (the
  generation prompt of ChatML, Llama 3, Gemma, Phi-3, Mistral: `rlaudit.conditions.ASSISTANT_HEADER`).
  Everything before the first generated turn is the prompt (contents joined as the model saw them); a leading
  content without template markup is the system prompt (NeMo RL keeps its raw text). Templated strings after
  the first generated turn are environment observations: `tool_outputs` (template markup removed). Validation
  message lists use their roles instead. One content string holding the whole conversation (other NeMo RL
  versions) is split at its last assistant header.
- completion / reasoning / answer: the generated turns under rlaudit's multi-turn rule
  (`rlaudit.readers.messages.assistant_turns`: `<think>` split per turn).
- reward: `rewards` (the total; NeMo RL's environments return one scalar, so it is also the one signal
  `reward`); `filtered_rewards` (dynamic sampling) is a second signal.
- advantage: the advantage at the first loss-masked token (the sample's scalar).
- step: the file name's N; split: `train` / `eval` (val_data); group: GRPO repeats each prompt
  `num_generations_per_prompt` times in a row (`repeat_interleave`), so runs of identical prompts are groups,
  split every `--group-size` rows.
- metadata: idx, input_lengths, sample_loss_mask, agent_ref, number of loss tokens; token ids and per-token
  logprobs are dropped (large, and not text).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..conditions import ASSISTANT_HEADER, END_OF_TURN, has_template_markup, strip_template
from . import register
from .base import ReadContext, Reader, SourceFile
from .groups import ConsecutiveGroups
from .jsonl import iter_json_records, layout_keys
from .messages import assistant_turns, content_text
from .records import BATCH_ROWS, BadField, number, parsed_rows, rows_table

_FILE = re.compile(r"^(train|val)_data_step(\d+)\.jsonl$")
_DROPPED = {"token_ids", "generation_logprobs", "prev_logprobs", "token_loss_mask", "advantages", "content",
            "rewards", "filtered_rewards"}
_MAX_DEPTH = 2


def _data_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source] if _FILE.match(source.name) else []
    found: list[Path] = []
    for depth in range(_MAX_DEPTH + 1):
        found += [p for p in source.glob("/".join(["*"] * depth + ["*_data_step*.jsonl"])) if _FILE.match(p.name)]
    return found


@register
class NemoRlReader(Reader):
    name = "nemo-rl"
    description = "NeMo RL GRPO: log_dir/train_data_step{N}.jsonl (+ val_data_step{N}.jsonl)"
    parse_in_processes = True  # a record at a time in Python: a large run's files parsed on every core

    @classmethod
    def detect(cls, source: Path) -> bool:
        files = _data_files(source)
        return bool(files) and "content" in layout_keys(sorted(files))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        out = []
        for p in _data_files(source):
            kind, step = _FILE.match(p.name).groups()
            out.append(SourceFile(p, str(p.relative_to(root)), split="train" if kind == "train" else "eval",
                                  step=int(step)))
        return sorted(out, key=lambda f: (f.split != "train", f.step, f.relpath))

    def prepare(self, source: Path, ctx: ReadContext) -> None:
        ctx.note("NeMo RL logs no group ids: a group is a run of identical prompts (GRPO repeats each prompt "
                 "num_generations_per_prompt times in a row); pass --group-size to split runs of a repeated prompt")

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        groups = ConsecutiveGroups(ctx.options.group_size)
        rows: list[dict[str, Any]] = []
        for row in parsed_rows(iter_json_records(file, ctx), lambda record: _row(record, file, ctx), file, ctx):
            rows.append(row)
            if len(rows) >= BATCH_ROWS:
                yield _with_groups(rows, groups)
                rows = []
        if rows:
            yield _with_groups(rows, groups)


def _with_groups(rows: list[dict[str, Any]], groups: ConsecutiveGroups) -> pa.Table:
    table = rows_table(rows)
    group_id, sample = groups.assign(table.column("prompt").combine_chunks(), table.column("step").combine_chunks())
    return table.append_column("group_id", group_id).append_column("sample_index", sample)


def _one(value: Any) -> Any:
    """Unwrap the one-element batch list `make_microbatch_iterator(1)` puts around every value."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _row(record: dict[str, Any], file: SourceFile, ctx: ReadContext) -> dict[str, Any]:
    content = _one(record.get("content"))
    if content is None:
        raise BadField("missing required field 'content' (absent or null)")
    system, prompt, turns = _conversation(content)
    t = assistant_turns(turns, ctx.options.think_tags)
    reward = number(_one(record.get("rewards")), "rewards", required=True)
    signals = {"reward": reward}
    if "filtered_rewards" in record:
        signals["filtered_reward"] = number(_one(record.get("filtered_rewards")), "filtered_rewards")
    advantage, n_loss = _advantage(record)
    metadata = {k: _one(v) for k, v in record.items() if k not in _DROPPED}
    if n_loss is not None:
        metadata["loss_tokens"] = n_loss
    return {"step": file.step, "split": file.split, "system_prompt": system, "prompt": prompt,
            "completion": t.completion, "reasoning": t.reasoning, "answer": t.answer, "tool_calls": t.tool_calls,
            "tool_outputs": t.tool_outputs, "rewards": signals, "reward": reward, "advantage": advantage,
            "metadata": metadata}


def _conversation(content: Any) -> tuple[str | None, str, list[dict[str, str]]]:
    """(system prompt, prompt text, completion messages) of one sample's logged content."""
    if isinstance(content, str):
        heads = list(ASSISTANT_HEADER.finditer(content))
        if not heads:
            raise BadField("field 'content': no assistant header of a known chat template; cannot tell the "
                           "prompt from the completion")
        cut = heads[-1].end()
        return None, content[:cut], [{"role": "assistant", "content": END_OF_TURN.sub("", content[cut:])}]
    if not isinstance(content, list):
        raise BadField(f"field 'content': expected a list of message contents, got {type(content).__name__}")
    if content and all(isinstance(m, dict) for m in content):  # val_data: [{role, content}]
        return _from_messages(content)
    if not all(isinstance(m, str) for m in content):
        raise BadField("field 'content': expected a list of strings or of {role, content} messages")
    first = next((i for i in range(1, len(content)) if _ends_with_header(content[i - 1])), None)
    if first is None:
        raise BadField("field 'content': no message ends with an assistant header of a known chat template; "
                       "cannot tell the prompt from the completion")
    system = content[0] if first > 1 and not has_template_markup(content[0]) else None
    turns = []
    for i in range(first, len(content)):
        generated = _ends_with_header(content[i - 1]) and not has_template_markup(content[i])
        turns.append({"role": "assistant", "content": END_OF_TURN.sub("", content[i])} if generated
                     else {"role": "environment", "content": strip_template(content[i])})
    return system, "".join(content[:first]), turns


def _ends_with_header(text: str) -> bool:
    return any(m.end() == len(text) for m in ASSISTANT_HEADER.finditer(text))


def _from_messages(messages: list[dict[str, Any]]) -> tuple[str | None, str, list[dict[str, str]]]:
    roles = [m.get("role") for m in messages]
    if "assistant" not in roles:
        raise BadField("field 'content': no assistant message")
    first = roles.index("assistant")
    system = next((content_text(m.get("content")) for m in messages[:first] if m.get("role") == "system"), None)
    prompt = "".join(content_text(m.get("content")) for m in messages[:first])
    turns = [{"role": "assistant", "content": content_text(m.get("content"))} if m.get("role") == "assistant"
             else {"role": m.get("role") or "environment", "content": strip_template(content_text(m.get("content")))}
             for m in messages[first:]]
    return system, prompt, turns


def _advantage(record: dict[str, Any]) -> tuple[float | None, int | None]:
    adv = _one(record.get("advantages"))
    if adv is None:
        return None, None
    if isinstance(adv, (int, float)) and not isinstance(adv, bool):
        return float(adv), None
    if not isinstance(adv, list) or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in adv):
        raise BadField("field 'advantages': expected a list of numbers (one per token)")
    mask = _one(record.get("token_loss_mask"))
    mask = mask if isinstance(mask, list) and len(mask) == len(adv) else None
    first = next((i for i, m in enumerate(mask) if m), None) if mask else None
    n_loss = sum(1 for m in mask if m) if mask else None
    if first is not None:
        return float(adv[first]), n_loss
    return (float(adv[0]) if adv else None), n_loss
