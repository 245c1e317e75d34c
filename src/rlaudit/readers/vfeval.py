"""verifiers `vf-eval` output: `{output_dir}/{run dir}/traces.jsonl`, the same episode records prime-rl logs.

Checked against verifiers 0.4.0 (PyPI wheel): `verifiers/v1/cli/eval/runner.py` (`run_eval`: `save_config` then,
per finished episode, `episode.record_run(EvalRunInfo(id, name))` and `append_episode`),
`verifiers/v1/cli/output.py` (`output_path` = `output_dir / run.dir`, default run dir
`<env>--<model>--<harness>--<short-id>`; `save_config` writes `configs/resolved/eval.json`, copies the launch
TOML to `configs/eval.toml` and starts an empty `traces.jsonl`; logs go to `logs/attempt_<n>/eval.log` with a
`logs/latest` link) and `verifiers/v1/utils/trace_store.py` (`TRACES_FILE = "traces.jsonl"`; `write_episode`
appends one line per episode: the episode's pydantic JSON with `exclude_none=True`). There is no
`metadata.json` or `results.jsonl` in this layout (those belonged to the pre-v1 `vf-eval`); `--resume` appends
to the same `traces.jsonl`.

A line is an `Episode` like prime-rl's (see `primerl`), except that the run stamp is `EvalRunInfo` {type: eval,
id, name} without `work`, and vf-eval assigns no `group` (prime-rl's dispatcher does). So: split `eval`; step
from the record's `run.work.step` when a consumer stamped one, else 0; group: the task key (the n rollouts of a
task, `--num-rollouts`), as "0:<task key>". Every other field maps as in `primerl` (non-trainable agents,
branches, judge calls, tool calls). Being a write of the whole pydantic model rather than `to_record`, a line
also keeps `sampling_mask` / `routed_experts` when present; the reader does not use them.

SOURCE is the run directory (holding `traces.jsonl`) or the `traces.jsonl` file itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import register
from .base import SourceFile
from .primerl import PrimeRlReader

TRACES_FILE = "traces.jsonl"


def _traces_file(source: Path) -> Path | None:
    path = source / TRACES_FILE if source.is_dir() else source
    if path.name != TRACES_FILE or not path.is_file():
        return None
    return path


def _looks_like_episodes(path: Path, limit: int = 1 << 22) -> bool:
    """The first record is a verifiers `Episode` (a `traces` list and a `task`) and is not prime-rl's (a run
    stamped with train `work` lives in prime-rl's step directories, which that reader handles)."""
    with open(path, "rb") as fh:
        head = fh.read(limit)
    line = head.lstrip().partition(b"\n")[0]
    if not line.strip():  # save_config starts an empty file: a vf-eval run that has not finished an episode
        return (path.parent / "configs" / "resolved" / "eval.json").is_file()
    try:
        record = json.loads(line)
    except ValueError:
        return b'"traces"' in line[:4096] and b'"task"' in line
    return isinstance(record, dict) and isinstance(record.get("traces"), list) and "task" in record


@register
class VerifiersEvalReader(PrimeRlReader):
    name = "verifiers"
    description = "verifiers vf-eval output: a run directory holding traces.jsonl (episodes), split eval"

    @classmethod
    def detect(cls, source: Path) -> bool:
        path = _traces_file(source)
        return path is not None and _looks_like_episodes(path)

    def files(self, source: Path) -> list[SourceFile]:
        path = _traces_file(source)
        if path is None:
            return []
        relpath = TRACES_FILE if source.is_dir() else path.name
        return [SourceFile(path, relpath, split="eval", step=0)]
