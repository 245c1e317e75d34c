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

`find_scalar_logs(source)` looks for these beside the rollouts (the run directory, its parent, and TRL's
`runs/` and checkpoint directories); `read_scalar_logs` returns a `ScalarLog` whose `found` lists which keys
were present.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: rlaudit metric name -> exact key names per trainer (regexes start with '^'). The first key present wins.
METRIC_KEYS: dict[str, dict[str, list[str]]] = {
    "entropy": {"trl": ["entropy", "train/entropy"], "verl": ["actor/entropy"], "prime-rl": ["entropy/all/mean"]},
    "kl": {"trl": ["kl", "train/kl"], "verl": ["actor/kl_loss"]},
    "clip_fraction": {"trl": ["clip_ratio/region_mean", "train/clip_ratio/region_mean"],
                      "verl": ["actor/pg_clipfrac"]},
    "grad_norm": {"trl": ["grad_norm", "train/grad_norm"], "verl": ["actor/grad_norm"],
                  "prime-rl": ["optim/grad_norm"]},
    "learning_rate": {"trl": ["learning_rate", "train/learning_rate"], "verl": ["actor/lr"],
                      "prime-rl": ["optim/lr"]},
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
    for pattern in ("events.out.tfevents.*", "runs/*/events.out.tfevents.*", "*/events.out.tfevents.*",
                    "tensorboard_log/*/*/events.out.tfevents.*"):
        found.extend(p for p in sorted(root.glob(pattern)) if p.is_file())
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]  # type: ignore[func-returns-value]


def _global_step(path: Path) -> int:
    try:
        step = json.loads(path.read_text()).get("global_step")
        return step if isinstance(step, int) else -1
    except (OSError, ValueError, AttributeError):
        return -1


def _jsonl_kind(path: Path) -> str | None:
    """'verl' ({"step", "data": {...}}), 'prime-rl' ({"step", "time", metrics...}) or None (not a metric log)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        obj = json.loads(first)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("step"), int):
        return None
    if isinstance(obj.get("data"), dict) and len(obj) == 2:
        return "verl"
    numeric = [k for k, v in obj.items() if k not in ("step", "time") and isinstance(v, (int, float))]
    if "time" in obj and numeric and all(isinstance(v, (int, float, type(None))) for v in obj.values()):
        return "prime-rl"
    return None


# ---------------------------------------------------------------------------------------------- reading
def read_scalar_logs(paths: Iterable[str | Path]) -> ScalarLog:
    """Read every file (format from its name and content); unreadable files are skipped."""
    log = ScalarLog()
    for p in map(Path, paths):
        try:
            if p.name == "trainer_state.json":
                rows, fmt = list(_trainer_state(p)), "trl"
            elif p.name.startswith("events.out.tfevents"):
                rows, fmt = list(read_tfevents(p)), "tensorboard"
            else:
                kind = _jsonl_kind(p)
                if kind is None:
                    continue
                rows, fmt = list(_jsonl(p, kind)), kind
        except (OSError, ValueError):
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
    for entry in state.get("log_history") or []:
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


# ---------------------------------------------------------------------------------------------- TensorBoard
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values as bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            val, i = buf[i:i + size], i + size
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, val


def _tensor_value(buf: bytes) -> float | None:
    """A scalar TensorProto (DT_FLOAT = 1 or DT_DOUBLE = 2): float_val / double_val / tensor_content."""
    dtype, content = 1, None
    for num, wire, val in _fields(buf):
        if num == 1 and wire == 0:
            dtype = val
        elif num == 4 and wire == 2:
            content = val
        elif num == 5:
            return struct.unpack("<f", val[:4])[0] if wire == 2 else struct.unpack("<f", val)[0]
        elif num == 6:
            return struct.unpack("<d", val[:8])[0] if wire == 2 else struct.unpack("<d", val)[0]
    if content:
        return struct.unpack("<d" if dtype == 2 else "<f", content[:8 if dtype == 2 else 4])[0]
    return None


def read_tfevents(path: str | Path) -> Iterator[tuple[int, str, float]]:
    """Scalars of a TensorBoard event file: TFRecord framing (length, crc, data, crc) of `Event` protos
    (`step` = field 2, `summary` = field 5 holding `Value`s: `tag` = 1, `simple_value` = 2, `tensor` = 8).
    A truncated last record (a file being written) ends the read."""
    data = Path(path).read_bytes()
    i = 0
    while i + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[i:i + 8])
        start, end = i + 12, i + 12 + length
        if end + 4 > len(data):
            break
        event, i = data[start:end], end + 4
        step, summary = 0, None
        for num, wire, val in _fields(event):
            if num == 2 and wire == 0:
                step = val
            elif num == 5 and wire == 2:
                summary = val
        if summary is None:
            continue
        for num, wire, val in _fields(summary):
            if num != 1 or wire != 2:
                continue
            tag, value = None, None
            for vnum, vwire, vval in _fields(val):
                if vnum == 1 and vwire == 2:
                    tag = vval.decode("utf-8", "replace")
                elif vnum == 2 and vwire == 5:
                    value = struct.unpack("<f", vval)[0]
                elif vnum == 8 and vwire == 2:
                    value = _tensor_value(vval)
            if tag is not None and value is not None:
                yield int(step), tag, float(value)
