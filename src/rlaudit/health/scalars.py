"""The trainers' scalar logs: one long table (step, key, value) per run, and the map from each trainer's key
names onto rlaudit's metric names.

Formats, each checked against the trainer's own code:

- **TRL** `trainer_state.json` (`TrainerState.save_to_json`, in `output_dir` and every `checkpoint-N/`):
  `log_history` is a list of dicts with `step` and the logged metrics. `GRPOTrainer` (trl 1.16
  `grpo_trainer.py`) logs `entropy`, `kl` (only when `beta != 0`), `clip_ratio/region_mean`,
  `clip_ratio/low_mean`, `clip_ratio/high_mean`, `completions/mean_length`, `completions/clipped_ratio`,
  `frac_reward_zero_std`, `reward`, `reward_std`; transformers adds `grad_norm`, `learning_rate`, `loss`; eval
  entries prefix each key with `eval_` (`eval_reward`). The newest file (largest `global_step`) is read.
- **verl** `FileLogger` (`verl/utils/tracking.py`, `trainer.logger=[...,'file']`): a JSONL file at
  `$VERL_FILE_LOGGER_PATH` or `$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl`, one
  `{"step": N, "data": {...}}` per line. Keys: `actor/entropy`, `actor/kl_loss`, `actor/pg_clipfrac`,
  `actor/grad_norm`, `actor/lr` (`dp_actor.py`, `fsdp_workers.py`), `critic/score/mean`,
  `response_length/mean`, `response_length/clip_ratio` (`metric_utils.compute_data_metrics`),
  `val-core/<data_source>/<var>/mean@N` (`ray_trainer._val_metrics_update`).
- **prime-rl** `FileMonitor` (`prime_rl/monitors/file.py`, on by default): `<output_dir>/metrics.jsonl`, one
  `{"step": N, "time": T, ...metrics}` per line. Trainer keys `entropy/all/mean`, `mismatch_kl/all/mean`,
  `optim/grad_norm`, `optim/lr` (`trainer/rl/train.py`); orchestrator keys `<prefix>/is_truncated/mean`,
  `<prefix>/solved_all`, `<prefix>/solved_none`, `<prefix>/rewards/...` (`orchestrator/metrics.py`).
- **TensorBoard** event files (`events.out.tfevents.*`, written by `torch.utils.tensorboard.SummaryWriter`:
  transformers' `TensorBoardCallback` for TRL with `report_to="tensorboard"`, verl's `_TensorboardAdapter`):
  read by a small TFRecord/protobuf decoder in this module, so no extra package is needed; the tags are the
  trainer's key names (transformers prefixes train metrics with `train/` and eval metrics with `eval/`).
  The decoder is `health.tensorboard`.
- **W&B**: the run directory wandb's SDK writes (`wandb/run-*/run-*.wandb`, `wandb/offline-run-*/...`; the
  history is decoded from the datastore's protobuf records without wandb) and history exports (`run.history()`
  or `run.scan_history()` as CSV/JSONL with `_step`; the UI's CSV export). Keys are the trainer's as logged
  through W&B (`train/entropy`, `actor/pg_clipfrac`); see `health.wandb_history`.

`find_scalar_logs(source)` looks for these beside the rollouts (the run directory, its parent, TRL's `runs/`
and checkpoint directories, `wandb/`); `read_scalar_logs` returns a `ScalarLog` whose `found` lists which keys
were present; `scalar_log_files(path)` checks a path named by the user (`rlaudit audit --scalar-log`) and says
what it expected when the path is not a scalar log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import wandb_history as wb
from .tensorboard import read_tfevents
from .wandb_history import ScalarLogError

#: rlaudit metric name -> exact key names per trainer (regexes start with '^'). The first key present wins.
METRIC_KEYS: dict[str, dict[str, list[str]]] = {
    "entropy": {"trl": ["entropy", "train/entropy"], "verl": ["actor/entropy"], "prime-rl": ["entropy/all/mean"]},
    "kl": {"trl": ["kl", "train/kl"], "verl": ["actor/kl_loss", "actor/reward_kl_penalty"]},
    "clip_fraction": {"trl": ["clip_ratio/region_mean", "train/clip_ratio/region_mean"],
                      "verl": ["actor/pg_clipfrac"]},
    "grad_norm": {"trl": ["grad_norm", "train/grad_norm"], "verl": ["actor/grad_norm"],
                  "prime-rl": ["optim/grad_norm"]},
    "learning_rate": {"trl": ["learning_rate", "train/learning_rate"], "verl": ["actor/lr"],
                      "prime-rl": ["optim/lr"]},
    "update_kl": {"verl": ["actor/ppo_kl"]},
    "truncation": {"trl": ["completions/clipped_ratio", "train/completions/clipped_ratio"],
                   "verl": ["response_length/clip_ratio"], "prime-rl": [r"^[^/]+(/[^/]+)?/is_truncated/mean$"]},
    "length": {"trl": ["completions/mean_length", "train/completions/mean_length"],
               "verl": ["response_length/mean"]},
    "zero_std_groups": {"trl": ["frac_reward_zero_std", "train/frac_reward_zero_std"]},
    "reward": {"trl": ["reward", "train/reward"], "verl": ["critic/score/mean"]},
    "eval_reward": {"trl": ["eval_reward", "eval/reward"], "verl": [r"^val-core/.+/mean@\d+$"]},
}


@dataclass
class ScalarLog:
    """Scalar metrics of one run: `rows` (step, key, value), the files read, and which keys were found."""

    rows: list[tuple[int, str, float]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    formats: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)  # files that could not be read, with the reason

    @property
    def keys(self) -> set[str]:
        return {k for _, k, _ in self.rows}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one key in step order (the last value of a step wins)."""
        by_step: dict[int, float] = {}
        for s, k, v in self.rows:
            if k == key:
                by_step[s] = v
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    def resolve(self, metric: str) -> str | None:
        """The trainer key that carries rlaudit metric `metric` (None when absent)."""
        keys = self.keys
        for names in METRIC_KEYS.get(metric, {}).values():
            for name in names:
                if name.startswith("^"):
                    hits = sorted(k for k in keys if re.match(name, k))
                    if hits:
                        return hits[0]
                elif name in keys:
                    return name
        return None

    def found(self) -> dict[str, str]:
        """rlaudit metric -> the trainer key found for it."""
        return {m: k for m in METRIC_KEYS if (k := self.resolve(m)) is not None}


# ---------------------------------------------------------------------------------------------- discovery
def find_scalar_logs(source: str | Path) -> list[Path]:
    """Scalar-log files beside the rollouts of `source` (a run directory or file); [] when none."""
    src = Path(source)
    if not src.exists():
        return []
    root = src.parent if src.is_file() else src
    if root.name in ("train", "eval") and root.parent.name == "completions":
        root = root.parent
    if root.name in ("completions", "rollouts"):
        root = root.parent
    found: list[Path] = []
    states = [p for p in [root / "trainer_state.json", *root.glob("checkpoint-*/trainer_state.json")] if p.is_file()]
    if states:
        found.append(max(states, key=_global_step))
    for base in (root, root.parent):
        for p in sorted(base.glob("*.jsonl")):
            if p.is_file() and _jsonl_kind(p) is not None:
                found.append(p)
    found += [p for p in sorted(root.glob("*.csv")) if p.is_file() and wb.csv_kind(p) is not None]
    for pattern in ("events.out.tfevents.*", "runs/*/events.out.tfevents.*", "*/events.out.tfevents.*",
                    "tensorboard_log/*/*/events.out.tfevents.*"):
        found.extend(p for p in sorted(root.glob(pattern)) if p.is_file())
    found += wb.find_runs(root)
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]  # type: ignore[func-returns-value]


def scalar_log_files(path: str | Path) -> list[Path]:
    """The scalar-log files a user named: a file in a known format, or a directory holding some (searched as
    `find_scalar_logs` does). Raises ScalarLogError naming the path and the formats expected otherwise."""
    p = Path(path)
    if not p.exists():
        raise ScalarLogError(f"--scalar-log {p}: no such file or directory")
    if p.is_dir():
        files = find_scalar_logs(p)
        if not files:
            raise ScalarLogError(f"--scalar-log {p}: no scalar log in this directory (looked for {EXPECTED})")
        return files
    if scalar_format(p) is None:
        raise ScalarLogError(f"--scalar-log {p}: not a recognised scalar log; expected {EXPECTED}")
    return [p]


EXPECTED = ("TRL trainer_state.json (log_history), a verl FileLogger JSONL ({\"step\", \"data\"}), a prime-rl "
            "metrics.jsonl ({\"step\", \"time\", ...}), TensorBoard events.out.tfevents.*, a W&B run directory or "
            "run-*.wandb file, or a W&B history export (CSV/JSONL with `_step`, or the UI's CSV with `Step`)")


def scalar_format(path: Path) -> str | None:
    """The scalar-log format of one file, from its name and first bytes; None when it is none of them."""
    if path.name == "trainer_state.json":
        return "trl"
    if path.name.startswith("events.out.tfevents"):
        return "tensorboard"
    if path.suffix == ".wandb" or wb.is_datastore(path):
        return "wandb"
    if path.suffix == ".csv":
        return "wandb-export" if wb.csv_kind(path) is not None else None
    return _jsonl_kind(path)


def _global_step(path: Path) -> int:
    try:
        step = json.loads(path.read_text()).get("global_step")
        return step if isinstance(step, int) else -1
    except (OSError, ValueError, AttributeError):
        return -1


def _jsonl_kind(path: Path) -> str | None:
    """'verl' ({"step", "data": {...}}), 'prime-rl' ({"step", "time", metrics...}), 'wandb-export' (a W&B
    history row: `_step`) or None (not a metric log)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        obj = json.loads(first)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if wb.jsonl_is_history(obj):
        return "wandb-export"
    if not isinstance(obj.get("step"), int):
        return None
    if isinstance(obj.get("data"), dict) and len(obj) == 2:
        return "verl"
    numeric = [k for k, v in obj.items() if k not in ("step", "time") and isinstance(v, (int, float))]
    if "time" in obj and numeric and all(isinstance(v, (int, float, type(None))) for v in obj.values()):
        return "prime-rl"
    return None


# ---------------------------------------------------------------------------------------------- reading
def read_scalar_file(path: str | Path) -> tuple[list[tuple[int, str, float]], str]:
    """(rows, format) of one scalar-log file; ScalarLogError (naming the file, and the line or record where it
    knows one) when it is not readable as one."""
    p = Path(path)
    fmt = scalar_format(p)
    if fmt is None:
        raise ScalarLogError(f"{p}: not a recognised scalar log; expected {EXPECTED}")
    try:
        if fmt == "trl":
            rows = list(_trainer_state(p))
        elif fmt == "tensorboard":
            rows = list(read_tfevents(p))
        elif fmt == "wandb":
            rows = list(wb.read_datastore(p))
        elif fmt == "wandb-export":
            rows = list(wb.read_history_csv(p) if p.suffix == ".csv" else wb.read_history_jsonl(p))
        else:
            rows = list(_jsonl(p, fmt))
    except ScalarLogError:
        raise
    except (OSError, ValueError, IndexError) as exc:
        raise ScalarLogError(f"{p}: unreadable as a {fmt} scalar log ({exc})") from None
    return rows, fmt


def read_scalar_logs(paths: Iterable[str | Path], strict: bool = False) -> ScalarLog:
    """Read every file (format from its name and content). Unreadable files are listed in `skipped` (with
    `strict`, the first one raises ScalarLogError)."""
    log = ScalarLog()
    for p in map(Path, paths):
        try:
            rows, fmt = read_scalar_file(p)
        except ScalarLogError as exc:
            if strict:
                raise
            log.skipped.append(str(exc))
            continue
        if rows:
            log.rows.extend(rows)
            log.files.append(str(p))
            log.formats.add(fmt)
    return log


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _trainer_state(path: Path) -> Iterator[tuple[int, str, float]]:
    state = json.loads(path.read_text())
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ScalarLogError(f"{path}: expected TRL/transformers TrainerState JSON with a `log_history` list")
    for entry in state["log_history"]:
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            for k, v in entry.items():
                if k != "step" and _number(v):
                    yield entry["step"], k, float(v)


def _jsonl(path: Path, kind: str) -> Iterator[tuple[int, str, float]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a line being written
            if not isinstance(obj, dict) or not isinstance(obj.get("step"), int):
                continue
            data = obj.get("data") if kind == "verl" else obj
            if not isinstance(data, dict):
                continue
            for k, v in data.items():
                if k not in ("step", "time") and _number(v):
                    yield obj["step"], k, float(v)


__all__ = ["METRIC_KEYS", "ScalarLog", "ScalarLogError", "find_scalar_logs", "read_scalar_logs", "read_scalar_file",
           "read_tfevents", "scalar_log_files", "scalar_format"]
