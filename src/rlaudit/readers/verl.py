"""verl rollout dumps: `{step}.jsonl` under `trainer.rollout_data_dir` (and `trainer.validation_data_dir`).

Checked against volcengine/verl at commit b178a3cd (2026-01-29), `verl/trainer/ppo/ray_trainer.py`:
`RayPPOTrainer._dump_generations` writes `{dump_path}/{global_steps}.jsonl`, one JSON object per line with keys

    input   the prompt, decoded with skip_special_tokens=True (chat-template special tokens are gone)
    output  the response, decoded the same way (reasoning included unless the user strips it)
    gts     reward_model.ground_truth (added in verl #2353, 2025-08; absent in older dumps)
    score   token_level_scores.sum(-1): the total reward before the KL penalty
    step    global_steps
    ...     every key of reward_extra_infos_dict whose list has one value per row (what compute_score returned
            besides `score`, e.g. `acc`, `pred`); validation dumps also carry `reward` (= score)

`_log_rollout_data` dumps the training batch *after* `_balance_batch` has reordered it, so the samples of one
prompt need not be adjacent. Groups are therefore keyed, not runs: by `uid` when a line carries it (some verl
versions and forks dump it), else by identical `input` text within the file (`--group-size` splits larger sets).

Mapping: numeric and boolean extra keys are reward components (`rewards`); `score` is `reward`; when a line
has no numeric extra key, `rewards` holds `score` itself so that every run has at least one signal; `reward`
equal to `score` (validation dumps) is dropped as a duplicate. A text key `<grader>_input` is the input grader
`<grader>` saw (and `--grader-input GRADER=KEY`). Everything else (`gts`, `pred`, `request_id`, ...) is
metadata. Files under a directory whose name says validation/eval/test get split `eval`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from . import register
from .base import ReadContext, Reader, SourceFile, prefetch
from .columns import classify_extras, map_from_columns, metadata_from_columns
from .groups import ConsecutiveGroups, KeyedGroups
from .validate import Validator
from .jsonl import first_record_keys, read_json_chunks

_STEP_FILE = re.compile(r"^(\d+)\.jsonl$")
_EVAL_DIR = re.compile(r"(^|[^a-z])(val|valid|validation|eval|evaluation|test)([^a-z]|$)", re.IGNORECASE)
_KNOWN = {"input", "output", "score", "step", "uid"}
_KINDS = {"input": "text", "output": "text", "score": "number", "step": "int"}
_MAX_DEPTH = 2


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
class VerlReader(Reader):
    name = "verl"
    description = "verl rollout dumps: trainer.rollout_data_dir/{step}.jsonl (input, output, score, step, ...)"

    @classmethod
    def detect(cls, source: Path) -> bool:
        files = _step_files(source)
        return bool(files) and {"input", "output"} <= first_record_keys(min(files))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        out = []
        for p in _step_files(source):
            rel = p.relative_to(root)
            split = "eval" if any(_EVAL_DIR.search(part) for part in rel.parts[:-1]) else "train"
            out.append(SourceFile(p, str(rel), split=split, step=int(_STEP_FILE.match(p.name).group(1))))
        return sorted(out, key=lambda f: (f.split != "train", f.step, f.relpath))

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        return prefetch(self._read(file, ctx))

    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        groups: KeyedGroups | ConsecutiveGroups | None = None
        for chunk in read_json_chunks(file, ctx, _KINDS):
            table = chunk.table
            v = Validator(table, chunk.lines, file, ctx)
            col = (lambda name: table.column(name) if name in table.column_names else None)
            raw: dict[str, pa.Array] = {
                "prompt": v.text("input", col("input"), required=True),
                "completion": v.text("output", col("output"), required=True),
                "reward": v.number("score", col("score"), required=True),
            }
            step = v.step("step", col("step"))
            raw["step"] = pc.fill_null(step, file.step) if step is not None else pa.array([file.step] * len(table))
            extras = classify_extras(table, _KNOWN, ctx.options, bool_is_signal=True)
            signals = _signals(extras.rewards, raw["reward"])
            uid = col("uid")
            _, lines, keep = v.done()
            if not len(lines):
                continue
            raw = {k: keep(a) for k, a in raw.items()}
            signals = {k: keep(a) for k, a in signals.items()}
            if groups is None:
                groups = KeyedGroups(ctx.options.group_size, use_key_in_id=uid is not None)
            key = keep(uid).cast(pa.string()) if uid is not None else raw["prompt"]
            raw["group_id"], raw["sample_index"] = groups.assign(key, raw["step"])
            raw["rewards"] = map_from_columns(signals, pa.float64(), drop_null=False, n=len(lines))
            raw["grader_inputs"] = map_from_columns({k: keep(a) for k, a in extras.grader_inputs.items()},
                                                    pa.string(), drop_null=True, n=len(lines))
            raw["metadata"] = metadata_from_columns(keep(extras.metadata))
            raw["line"] = lines
            yield pa.table(raw)


def _signals(components: dict[str, pa.Array], score: pa.Array) -> dict[str, pa.Array]:
    """Reward components; `score` itself when there are none; `reward` dropped when it merely repeats score."""
    out = dict(components)
    dup = out.get("reward")
    if dup is not None:
        same = pc.or_kleene(pc.less_equal(pc.abs(pc.subtract(dup, score)), 1e-9), pc.is_null(dup))
        if pc.all(pc.fill_null(same, True)).as_py():
            del out["reward"]
    return out or {"score": score}
