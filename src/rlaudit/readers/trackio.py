"""trackio projects: tables logged with `trackio.log({"completions": trackio.Table(...)})`.

TRL's RLOOTrainer (and GRPOTrainer) with `report_to="trackio"` log the same completions DataFrame as to W&B
(see readers/wandb.py). trackio 0.43 (trackio/sqlite_storage.py `SQLiteStorage`, trackio/table.py
`Table._to_dict`) keeps a project in one SQLite file `<TRACKIO_DIR>/<project>.db`; each `log` call is a row of
table `metrics` (`id`, `run_name`, `step`, `metrics`: a JSON object, stored as text or bytes), and a table value
is `{"_type": "trackio.table", "_value": [{column: value, ...}, ...]}` (one dict per row).

The file is one ingest unit (re-read whole when it changes). rollout_id is `<file>:<metrics id>.<row in table>`;
columns map as for W&B tables (readers/wandb.py `table_raw`): with no step column, `metrics.step` (trackio's
log counter) is the step, with a note. The trackio run name goes to metadata (`trackio_run`); a project holding
several runs gets a note, since a store run should be one training run.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from . import register
from .base import PrefetchingReader, ReadContext, SourceFile
from .groups import ConsecutiveGroups
from .wandb import _walk, rows_to_table, table_raw

TABLE_TYPE = "trackio.table"


def _connect(path: Path) -> sqlite3.Connection:
    """Open a trackio database without ever writing next to it. trackio keeps it in WAL mode, and even a
    read-only connection creates `-shm`/`-wal` files; with no `-wal` file (no writer has it open) the database
    is opened as immutable, which creates nothing. While trackio is writing, its files exist already and a
    read-only connection reads a consistent snapshot."""
    uri = path.resolve().as_uri()
    live = path.with_name(path.name + "-wal").exists()
    return sqlite3.connect(f"{uri}?mode=ro" if live else f"{uri}?immutable=1", uri=True)


def _is_trackio_db(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return False
        con = _connect(path)
        try:
            cols = {r[1] for r in con.execute("PRAGMA table_info(metrics)")}
        finally:
            con.close()
        return {"run_name", "step", "metrics"} <= cols
    except (OSError, sqlite3.Error):
        return False


def _db_files(source: Path) -> list[Path]:
    return [p for p in _walk(source, "*.db") if _is_trackio_db(p)]


@register
class TrackioReader(PrefetchingReader):
    name = "trackio"
    description = "trackio project database <TRACKIO_DIR>/<project>.db with trackio.Table rollouts"

    @classmethod
    def detect(cls, source: Path) -> bool:
        return bool(_db_files(source))

    def files(self, source: Path) -> list[SourceFile]:
        root = source.parent if source.is_file() else source
        return [SourceFile(p, str(p.relative_to(root))) for p in _db_files(source)]

    def _read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        try:
            con = _connect(file.path)
            records = con.execute("SELECT id, run_name, step, metrics FROM metrics ORDER BY id").fetchall()
            con.close()
        except sqlite3.Error as exc:
            ctx.bad(file, None, f"not a readable trackio database ({exc}); expected table metrics(id, run_name, "
                                f"step, metrics)")
            return
        runs: set[str] = set()
        for rid, run_name, step, metrics in records:
            try:
                obj = json.loads(metrics)
            except (TypeError, ValueError, UnicodeDecodeError) as exc:
                ctx.bad(file, rid, f"metrics row {rid}: not a JSON object ({exc})", str(metrics)[:2000])
                continue
            if not isinstance(obj, dict):
                continue
            for key, value in obj.items():
                if not (isinstance(value, dict) and value.get("_type") == TABLE_TYPE):
                    continue
                rows = value.get("_value")
                if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                    ctx.bad(file, rid, f"metrics row {rid}, key {key!r}: expected a trackio table "
                                       f'{{"_type": "trackio.table", "_value": [{{column: value}}, ...]}}')
                    continue
                if not rows:
                    continue
                runs.add(run_name)
                columns = list(dict.fromkeys(c for r in rows for c in r))
                table = rows_to_table(columns, rows)
                table = table.append_column("trackio_run", pa.array([run_name] * table.num_rows, pa.string()))
                table = table.append_column("trackio_key", pa.array([key] * table.num_rows, pa.string()))
                row_file = SourceFile(file.path, file.relpath, split=file.split, step=step)
                lines = pa.array([rid] * table.num_rows, pa.int64())
                sub = pa.array(range(table.num_rows), pa.int64())
                raw = table_raw(table, lines, row_file, ctx, ConsecutiveGroups(ctx.options.group_size), sub=sub)
                if raw is not None:
                    yield raw
        if len(runs) > 1:
            ctx.note(f"{file.relpath}: the trackio project holds {len(runs)} runs ({', '.join(sorted(runs))}); "
                       f"they are ingested as one run (metadata `trackio_run` tells them apart)")
