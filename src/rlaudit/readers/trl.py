"""TRL GRPOTrainer completion logs: `{output_dir}/completions/completions_{step:05d}.parquet`.

Checked against huggingface/trl v1.9.0 and main at f2cd5771 (2026-07-24, 1.10.0.dev0),
`trl/trainer/grpo_trainer.py`, `GRPOTrainer.log`: with `log_completions=True` the main process writes, at each
logging step, a pandas DataFrame built from

    {"step": [global_step] * n, "prompt": prompts_text, "completion": completions_text,
     **self._logs["rewards"],   # one float column per reward function, named reward_func_names[i]
                                # (the function's __name__, or the reward model's id); NaN where it returned None
     **self._logs["extra"],     # columns reward functions added with log_extra(column, values)
     "advantage": advantages}

to `completions_{global_step:05d}.parquet` (`df.to_parquet`, so pandas index metadata and snappy). The logs
are deques of length `generation_batch_size`: a file holds the latest generation batch only. Parquet files
appeared in v0.28.0; before that the table only went to wandb (and `step` was a string, which this reader also
accepts). Both texts are decoded with `skip_special_tokens=True` (since v0.26), so a conversational prompt is the
chat template with its special tokens removed ("system\\nYou are ...\\nuser\\n..."); `rlaudit.conditions` finds the
system prompt in that form too. Message-list prompts/completions (other TRL-based loggers) are rendered
'role: content' per line; an assistant `reasoning_content` is kept as the reasoning.

Mapping decisions:
- Numeric columns other than step/advantage are reward signals; text columns are log_extra metadata, except
  `<grader>_input` (and `--grader-input GRADER=COLUMN`): the text grader `<grader>` saw. Boolean columns are
  metadata (TRL's reward columns are always float).
- TRL logs no total. Its reward is the weighted sum `nansum(rewards_per_func * reward_weights)` and the weights
  are not in the file, so `reward` is the *unweighted* nansum of the reward columns (NaN when every function
  returned None, as TRL's unscorable rows). With non-unit `reward_weights` it differs from what TRL optimised;
  the per-signal values in `rewards` are exact.
- No group id: TRL's RepeatSampler puts the `num_generations` samples of a prompt next to each other, so a group
  is a run of consecutive identical prompts, split every `--group-size` rows when given. group_id is
  "<step>:<group index in file>", sample_index the position in the group.
- A `completions/{train,eval}/` sub-directory (some forks) or a `mode` column sets the split.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import register
from .base import ReadContext, Reader, SourceFile, prefetch
from .columns import classify_extras, map_from_columns, metadata_from_columns, missing_graders
from .groups import ConsecutiveGroups
from .messages import completion_columns, is_message_list_type
from .validate import Validator

_FILE = re.compile(r"^completions_(\d+)\.parquet$")
_KNOWN = {"step", "prompt", "completion", "advantage", "mode"}
BATCH_ROWS = 32_768


def _completion_files(source: Path) -> list[tuple[Path, str]]:
    """(file, split) pairs of a TRL output dir or its completions dir."""
    if source.is_file():
        return [(source, "train")] if _FILE.match(source.name) else []
    base = source / "completions" if (source / "completions").is_dir() else source
    found = [(p, "train") for p in base.glob("completions_*.parquet") if _FILE.match(p.name)]
    for split in ("train", "eval"):
        found += [(p, split) for p in (base / split).glob("completions_*.parquet") if _FILE.match(p.name)]
    return found


@register
class TrlReader(Reader):
    name = "trl"
    description = "TRL GRPOTrainer log_completions: output_dir/completions/completions_{step:05d}.parquet"

    @classmethod
    def detect(cls, source: Path) -> bool:
        return bool(_completion_files(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        out = [SourceFile(p, str(p.relative_to(root)), split=split, step=int(_FILE.match(p.name).group(1)))
               for p, split in _completion_files(source)]
        return sorted(out, key=lambda f: (f.split != "train", f.step, f.relpath))

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        return prefetch(self._read(file, ctx))

    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        try:
            pf = pq.ParquetFile(file.path)
        except (pa.ArrowInvalid, OSError) as exc:
            ctx.bad(file, None, f"not a readable Parquet file ({exc})")
            return
        names = pf.schema_arrow.names
        absent = [c for c in ("prompt", "completion") if c not in names]
        if absent:
            ctx.bad(file, None, f"missing required column(s) {absent}; TRL completion files have step, prompt, "
                                f"completion, one column per reward function and advantage (found {names})")
            return
        missing_graders(ctx.options, pf.schema_arrow.empty_table(), file)
        groups = ConsecutiveGroups(ctx.options.group_size)
        row = 0
        try:
            batches = pf.iter_batches(batch_size=BATCH_ROWS)
            for batch in batches:
                table = pa.Table.from_batches([batch])
                lines = pa.array(np.arange(row + 1, row + 1 + table.num_rows, dtype=np.int64))
                row += table.num_rows
                raw = self._raw(table, lines, file, ctx, groups)
                if raw is not None:
                    yield raw
        except (pa.ArrowInvalid, OSError) as exc:  # a truncated or corrupt file
            ctx.bad(file, row + 1 if row else None, f"unreadable Parquet data after row {row} ({exc})")

    def _raw(self, table: pa.Table, lines: pa.Array, file: SourceFile, ctx: ReadContext,
             groups: ConsecutiveGroups) -> pa.Table | None:
        col = (lambda name: table.column(name).combine_chunks() if name in table.column_names else None)
        v = Validator(table, lines, file, ctx)
        prompt = v.text("prompt", col("prompt"), required=True)
        completion_col = col("completion")
        raw: dict[str, pa.Array] = {}
        if completion_col is not None and is_message_list_type(completion_col.type):
            raw.update(completion_columns(completion_col, ctx.options.think_tags))
            v.require("completion", completion_col)
        else:
            raw["completion"] = v.text("completion", completion_col, required=True)
        raw["prompt"] = prompt
        step = v.step("step", col("step"))
        raw["step"] = pc.fill_null(step, file.step) if step is not None else pa.array([file.step] * len(table))
        advantage = v.number("advantage", col("advantage"))
        if advantage is not None:
            raw["advantage"] = advantage
        if col("mode") is not None:
            raw["split"] = pc.if_else(pc.equal(col("mode").cast(pa.string()), "eval"), "eval", "train")
        extras = classify_extras(table, _KNOWN, ctx.options, bool_is_signal=False)
        _, lines, keep = v.done()
        if not len(lines):
            return None
        raw = {k: keep(a) for k, a in raw.items()}
        signals = {k: keep(a) for k, a in extras.rewards.items()}
        n = len(lines)
        raw["rewards"] = map_from_columns(signals, pa.float64(), drop_null=False, n=n)
        raw["reward"] = _nansum(signals, n)
        raw["grader_inputs"] = map_from_columns({k: keep(a) for k, a in extras.grader_inputs.items()},
                                                pa.string(), drop_null=True, n=n)
        raw["metadata"] = metadata_from_columns(keep(extras.metadata))
        raw["group_id"], raw["sample_index"] = groups.assign(raw["prompt"], raw["step"])
        raw["line"] = lines
        return pa.table(raw)


def _nansum(signals: dict[str, pa.Array], n: int) -> pa.Array:
    """Unweighted nansum of the reward columns; NaN where every column is NaN (TRL's unscorable rows)."""
    if not signals:
        return pa.nulls(n, pa.float64())
    matrix = np.column_stack([a.to_numpy(zero_copy_only=False) for a in signals.values()]).astype(np.float64)
    total = np.nansum(matrix, axis=1)
    total[np.isnan(matrix).all(axis=1)] = np.nan
    return pa.array(total)



