"""W&B table exports: `*.table.json` media files of a run directory, or a table exported from the UI as CSV.

This is the only rollout log of TRL's RLOOTrainer and of OpenRLHF. What they write (checked against the code):

- **TRL 1.16 `RLOOTrainer.log`** (trl/trainer/rloo_trainer.py, `log_completions=True`, `report_to="wandb"`):
  `wandb.log({"completions": wandb.Table(dataframe=df)})` with df columns `step` (global_step), `prompt`,
  `completion`, one float column per reward function (`reward_func_names[i]`, the function's `__name__`),
  the `log_extra` columns, and `advantage`. No `step=` argument, so the W&B step in the file name is W&B's own
  counter; the `step` column is the trainer's step. The rows are the latest generation batch
  (deques of `generation_batch_size`); with `log_unique_prompts=True` only the first row of each prompt is kept.
- **OpenRLHF 0.11.2 `WandbLogger.log_train`** (openrlhf/utils/logging_utils.py): a table
  `["global_step", "text", "reward"]` under key `train/generated_samples`, one row per logging step
  (`ppo_trainer.py` `train_step`: `sample0 = [decode(sequences[0], skip_special_tokens=True), reward]`), and each
  call logs the *whole* table again (every earlier row plus the new one). `text` is prompt and response as one
  decoded string; `reward` the total reward.

wandb 0.31 `Table.bind_to_run` writes `{"columns": [...], "data": [[...], ...]}` to
`<run>/files/media/table/<key>_<step>_<sha256[:20]>.table.json` (`_wb_filename` in
wandb/sdk/data_types/base_types/media.py; a `/` in the key makes sub-directories).

Mapping decisions:
- Column names are matched to canonical fields: step <- `step`/`global_step`/`train/global_step`; prompt <-
  `prompt`/`prompts`/`query`/`question`; completion <- `completion`/`completions`/`response`; advantage <-
  `advantage`/`advantages`; `--columns CANON=COLUMN` wins over these. With no step column the W&B step in the
  file name is used (a note says so); with neither, reading stops with an error naming the file.
- A `text` column without prompt/completion (OpenRLHF) is split after its last line `assistant` (the decoded
  chat template's header of the reply); without one the prompt is empty and the whole text is the completion.
- Numeric columns other than step/advantage are reward signals. `reward` is the `reward` column when there is
  one (OpenRLHF's total), else the unweighted nansum of the signals (TRL logs no weights; see readers/trl.py).
  Text columns `<grader>_input` (and `--grader-input`) are grader inputs; the rest goes to metadata.
- A table that repeats an earlier table of the same key (OpenRLHF's cumulative logging) contributes only the
  rows after that prefix: each file is compared with the previous file of its key.
- Groups: runs of consecutive identical prompts, split every `--group-size` rows (TRL's RepeatSampler order).
- Keys whose first part is `eval`/`validation`/`test` are `split = eval`.
- CSV exports have no W&B step; they need a step column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import RlauditError
from . import register
from .base import PrefetchingReader, ReadContext, SourceFile
from .columns import classify_extras, map_from_columns, metadata_from_columns, missing_graders
from .groups import ConsecutiveGroups
from .validate import Validator

_TABLE = re.compile(r"^(?P<key>.+)_(?P<step>\d+)_(?P<id>[0-9a-f]+)\.table\.json$")
_SKIP_DIRS = {".rlaudit", ".git", "__pycache__"}
ALIASES = {
    "step": ("step", "global_step", "train/global_step"),
    "prompt": ("prompt", "prompts", "query", "question"),
    "completion": ("completion", "completions", "response"),
    "advantage": ("advantage", "advantages"),
}
_EVAL = {"eval", "evaluation", "validation", "val", "test"}
_CSV_FIELDS = {"prompt", "completion", "text", "response", "query"}
_REPLY = re.compile(r"(?s)^(.*\n)?assistant[ \t]*\n+")  # greedy: the LAST decoded assistant header


def _walk(source: Path, pattern: str) -> list[Path]:
    if source.is_file():
        return [source] if source.match(pattern) else []
    return sorted(p for p in source.rglob(pattern) if p.is_file() and not p.name.startswith(".")
                  and not _SKIP_DIRS & set(p.relative_to(source).parts))


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            import csv

            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, StopIteration):
        return []


def _table_files(source: Path, any_csv: bool = False) -> list[Path]:
    """W&B media tables, and CSV files (for detection only those whose header names a prompt/completion/text
    column; with --format wandb every CSV, so that --columns can name the fields)."""
    tables = [p for p in _walk(source, "*.table.json") if _TABLE.match(p.name)]
    csvs = [p for p in _walk(source, "*.csv") if any_csv or _CSV_FIELDS & {c.strip() for c in _csv_header(p)}]
    return tables + csvs


def table_key(path: Path, root: Path) -> tuple[str, int | None, str]:
    """(series key, W&B step, split) of a table file. The series key is the file's directory plus its W&B key
    (`<run>/files/media/table/train/generated_samples` for `.../train/generated_samples_4_<id>.table.json`), so
    the tables of two runs never form one series. CSV files: (path, None, split from the name)."""
    rel = path.relative_to(root) if path != root else Path(path.name)
    m = _TABLE.match(path.name)
    parts = rel.parts[:-1]
    key_parts = parts[len(parts) - parts[::-1].index("table"):] if "table" in parts else ()
    first = (key_parts[0] if key_parts else (m.group("key") if m else path.stem)).split("/")[0].lower()
    split = "eval" if first in _EVAL or first.startswith("eval_") else "train"
    if not m:
        return str(rel), None, split
    return str(rel.parent / m.group("key")), int(m.group("step")), split


@register
class WandbReader(PrefetchingReader):
    name = "wandb"
    maps_columns = True
    description = "W&B tables: wandb/run-*/files/media/table/**/*.table.json, or a table exported as CSV"

    def __init__(self) -> None:
        self._previous: dict[str, Path] = {}

    @classmethod
    def detect(cls, source: Path) -> bool:
        return bool(_table_files(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        out = []
        series: dict[str, list[tuple[int, Path]]] = {}
        for p in _table_files(source, any_csv=True):
            key, step, split = table_key(p, root)
            out.append(SourceFile(p, str(p.relative_to(root)), split=split, step=step))
            if step is not None:
                series.setdefault(key, []).append((step, p))
        for items in series.values():
            items.sort()
            for (_, before), (_, after) in zip(items, items[1:]):
                self._previous[str(after)] = before
        return sorted(out, key=lambda f: (f.step if f.step is not None else -1, f.relpath))

    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        if file.path.suffix == ".csv":
            table = _read_csv(file, ctx)
            first = 0
        else:
            loaded = load_table_json(file.path, file.relpath, ctx, file)
            if loaded is None:
                return
            columns, rows = loaded
            first = _repeated_prefix(rows, columns, self._previous.get(str(file.path)))
            if first:
                ctx.note(f"{file.relpath}: the table repeats the rows of the previous table of its key "
                         f"(cumulative logging, as OpenRLHF's WandbLogger does); only the new rows are read")
            table = rows_to_table(columns, rows[first:])
        if table is None or table.num_rows == 0:
            return
        lines = pa.array(np.arange(first + 1, first + 1 + table.num_rows, dtype=np.int64))
        raw = table_raw(table, lines, file, ctx, ConsecutiveGroups(ctx.options.group_size))
        if raw is not None:
            yield raw


def load_table_json(path: Path, name: str, ctx: ReadContext, file: SourceFile | None = None,
                    ) -> tuple[list[str], list[list[Any]]] | None:
    """(columns, rows) of a W&B `*.table.json`; a malformed file or row is reported naming what was expected."""
    expected = 'a W&B table: {"columns": [names...], "data": [[row values...], ...]}'
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as exc:
        ctx.bad(file or name, None, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                                    f"expected {expected}")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        ctx.bad(file or name, None, f"unreadable ({exc}); expected {expected}")
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("columns"), list) or not isinstance(obj.get("data"), list):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        ctx.bad(file or name, None, f"expected {expected}; got {got}")
        return None
    columns = [str(c) for c in obj["columns"]]
    rows = []
    for i, row in enumerate(obj["data"], 1):
        if not isinstance(row, list) or len(row) != len(columns):
            n = len(row) if isinstance(row, list) else type(row).__name__
            ctx.bad(file or name, i, f"data row {i}: expected a list of {len(columns)} values (one per column "
                                     f"{columns}), got {n}", json.dumps(row, default=str)[:2000])
            continue
        rows.append(row)
    return columns, rows


def _repeated_prefix(rows: list[list[Any]], columns: list[str], previous: Path | None) -> int:
    """How many leading rows equal the previous table of the same key (0 when not a cumulative re-log)."""
    if previous is None or not previous.is_file():
        return 0
    try:
        with open(previous, encoding="utf-8") as fh:
            before = json.load(fh)
    except (OSError, ValueError):
        return 0
    if not isinstance(before, dict) or before.get("columns") != columns or not isinstance(before.get("data"), list):
        return 0
    old = before["data"]
    if 0 < len(old) <= len(rows) and rows[: len(old)] == old:
        return len(old)
    return 0


def rows_to_table(columns: list[str], rows: list[list[Any]] | list[dict[str, Any]]) -> pa.Table:
    """An Arrow table from row lists (or row dicts); a column whose values do not share one type is JSON text."""
    arrays = {}
    for j, name in enumerate(columns):
        values = [r.get(name) if isinstance(r, dict) else r[j] for r in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[name] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v, default=str)
                                     for v in values], pa.string())
    return pa.table(arrays) if arrays else pa.table({})


def _read_csv(file: SourceFile, ctx: ReadContext) -> pa.Table | None:
    import pyarrow.csv as pcsv

    try:
        return pcsv.read_csv(file.path, parse_options=pcsv.ParseOptions(newlines_in_values=True))
    except (pa.ArrowInvalid, OSError) as exc:
        ctx.bad(file, None, f"not a readable CSV table ({exc})")
        return None


def resolve_columns(names: list[str], mapping: dict[str, str], file: SourceFile) -> dict[str, str]:
    """canonical field -> column: `--columns` first (a mapped column the table lacks is an error), then aliases."""
    absent = {c: s for c, s in mapping.items() if s not in names}
    if absent:
        pairs = ", ".join(f"{c}={s}" for c, s in absent.items())
        raise RlauditError(f"{file.relpath}: --columns {pairs}: column(s) {sorted(absent.values())} not found; the "
                           f"table has {', '.join(names)}")
    out = dict(mapping)
    for canonical, aliases in ALIASES.items():
        if canonical not in out:
            found = next((a for a in aliases if a in names), None)
            if found is not None:
                out[canonical] = found
    return out


def split_text(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(prompt, completion) of decoded `prompt + response` strings, cut after the last `assistant` header line."""
    prompts, completions = [], []
    for value in text.to_pylist():
        value = value or ""
        m = _REPLY.match(value)
        if m:
            prompts.append(value[: m.end()])
            completions.append(value[m.end():])
        else:
            prompts.append("")
            completions.append(value)
    return pa.array(prompts, pa.string()), pa.array(completions, pa.string())


def table_raw(table: pa.Table, lines: pa.Array, file: SourceFile, ctx: ReadContext,
              groups: ConsecutiveGroups, sub: pa.Array | None = None) -> pa.Table | None:
    """Raw rollout columns (see readers/base.py) of one logged rollout table (W&B or trackio)."""
    names = table.column_names
    fields = resolve_columns(names, ctx.options.columns, file)
    missing_graders(ctx.options, table.column_names, file)
    col = (lambda name: table.column(fields[name]).combine_chunks() if name in fields else None)
    v = Validator(table, lines, file, ctx)
    raw: dict[str, pa.Array] = {}
    used = set(fields.values())
    if "prompt" not in fields and "completion" not in fields and "text" in names:
        text = v.text("text", table.column("text").combine_chunks(), required=True)
        raw["prompt"], raw["completion"] = split_text(pc.fill_null(text, ""))
        used.add("text")
        if not pc.all(pc.not_equal(raw["prompt"], "")).as_py():
            ctx.note(f"{file.relpath}: column `text` holds prompt and response as one string (OpenRLHF); rows "
                     f"without a decoded `assistant` header line have an empty prompt and the whole text as completion")
    else:
        absent = [c for c in ("prompt", "completion") if c not in fields]
        if absent:
            ctx.bad(file, None, f"no {' or '.join(absent)} column; the table has {names} (map one with "
                                f"--columns {absent[0]}=COLUMN)")
            return None
        raw["prompt"] = v.text("prompt", col("prompt"), required=True)
        raw.update(v.completion(col("completion"), ctx.options.think_tags))
    step = v.step("step", col("step"))
    if step is None:
        if file.step is None:
            raise RlauditError(f"{file.relpath}: no step: the table has no step column (looked for "
                               f"{', '.join(ALIASES['step'])}; found {', '.join(names)}) and the file name carries "
                               f"no W&B step; name the column with --columns step=COLUMN")
        ctx.note(f"{file.relpath}: the table has no step column; `step` is the W&B step from the file name "
                 f"(W&B's log counter, which is the trainer's step only if it was logged with step=)")
        step = pa.array([file.step] * table.num_rows, pa.int64())
    raw["step"] = step
    advantage = v.number("advantage", col("advantage"))
    if advantage is not None:
        raw["advantage"] = advantage
    extras = classify_extras(table, used, ctx.options, bool_is_signal=False)
    _, lines, keep = v.done()
    if not len(lines):
        return None
    n = len(lines)
    raw = {k: keep(a) for k, a in raw.items()}
    signals = {k: keep(a) for k, a in extras.rewards.items()}
    raw["rewards"] = map_from_columns(signals, pa.float64(), drop_null=False, n=n)
    raw["reward"] = signals["reward"] if "reward" in signals else _nansum(signals, n)
    raw["grader_inputs"] = map_from_columns({k: keep(a) for k, a in extras.grader_inputs.items()},
                                            pa.string(), drop_null=True, n=n)
    raw["metadata"] = metadata_from_columns(keep(extras.metadata))
    raw["group_id"], raw["sample_index"] = groups.assign(raw["prompt"], raw["step"])
    raw["line"] = lines
    if sub is not None:
        raw["sub"] = keep(sub)
    return pa.table(raw)


def _nansum(signals: dict[str, pa.Array], n: int) -> pa.Array:
    """Unweighted nansum of the reward columns; NaN where every column is NaN (as readers/trl.py)."""
    if not signals:
        return pa.nulls(n, pa.float64())
    matrix = np.column_stack([a.to_numpy(zero_copy_only=False) for a in signals.values()]).astype(np.float64)
    total = np.nansum(matrix, axis=1)
    total[np.isnan(matrix).all(axis=1)] = np.nan
    return pa.array(total)

