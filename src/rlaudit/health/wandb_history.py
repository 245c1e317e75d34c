"""W&B run history as scalar logs: the run directory wandb's SDK writes, and history exports.

What users have, checked against wandb 0.31 (the files in tests/health/fixtures/wandb are written by wandb's
own code in offline mode: tests/health/fixtures/make_wandb_scalars.py):

- **The run directory** `wandb/run-<time>-<id>/` (online) or `wandb/offline-run-<time>-<id>/`: the history is
  only in `run-<id>.wandb`, the datastore wandb-core writes (`files/wandb-summary.json` holds the last values
  only, and offline runs do not write it). The file is a 7-byte header (`:W&B`, magic 0xBEE1 as uint16 LE,
  version 0) followed by LevelDB-log-framed records (`wire.leveldb_log`), each a serialized
  `wandb_internal_pb2.Record`. A `Record` with field 2 (`history`) is a `HistoryRecord`: repeated `item` = 1
  (`HistoryItem`: `key` = 1, `nested_key` = 2 (repeated), `value_json` = 16) and `step` = 2. wandb-core puts
  a key in `nested_key` (one element for a plain key like `train/entropy`; a nested dict `{"a": {"b": 1}}`
  gives `["a", "b"]`, which W&B shows as `a.b`); `value_json` is JSON text (`NaN`, `Infinity` as Python's json
  writes them). Every row carries `_step`, `_runtime` and `_timestamp`.
- **A history export**: `run.history()` (a pandas DataFrame, written with `to_csv`/`to_json(lines=True)`) or
  `run.scan_history()` (dicts, written one per line), both with `_step`; or the UI's CSV export of a chart
  ("Export panel data"): a `Step` column and `<run name> - <key>` columns, with `__MIN`/`__MAX` companions.

Steps: transformers' `WandbCallback` (TRL with `report_to="wandb"`) logs `train/global_step` with every row and
declares it the step metric (W&B's `_step` is then its own log counter), so the trainer's step is
`train/global_step` when a row has it (also Lightning's `trainer/global_step`); verl's `Tracking.log(data,
step)` passes `step=` to `wandb.log`, so `_step` is the trainer's step there.

Key names are the trainer's as logged (transformers prefixes TRL's metrics with `train/` and eval metrics with
`eval/`; verl logs `actor/entropy`, `actor/pg_clipfrac`, ... unchanged); `scalars.METRIC_KEYS` maps them.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import wire

HEADER = b":W&B" + (0xBEE1).to_bytes(2, "little")
STEP_KEYS = ("train/global_step", "trainer/global_step")
_UI_EXTRA = re.compile(r"__(MIN|MAX)$")


class ScalarLogError(ValueError):
    """A file that is not the scalar log it was taken for; the message names the file and what was expected."""


def is_datastore(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(6) == HEADER
    except OSError:
        return False


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _row(items: dict[str, Any], path: Path, where: str) -> Iterator[tuple[int, str, float]]:
    """The (step, key, value) triples of one history row (a dict of logged values)."""
    step = next((items[k] for k in STEP_KEYS if _number(items.get(k)) is not None), items.get("_step"))
    if _number(step) is None or not math.isfinite(float(step)):
        raise ScalarLogError(f"{path}: {where}: no step (expected `_step` or `train/global_step` as a number, got "
                             f"{step!r})")
    for key, value in items.items():
        v = _number(value)
        if v is not None and not key.startswith("_") and key not in STEP_KEYS:
            yield int(step), key, v


def read_datastore(path: str | Path) -> Iterator[tuple[int, str, float]]:
    """History rows of a `run-*.wandb` datastore (see the module doc). A truncated tail (a run still writing)
    ends the read; anything else that does not decode raises ScalarLogError naming the file and byte."""
    path = Path(path)
    data = path.read_bytes()
    if data[:6] != HEADER:
        raise ScalarLogError(f"{path}: not a W&B datastore (expected the header ':W&B' + 0xBEE1, got {data[:6]!r})")
    if data[6:7] != b"\x00":
        raise ScalarLogError(f"{path}: W&B datastore version {data[6]} (this reader knows version 0)")
    try:
        for n, record in enumerate(wire.leveldb_log(data, skip=7), 1):
            for num, wt, val in wire.fields(record):
                if num == 2 and wt == 2:
                    yield from _row(_history_items(val), path, f"history record {n}")
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        if isinstance(exc, ScalarLogError):
            raise
        raise ScalarLogError(f"{path}: not a readable W&B datastore ({exc})") from None


def _history_items(buf: bytes) -> dict[str, Any]:
    items: dict[str, Any] = {}
    for num, wt, val in wire.fields(buf):
        if num != 1 or wt != 2:
            continue
        key, nested, raw = "", [], None
        for inum, iwt, ival in wire.fields(val):
            if inum == 1 and iwt == 2:
                key = ival.decode("utf-8")
            elif inum == 2 and iwt == 2:
                nested.append(ival.decode("utf-8"))
            elif inum == 16 and iwt == 2:
                raw = ival.decode("utf-8")
        name = key or ".".join(nested)
        if name and raw is not None:
            try:
                items[name] = json.loads(raw)
            except ValueError:
                continue  # not JSON: not a scalar either
    return items


# ---------------------------------------------------------------------------------------------- exports
def jsonl_is_history(first: dict[str, Any]) -> bool:
    return "_step" in first


def read_history_jsonl(path: str | Path) -> Iterator[tuple[int, str, float]]:
    """`run.scan_history()` / `run.history()` rows written one JSON object per line (NaN as `NaN`)."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                if fh.read(1) == "":
                    return  # the last line, being written
                raise ScalarLogError(f"{path}:{n}: not a JSON object (expected one W&B history row per line)") \
                    from None
            if not isinstance(obj, dict):
                raise ScalarLogError(f"{path}:{n}: expected a JSON object (a W&B history row), got "
                                     f"{type(obj).__name__}")
            yield from _row(_flatten(obj), path, f"line {n}")


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not k.startswith("_"):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def csv_kind(path: Path) -> str | None:
    """'history' (a `run.history()` CSV: `_step`), 'ui' (the UI's panel export: `Step` and `<run> - <key>`)
    or None."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    names = [h.strip() for h in header]
    if "_step" in names:
        return "history"
    if "Step" in names and any(" - " in h for h in names):
        return "ui"
    return None


def _float(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)  # accepts nan, inf, Infinity, 1e-3
    except ValueError:
        return None


def read_history_csv(path: str | Path) -> Iterator[tuple[int, str, float]]:
    """A history CSV (see `csv_kind`). In the UI export the `<run name> - ` prefix is dropped and the
    `__MIN`/`__MAX` columns (the panel's smoothing envelope) are skipped; an export holding several runs is an
    error (one run per scalar log)."""
    path = Path(path)
    kind = csv_kind(path)
    if kind is None:
        raise ScalarLogError(f"{path}: not a W&B history CSV (expected a `_step` column, as run.history() writes, "
                             "or the UI export's `Step` and `<run> - <key>` columns)")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        if kind == "history":
            step_col = header.index("_step")
            cols = {j: h for j, h in enumerate(header) if h and not h.startswith("_") and h not in STEP_KEYS}
            gstep = next((header.index(k) for k in STEP_KEYS if k in header), None)
        else:
            step_col, gstep = header.index("Step"), None
            runs = {h.split(" - ", 1)[0] for h in header if " - " in h}
            if len(runs) > 1:
                raise ScalarLogError(f"{path}: the export holds {len(runs)} runs ({', '.join(sorted(runs))}); "
                                     "export one run per file, or name each run's file with --scalar-log RUN=PATH")
            cols = {j: h.split(" - ", 1)[1] for j, h in enumerate(header)
                    if " - " in h and not _UI_EXTRA.search(h)}
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            step = _float(row[gstep]) if gstep is not None and gstep < len(row) else None
            if step is None or not math.isfinite(step):
                step = _float(row[step_col]) if step_col < len(row) else None
            if step is None or not math.isfinite(step):
                raise ScalarLogError(f"{path}:{n}: column `{header[step_col]}`: expected a step number, got "
                                     f"{row[step_col] if step_col < len(row) else 'nothing'!r}")
            for j, key in cols.items():
                if j < len(row) and (v := _float(row[j])) is not None:
                    yield int(step), key, v


def find_runs(root: Path) -> list[Path]:
    """`run-*.wandb` datastores of the W&B run directories under `root` (`root/wandb/*run-*/`, or `root`
    itself a `wandb/` directory or a run directory)."""
    out: list[Path] = []
    for pattern in ("run-*.wandb", "*run-*/run-*.wandb", "wandb/*run-*/run-*.wandb"):
        out += [p for p in sorted(root.glob(pattern)) if p.is_file() and "latest-run" not in p.parts]
    return out
