"""verl rollout dumps: `{step}.jsonl` under `trainer.rollout_data_dir` and `trainer.validation_data_dir`.

Checked against verl 0.9.1 (PyPI) by the conformance suite: `conformance/verl/generate.py` drives verl's own
agent-loop, reward-manager and dump code, `tests/conformance/test_verl.py` checks the rows. In verl 0.9.1 the
default trainer is v1 (`trainer.use_v1: true`, verl/trainer/config/ppo_trainer.yaml; verl/trainer/main_ppo.py
picks `TaskRunnerV1`). Both trainers write through `_write_generations` (verl/trainer/ppo/v1/trainer_base.py and
the legacy verl/trainer/ppo/ray_trainer.py): `{dump_path}/{global_steps}.jsonl`, one JSON object per line,

    input   prompt token ids decoded with skip_special_tokens=True (ChatML's <|im_start|>/<|im_end|> vanish:
            "system\\nYou are ...\\nuser\\n...\\nassistant\\n")
    output  response token ids decoded the same way (think tags, <tool_call>, <tool_response> are not special
            tokens in Qwen tokenizers and stay)
    gts     reward_model.ground_truth
    score   rm_scores.sum(): the reward at the last token, float32 (legacy: token_level_scores.sum(-1))
    step    global_steps
    ...     then every key of reward_extra_infos_dict with one value per row, written AFTER the keys above, so an
            extra named `score` (compute_score returned a dict) replaces the dump's score

What each dump holds (verl 0.9.1):
- **v1 training** (`PPOTrainer._log_rollout_data`): input, output, gts, score, step and `uid`, the TransferQueue
  key `{prompt uuid}_{session}_{output index}` (`AgentLoopWorkerTQ._agent_loop_postprocess`), unique per sample;
  rows sorted by that key. No reward extras, no grader inputs: `score` is `AgentLoopOutput.reward_score`, the
  trained total before the KL penalty (DAPO's overlong penalty included: `DAPORewardManager.run_single` adds it
  to `reward_score`, not to compute_score's own `score`).
- **v1 validation** (`PPOTrainer._validate`): also `reward` (= rm_scores.sum(), the trained total, float32) and
  every `reward_extra_info` key of the session's final output (the reward managers' `run_single`: each key of
  compute_score's dict, or `acc` = the score when it returned a float; DAPO adds `overlong_reward`, `overlong`),
  then `uid` as above. Where compute_score returned a dict its own `score` overwrote the dump's `score`.
- **legacy training** (`RayPPOTrainer._log_rollout_data`, `use_v1: false`, deprecated): input, output, gts,
  score, step, the reward extras (compute_score's `score` again overwriting) and `request_id`; no uid.
- **legacy validation** (`RayPPOTrainer._validate`): `reward` and the extras; no uid.

Mapping:
- **Groups.** `uid` without its `_<session>_<index>` suffix (verl itself recovers the prompt with
  `key.rsplit("_", 2)`; a uid without that suffix, e.g. older dumps' plain shared uuid, is the key as is); an
  agent loop that returns several outputs per session dumps one row per output (index 1, 2, ...), each with the
  session's final score (GRPO uses only the final output: v1/utils.py `compute_advantage_for_multi_trajectories`),
  so such a group has more rows than sessions; without
  a uid, identical `input` text anywhere in the file (the legacy trainer's `_balance_batch` reorders rows before
  dumping). `--group-size` splits larger groups.
- **Split.** A file whose first line has a `reward` key is a validation dump (only `_validate` adds it), as is a
  file under a directory named like val/validation/eval/test: split `eval`. The basis is noted.
- **Total (`reward`).** The `reward` key where present (validation), else `score` + `overlong_reward` where the
  dump has DAPO's `overlong_reward` (legacy training: its `score` is compute_score's own, noted), else `score`.
- **Components (`rewards`).** Numeric and boolean extras (`acc`, `overlong_reward`, ...; DAPO's `overlong` flag
  is metadata), plus `score` when it is not merely the total again (|score - total| within float32 rounding on
  every row: then it is dropped). A dump with no extras gets `score` as its one signal; training dumps of the v1
  trainer are such dumps (noted: reward components exist only in its validation dumps).
- **Grader inputs.** A text extra `<grader>_input` is what grader `<grader>` saw (and `--grader-input`).
- **Multi-turn outputs.** verl's `ToolAgentLoop` puts every turn in one response: assistant tokens as generated,
  then each tool result rendered by the chat template, which decodes (Qwen2.5/Qwen3 ChatML) to
  "\\nuser\\n<tool_response>\\n...\\n</tool_response>\\nassistant\\n". Those segments become `tool_outputs`; the
  assistant turns between them are `completion` (joined with "\\n"), every think block of every turn is
  `reasoning` (`text.split_all_reasoning`), Hermes `<tool_call>{"name", "arguments"}</tool_call>` blocks
  (`HermesToolParser`, verl/experimental/agent_loop/tool_parser.py) are `tool_calls`, and the rest is `answer`.
- Everything else (`gts`, `pred`, `uid`, `request_id`, ...) is metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schema import TOOL_CALLS
from ..text import ThinkTags, count_substrings, split_all_reasoning
from . import register
from .base import PrefetchingReader, ReadContext, SourceFile
from .columns import classify_extras, map_from_columns, metadata_from_columns
from .groups import KeyedGroups
from .jsonl import first_record_keys, layout_keys, read_json_chunks
from .messages import tool_call
from .validate import Validator

_STEP_FILE = re.compile(r"^(\d+)\.jsonl$")
_EVAL_DIR = re.compile(r"(^|[^a-z])(val|valid|validation|eval|evaluation|test)([^a-z]|$)", re.IGNORECASE)
_KNOWN = {"input", "output", "score", "step", "reward"}
_KINDS = {"input": "text", "output": "text", "score": "number", "step": "int", "reward": "number"}
_FLAGS = {"overlong"}  # DAPORewardManager: overlong_reward < 0, a flag rather than a reward
_MAX_DEPTH = 2
#: verl's TransferQueue key suffix `_{session_id}_{index}` (agent_loop_tq.py `_agent_loop_postprocess`)
_KEY_SUFFIX = r"_\d+_\d+$"
#: a tool-result turn as ChatML decodes with skip_special_tokens: "\nuser\n<tool_response>...\nassistant\n"
_TOOL_TURN = re.compile(r"\n?(?:user|tool)\n((?:\s*<tool_response>.*?</tool_response>)+)\s*?(?:\nassistant\n|$)",
                        re.S)
_TOOL_RESPONSE = re.compile(r"<tool_response>\n?(.*?)\n?</tool_response>", re.S)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_F32 = 2.0 ** -23  # float32 relative rounding: verl's rm_scores are float32, compute_score's values float64


def _step_order(path: Path) -> tuple[int, str]:
    digits = re.sub(r"\D", "", path.stem)
    return (int(digits) if digits else 0, str(path))


def _step_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source] if _STEP_FILE.match(source.name) else []
    found = []
    for depth in range(_MAX_DEPTH + 1):
        pattern = "/".join(["*"] * depth + ["*.jsonl"])
        found += [p for p in source.glob(pattern) if _STEP_FILE.match(p.name) and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(source).parts)]
    return found


@register
class VerlReader(PrefetchingReader):
    name = "verl"
    description = "verl rollout dumps: trainer.rollout_data_dir/{step}.jsonl (input, output, score, step, ...)"

    @classmethod
    def detect(cls, source: Path) -> bool:
        files = _step_files(source)
        return bool(files) and {"input", "output"} <= layout_keys(sorted(files, key=_step_order))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        out = []
        for p in _step_files(source):
            rel = p.relative_to(root)
            split = "train"
            if any(_EVAL_DIR.search(part) for part in rel.parts[:-1]):
                split = "eval"
            elif "reward" in first_record_keys(p):  # only verl's _validate adds `reward`
                split = "eval"
            out.append(SourceFile(p, str(rel), split=split, step=int(_STEP_FILE.match(p.name).group(1))))
        return sorted(out, key=lambda f: (f.split != "train", f.step, f.relpath))

    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        groups: KeyedGroups | None = None
        if file.split == "eval" and not any(_EVAL_DIR.search(p) for p in Path(file.relpath).parts[:-1]):
            ctx.note("verl: dumps with a `reward` key are read as split=eval: only verl's validation "
                     "(`_validate`, trainer.validation_data_dir) writes that key", key="verl-eval-by-content")
        for chunk in read_json_chunks(file, ctx, _KINDS):
            table = chunk.table
            v = Validator(table, chunk.lines, file, ctx)
            col = (lambda name: table.column(name) if name in table.column_names else None)
            raw: dict[str, pa.Array] = {
                "prompt": v.text("input", col("input"), required=True),
                "completion": v.text("output", col("output"), required=True),
            }
            score = v.number("score", col("score"), required=True)
            total = v.number("reward", col("reward")) if col("reward") is not None else None
            step = v.step("step", col("step"))
            raw["step"] = pc.fill_null(step, file.step) if step is not None else pa.array([file.step] * len(table))
            extras = classify_extras(table.drop([c for c in _FLAGS if c in table.column_names]), _KNOWN,
                                     ctx.options, bool_is_signal=True)
            flags = {c: table.column(c) for c in _FLAGS if c in table.column_names}
            _, lines, keep = v.done()
            if not len(lines):
                continue
            raw = {k: keep(a) for k, a in raw.items()}
            score = keep(score)
            components = {k: keep(a) for k, a in extras.rewards.items()}
            raw["reward"], signals = _total_and_signals(score, keep(total) if total is not None else None,
                                                        components, file, ctx)
            metadata = keep(extras.metadata)
            for name, values in flags.items():
                metadata = metadata.append_column(name, keep(values))
            key = _group_key(metadata, raw["prompt"])
            if groups is None:
                groups = KeyedGroups(ctx.options.group_size, use_key_in_id="uid" in metadata.column_names)
            raw["group_id"], raw["sample_index"] = groups.assign(key, raw["step"])
            raw.update(_turn_columns(raw["completion"], ctx.options.think_tags))
            raw["rewards"] = map_from_columns(signals, pa.float64(), drop_null=False, n=len(lines))
            raw["grader_inputs"] = map_from_columns({k: keep(a) for k, a in extras.grader_inputs.items()},
                                                    pa.string(), drop_null=True, n=len(lines))
            raw["metadata"] = metadata_from_columns(metadata)
            raw["line"] = lines
            yield pa.table(raw)


def _group_key(metadata: pa.Table, prompts: pa.Array) -> pa.Array:
    """The prompt part of verl's `{uid}_{session}_{index}` key; the uid itself without that suffix; else the input."""
    if "uid" not in metadata.column_names:
        return prompts
    uid = metadata.column("uid").cast(pa.string())
    return pc.coalesce(pc.replace_substring_regex(uid, _KEY_SUFFIX, ""), prompts)


def _total_and_signals(score: pa.Array, total: pa.Array | None, components: dict[str, pa.Array],
                       file: SourceFile, ctx: ReadContext) -> tuple[pa.Array, dict[str, pa.Array]]:
    """The trained total and the reward components of a chunk (rules in the module docstring)."""
    signals = dict(components)
    if total is None and "overlong_reward" in signals:
        total = pc.add(score, pc.fill_null(signals["overlong_reward"], 0.0))
        ctx.note(f"verl: {file.relpath} has DAPO's `overlong_reward` but no `reward`: its `score` is compute_score's "
                 "own score (the extras overwrite the dump's), so the trained total is taken as score + "
                 "overlong_reward (DAPORewardManager.run_single)", key="verl-dapo-total")
    if total is None:
        if not signals:
            ctx.note("verl: training dumps without reward extras (the v1 trainer's `_log_rollout_data` writes "
                     "only `score`): `score` is the trained total (before the KL penalty) and the only reward "
                     "signal; reward components and grader inputs are available only in validation dumps",
                     key="verl-score-only")
            return score, {"score": score}
        return score, signals
    total = pc.coalesce(total, score)
    if not _same(score, total):
        signals["score"] = score
        ctx.note("verl: in validation dumps `reward` is the trained total (rm_scores, float32) and `score` is "
                 "compute_score's own score where it returned a dict (its `score` key overwrites the dump's); "
                 "where they differ (e.g. DAPO's overlong penalty) `score` is kept as a reward component",
                 key="verl-val-score")
    return total, signals or {"score": score}


def _same(a: pa.Array, b: pa.Array) -> bool:
    """Equal within float32 rounding on every row (nulls count as equal)."""
    diff = pc.abs(pc.subtract(a, b))
    tol = pc.multiply(pc.max_element_wise(pc.abs(b), pa.scalar(1.0)), 4 * _F32)
    return bool(pc.all(pc.fill_null(pc.less_equal(diff, tol), True)).as_py())


def _turn_columns(outputs: pa.Array, tags: ThinkTags) -> dict[str, pa.Array]:
    """completion/reasoning/answer/tool_calls/tool_outputs of verl outputs (see "Multi-turn outputs" above).

    Only rows with a tool marker or more than one think block take the Python path; the rest keep the store's
    span split of the completion (reasoning/answer null here)."""
    found = count_substrings(outputs, ["<tool_call>", "<tool_response>", tags.open, tags.close])
    rows = np.flatnonzero((found["<tool_call>"] > 0) | (found["<tool_response>"] > 0) | (found[tags.open] > 1)
                          | (found[tags.close] > 1))
    n = len(outputs)
    out = {"completion": outputs, "reasoning": pa.nulls(n, pa.string()), "answer": pa.nulls(n, pa.string())}
    if not len(rows):
        return out
    completion = outputs.to_pylist()
    reasoning: list[str | None] = [None] * n
    answer: list[str | None] = [None] * n
    calls: list[list[dict[str, str]] | None] = [None] * n
    results: list[list[str] | None] = [None] * n
    for i in rows:
        c, r, a, tc, to = _split_output(completion[i], tags)
        completion[i], reasoning[i], answer[i], calls[i], results[i] = c, r, a, tc, to
    out.update(completion=pa.array(completion, pa.string()), reasoning=pa.array(reasoning, pa.string()),
               answer=pa.array(answer, pa.string()), tool_calls=pa.array(calls, TOOL_CALLS),
               tool_outputs=pa.array(results, pa.list_(pa.string())))
    return out


def _split_output(output: str, tags: ThinkTags):
    """(completion, reasoning, answer, tool_calls, tool_outputs) of one verl response string."""
    turns: list[str] = []
    tool_outputs: list[str] = []
    pos = 0
    for m in _TOOL_TURN.finditer(output):
        turns.append(output[pos:m.start()])
        tool_outputs += _TOOL_RESPONSE.findall(m.group(1))
        pos = m.end()
    turns.append(output[pos:])
    reasoning: list[str] = []
    answer: list[str] = []
    calls: list[dict[str, str]] = []
    for turn in turns:
        calls += [_hermes_call(body) for body in _TOOL_CALL.findall(turn)]
        r, a = split_all_reasoning(_TOOL_CALL.sub("", turn), tags)
        if r is not None:
            reasoning.append(r)
        if a:
            answer.append(a)
    return ("\n".join(t for t in turns if t), "\n".join(reasoning) if reasoning else None, "\n".join(answer),
            calls or None, tool_outputs or None)


def _hermes_call(body: str) -> dict[str, str]:
    """A `<tool_call>` body: Hermes JSON {"name", "arguments"}; anything else keeps its text as the arguments."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "name" in parsed:
        return tool_call(parsed)
    fn = re.match(r"\s*<function=([^>\s]+)>", body)  # Qwen3-Coder XML calls
    return {"name": fn.group(1) if fn else "", "arguments": body.strip()}
