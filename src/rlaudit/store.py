"""The rollout store: a directory of Parquet parts per run, queried through DuckDB.

Layout of a store directory (default `.rlaudit/`)::

    runs/<run>/run.json            manifest: source, format, options, one entry per ingested source file
    runs/<run>/parts/*.parquet     canonical rows; one part per source file (or per live append)
    runs/<run>/quarantine.jsonl    bad records with file, line, reason and the raw text
    runs/<run>/derived/            cached derived data: per part (tokens/, cot_scan/) or per store version

Guarantees:
- *Idempotent*: a source file already ingested with the same size and mtime (or, failing that, the same SHA-256)
  is skipped, so ingesting the same files twice adds nothing.
- *Incremental*: only new or changed files are read; a changed file's rows replace its old rows.
- *Atomic*: a part is written to a temporary name and renamed; the manifest is replaced with `os.replace` after
  its parts exist. Readers only see parts listed in the manifest, so a crash mid-ingest leaves the previous state
  readable; orphaned parts are removed by the next ingest.
- *Streaming*: rows flow from reader to Parquet writer in bounded batches; memory does not grow with run size.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from .conditions import ConditionLabeler, ConditionRule
from .errors import RlauditError
from .readers import get_reader, resolve_reader
from .layout import LAYOUT, PART_SCHEMA, from_canonical, view_columns
from .readers.base import BadRecord, ReadContext, ReadOptions, SourceFile, finalize_part, prefetch
from .schema import ROLLOUT_SCHEMA

MANIFEST = "run.json"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}$")
_ROW_GROUP = 64_000
# Dictionary-encode only the repetitive columns: trying it on unique texts (completion, reasoning, answer) doubles
# write time for no size gain (benchmarks/ingest.py).
_DICTIONARY_COLUMNS = ["run", "split", "group_id", "condition", "system_prompt", "task", "prompt"]


@dataclass
class IngestReport:
    """What one ingest did."""

    run: str
    format: str
    files_read: int = 0
    files_skipped: int = 0
    files_replaced: int = 0  # files whose stored rows a newer copy replaced (SourceFile.replaces)
    rows_added: int = 0
    bad_records: int = 0
    bad_examples: list[str] = field(default_factory=list)  # first few "file:line: reason"
    quarantine: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the reader assumed or the logs lack (ReadContext.note)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunSummary:
    """What the store holds for one run (the `runs` entries of the findings JSON)."""

    run: str
    format: str
    rows: int
    steps: tuple[int, int] | None
    conditions: list[str]
    signals: list[str]
    graders: list[str] = field(default_factory=list)
    source: str = ""
    notes: list[str] = field(default_factory=list)  # the reader's assumptions, from the last ingest on

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "format": self.format, "rows": self.rows,
                "steps": list(self.steps) if self.steps else None, "conditions": self.conditions,
                "signals": self.signals, "graders": self.graders, "source": self.source, "notes": self.notes}


def validate_run_name(name: str) -> str:
    if not _RUN_NAME.match(name):
        raise RlauditError(
            f"invalid run name {name!r}: use letters, digits and . _ + = @ - (at most 128 characters); "
            "pass --run NAME to choose one")
    return name


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see either the old or the new content, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Store:
    """A directory of runs. All front ends (CLI, report, live hooks, Python API) go through this class."""

    def __init__(self, root: str | Path = ".rlaudit"):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths and manifests
    def run_dir(self, run: str) -> Path:
        return self.root / "runs" / validate_run_name(run)

    def runs(self) -> list[str]:
        base = self.root / "runs"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / MANIFEST).is_file())

    def has_run(self, run: str) -> bool:
        return (self.run_dir(run) / MANIFEST).is_file()

    def manifest(self, run: str) -> dict[str, Any]:
        path = self.run_dir(run) / MANIFEST
        if not path.is_file():
            known = ", ".join(self.runs()) or "none"
            raise RlauditError(f"no run {run!r} in store {self.root} (runs: {known})")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RlauditError(f"{path}: corrupt manifest ({exc})") from None

    def _write_manifest(self, run: str, manifest: dict[str, Any]) -> None:
        manifest["version"] = int(manifest.get("version", 0)) + 1
        manifest["updated"] = time.time()
        atomic_write_text(self.run_dir(run) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))

    def parts(self, run: str) -> list[Path]:
        """Parquet parts of a run, as listed in its manifest (the only parts readers may see)."""
        m = self.manifest(run)
        d = self.run_dir(run) / "parts"
        return [d / entry["part"] for entry in m["files"].values() if entry.get("part")]

    def part_layouts(self, run: str) -> dict[str, int]:
        """Part file name -> its layout (`rlaudit.layout`; parts from before layouts were recorded are 1)."""
        return {e["part"]: int(e.get("layout", 1)) for e in self.manifest(run)["files"].values() if e.get("part")}

    def fingerprint(self, run: str) -> str:
        """Changes whenever the run's rows change: the key of derived-data caches."""
        names = sorted(p.name for p in self.parts(run))
        return hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]

    @contextlib.contextmanager
    def _lock(self, run: str) -> Iterator[None]:
        d = self.run_dir(run)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ ingest
    def ingest(
        self,
        source: str | Path,
        run: str | None = None,
        format: str | None = None,
        options: ReadOptions | None = None,
        conditions: list[ConditionRule] | None = None,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> IngestReport:
        """Read new or changed files of `source` into run `run` (default: the source's base name).

        `progress(files_done, files_total, rows_so_far)` is called after each file.
        """
        source = Path(source).resolve()
        if not source.exists():
            raise RlauditError(f"{source}: no such file or directory")
        run = validate_run_name(run or source.name)
        options = options or ReadOptions()
        reader = get_reader(format) if format else resolve_reader(source)
        started = time.perf_counter()
        with self._lock(run):
            manifest = self._load_or_create(run, source, reader.name, options, conditions or [])
            files = reader.files(source)
            if not files:
                raise RlauditError(f"{source}: no {reader.name} rollout files found ({reader.description})")
            report = IngestReport(run=run, format=reader.name)
            labeler = ConditionLabeler(rules=conditions or [], labels=dict(manifest.get("conditions", {})))
            qpath = self.run_dir(run) / "quarantine.jsonl"
            bad_buffer: list[BadRecord] = []
            bad_by_file: dict[str, int] = {}
            bad_lock = threading.Lock()

            def on_bad(rec: BadRecord) -> None:  # called from the reading thread
                with bad_lock:
                    report.bad_records += 1
                    bad_by_file[rec.file] = bad_by_file.get(rec.file, 0) + 1
                    if len(report.bad_examples) < 5:
                        report.bad_examples.append(f"{rec.location}: {rec.reason}")
                    bad_buffer.append(rec)

            ctx = ReadContext(run=run, options=options, labeler=labeler, on_bad=on_bad,
                              notes=_notes(manifest))
            reader.prepare(source, ctx)
            self._remove_orphans(run, manifest)
            todo = [f for f in files if not self._unchanged(manifest, f)]
            report.files_skipped = len(files) - len(todo)
            reading = {f.relpath for f in todo}
            for file in files:  # a stored replacement whose older copies are still listed (stored before)
                if file.relpath not in reading:
                    report.files_replaced += self._drop_replaced(manifest, file)
            if progress and report.files_skipped:
                progress(report.files_skipped, len(files), 0)
            # A pipeline across files: one thread reads (parses) the files in order, one labels and splits the
            # rows (finalize), and this thread writes the parts. Parsing, the compute kernels and Parquet
            # writing release the GIL, so the three stages overlap.
            stream = prefetch(_part_tables(prefetch(_raw_tables(reader, todo, ctx), depth=4), ctx), depth=4)
            last_save = time.monotonic()
            with contextlib.closing(stream):  # an error here stops the reading thread too
                for i, file in enumerate(todo):
                    entry = self._ingest_file(run, file, _tables_of(stream, file), manifest)
                    report.files_replaced += self._drop_replaced(manifest, file)
                    with bad_lock:
                        entry["bad"] = bad_by_file.get(file.relpath, 0)
                        done_bad = [r for r in bad_buffer if r.file == file.relpath]
                        bad_buffer[:] = [r for r in bad_buffer if r.file != file.relpath]
                    if done_bad:
                        self._quarantine(qpath, done_bad)
                    report.files_read += 1
                    report.rows_added += entry["rows"]
                    # a copy (taken atomically under the GIL): the finalize thread may add labels meanwhile
                    manifest["conditions"] = dict(labeler.labels)
                    if time.monotonic() - last_save > 2.0:
                        self._commit(run, manifest)
                        last_save = time.monotonic()
                    if progress:
                        progress(report.files_skipped + i + 1, len(files), report.rows_added)
            manifest["conditions"] = dict(labeler.labels)
            manifest["notes"] = [[key, text] for key, text in ctx.notes.items()]  # pairs: the manifest sorts keys
            self._commit(run, manifest)
        report.notes = list(ctx.notes.values())
        if report.bad_records:
            report.quarantine = str(qpath)
        report.seconds = time.perf_counter() - started
        return report

    def append(self, run: str, table: pa.Table, key: str, source: str = "live", format: str = "live") -> int:
        """Append canonical rows under `key` (e.g. 'step-000042'); an existing key is replaced.

        The entry point of live hooks that hold rows in memory rather than in trainer log files.
        """
        table = from_canonical(table)
        with self._lock(run):
            if self.has_run(run):
                manifest = self.manifest(run)
            else:
                manifest = self._new_manifest(run, source, format, ReadOptions(), [])
            part = self._part_name(key)
            self._write_part(run, part, iter([table]))
            old = manifest["files"].get(key, {}).get("part")
            manifest["files"][key] = {"part": part, "rows": table.num_rows, "size": None, "mtime_ns": None,
                                      "sha256": None, "bad": 0, "layout": LAYOUT}
            self._commit(run, manifest)
            if old and old != part:
                (self.run_dir(run) / "parts" / old).unlink(missing_ok=True)
        return table.num_rows

    def _new_manifest(self, run: str, source: str, fmt: str, options: ReadOptions,
                      rules: list[ConditionRule]) -> dict[str, Any]:
        return {"name": run, "source": str(source), "format": fmt, "options": _options_json(options, rules),
                "created": time.time(), "files": {}, "conditions": {}, "version": 0}

    def _load_or_create(self, run: str, source: Path, fmt: str, options: ReadOptions,
                        rules: list[ConditionRule]) -> dict[str, Any]:
        if not self.has_run(run):
            return self._new_manifest(run, str(source), fmt, options, rules)
        m = self.manifest(run)
        if m["source"] not in (str(source), "live"):
            raise RlauditError(
                f"run {run!r} in {self.root} already holds {m['source']}; pass --run NAME to store {source} "
                "under another name")
        if m["format"] not in (fmt, "live"):
            raise RlauditError(f"run {run!r} was ingested as {m['format']}, not {fmt}; pass --run NAME")
        wanted = _options_json(options, rules)
        if m.get("options") != wanted:  # rows depend on options: re-read everything with the new ones
            for entry in m["files"].values():
                entry["size"] = entry["mtime_ns"] = entry["sha256"] = None
            m["options"] = wanted
            m["conditions"] = {}
            m["notes"] = []
        m["source"], m["format"] = str(source), fmt
        return m

    def _unchanged(self, manifest: dict[str, Any], file: SourceFile) -> bool:
        entry = manifest["files"].get(file.relpath)
        if not entry or entry.get("size") is None:
            return False
        st = file.path.stat()
        if entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
            return True
        if entry["size"] == st.st_size and entry.get("sha256") == _sha256(file.path):
            entry["mtime_ns"] = st.st_mtime_ns  # touched or copied, same bytes
            return True
        return False

    def _ingest_file(self, run: str, file: SourceFile, tables: Iterator[pa.Table],
                     manifest: dict[str, Any]) -> dict[str, Any]:
        st = file.path.stat()
        part = self._part_name(file.relpath)
        rows = self._write_part(run, part, tables)
        old = manifest["files"].get(file.relpath, {}).get("part")
        entry = {"part": part if rows else None, "rows": rows, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "sha256": _sha256(file.path), "layout": LAYOUT}
        manifest["files"][file.relpath] = entry
        if not rows:
            (self.run_dir(run) / "parts" / part).unlink(missing_ok=True)
        if old and old != part:
            manifest.setdefault("_stale", []).append(old)
        return entry

    @staticmethod
    def _drop_replaced(manifest: dict[str, Any], file: SourceFile) -> int:
        """Unlist the files `file` replaces; their parts are deleted once the manifest no longer lists them."""
        dropped = 0
        for relpath in file.replaces:
            entry = manifest["files"].pop(relpath, None)
            if entry is not None:
                dropped += 1
                if entry.get("part"):
                    manifest.setdefault("_stale", []).append(entry["part"])
        return dropped

    def _part_name(self, key: str) -> str:
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return f"{digest}-{time.time_ns():x}.parquet"

    def _write_part(self, run: str, part: str, tables: Iterator[pa.Table]) -> int:
        d = self.run_dir(run) / "parts"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{part}.tmp"
        rows = 0
        try:
            # zstd level 1: the same size as the default level on rollout text, at ~2/3 of the write time.
            with pq.ParquetWriter(tmp, PART_SCHEMA, compression="zstd", compression_level=1,
                                  use_dictionary=_DICTIONARY_COLUMNS) as writer:
                for table in tables:
                    if table.num_rows:
                        writer.write_table(table, row_group_size=_ROW_GROUP)
                        rows += table.num_rows
            os.replace(tmp, d / part)
        finally:
            tmp.unlink(missing_ok=True)
        return rows

    def _commit(self, run: str, manifest: dict[str, Any]) -> None:
        stale = manifest.pop("_stale", [])
        self._write_manifest(run, manifest)
        for name in stale:  # only after the manifest no longer lists them
            (self.run_dir(run) / "parts" / name).unlink(missing_ok=True)

    def _remove_orphans(self, run: str, manifest: dict[str, Any]) -> None:
        """Delete parts a crashed ingest wrote but never committed."""
        d = self.run_dir(run) / "parts"
        if not d.is_dir():
            return
        listed = {e.get("part") for e in manifest["files"].values()}
        for p in d.iterdir():
            if p.name not in listed:
                p.unlink(missing_ok=True)

    @staticmethod
    def _quarantine(path: Path, records: list[BadRecord]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")

    def quarantined(self, run: str) -> list[BadRecord]:
        path = self.run_dir(run) / "quarantine.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                d = json.loads(line)
                out.append(BadRecord(d["file"], d.get("line"), d["reason"], d.get("raw", "")))
        return out

    def delete(self, run: str) -> None:
        import shutil

        shutil.rmtree(self.run_dir(run), ignore_errors=False)

    # ------------------------------------------------------------------ queries
    def connect(self, runs: list[str] | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with views `rollouts` (canonical rows of `runs`, default all) and `rewards_long`
        (one row per rollout and reward signal)."""
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")  # front ends draw their own progress
        bound_memory(con, self.root)
        by_layout: dict[int, list[str]] = {}
        for r in runs if runs is not None else self.runs():
            layouts = self.part_layouts(r)
            for p in self.parts(r):
                by_layout.setdefault(layouts.get(p.name, 1), []).append(str(p))
        selects = [f"SELECT {view_columns(layout)} FROM read_parquet({_sql_list(paths)})"
                   for layout, paths in sorted(by_layout.items())]
        if not selects:
            con.register("_empty_rollouts", ROLLOUT_SCHEMA.empty_table())
            selects = ["SELECT * FROM _empty_rollouts"]
        con.execute(f"CREATE VIEW rollouts AS {' UNION ALL '.join(selects)}")
        con.execute(
            "CREATE VIEW rewards_long AS SELECT run, rollout_id, step, group_id, condition, task, "
            "unnest(map_keys(rewards)) AS signal, unnest(map_values(rewards)) AS value FROM rollouts")
        return con

    def query(self, sql: str, params: list[Any] | None = None, runs: list[str] | None = None) -> pa.Table:
        """Run SQL against the views of `connect` and return an Arrow table."""
        with self.connect(runs) as con:
            return con.sql(sql, params=params or None).to_arrow_table()

    def table(self, run: str, columns: list[str] | None = None) -> pa.Table:
        """All rows of one run (selected columns), ordered by step. For modest runs and tests; detectors that
        scale should push work into `query`."""
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        return self.query(f"SELECT {cols} FROM rollouts ORDER BY step, rollout_id", runs=[run])

    def summary(self, run: str) -> RunSummary:
        m = self.manifest(run)
        row = self.query(
            "SELECT count(*) AS n, min(step) AS lo, max(step) AS hi FROM rollouts", runs=[run]).to_pylist()[0]
        conds = self.query("SELECT DISTINCT condition FROM rollouts ORDER BY 1", runs=[run]).column(0).to_pylist()
        signals = self.query("SELECT DISTINCT unnest(map_keys(rewards)) FROM rollouts ORDER BY 1",
                             runs=[run]).column(0).to_pylist()
        graders = self.query("SELECT DISTINCT unnest(map_keys(grader_inputs)) FROM rollouts ORDER BY 1",
                             runs=[run]).column(0).to_pylist()
        steps = (int(row["lo"]), int(row["hi"])) if row["n"] else None
        return RunSummary(run=run, format=m["format"], rows=int(row["n"]), steps=steps, conditions=conds,
                          signals=signals, graders=graders, source=m["source"],
                          notes=list(_notes(m).values()))

    # ------------------------------------------------------------------ derived data
    def derived(self, run: str, name: str, compute: Callable[[], pa.Table]) -> pa.Table:
        """A derived table cached per run version: computed once, reused by every detector that asks."""
        d = self.run_dir(run) / "derived"
        path = d / f"{name}-{self.fingerprint(run)}.parquet"
        if path.is_file():
            return pq.read_table(path)
        table = compute()
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob(f"{name}-*.parquet"):
            old.unlink(missing_ok=True)
        tmp = d / f".{path.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return table


#: DuckDB's memory limit for the store's connections (`RLAUDIT_DUCKDB_MEMORY`, e.g. "2GB"). DuckDB's default is
#: 80% of the machine's RAM, so on a big run its hash tables and temp tables grow with the run; with a limit it
#: spills them to `<store>/.tmp` instead, and the audit's peak memory stays bounded whatever the run size.
DUCKDB_MEMORY = "1GB"


def bound_memory(con: duckdb.DuckDBPyConnection, root: str | Path | None = None) -> None:
    """Set the memory limit (and, given a store root, the spill directory) of a DuckDB connection."""
    con.execute(f"SET memory_limit = '{os.environ.get('RLAUDIT_DUCKDB_MEMORY', DUCKDB_MEMORY)}'")
    if root is not None:
        tmp = Path(root) / ".tmp"
        with contextlib.suppress(OSError):
            tmp.mkdir(parents=True, exist_ok=True)
            con.execute(f"SET temp_directory = '{str(tmp).replace(chr(39), chr(39) * 2)}'")


def _raw_tables(reader: Any, files: list[SourceFile], ctx: ReadContext) -> Iterator[tuple[SourceFile, Any]]:
    """(file, raw table) for every file in order, then (file, None) to mark the end of that file."""
    for file in files:
        for raw in reader.read(file, ctx):
            yield file, raw
        yield file, None


def _part_tables(raw: Iterator[tuple[SourceFile, Any]], ctx: ReadContext) -> Iterator[tuple[SourceFile, Any]]:
    """The stream of `_raw_tables` with each raw table finalized into a part table."""
    for file, table in raw:
        yield file, (finalize_part(table, file, ctx) if table is not None else None)


def _tables_of(stream: Iterator[tuple[SourceFile, Any]], file: SourceFile) -> Iterator[pa.Table]:
    """The part tables of `file` from the shared stream (up to its end marker)."""
    for got, table in stream:
        if got is not file:
            raise RuntimeError(f"ingest stream out of order: expected {file.relpath}, got {got.relpath}")
        if table is None:
            return
        yield table


def resolve_run(store: Store, source: str | Path, ingest: Callable[[Path], str] | None = None) -> str:
    """The run a SOURCE argument names: an existing file/directory is ingested first (incrementally; `ingest`
    may replace `store.ingest`, e.g. to show progress) and its run returned, else a run already in the store."""
    path = Path(source)
    if path.exists():
        return ingest(path) if ingest else store.ingest(path).run
    if store.has_run(str(source)):
        return str(source)
    raise RlauditError(f"{source}: neither a file/directory nor a run in store {store.root} "
                       f"(runs: {', '.join(store.runs()) or 'none'})")


def _notes(manifest: dict[str, Any]) -> dict[str, str]:
    """The run's notes (key -> text, in the order they were made) from its manifest."""
    return {key: text for key, text in manifest.get("notes", [])}


def _options_json(options: ReadOptions, rules: list[ConditionRule]) -> dict[str, Any]:
    return {"think_tags": [options.think_tags.open, options.think_tags.close],
            "grader_inputs": dict(sorted(options.grader_inputs.items())),
            "columns": dict(sorted(options.columns.items())), "group_size": options.group_size,
            "conditions": [[r.name, r.pattern] for r in rules]}


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"
