"""TRL GRPOTrainer completion logs: `{output_dir}/completions/completions_{step:05d}.parquet`.

Checked against trl 1.16.0 (`trl/trainer/grpo_trainer.py`) with transformers 5.24.0, by the conformance suite
(`conformance/trl/generate.py` runs the real GRPOTrainer; `tests/conformance/test_trl.py`). `GRPOTrainer.log`,
with `log_completions=True`, writes at each logging step (and after each eval) a pandas DataFrame

    {"step": [global_step] * n, "prompt": prompts, "completion": completions,
     **self._logs["rewards"],   # one float column per reward function, in reward_func_names order; NaN for None
     **self._logs["extra"],     # log_extra(column, values) columns, sorted by name
     "advantage": advantages}

to `completions_{global_step:05d}.parquet`. `_logs` are deques of length `generation_batch_size`, filled by
`_generate_and_score_completions`: a file holds the latest generation batch only.

What the files do not say, and how this reader handles it (run-level facts: `trl_run.load_run`):
- **Logging cadence.** A file is written every `logging_steps` steps only (GRPOConfig default 10): the other
  steps' batches are never logged. `prepare` notes it (from trainer_state.json, else the file spacing).
- **Evals** (`Trainer._maybe_log_save_evaluate` -> `evaluate` -> `GRPOTrainer.log` in eval mode) write the
  eval rollouts to the same file name, overwriting that step's train file, with no mode column. Steps whose
  `trainer_state.json` `log_history` entry has `eval_*` keys are split=eval; the train batch is lost (noted).
- **Repeated batches.** With `num_iterations > 1` (or `steps_per_generation > gradient_accumulation_steps`),
  `_prepare_inputs` reuses a generation batch for several steps and each logs it again; after an eval, the
  next non-generating steps log the eval rows again. A file whose rows equal the previous file's (step aside)
  is skipped, and with the saved args a train file's rows get the step their batch was generated at.
- **Reward signals and total.** The reward functions' columns are the reward signals: names from
  `rewards/<name>/mean` in `log_history`, else `--reward-weights` names, else the first
  `len(reward_weights)` numeric columns; numeric `log_extra` columns go to metadata. Without any of these every
  numeric column is a signal (noted). TRL's reward is `nansum(rewards_per_func * reward_weights)` (NaN when all
  are NaN; `multi_objective_aggregation="normalize_then_sum"` normalises per group first). The weights come from
  `--reward-weights`, else `reward_weights` in `training_args.bin` (read without unpickling), else 1 (noted).
- **Completions.** Plain-text prompts give text. Chat prompts give message lists: without a response parser
  (`tokenizer.response_template`/`response_schema`, set by `add_response_schema` when `tools` are passed) one
  assistant message whose `content` keeps the `<think>` block; with one, `parse_response` fills
  `reasoning_content` (Qwen3, DeepSeek-R1, LFM2.5) or `thinking` (gpt-oss, Gemma 4) and `tool_calls`
  (`{type: function, function: {name, arguments: dict}}`), and `_tool_call_loop` appends `{"role": "tool",
  "name", "content"}` messages and the next assistant turns. `messages.turn_columns` turns them into
  completion/reasoning/answer/tool_calls/tool_outputs; tool-call `arguments` (a dict after parsing, a struct in
  Parquet, where keys other calls used are null) become JSON text without the null keys.
- **Prompts** are message lists, rendered 'role: content' per line (system prompt and condition from the
  system message). Parquet files from trl 0.26-0.29 held decoded text prompts ("system\nYou are ...") and
  `step` as text; both are still read.
- No group id: RepeatSampler keeps a prompt's `num_generations` samples adjacent, so a group is a run of
  consecutive identical prompts, split every `--group-size` (else `num_generations`/`num_generations_eval`
  from the saved args) rows. group_id "<step>:<group index in file>", sample_index the position in it.
- Text `log_extra` columns are metadata, except `<grader>_input` (and `--grader-input GRADER=COLUMN`): the
  text grader `<grader>` saw. A `completions/{train,eval}/` sub-directory (some forks) or a `mode` column sets
  the split too.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import RlauditError
from . import register
from .base import FileRows, PrefetchingReader, ReadContext, SourceFile, report_unreadable
from .columns import classify_extras, map_from_columns, metadata_from_columns, missing_graders
from .groups import ConsecutiveGroups, file_groups
from .messages import combine
from .trl_run import TrlRun, load_run
from .validate import Loaded, Validator, load_parquet, open_parquet

_FILE = re.compile(r"^completions_(\d+)\.parquet$")
_KNOWN = {"step", "prompt", "completion", "advantage", "mode"}
BATCH_ROWS = 32_768
#: files of up to this many rows are read whole and turned into raw rows with their neighbours (`read_files`), up to
#: JOINED_ROWS rows together
SMALL_FILE_ROWS = 8_192
JOINED_ROWS = 16_384


@dataclass(frozen=True)
class _Opened:
    """A completions file opened and checked (`TrlReader._open`): its split ("eval" or None: the rows say), the
    step its rows get (None: theirs) and its group size."""

    pf: pq.ParquetFile
    split: str | None
    step: int | None
    size: int | None
    #: the whole file, where `_open` read it (a small step file: `read_files`), else None
    table: pa.Table | None = None


def _joins(held: list[tuple[SourceFile, pa.Table, _Opened]], rows: int, table: pa.Table, opened: _Opened) -> bool:
    """Whether a small file's `table` can be turned into raw rows with the files `held` (`read_files`; `rows`:
    theirs)."""
    first = held[0]
    return (rows + table.num_rows <= JOINED_ROWS
            and first[1].schema.equals(table.schema, check_metadata=False)
            and (first[2].split, first[2].size) == (opened.split, opened.size))


def _completion_names(source: Path) -> list[tuple[Path, str, str]]:
    """(directory, file name, split) of the completion files of a TRL output dir or its completions dir: names
    from one listing per directory (a `glob` builds a `Path` per entry: ~15 ms for a 2,000-step run, twice per
    ingest)."""
    if source.is_file():
        return [(source.parent, source.name, "train")] if _FILE.match(source.name) else []
    base = source / "completions" if (source / "completions").is_dir() else source
    found = []
    for d, split in ((base, "train"), (base / "train", "train"), (base / "eval", "eval")):
        try:
            names = os.listdir(d)
        except OSError:  # no such directory (or not one): no files there, as a glob finds none
            continue
        found += [(d, name, split) for name in names if _FILE.match(name)]
    return found


@register
class TrlReader(PrefetchingReader):
    name = "trl"
    description = "TRL GRPOTrainer log_completions: output_dir/completions/completions_{step:05d}.parquet"

    def __init__(self, run: TrlRun | None = None):
        self.run = run or TrlRun()  # run-level facts: from prepare(), or given by the live callback
        #: `_previous_file`'s directories: their (step, file) listing and its file names
        self._listed: dict[Path, tuple[list[tuple[int, Path]], set[str]]] = {}
        self._last: _Checked | None = None  # the file `_repeats` last checked: the next file's previous one

    @classmethod
    def detect(cls, source: Path) -> bool:
        return bool(_completion_names(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        prefixes: dict[Path, str] = {}  # directory -> its path relative to root, with a separator ("" for root)
        out = []
        for d, name, split in _completion_names(source):
            if d not in prefixes:
                rel = str(d.relative_to(root))
                prefixes[d] = "" if rel == "." else rel + os.sep
            out.append(SourceFile(d / name, prefixes[d] + name, split=split, step=int(_FILE.match(name).group(1))))
        return sorted(out, key=lambda f: (f.split != "train", f.step, f.relpath))

    def prepare(self, source: Path, ctx: ReadContext) -> None:
        """Read trainer_state.json / training_args.bin and note what they (or their absence) mean."""
        self.run = load_run(source)
        for text in run_notes(self.run, self.files(source), ctx.options.reward_weights):
            ctx.note(text)

    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        opened = self._open(file, ctx)
        if opened is not None:
            yield from self._read_opened(file, opened, ctx)

    def _open(self, file: SourceFile, ctx: ReadContext, whole: bool = False) -> _Opened | None:
        """`file` opened and checked, with what its rows need (None: quarantined, or a repeated batch: skipped).
        `whole`: a small step file is read whole here (`_load`), once, for the repeat check and for its rows
        (`read_files`; its advantages read apart, then the file, cost ~0.15 ms a file more)."""
        loaded = _load(file) if whole else None
        pf = open_parquet(file, ctx, ("prompt", "completion"), "TRL completion files have step, prompt, "
                          "completion, one column per reward function and advantage", loaded)
        if pf is None:
            return None
        if ctx.options.grader_inputs:
            missing_graders(ctx.options, pf.schema_arrow.names, file)
        table = loaded.table if loaded is not None else None
        is_eval = file.split == "eval" or (file.step is not None and self.run.is_eval(file.step) is True)
        if file.step is not None and file.split == "train":
            repeated = self._repeats(file, pf, table)
            if repeated is not None:
                ctx.note(repeat_note(self.run, repeated))
                return None
        step = file.step
        if step is not None and not is_eval:
            step = self.run.generation_step(step)
        size = ctx.options.group_size or self.run.args.get("num_generations_eval" if is_eval else "num_generations") \
            or (self.run.args.get("num_generations") if is_eval else None)
        return _Opened(pf, "eval" if is_eval else None, step, size if isinstance(size, int) else None, table)

    def _read_opened(self, file: SourceFile, opened: _Opened, ctx: ReadContext) -> Iterator[pa.Table]:
        groups = ConsecutiveGroups(opened.size)
        row = 0
        try:
            for batch in opened.pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
                table = pa.Table.from_batches([batch])
                lines = pa.array(np.arange(row + 1, row + 1 + table.num_rows, dtype=np.int64))
                row += table.num_rows
                raw = self._raw(table, lines, FileRows.counted([file], [table.num_rows]), ctx, [groups],
                                opened.split, [opened.step])
                if raw is not None:
                    yield raw[0]
        except (pa.ArrowInvalid, OSError) as exc:  # a truncated or corrupt file
            ctx.bad(file, row + 1 if row else None, f"unreadable Parquet data after row {row} ({exc})")

    def read_files(self, files: list[SourceFile], ctx: ReadContext,
                   unreadable: set[str] | None = None) -> Iterator[tuple[SourceFile, pa.Table | None]]:
        """`Reader.read_files`, with the rows of consecutive small files (a step each, of up to SMALL_FILE_ROWS
        rows, one schema, split and group size) turned into raw rows together (`_raw` of their concatenation, each
        row knowing its file: its step, line, bad-row reports and prompt groups are its file's): a run logged
        in files of a few hundred rows paid ~1 CPU ms of fixed `_raw` work per file, several times its rows'
        cost. Each file is still opened and checked alone, in order (`_open`)."""
        held: list[tuple[SourceFile, pa.Table, _Opened]] = []
        rows = 0  # held

        def flush() -> list[tuple[SourceFile, pa.Table | None]]:
            nonlocal rows
            out = self._raw_files(held, ctx) if held else []
            held.clear()
            rows = 0
            return out

        for file in files:
            try:
                opened = self._open(file, ctx, whole=True)
                table = opened.table if opened is not None and opened.step is not None else None
                if table is not None:
                    if held and not _joins(held, rows, table, opened):
                        yield from flush()
                    held.append((file, table, opened))
                    rows += table.num_rows
                    continue
                yield from flush()
                for raw in self._read_opened(file, opened, ctx) if opened is not None else ():
                    yield file, raw
            except OSError as exc:
                yield from flush()
                report_unreadable(file, exc, ctx, unreadable)
            yield file, None
        yield from flush()

    def _raw_files(self, held: list[tuple[SourceFile, pa.Table, _Opened]], ctx: ReadContext
                   ) -> list[tuple[SourceFile, pa.Table | None]]:
        """The raw rows of the small files `held` (`read_files`), per file, each followed by its end."""
        tables = [t for _, t, _ in held]
        files = [f for f, _, _ in held]
        lines = pa.array(np.concatenate([np.arange(1, t.num_rows + 1, dtype=np.int64) for t in tables]))
        opened = held[0][2]
        raw = self._raw(pa.concat_tables(tables), lines, FileRows.counted(files, [t.num_rows for t in tables]), ctx,
                        [ConsecutiveGroups(o.size) for _, _, o in held], opened.split, [o.step for _, _, o in held])
        out: list[tuple[SourceFile, pa.Table | None]] = []
        for i, file in enumerate(files):
            if raw is not None and raw[1].bounds[i + 1] > raw[1].bounds[i]:
                lo, hi = int(raw[1].bounds[i]), int(raw[1].bounds[i + 1])
                out.append((file, raw[0].slice(lo, hi - lo)))
            out.append((file, None))
        return out

    def _repeats(self, file: SourceFile, pf: pq.ParquetFile, table: pa.Table | None = None) -> str | None:
        """"eval"/"train" when `file` (open as `pf`) holds the same rollouts as the previous completions file (a
        reused generation batch: num_iterations > 1, or the eval rows still in `_logs` after an eval), else
        None. Each file is opened once and read through its `ParquetFile` (`pq.read_table` builds a dataset
        per call: 4x the CPU of reading the advantages alone). The previous file is usually the one checked
        just before (files are read in step order): its row count and advantages are kept from then
        (`_Checked`), and it is opened again only when it has changed since or its advantages equal these.
        `table`: the file read whole already (its advantages are taken from it)."""
        previous = self._previous_file(file.path, file.step)
        last, self._last = self._last, None
        try:  # cheap tests first: row counts, then the advantages (a float per rollout); whole files last
            mine = self._last = _Checked.of(file.path, pf, table)
            if previous is None:
                return None
            if last is None or not last.is_current(previous):  # opened again (on the reading thread)
                last = _Checked.of(previous, pq.ParquetFile(previous, pre_buffer=False))
            if last.rows != mine.rows or not last.same_advantages(mine):
                return None
            a = pq.ParquetFile(previous, pre_buffer=False).read(use_threads=False)
            b = table if table is not None else pf.read(use_threads=False)
        except (pa.ArrowInvalid, OSError, KeyError):
            return None
        if a.num_rows == 0:
            return None
        a = a.drop_columns([c for c in ("step",) if c in a.column_names])
        b = b.drop_columns([c for c in ("step",) if c in b.column_names])
        if a.schema.remove_metadata() != b.schema.remove_metadata() or not a.equals(b):
            return None
        prev_step = int(_FILE.match(previous.name).group(1))
        return "eval" if self.run.is_eval(prev_step) else "train"

    def _previous_file(self, path: Path, step: int) -> Path | None:
        """The completions file of the largest step below `step` in the same directory. The directory is listed
        once, and again only for a file its listing lacks (a live run adds files in step order: the new file is
        not in it), not once per file (at 2,000 steps the listing per file cost 5 CPU s), nor its mtime taken
        per file (~30 us each: 0.12 of the 2.9 CPU s the reading thread spent on 3,906 files of 256 rollouts)."""
        d = path.parent
        listed = self._listed.get(d)
        if listed is None or path.name not in listed[1]:
            try:
                found = sorted((int(m.group(1)), p) for p in d.glob("completions_*.parquet")
                               if (m := _FILE.match(p.name)))
            except OSError:
                return None
            listed = self._listed[d] = (found, {p.name for _, p in found})
        steps = listed[0]
        i = bisect.bisect_left(steps, step, key=lambda sp: sp[0])
        return steps[i - 1][1] if i else None

    def _raw(self, table: pa.Table, lines: pa.Array, rows: FileRows, ctx: ReadContext,
             groups: list[ConsecutiveGroups], split: str | None, step_overrides: list[int | None]
             ) -> tuple[pa.Table, FileRows] | None:
        """The raw table of `table`, rows of `rows.files` (each with its prompt groups and step override: several
        files only where each has one, `read_files`), and where each file's rows are in it."""
        # `combine`: a batch's single chunk as it is (`combine_chunks` copies it: the prompts and completions,
        # ~3 MB a file, copied once more)
        col = (lambda name: combine(table.column(name)) if name in table.column_names else None)
        file = rows.files[0]
        v = Validator(table, lines, rows, ctx)
        prompt = v.text("prompt", col("prompt"), required=True)
        raw: dict[str, pa.Array] = v.completion(col("completion"), ctx.options.think_tags)
        raw["prompt"] = prompt
        n = len(table)
        step = v.step("step", col("step"))
        if all(s is not None for s in step_overrides):
            raw["step"] = pa.array(rows.each(step_overrides).astype(np.int64))
        else:  # one file
            raw["step"] = pc.fill_null(step, file.step) if step is not None else pa.array([file.step] * n)
        advantage = v.number("advantage", col("advantage"))
        if advantage is not None:
            raw["advantage"] = advantage
        if split is not None:
            raw["split"] = pa.array([split] * n, pa.string())
        elif col("mode") is not None:
            raw["split"] = pc.if_else(pc.equal(col("mode").cast(pa.string()), "eval"), "eval", "train")
        extras = classify_extras(table, _KNOWN, ctx.options, bool_is_signal=False)
        signals, numeric_extras = split_signals(extras.rewards, self.run, ctx.options.reward_weights)
        weights = reward_weights(list(signals), self.run, ctx.options.reward_weights, file)
        _, lines, keep = v.done()
        if not len(lines):
            return None
        rows = rows.kept(None if keep.mask is None else keep.mask.to_numpy(zero_copy_only=False))
        raw = {k: keep(a) for k, a in raw.items()}
        signals = {k: keep(a) for k, a in signals.items()}
        n = len(lines)
        raw["rewards"] = map_from_columns(signals, pa.float64(), drop_null=False, n=n)
        raw["reward"] = weighted_nansum(signals, weights, n)
        raw["grader_inputs"] = map_from_columns({k: keep(a) for k, a in extras.grader_inputs.items()},
                                                pa.string(), drop_null=True, n=n)
        meta = keep(extras.metadata)
        for name, values in numeric_extras.items():  # numbers stay numbers in the metadata JSON
            meta = meta.append_column(name, keep(values))
        raw["metadata"] = metadata_from_columns(meta)
        if len(groups) == 1:
            raw["group_id"], raw["sample_index"] = groups[0].assign(raw["prompt"], raw["step"])
        else:  # whole files (`read_files`: of one group size), each with groups of its own ("<step>:<group index>")
            raw["group_id"], raw["sample_index"] = file_groups(raw["prompt"], raw["step"], rows.bounds,
                                                               groups[0].group_size)
        raw["line"] = lines
        return pa.table(raw), rows


def _load(file: SourceFile) -> Loaded:
    """A completions file opened, and read whole if it is a small step file (`read_files`). (Opening and reading
    the next files on a thread of their own, four ahead, did not pay: 3,906 files of 256 rollouts took 7.3-7.7 s
    to ingest against 6.9-7.3 s, the threads' hand-offs against decoding that is ~0.4 ms a file.)"""
    return load_parquet(file.path, SMALL_FILE_ROWS if file.step is not None else -1)


class _Checked:
    """What `TrlReader._repeats` compares of a completions file before reading it whole: its row count and its
    advantages (read on first use), with the file's size and mtime when it was opened, so that the next file's
    check can use them instead of opening it again (~0.3-0.4 ms a file: a `ParquetFile` and a column read)."""

    def __init__(self, path: Path, pf: pq.ParquetFile, stat: os.stat_result, table: pa.Table | None = None):
        self.path, self.pf, self.rows = path, pf, pf.metadata.num_rows
        self.key = (stat.st_size, stat.st_mtime_ns)
        self._advantages: pa.Table | None = None
        if table is not None and "advantage" in table.column_names:  # the file read whole: its column, no read
            self._advantages, self.pf = table.select(["advantage"]), None

    @classmethod
    def of(cls, path: Path, pf: pq.ParquetFile, table: pa.Table | None = None) -> _Checked:
        return cls(path, pf, os.stat(path), table)

    def is_current(self, path: Path) -> bool:
        """Whether this is `path` as it is now (same size and mtime as when it was opened)."""
        if path != self.path:
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == self.key

    def advantages(self) -> pa.Table | None:
        """The file's advantage column (None: it has none), read once."""
        if self._advantages is None and "advantage" in self.pf.schema_arrow.names:
            self._advantages = self.pf.read(["advantage"], use_threads=False)
            self.pf = None  # not kept open: the check holds the column only
        return self._advantages

    def same_advantages(self, other: _Checked) -> bool:
        """Whether the two files' advantages are equal: true when `other` logs none, false when only it does."""
        theirs = other.advantages()
        if theirs is None:
            return True
        mine = self.advantages()
        return mine is not None and mine.equals(theirs)


# ------------------------------------------------------------------------------------------- reward signals
def split_signals(numeric: dict[str, pa.Array], run: TrlRun,
                  option_weights: dict[str, float]) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """(reward-function columns, numeric log_extra columns), both in file order (see the module doc)."""
    if run.reward_names:
        names = set(run.reward_names)
    elif option_weights:
        names = set(option_weights)
    elif run.reward_weights is not None and len(run.reward_weights) <= len(numeric):
        names = set(list(numeric)[: len(run.reward_weights)])  # TRL writes the reward columns first
    else:
        return numeric, {}
    return ({k: a for k, a in numeric.items() if k in names}, {k: a for k, a in numeric.items() if k not in names})


def reward_weights(signals: list[str], run: TrlRun, option_weights: dict[str, float],
                   file: SourceFile) -> list[float]:
    """One weight per signal: --reward-weights, else GRPOConfig.reward_weights in column order, else 1."""
    if option_weights:
        unknown = sorted(set(option_weights) - set(signals))
        if unknown:
            raise RlauditError(f"{file.relpath}: --reward-weights names {unknown}, which are not reward columns "
                               f"of this file (reward columns: {', '.join(signals) or 'none'})")
        return [float(option_weights.get(name, 1.0)) for name in signals]
    saved = run.reward_weights
    if saved is not None and len(saved) == len(signals):
        return saved
    return [1.0] * len(signals)


def weighted_nansum(signals: dict[str, pa.Array], weights: list[float], n: int) -> pa.Array:
    """TRL's reward: nansum(rewards_per_func * reward_weights); NaN where every function returned None."""
    if not signals:
        return pa.nulls(n, pa.float64())
    matrix = np.column_stack([a.to_numpy(zero_copy_only=False) for a in signals.values()]).astype(np.float64)
    total = np.nansum(matrix * np.asarray(weights, dtype=np.float64)[None, :], axis=1)
    total[np.isnan(matrix).all(axis=1)] = np.nan
    return pa.array(total)


# ------------------------------------------------------------------------------------------- files and notes


def repeat_note(run: TrlRun, kind: str) -> str:
    if kind == "eval":
        return ("some completion files repeat the eval rollouts of the file before them (after an eval, steps "
                "that reuse a generation batch log GRPOTrainer._logs again, which still holds the eval rows): "
                "skipped")
    ni, spg = run.args.get("num_iterations"), run.args.get("steps_per_generation")
    why = f" (num_iterations={ni}, steps_per_generation={spg})" if ni is not None else ""
    return ("TRL logged the same generation batch at several steps" + why + ": each batch is read once, from "
            "the first file that holds it; the repeats are skipped")


def run_notes(run: TrlRun, files: list[SourceFile], option_weights: dict[str, float]) -> list[str]:
    """Notes on what the run-level files said (or that they were missing)."""
    notes: list[str] = []
    train_steps = sorted({f.step for f in files if f.split == "train" and f.step is not None})
    where = run.state_file or run.args_file
    if run.logging_steps and run.logging_steps > 1:
        notes.append(f"TRL logs only every logging_steps-th generation batch (logging_steps={run.logging_steps} in "
                     f"{where}; each completions file holds the latest batch only): {run.logging_steps - 1} of "
                     f"every {run.logging_steps} batches were never logged, which bounds how early a behaviour "
                     "can be seen")
    elif run.logging_steps is None and len(train_steps) > 1:
        gap = int(np.min(np.diff(train_steps)))
        if gap > 1:
            notes.append(f"completion files are at least {gap} steps apart (TRL's logging_steps; GRPOConfig "
                         f"default 10): the batches of the steps between them were never logged")
    if run.eval_steps is None:
        notes.append("no trainer_state.json (output_dir or checkpoint-*/): a step that ran an eval cannot be told "
                      "apart; with eval_strategy set, the eval rollouts overwrote those steps' completion files and "
                      "are read as train rows")
    elif run.eval_steps:
        steps = sorted(s for s in run.eval_steps if s in set(train_steps)) or sorted(run.eval_steps)
        notes.append(f"eval at step(s) {_steps_text(steps)} ({run.state_file} log_history) overwrote those steps' "
                     "completion files with eval rollouts (GRPOTrainer.log writes both to completions_{step}.parquet"
                     "): their rows are split=eval and the train batches of those steps are lost")
        if run.covered_until is not None and train_steps and train_steps[-1] > run.covered_until:
            rule = f"taken as evals every {run.eval_every} steps" if run.eval_every else "not known"
            notes.append(f"{run.state_file} covers steps <= {run.covered_until}; evals after it are {rule}")
    if option_weights:
        notes.append("reward = nansum(reward_i * weight_i) with the weights given by --reward-weights ("
                     + ", ".join(f"{k}={v:g}" for k, v in option_weights.items()) + ")")
    elif run.reward_weights is not None:
        notes.append(f"reward = nansum(reward_i * weight_i) with reward_weights={run.reward_weights} from "
                     f"{run.args_file}, in the order of the reward columns (reward_func_names)")
    else:
        src = "" if run.args_file else " (no training_args.bin)"
        notes.append(f"reward weights unknown{src}: `reward` is the unweighted nansum of the reward columns, "
                     "which differs from what TRL optimised if GRPOConfig.reward_weights was set; pass "
                     "--reward-weights name=w,...")
    if run.args.get("multi_objective_aggregation") == "normalize_then_sum":
        notes.append("multi_objective_aggregation=normalize_then_sum: TRL normalised each reward within its group "
                     "before weighting; `reward` is the weighted sum of the raw rewards")
    if not run.reward_names and not option_weights and run.reward_weights is None:
        notes.append("reward functions unknown (no rewards/<name>/mean in a trainer_state.json, no "
                     "--reward-weights, no saved reward_weights): every numeric column is taken as a reward "
                     "signal, including numeric log_extra columns")
    if any(run.generation_step(s) != s for s in train_steps):
        notes.append(f"num_iterations={run.args.get('num_iterations')}, steps_per_generation="
                     f"{run.args.get('steps_per_generation')}: a generation batch is trained on for several "
                     "steps; train rows carry the step their batch was generated at")
    return notes


def _steps_text(steps: list[int], limit: int = 12) -> str:
    text = ", ".join(map(str, steps[:limit]))
    return text + (f", ... ({len(steps)} in all)" if len(steps) > limit else "")
