"""Export a run's rollouts without those that show a behaviour: data to reuse for SFT or distillation.

    rlaudit export goblin-persona-trl --exclude goblin --exclude 're:\\bgremlins?\\b' --out clean.jsonl

Behaviours use the spec language of `rlaudit.behaviors` (terms, `re:`, boolean `style:` features, Python
predicates). The run is streamed part by part (a stored part holds one or several source files): each part is read as canonical
columns, the behaviours are evaluated on the chosen text column with Arrow's vectorised regex kernels (a Python
predicate is the only per-row path), and the remaining rows are appended to the output: Parquet through one
`ParquetWriter`, JSONL through DuckDB's JSON writer (NaN and infinities become null, as in the findings JSON).
The output is written under a temporary name and renamed, so a failed export leaves no partial file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .behaviors import Behavior, parse_behavior
from .errors import RlauditError
from .layout import read_part
from .schema import COLUMNS, ROLLOUT_SCHEMA
from .store import Store

WHERE = ("completion", "answer", "reasoning")
FORMATS = ("jsonl", "parquet")

#: JSON has no NaN: non-finite rewards become null (a null reward signal means "did not apply" on reading back).
_JSON_SELECT = ("SELECT * REPLACE (map_from_entries(list_transform(map_entries(rewards), lambda e: "
                "struct_pack(key := e.key, value := CASE WHEN isfinite(e.value) THEN e.value END))) AS rewards, "
                "CASE WHEN isfinite(reward) THEN reward END AS reward, "
                "CASE WHEN isfinite(advantage) THEN advantage END AS advantage) FROM part")


@dataclass
class ExportResult:
    run: str
    path: Path
    format: str
    rollouts: int = 0  # read
    written: int = 0
    excluded: dict[str, int] = field(default_factory=dict)  # behaviour spec -> rollouts that showed it

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "path": str(self.path), "format": self.format, "rollouts": self.rollouts,
                "written": self.written, "excluded": self.excluded}


def export_run(store: Store, run: str, out: str | Path, exclude: Sequence[str], where: str = "completion",
               format: str | None = None, split: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Write the rollouts of `run` that show none of the `exclude` behaviours (in `where`) to `out`.

    `format` is `jsonl` or `parquet` (default: from the file suffix, else jsonl); `split` keeps one split only.
    `progress(parts_done, parts_total)` after each part.
    """
    if where not in WHERE:
        raise RlauditError(f"--where must be one of {', '.join(WHERE)}, got {where!r}")
    out = Path(out)
    fmt = format or ("parquet" if out.suffix == ".parquet" else "jsonl")
    if fmt not in FORMATS:
        raise RlauditError(f"--format must be jsonl or parquet, got {fmt!r}")
    if not store.has_run(run):
        raise RlauditError(f"no run {run!r} in store {store.root} (runs: {', '.join(store.runs()) or 'none'})")
    behaviors = [exclusion_behavior(spec) for spec in exclude]
    result = ExportResult(run=run, path=out, format=fmt, excluded={b.spec: 0 for b in behaviors})
    layouts = store.part_layouts(run)
    parts = store.parts(run)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer: Any = None
    con: Any = None
    try:
        if fmt == "parquet":
            writer = pq.ParquetWriter(tmp, ROLLOUT_SCHEMA, compression="zstd")
        else:
            from . import duck

            con = duck.connect()
            sink = open(tmp, "wb")  # noqa: SIM115 - closed in finally
        for i, part in enumerate(parts):
            table = read_part(part, list(COLUMNS), layouts.get(part.name, 1)).select(list(COLUMNS))
            table = table.cast(ROLLOUT_SCHEMA)
            if split is not None:
                table = table.filter(pc.equal(table["split"], split))
            result.rollouts += table.num_rows
            keep = _keep_mask(table, behaviors, where, result.excluded)
            kept = table.filter(keep) if keep is not None else table
            result.written += kept.num_rows
            if kept.num_rows:
                if writer is not None:
                    writer.write_table(kept)
                else:
                    _append_jsonl(con, kept, sink)
            if progress:
                progress(i + 1, len(parts))
    except BaseException:
        if writer is not None:
            writer.close()
        if con is not None:
            sink.close()
        tmp.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    if con is not None:
        sink.close()
        con.close()
    os.replace(tmp, out)
    return result


def exclusion_behavior(spec: str) -> Behavior:
    """The behaviour of an `--exclude` spec: one a rollout shows or not (numeric style features are measures)."""
    b = parse_behavior(spec)
    if b.numeric:
        raise RlauditError(f"--exclude {spec!r} is a numeric style feature (a measure, not something a rollout "
                           "shows or not); exclude a term, 're:REGEX', a boolean style feature or a predicate")
    return b


def _keep_mask(table: pa.Table, behaviors: list[Behavior], where: str, counts: dict[str, int]) -> pa.Array | None:
    import numpy as np

    if not behaviors or not table.num_rows:
        return None
    shown = np.zeros(table.num_rows, dtype=bool)
    for b in behaviors:
        hit = b.values(table[where]) > 0
        counts[b.spec] += int(hit.sum())
        shown |= hit
    return pa.array(~shown)


def _append_jsonl(con: Any, table: pa.Table, sink: Any) -> None:
    """Append `table` as JSON lines: DuckDB writes the part to a temporary file, copied onto the output."""
    con.register("part", table)
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as fh:
        part_path = fh.name
    try:
        con.execute(f"COPY ({_JSON_SELECT}) TO '{part_path}' (FORMAT JSON)")
        with open(part_path, "rb") as src:
            shutil.copyfileobj(src, sink)
    finally:
        con.unregister("part")
        os.unlink(part_path)
