"""The rollout store: a directory of Parquet parts per run, queried through DuckDB.

Layout of a store directory (default `.rlaudit/`)::

    runs/<run>/run.json            manifest: source, format, options, one entry per ingested source file
    runs/<run>/parts/*.parquet     canonical rows; one part per run of consecutive source files (`Store.part_rows`)
                                   or per live append
    runs/<run>/quarantine.jsonl    bad records with file, line, reason and the raw text
    runs/<run>/derived/            cached derived data: per part (tokens/, cot_scan/) or per store version

Guarantees:
- *Idempotent*: a source file already ingested with the same size and mtime (or, failing that, the same SHA-256)
  is skipped, so ingesting the same files twice adds nothing.
- *Incremental*: only new or changed files are read; a changed file's rows replace its old rows.
- *Atomic*: an ingest is one version. Its parts are written under new names, and the manifest is replaced once,
  with `os.replace`, after all of them exist. Readers only see parts listed in the manifest they read, so a killed
  or failed ingest leaves the previous version whole (a first ingest leaves no run at all); parts it wrote but
  never committed are removed by the next ingest.
- *Snapshots*: a part a new version no longer lists is *retired*, not deleted: it is deleted only once no reader
  holds a lease on an older version (`Store.reading`) and it has been retired for `retire_grace` seconds (for
  readers that hold no lease). A reader therefore never finds a part of its version gone.
- *Streaming*: rows flow from reader to Parquet writer in bounded batches; memory does not grow with run size.

Parts group source files: consecutive files of one ingest share a part until it holds `Store.part_rows` rows
(or `part_bytes` bytes); a file is never split (live audits' bounded views cut parts to the steps they read:
`live.sampling.StoreView`). Each file keeps its
own manifest entry (its rows, steps, and `offset`: its first row within the part), so a file that changes or is
replaced takes only its own rows out: the other files' rows are copied into a new part (`_carry_over`), never
read again from sources that may be gone.
Why: every part costs a fixed ~13 CPU ms of ingest and more in each detector (files opened, per-part derived
tables written and merged); trainers log many small files (TRL: one per logging step, `generation_batch_size`
rows), and a 1M-rollout run of 1,000-row files audited 2.2x slower than one of 5,000-row files.

Parts written small (live appends, the polls of live and fleet ingests, an ingest per step) are *compacted*:
consecutive small parts are rewritten as one (`Store.compact`), their files' entries pointed at it with their
offsets, the old parts retired like any other. A batch ingest compacts the groups that are complete
(`Store.ingest`; live and fleet ingests do not); `rlaudit runs compact` also the run's last, unfinished group.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import hashlib
import io
import itertools
import json
import os
import queue
import re
import shutil
import stat as stat_module
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import duck
from .conditions import ConditionLabeler, ConditionRule
from .errors import RlauditError
from .findings import dumps
from .readers import get_reader, resolve_reader
from .layout import (LAYOUT, PART_SCHEMA, REWARDS_LAYOUT, conform, from_canonical, part_schema, part_signals,
                     reward_column, view_columns)
from .readers.base import (BadRecord, ReadContext, ReadOptions, SourceFile, finalize_parts, prefetch,
                           same_raw_schema)
from .schema import ROLLOUT_SCHEMA

MANIFEST = "run.json"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}$")
_ROW_GROUP = 64_000
#: raw rows an ingest finalizes together, of consecutive tables of one schema (`_part_tables`)
FINALIZE_ROWS = 16_384
# Dictionary-encode only the repetitive columns: trying it on unique texts (completion, reasoning, answer) doubles
# write time for no size gain (benchmarks/ingest.py). The maps' keys (the signal and grader names, the same few in
# every rollout) too, by their leaf paths (`_dictionary`): DuckDB then reads a map's keys as a dictionary, not as
# one string per entry (one part of the 1M benchmark, one thread, best of 7: `rewards['...']` 9.6 -> 6.6 CPU ms;
# `benchmarks/partstats.py`'s read of a batch into `src` 314 -> 294 ms), for the same write time and size.
_DICTIONARY_COLUMNS = ["run", "split", "group_id", "condition", "system_prompt", "task", "prompt"]
_DICTIONARY_KEYS = {"rewards": "rewards.key_value.key", "grader_inputs": "grader_inputs.key_value.key"}
# Column statistics (min/max) only where a reader can use them: the scalar columns (DuckDB skips a part or row group
# by them, e.g. a `step` filter; a manifest without step ranges is backfilled from them). A text's or a nested
# column's min/max prunes no query and cost ~7% of a part's write (20 parts of the 1M-rollout benchmark, best of 7:
# 8.2 -> 7.5 CPU ms a part; ~1.2 CPU s of the 10M benchmark's ingest).
_STATISTICS_COLUMNS = [f.name for f in PART_SCHEMA if f.name not in (
    "system_prompt", "prompt", "completion", "tool_calls", "tool_outputs", "rewards", "grader_inputs", "metadata")]
# The parts' codec: LZ4 (LZ4_RAW in the file), not zstd. Every part is written once by ingest and decoded by every
# cold detector (emerging, generalization's per-part statistics, attribution, cot_grading), so the codec is chosen
# by the whole cold audit's CPU (docs/performance.md, branch ingestz: at 1M, ingest ~0.7 and the detectors' reads
# ~1.1 CPU s less than zstd level 1) for 1.5x the disk (237 against 155 MB). Readers never name a codec: parts
# written with another codec by earlier versions stay as they are and are read beside new ones.
PART_CODEC: dict[str, Any] = {"compression": "lz4"}
# ... except the columns in `_UNCOMPRESSED_COLUMNS`: the completion is most of a part's bytes (5.9 of 9.5 MB of a
# 20,000-rollout part of the 1M benchmark), LZ4 halves it only (5.9 -> 3.1 MB) at ~230 MB/s on this machine, and
# every cold detector reads it. `benchmarks/part_codec.py` on ten parts of that run (session 33, against every
# column in LZ4): a part's write 41.0 -> 23.7 CPU ms and 4.5 -> 7.2 MB; a read of the completion and its spans with
# Arrow 6.4 -> 3.6 ms, DuckDB's `length(completion)` 7.0 -> 4.6 ms: ~1 CPU s less ingest and ~0.15 less per
# reader at 1M, for parts 1.6x the size (220 -> 351 MB at 1M; the whole store with its derived data 1.25x).
_UNCOMPRESSED_COLUMNS = ("completion",)
# How far each of ingest's stages (parse, finalize) may run ahead of the next: the stages' work comes in bursts (a
# file's parse, a batch's finalize, a part's encoding when it closes), and queues of 4 left ~0.35 of 2 cores idle
# through ingest (10M benchmark: 10 core-s of 27.6 s). Cold ingests of the 1M benchmark, 7 interleaved rounds,
# median wall (min): depth 2 3.59 (3.07) s, 4 3.71 (2.89), 8 2.95 (2.54), 16 2.89 (2.73); its 3,906 files of
# 256 rollouts 8.14 s at 4 against 7.05 at 8; peak RSS +26 MB. The bytes bound the queues where tables are large
# (long rollouts, batches of 32,768 rows): one table always may wait. Session 36, ingest alone, in turns, 8 -> 16:
# 10M 20.95 / 20.65 -> 20.11 / 20.12 s (idle 4.7-5.1 -> 3.4-3.5 core-s; 32: no better), 1M 2.31 / 2.48 / 2.29 ->
# 2.17 / 2.26 / 2.14 s, its 3,906 files 6.68 / 6.27 -> 5.72 / 6.12 s, 15,625 files 19.5 -> 18.6 s; RSS +8 MB.
# Items are a file's tables and its end: a batch of small files (TRL's 64 files of 256 rollouts read together)
# comes as 128 items at once, so a depth of 16 held the reader until finalize had taken the batch (the reader
# waited ~3.4 s of a 9.4 s ingest of 3,906 files); the bytes bound the memory, the depth only the count of items.
# Session 43, 3,906 files of 256 in turns with 16: 8.76-9.41 -> 6.91-7.31 s (with the reader's changes of then:
# one read of a small file, not its advantages and then the file); the 1M benchmark's 200 files unchanged.
PREFETCH_DEPTH = 256
PREFETCH_BYTES = 64 << 20


@dataclass(frozen=True)
class StoredPart:
    """One stored part as the manifest describes it: its rows, step range ([first, last]; None: unknown or
    without steps), layout, the source files (manifest keys) whose rows it holds in their order within it,
    each file's rows in it as (first row, rows), and the reward signals its rollouts share (from layout 5: the
    part's reward columns, `rlaudit.layout`)."""

    name: str
    rows: int
    steps: list[int] | None
    layout: int
    files: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    signals: tuple[str, ...] = ()


def stored_parts(manifest: dict[str, Any]) -> dict[str, StoredPart]:
    """Part name -> `StoredPart`, in the manifest's order, for a manifest whose files may share parts."""
    members: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    for key, entry in manifest["files"].items():
        if entry.get("part"):
            members.setdefault(entry["part"], []).append((int(entry.get("offset") or 0), key, entry))
    out = {}
    # one plain loop per part, no generators: a live run lists its parts (a file each) every step (2,000 parts:
    # 9.5 ms with a generator per field, 5.3 without; the same for parts of many files)
    for name, group in members.items():
        if len(group) > 1:
            group.sort(key=lambda m: m[0])
        rows, files, spans, steps = 0, [], [], []
        for offset, key, entry in group:
            n = int(entry.get("rows") or 0)
            rows += n
            files.append(key)
            spans.append((offset, n))
            r = entry.get("steps")
            if r is None or steps is None:  # a file without a step range: none for the part
                steps = None
            else:
                steps = [r[0], r[1]] if not steps else [min(steps[0], r[0]), max(steps[1], r[1])]
        first = group[0][2]
        out[name] = StoredPart(name=name, rows=rows, steps=steps, layout=int(first.get("layout", 1)),
                               files=tuple(files), spans=tuple(spans), signals=tuple(first.get("signals") or ()))
    return out


@dataclass
class IngestReport:
    """What one ingest did."""

    run: str
    format: str
    files_read: int = 0
    files_skipped: int = 0
    files_replaced: int = 0  # files whose stored rows a newer copy replaced (SourceFile.replaces)
    parts_compacted: int = 0  # parts fewer after merging small ones (`Store.compact`)
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


def _sha256_or_none(path: Path) -> str | None:
    try:
        return _sha256(path)
    except OSError:
        return None


def _known_or_hashed(path: Path, known: tuple[int | None, int | None, str | None] | None,
                     st: os.stat_result | None = None) -> str | None:
    """The file's SHA-256: `known` (size, mtime_ns, digest) while the file still has that size and mtime (`st`: its
    stat, if taken), else read anew; None when it cannot be read."""
    try:
        st = st or path.stat()
        if known is not None and known[2] and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2]
        return _sha256(path)
    except OSError:
        return None


#: what hashing one file holds (`hashlib.file_digest`'s buffer): `memory.workers`' weight for `_distinct_files`
_HASH_MEMORY = 1 << 20


def _sha256(path: Path) -> str:
    """The file's SHA-256 (hex). `hashlib.file_digest` reads into one reused buffer: 0.27 -> 0.16 CPU s for the
    1M benchmark's 200 files (380 MB), against a new 1 MB bytes object per read."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class Store:
    """A directory of runs. All front ends (CLI, report, live hooks, Python API) go through this class."""

    #: Seconds a retired part (one a newer version no longer lists) is kept for readers that hold no lease.
    retire_grace: float = 120.0
    #: An ingest closes a part once the files it holds reach this many rows (`RLAUDIT_PART_ROWS` overrides it) or
    #: bytes (of Arrow data): few enough parts that their fixed costs fade, parts no larger than the detectors'
    #: batches are made for (term sets tokenise ~25,000 rows a thread: with parts of 32,768 rows the 10M-rollout
    #: benchmark's emerging stage peaked at 2,035 MB, at 1,603 with 16,384; docs/performance.md, session 25).
    #: Parts are also the unit a sharded audit splits a run by (`fleet.shard`). Live appends keep a part each.
    part_rows: int = 16_384
    part_bytes: int = 64 << 20

    def __init__(self, root: str | Path = ".rlaudit"):
        self.root = Path(root)
        env = os.environ.get("RLAUDIT_PART_ROWS")
        if env is not None:
            if not env.strip().isdigit() or int(env) < 1:
                raise RlauditError(f"RLAUDIT_PART_ROWS={env!r}: give a whole number of rows >= 1 (the rows an "
                                   f"ingest gathers from consecutive files into one part; default {self.part_rows})")
            self.part_rows = int(env)
        self._pinned: dict[str, dict[str, Any]] = {}  # run -> manifest a `reading` block reads

    # ------------------------------------------------------------------ paths and manifests
    def run_dir(self, run: str) -> Path:
        return self.root / "runs" / validate_run_name(run)

    def runs(self) -> list[str]:
        base = self.root / "runs"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())

    def has_run(self, run: str) -> bool:
        return (self.run_dir(run) / MANIFEST).is_file()

    def manifest(self, run: str) -> dict[str, Any]:
        """The run's manifest: the version pinned by an enclosing `reading` block, else the latest.

        Readers share one parsed copy while the file's bytes stay the same (as they share a pinned one): a long
        run's manifest (2,000 parts: ~650 kB, ~3.4 ms to parse, ~0.1 ms to read) was parsed ~23 times by a warm
        audit. Writers read their own (`_read_manifest`). Callers must not modify it."""
        pinned = self._pinned.get(run)
        if pinned is not None:
            return pinned
        return self._latest_manifest(run)

    def _latest_manifest(self, run: str) -> dict[str, Any]:
        """The run's latest manifest, parsed once per version of the file (`manifest`, whose memo it keeps): also
        what a lease pins and what `_commit` compares with. A live run's manifest has an entry per step and
        changes every step: the writer, the lease, `_as_stored` and the step's store view parsed it four times
        a step (3.1 ms each at 2,000 steps), now the writer and one shared parse."""
        path = self.run_dir(run) / MANIFEST
        try:
            raw = path.read_bytes()
        except OSError:
            return self._read_manifest(run)  # its error: no such run
        memo = self.__dict__.setdefault("_manifest_memo", {})
        hit = memo.get(run)
        if hit is not None and hit[0] == raw:
            return hit[1]
        m = self._parse_manifest(path, raw)
        memo[run] = (raw, m)
        return m

    def _read_manifest(self, run: str) -> dict[str, Any]:
        path = self.run_dir(run) / MANIFEST
        if not path.is_file():
            known = ", ".join(self.runs()) or "none"
            raise RlauditError(f"no run {run!r} in store {self.root} (runs: {known})")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # removed since is_file (`runs rm`)
            raise RlauditError(f"no run {run!r} in store {self.root}") from None
        return self._parse_manifest(path, raw)

    @staticmethod
    def _parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
        try:
            return json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RlauditError(f"{path}: corrupt manifest ({exc})") from None

    # ------------------------------------------------------------------ reader leases (snapshots)
    @contextlib.contextmanager
    def reading(self, runs: list[str] | None = None) -> Iterator[dict[str, dict[str, Any]]]:
        """Read a consistent version of `runs` (default: all): inside the block `manifest`, `parts` and
        `connect` see the version read on entry, and no part of it is deleted while the block lasts, whatever
        ingests commit meanwhile (their retired parts wait for the lease). Yields run -> pinned manifest."""
        names = list(runs) if runs is not None else self.runs()
        leases: list[_Lease] = []
        pinned: dict[str, dict[str, Any]] = {}
        try:
            for run in names:
                if run in self._pinned:
                    continue
                lease = _Lease.acquire(self, run)
                leases.append(lease)
                if lease.manifest is not None:
                    pinned[run] = lease.manifest
            self._pinned.update(pinned)
            yield dict(self._pinned)
        finally:
            for run in pinned:
                self._pinned.pop(run, None)
            for lease in leases:
                lease.release()

    def lease(self, run: str) -> "_Lease":
        """A lease on the run's current version (see `reading`); call `release()` when done."""
        return _Lease.acquire(self, run)

    def _as_stored(self, run: str, manifest: dict[str, Any]) -> bool:
        """True when `manifest` equals the run's stored one (its version and time included)."""
        try:
            return self._latest_manifest(run) == manifest
        except (RlauditError, OSError):  # no run, a corrupt or unreadable manifest: never equal
            return False

    def _write_manifest(self, run: str, manifest: dict[str, Any]) -> None:
        manifest["version"] = int(manifest.get("version", 0)) + 1
        manifest["updated"] = time.time()
        atomic_write_text(self.run_dir(run) / MANIFEST, dumps(manifest, indent=1, sort_keys=True, depth=2))

    def parts(self, run: str, manifest: dict[str, Any] | None = None) -> list[Path]:
        """Parquet parts of a run, as listed in its manifest (the only parts readers may see).

        Built once per manifest object (`manifest` shares one parsed copy per version) and copied per call: a warm
        audit asks ~20 times, and 2,000 `Path` objects cost ~2.5 ms (~10 with a profiler on) each time."""
        d = self.run_dir(run) / "parts"
        return [d / name for name in self.stored_parts(run, manifest)]

    def stored_parts(self, run: str, manifest: dict[str, Any] | None = None) -> dict[str, StoredPart]:
        """Part name -> `StoredPart` (rows, step range, layout, source files) of the run's version `manifest`
        (default: `manifest(run)`). Built once per manifest object: callers must not modify it."""
        m = manifest if manifest is not None else self.manifest(run)
        memo = self.__dict__.setdefault("_parts_memo", {})
        hit = memo.get(run)
        if hit is not None and hit[0] is m:
            return hit[1]
        out = stored_parts(m)
        memo[run] = (m, out)  # keeps `m` alive: its id is not reused while the entry stands
        return out

    @staticmethod
    def missing_part(parts: list[Path]) -> Path | None:
        """The first of `parts` that is not there (None: all are), from one listing of each directory they are in:
        a stat per part cost ~1.3 us, with its `Path` ~10, for every reader of a 2,000-part run. A lost part must
        be an error (`missing_error`), never a silently smaller run."""
        listed: dict[str, set[str]] = {}
        for p in parts:
            d, name = os.path.split(str(p))
            if d not in listed:
                listed[d] = listing(Path(d))
            if name not in listed[d]:
                return p
        return None

    @staticmethod
    def missing_error(run: str, part: Path, manifest: dict[str, Any]) -> RlauditError:
        """The error for a lost part of `run` (`missing_part`): what to do to repair the run."""
        return RlauditError(f"run {run!r}: part file {part} is missing; ingest its source again to repair it "
                            f"(`rlaudit ingest {manifest.get('source', 'SOURCE')} --run {run}`)")

    def part_layouts(self, run: str, manifest: dict[str, Any] | None = None) -> dict[str, int]:
        """Part file name -> its layout (`rlaudit.layout`; parts from before layouts were recorded are 1): the
        first half of `part_formats`, which a store that shows other parts (`live.sampling.StoreView`) overrides."""
        return {name: layout for name, (layout, _) in self.part_formats(run, manifest).items()}

    def part_formats(self, run: str, manifest: dict[str, Any] | None = None
                     ) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Part file name -> (layout, shared reward signals): what `layout.view_columns` and
        `layout.reward_sql` need to read it."""
        return {name: (p.layout, p.signals) for name, p in self.stored_parts(run, manifest).items()}

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
        part_rows: int | None = None,
        compact: bool = True,
    ) -> IngestReport:
        """Read new or changed files of `source` into run `run` (default: the source's base name).

        `progress(files_done, files_total, rows_so_far)` is called once the files are listed, after each file, and as
        a file's rows are read (`rows_so_far` then counts them too: a step file of a gigabyte takes seconds).
        `part_rows`: the rows at which a part of consecutive files closes (default `self.part_rows`; 1: a part per
        file). `compact`: then merge the run's small parts in complete groups (`_compact`; live and fleet ingests do
        not: their auditors' memories know parts by name).
        """
        part_rows = self.part_rows if part_rows is None else max(1, int(part_rows))
        source = Path(source).resolve()
        if not source.exists():
            raise RlauditError(f"{source}: no such file or directory")
        run = validate_run_name(run or source.name)
        options = options or ReadOptions()
        reader = get_reader(format) if format else resolve_reader(source)
        if options.columns and not reader.maps_columns:
            raise RlauditError(
                f"{source}: read as {reader.name}, whose fields rlaudit knows; a column mapping (--columns "
                f"{','.join(f'{k}={v}' for k, v in options.columns.items())}) applies to generic tables only "
                "(--format canonical or wandb): drop it, or name the format")
        started = time.perf_counter()
        with self._lock(run):
            manifest = self._load_or_create(run, source, reader.name, options, conditions or [])
            files = reader.files(source)
            if not files:
                raise RlauditError(f"{source}: no {reader.name} rollout files found ({reader.description})")
            if progress:  # before the files are hashed (`_distinct_files`: ~3 s for a gigabyte)
                progress(0, len(files), 0)
            report = IngestReport(run=run, format=reader.name)
            dedupe_notes: dict[str, str] = {}
            stats: dict[str, os.stat_result] = {}
            digests: dict[str, tuple[int, int, str]] = {}
            files = self._distinct_files(files, manifest, dedupe_notes, stats, digests)
            labeler = ConditionLabeler(rules=conditions or [], labels=dict(manifest.get("conditions", {})))
            qpath = self.run_dir(run) / "quarantine.jsonl"
            # this ingest's bad records: moved into the quarantine file when the ingest commits, so a failed or
            # killed ingest adds nothing to it
            qpending = self.run_dir(run) / f".quarantine.{os.getpid()}.{threading.get_ident()}.pending"
            qpending.unlink(missing_ok=True)
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
            for key, text in dedupe_notes.items():
                ctx.note(text, key=key)
            reader.prepare(source, ctx)
            self._remove_orphans(run, manifest)
            self._backfill_steps(run, manifest)
            there = listing(self.run_dir(run) / "parts")
            todo = [f for f in files if not self._unchanged(manifest, f, there, stats.get(f.relpath))]
            report.files_skipped = len(files) - len(todo)
            reading = {f.relpath for f in todo}
            # the rows leaving the run (files read again, files replaced): the other files of their parts are
            # copied into parts of their own first
            self._carry_over(run, manifest, reading | {r for f in files for r in f.replaces})
            for file in files:  # a stored replacement whose older copies are still listed (stored before)
                if file.relpath not in reading:
                    report.files_replaced += self._drop_replaced(manifest, file)
            if progress and report.files_skipped:
                progress(report.files_skipped, len(files), 0)
            # A pipeline across files: one thread reads (parses) the files in order, one labels and splits the
            # rows (finalize), and this thread writes the parts. Parsing, the compute kernels and Parquet
            # writing release the GIL, so the three stages overlap. Each stage's output waits in a queue of
            # PREFETCH_DEPTH tables and at most PREFETCH_BYTES (`prefetch`).
            unreadable: set[str] = set()
            readahead([f.path for f in todo], readahead_bytes())
            stream = prefetch(_part_tables(prefetch(reader.read_files(todo, ctx, unreadable), PREFETCH_DEPTH,
                                                    PREFETCH_BYTES), ctx), PREFETCH_DEPTH, PREFETCH_BYTES)
            pending: collections.deque[_Part] = collections.deque()
            read = [0]  # rows read so far, for `progress` while a file is read (`counted`)

            def finish() -> None:  # the oldest part being written: its files recorded once it is
                group = pending.popleft()
                offset = 0
                for (file, st), written in zip(group.files, group.future.result()):
                    entry = self._file_entry(run, file, group.name, st, *written, manifest)
                    if entry["part"]:
                        entry["offset"] = offset
                        offset += entry["rows"]
                    report.files_replaced += self._drop_replaced(manifest, file)
                    if file.relpath in unreadable:  # not recorded as read: the next ingest tries it again
                        entry["size"] = entry["mtime_ns"] = entry["sha256"] = None
                    with bad_lock:
                        entry["bad"] = bad_by_file.get(file.relpath, 0)
                        done_bad = [r for r in bad_buffer if r.file == file.relpath]
                        bad_buffer[:] = [r for r in bad_buffer if r.file != file.relpath]
                    if done_bad:
                        self._quarantine(qpending, done_bad)
                    report.files_read += 1
                    report.rows_added += entry["rows"]
                    # a copy (taken atomically under the GIL): the finalize thread may add labels meanwhile
                    manifest["conditions"] = dict(labeler.labels)
                    if progress:  # the rows read so far: these files' and those read since
                        progress(report.files_skipped + report.files_read, len(files), read[0])
                if not offset:  # no file gave rows: no part
                    (self.run_dir(run) / "parts" / group.name).unlink(missing_ok=True)

            def counted(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
                for table in tables:
                    read[0] += table.num_rows
                    if progress:
                        progress(report.files_skipped + report.files_read, len(files), read[0])
                    yield table

            # an error here stops the reading threads and the writers (their unfinished parts are removed)
            with contextlib.closing(stream), _Writers(self, run, len(todo), digests) as writers:
                group: _Part | None = None
                for file in todo:
                    try:
                        st = file.path.stat()
                    except OSError:
                        st = None
                    if group is None:
                        group = writers.open(self._part_name(file.relpath))
                    group.add(file, st, counted(_tables_of(stream, file)))
                    if group.rows >= part_rows or group.nbytes >= self.part_bytes:
                        pending.append(group.close())
                        group = None
                        while len(pending) >= writers.n:
                            finish()
                if group is not None:
                    pending.append(group.close())
                while pending:
                    finish()
            manifest["conditions"] = dict(labeler.labels)
            manifest["notes"] = [[key, text] for key, text in ctx.notes.items()]  # pairs: the manifest sorts keys
            try:
                self._commit(run, manifest)  # the one moment this ingest becomes visible
                if qpending.is_file():
                    with open(qpending, "rb") as src, open(qpath, "ab") as dst:
                        dst.write(src.read())
            finally:
                qpending.unlink(missing_ok=True)
            if compact and part_rows > 1:  # small parts of earlier (live, per-step) ingests, in full groups
                report.parts_compacted = self._compact(run, manifest, part_rows, whole=False)
                if report.parts_compacted:
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
                manifest = self._read_manifest(run)
            else:
                manifest = self._new_manifest(run, source, format, ReadOptions(), [])
            part = self._part_name(key)
            _, signals = self._write_part(run, part, iter([table]))
            steps = step_range(table)
            self._carry_over(run, manifest, {key})
            old = manifest["files"].get(key, {}).get("part")
            manifest["files"][key] = {"part": part, "rows": table.num_rows, "size": None, "mtime_ns": None,
                                      "sha256": None, "bad": 0, "layout": LAYOUT, "steps": steps,
                                      "signals": list(signals)}
            if old and old != part:
                manifest.setdefault("_stale", []).append(old)
            self._commit(run, manifest)
        return table.num_rows

    # ------------------------------------------------------------------ compaction
    def compact(self, run: str, part_rows: int | None = None, whole: bool = True) -> int:
        """Rewrite runs of consecutive small parts of `run` as parts of about `part_rows` rows (default
        `self.part_rows`); returns how many parts fewer the run has. `whole`: also the last group, which has not
        reached `part_rows` (a run that goes on would add to it). See `_compact`."""
        part_rows = self.part_rows if part_rows is None else max(1, int(part_rows))
        self._read_manifest(run)  # its error where there is no such run, before `_lock` makes its directory
        with self._lock(run):
            manifest = self._read_manifest(run)
            self._remove_orphans(run, manifest)
            fewer = self._compact(run, manifest, part_rows, whole)
            if fewer:
                self._commit(run, manifest)
        return fewer

    def _compact(self, run: str, manifest: dict[str, Any], part_rows: int, whole: bool) -> int:
        """Merge the run's groups of small parts (`_small_groups`) into one part each; their files' entries point
        at the new part (offsets shifted), the old parts are retired (`_stale`), for the caller to commit.
        Returns the parts saved.

        Why: each part costs every detector a fixed share (files, footers, per-part derived tables): a 1M-rollout
        run stored a part per 1,000-row file audited ~2x slower than the same rows in parts of 16,384
        (docs/performance.md, session 26)."""
        merging = [g for g in self._small_groups(run, manifest, part_rows, whole) if len(g) > 1]
        from .memory import in_order

        # groups are rewritten by the threads an ingest writes parts with (Parquet decoding and encoding release
        # the GIL), each holding one group's tables (at most `part_rows` rows or about `part_bytes`)
        merged = in_order(lambda members: self._merge(run, members), merging, _Writers.threads(len(merging)),
                          "rlaudit-compact")
        for members, new in zip(merging, merged):
            base = 0
            for p, _ in members:
                for key, (offset, _rows) in zip(p.files, p.spans):
                    manifest["files"][key]["part"] = new
                    manifest["files"][key]["offset"] = base + offset
                base += p.rows
                manifest.setdefault("_stale", []).append(p.name)
        return sum(len(g) - 1 for g in merging)

    def _small_groups(self, run: str, manifest: dict[str, Any], part_rows: int, whole: bool
                      ) -> list[list[tuple[StoredPart, pa.Schema]]]:
        """The run's small parts (at most `part_rows` // 4 rows: what live appends, the polls of live ingests and
        ingests of one step at a time write) that follow each other in step order, with one layout and schema,
        in groups that close at `part_rows` rows or `part_bytes` (of files on disk, about half their Arrow
        size), as an ingest groups files. A group ends early at a part that cannot join it; the last one is
        given only when full or `whole`: a run that is still written adds to it, and rewriting it at every step
        would recompute its derived data at every warm audit."""
        d = self.run_dir(run) / "parts"
        small = max(1, part_rows // 4)
        listed = list(stored_parts(manifest).values())
        order = {p.name: i for i, p in enumerate(listed)}
        groups: list[list[tuple[StoredPart, pa.Schema]]] = []
        group: list[tuple[StoredPart, pa.Schema]] = []
        rows = size = 0
        for p in sorted((p for p in listed if p.steps is not None), key=lambda p: (p.steps, order[p.name])):
            schema = None
            if p.rows <= small:
                with contextlib.suppress(OSError, pa.ArrowException):  # lost or torn: for `missing_error` to say
                    schema, nbytes = pq.read_schema(d / p.name), (d / p.name).stat().st_size
            if group and (schema is None or p.layout != group[0][0].layout or not schema.equals(group[0][1])):
                groups.append(group)  # ended by a part that cannot join it: complete
                group, rows, size = [], 0, 0
            if schema is None:
                continue
            group.append((p, schema))
            rows, size = rows + p.rows, size + nbytes
            if rows >= part_rows or size >= self.part_bytes // 2:
                groups.append(group)
                group, rows, size = [], 0, 0
        return groups + [group] if group and whole else groups

    def _merge(self, run: str, members: list[tuple[StoredPart, pa.Schema]]) -> str:
        """Write the rows of the parts `members`, in order, as one new part; returns its name."""
        tables = [self._read_listed(run, p, schema) for p, schema in members]
        new = self._part_name(members[0][0].files[0])
        self._write_part(run, new, iter(tables), schema=members[0][1])
        return new

    def _read_listed(self, run: str, part: StoredPart, schema: pa.Schema | None = None) -> pa.Table:
        """The rows of `part`, read to be rewritten by its files' offsets (`_carry_over`, `_merge`): if they are not
        as many as its files' manifest entries list, the offsets would cut other files' rows, so stop with an error
        naming the part before anything changes."""
        path = self.run_dir(run) / "parts" / part.name
        table = pq.read_table(path, schema=schema)
        if table.num_rows != part.rows:
            raise RlauditError(f"run {run!r}: part file {path} holds {table.num_rows:,} rows, its manifest entries "
                               f"{part.rows:,} ({', '.join(part.files[:3])}...); the store is inconsistent: remove the "
                               f"run (`rlaudit runs rm {run}`) and ingest it again")
        return table

    def _new_manifest(self, run: str, source: str, fmt: str, options: ReadOptions,
                      rules: list[ConditionRule]) -> dict[str, Any]:
        return {"name": run, "source": str(source), "format": fmt, "options": _options_json(options, rules),
                "created": time.time(), "files": {}, "conditions": {}, "version": 0}

    def _load_or_create(self, run: str, source: Path, fmt: str, options: ReadOptions,
                        rules: list[ConditionRule]) -> dict[str, Any]:
        if not self.has_run(run):
            return self._new_manifest(run, str(source), fmt, options, rules)
        m = self._read_manifest(run)
        if m["source"] not in (str(source), "live"):
            raise RlauditError(
                f"run {run!r} in {self.root} already holds {m['source']}; pass --run NAME to store {source} "
                "under another name")
        if m["format"] not in (fmt, "live"):
            raise RlauditError(f"run {run!r} was ingested as {m['format']}, not {fmt}; pass --run NAME, or remove "
                               f"the stored run with `rlaudit runs rm {run}` and ingest again")
        wanted = _options_json(options, rules)
        if m.get("options") != wanted:  # rows depend on options: re-read everything with the new ones
            for entry in m["files"].values():
                entry["size"] = entry["mtime_ns"] = entry["sha256"] = None
            m["options"] = wanted
            m["conditions"] = {}
            m["notes"] = []
        m["source"], m["format"] = str(source), fmt
        return m

    def _unchanged(self, manifest: dict[str, Any], file: SourceFile, parts: set[str] | None = None,
                   st: os.stat_result | None = None) -> bool:
        """Whether `file` is stored as it is (same size and mtime, or same bytes) with its part in place.
        `parts`: the names in the run's parts directory (`listing`), `st`: the file's stat, where the caller has
        them for every file (a stat each cost ~10 us with its `Path`s, for every file of a long run)."""
        entry = manifest["files"].get(file.relpath)
        if not entry or entry.get("size") is None:
            return False
        run = manifest.get("name")
        if run and entry.get("part") and not (
                entry["part"] in parts if parts is not None else (self.run_dir(run) / "parts" / entry["part"]).is_file()):
            return False  # its part was lost: read the file again (repairs the run)
        try:
            st = st or file.path.stat()
        except OSError:
            return False
        if entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
            return True
        if entry["size"] == st.st_size and entry.get("sha256") == _sha256_or_none(file.path):
            entry["mtime_ns"] = st.st_mtime_ns  # touched or copied, same bytes
            return True
        return False

    def _file_entry(self, run: str, file: SourceFile, part: str, st: os.stat_result | None, rows: int,
                    steps: list[int] | None, digest: str | None, signals: tuple[str, ...],
                    manifest: dict[str, Any]) -> dict[str, Any]:
        """Record the part written for `file` (`rows` rows, `steps`; `st`: the file's stat before it was read,
        `digest`: its SHA-256 after, None if it could not be read; `signals`: the part's shared reward signals)
        in `manifest`."""
        old = manifest["files"].get(file.relpath, {}).get("part")
        if digest is None:
            st = None  # unreadable or gone: recorded as not read, so the next ingest tries again
        entry = {"part": part if rows else None, "rows": rows, "size": st.st_size if st else None,
                 "mtime_ns": st.st_mtime_ns if st else None, "sha256": digest, "layout": LAYOUT, "steps": steps,
                 "signals": list(signals)}
        manifest["files"][file.relpath] = entry
        if old and old != part:
            manifest.setdefault("_stale", []).append(old)
        return entry

    def _backfill_steps(self, run: str, manifest: dict[str, Any]) -> None:
        """Give the parts stored before the manifest kept step ranges theirs, from the parts' Parquet statistics
        (their footers only; once per run: the next version of the manifest keeps them)."""
        d = self.run_dir(run) / "parts"
        for entry in manifest["files"].values():
            if entry.get("part") and "steps" not in entry:
                with contextlib.suppress(OSError, pa.ArrowException, KeyError, ValueError, TypeError):
                    meta = pq.ParquetFile(d / entry["part"]).metadata
                    col = meta.schema.to_arrow_schema().get_field_index("step")
                    stats = [meta.row_group(i).column(col).statistics for i in range(meta.num_row_groups)]
                    if stats and all(st is not None and st.has_min_max for st in stats):
                        entry["steps"] = [int(min(st.min for st in stats)), int(max(st.max for st in stats))]

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
        """`<source digest>-<ingest time>.parquet`: a part written again (its source changed) gets a new name, so
        derived data cached under the old name is never mistaken for it (see `part_source`)."""
        return f"{key_source(key)}-{time.time_ns():x}.parquet"

    def _write_part(self, run: str, part: str, tables: Iterator[pa.Table],
                    schema: pa.Schema | None = None) -> tuple[int, tuple[str, ...]]:
        """Write a part; returns its rows and its shared reward signals. (Its callers keep the step ranges the
        manifest records, so that readers of a few steps open only their parts: `rollouts_view`.) Tables are
        buffered into row groups of up to `_ROW_GROUP` rows: a part of many small files is not a part of many
        tiny row groups. `schema`: the part's (default: the first table's; `layout.part_table` gives each table
        the reward columns of its signals, and later tables of other signals are made to fit: `layout.conform`)."""
        d = self.run_dir(run) / "parts"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{part}.tmp"
        rows = held = 0
        buffered: list[pa.Table] = []
        first = None
        if schema is None:  # the first table with rows gives it
            for first in tables:
                if first.num_rows:
                    break
            else:
                first = None
            schema = first.schema if first is not None else part_schema(())
        try:
            names = set(schema.names)
            with pq.ParquetWriter(tmp, schema, use_dictionary=_dictionary(schema),
                                  write_statistics=[c for c in _STATISTICS_COLUMNS if c in names],
                                  **_codec(schema)) as writer:
                for table in itertools.chain([first] if first is not None else [], tables, [None]):
                    if table is not None and table.num_rows:
                        buffered.append(conform(table, schema))
                        held += table.num_rows
                    if buffered and (table is None or held >= _ROW_GROUP):
                        writer.write_table(pa.concat_tables(buffered), row_group_size=_ROW_GROUP)
                        rows += held
                        buffered, held = [], 0
            os.replace(tmp, d / part)
        finally:
            tmp.unlink(missing_ok=True)
        return rows, part_signals(schema)

    def _carry_over(self, run: str, manifest: dict[str, Any], leaving: set[str]) -> None:
        """Before the rows of the files `leaving` leave the run (read again, replaced), copy the rows of the other
        files that share a part with one of them into a new part, and point their entries at it: the part is
        retired with the leaving files' rows, the others' stay (their sources may be gone). A part that is lost
        (see `missing_error`) is left as it is."""
        parts = self.run_dir(run) / "parts"
        touched = {manifest["files"][k]["part"] for k in leaving if manifest["files"].get(k, {}).get("part")}
        if not touched:
            return
        stored = stored_parts(manifest)  # once: each part's files, which the loop below does not change
        for old in touched:
            staying = [k for k in stored[old].files if k not in leaving]
            if not staying or not (parts / old).is_file():
                continue
            table = self._read_listed(run, stored[old])
            new = self._part_name(staying[0])
            entries = [manifest["files"][k] for k in staying]
            pieces = [table.slice(int(e.get("offset") or 0), int(e["rows"])) for e in entries]
            self._write_part(run, new, iter(pieces), schema=table.schema)
            offset = 0
            for e in entries:
                e["part"], e["offset"] = new, offset
                offset += int(e["rows"])
            manifest.setdefault("_stale", []).append(old)

    def _commit(self, run: str, manifest: dict[str, Any]) -> None:
        """Publish `manifest` as the run's next version. Parts it no longer lists are retired, and retired parts
        no reader can still need (no lease on an older version, retired for `retire_grace` s) are deleted."""
        version = int(manifest.get("version", 0)) + 1
        listed = {e.get("part") for e in manifest["files"].values()}
        now = time.time()
        retired = [r for r in manifest.get("retired", []) if r[0] not in listed]
        known = {r[0] for r in retired}
        retired += [[name, version, now] for name in dict.fromkeys(manifest.pop("_stale", []))
                    if name not in listed and name not in known]
        oldest = self._oldest_lease(run)
        keep, gone = [], []
        for name, since, when in retired:
            if (oldest is not None and oldest < since) or now - when < self.retire_grace:
                keep.append([name, since, when])
            else:
                gone.append(name)
        manifest["retired"] = keep
        if not gone and self._as_stored(run, manifest):
            return  # an ingest that found nothing new: no new version (writing a run of 15,625 files' took 0.9 s)
        self._write_manifest(run, manifest)
        for name in gone:  # only after the manifest no longer lists them
            with contextlib.suppress(OSError):
                (self.run_dir(run) / "parts" / name).unlink(missing_ok=True)

    def _oldest_lease(self, run: str) -> int | None:
        """The oldest version a live reader holds a lease on (None: no reader). Leases of dead processes (their
        lock is free) are removed."""
        d = self.run_dir(run) / "leases"
        if not d.is_dir():
            return None
        oldest: int | None = None
        for path in d.iterdir():
            if path.name.startswith("."):
                continue
            try:
                with open(path, "r+") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:  # held: a live reader
                        text = fh.read().strip()
                        version = int(text) if text.isdigit() else 0
                        oldest = version if oldest is None else min(oldest, version)
                        continue
                    path.unlink(missing_ok=True)  # nobody holds it: its reader died
            except OSError:
                continue
        return oldest

    def _remove_orphans(self, run: str, manifest: dict[str, Any]) -> None:
        """Delete parts (and pending quarantine files) a crashed or failed ingest wrote but never committed."""
        d = self.run_dir(run) / "parts"
        for p in self.run_dir(run).glob(".quarantine.*.pending"):
            p.unlink(missing_ok=True)
        if not d.is_dir():
            return
        listed = {e.get("part") for e in manifest["files"].values()}
        listed |= {r[0] for r in manifest.get("retired", [])}  # still readable by older snapshots
        for p in d.iterdir():
            if p.name not in listed:
                p.unlink(missing_ok=True)

    def _distinct_files(self, files: list[SourceFile], manifest: dict[str, Any], notes: dict[str, str],
                        stats: dict[str, os.stat_result] | None = None,
                        digests: dict[str, tuple[int, int, str]] | None = None) -> list[SourceFile]:
        """`files` without the ones that would ingest the same rollouts twice: a file inside the store itself
        (a store placed in the source directory), a file reached again through a symlink (or a symlink loop),
        and a file whose bytes repeat another's (`1.jsonl` beside `01.jsonl`). Each skip is noted. `stats`
        receives the stat of each file kept (relpath -> stat), taken here, for `_unchanged`; `digests` the SHA-256
        of each file hashed here, with the size and mtime it had (relpath -> (size, mtime_ns, digest)), which the
        part writers take instead of hashing the file again after its rows while it has not changed."""
        store_root = str(self.root.resolve())
        below = store_root.rstrip(os.sep) + os.sep
        inside, linked, copies = [], [], []
        seen: dict[str, str] = {}
        out: list[SourceFile] = []
        real_dirs: dict[str, str] = {}
        for f in files:
            # the real path: the directory's resolved once (thousands of files share a few directories; resolving
            # each file's whole path cost ~25 us a file), then the file's own name unless it is a link
            try:
                parent, name = os.path.split(os.fspath(f.path))
                st = os.lstat(f.path)
                if stat_module.S_ISLNK(st.st_mode) or not name or name in (".", ".."):
                    real = str(f.path.resolve(strict=True))
                    st = os.stat(real)
                else:
                    if parent not in real_dirs:
                        real_dirs[parent] = str(Path(parent or ".").resolve(strict=True))
                    real = os.path.join(real_dirs[parent], name)
            except (OSError, RuntimeError):
                out.append(f)  # unreadable: the reader reports it
                continue
            if real == store_root or real.startswith(below):
                inside.append(f.relpath)
                continue
            if real in seen:
                linked.append(f"{f.relpath} (= {seen[real]})")
                continue
            seen[real] = f.relpath
            if stats is not None:
                stats[f.relpath] = st
            out.append(f)
        related = {r for f in out for r in f.replaces} | {f.relpath for f in out if f.replaces}
        by_size: dict[int, list[tuple[SourceFile, os.stat_result]]] = {}
        for f in out:
            if f.relpath in related:
                continue
            st = stats.get(f.relpath) if stats is not None else None
            with contextlib.suppress(OSError):
                st = st or f.path.stat()
                if st.st_size:
                    by_size.setdefault(st.st_size, []).append((f, st))
        drop: set[str] = set()
        # the files that share a size with another are hashed on a few threads (SHA-256 releases the GIL): the
        # 10M-rollout benchmark's files hashed here took ~0.3 s on one core before its ingest could start
        hashed = [(f, st) for group in by_size.values() if len(group) > 1 for f, st in group]
        from .memory import in_order, workers

        found = dict(zip((f.relpath for f, _ in hashed),
                         in_order(lambda item: self._digest(manifest, *item), hashed,
                                  min(len(hashed), workers(_HASH_MEMORY)), "rlaudit-hash")))
        for group in by_size.values():
            if len(group) < 2:
                continue
            first: dict[str, str] = {}
            for f, st in group:
                digest = found[f.relpath]
                if digest is None:
                    continue
                if digests is not None:
                    digests[f.relpath] = (st.st_size, st.st_mtime_ns, digest)
                if digest in first:
                    drop.add(f.relpath)
                    copies.append(f"{f.relpath} (= {first[digest]})")
                else:
                    first[digest] = f.relpath
        out = [f for f in out if f.relpath not in drop]
        if inside:
            notes["skip:store"] = (f"skipped {len(inside)} file(s) inside the store {self.root} itself (e.g. "
                                   f"{inside[0]}): a store inside the source directory would re-ingest its parts")
        if linked:
            notes["skip:links"] = (f"skipped {len(linked)} file(s) reached twice through symbolic links, e.g. "
                                   f"{linked[0]}")
        if copies:
            notes["skip:copies"] = (f"skipped {len(copies)} file(s) whose bytes repeat another file's, e.g. "
                                    f"{copies[0]}: the same rollouts are ingested once")
        return out

    def _digest(self, manifest: dict[str, Any], file: SourceFile, st: os.stat_result | None = None) -> str | None:
        """The file's SHA-256: the recorded one while its size and mtime are the recorded ones (`st`: its stat, if
        taken), else read anew."""
        entry = manifest["files"].get(file.relpath) or {}
        return _known_or_hashed(file.path, (entry.get("size"), entry.get("mtime_ns"), entry.get("sha256")), st)

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
        """Remove a run (`rlaudit runs rm`). The run disappears at once (its directory is renamed aside under the
        run's lock, so no ingest is half-way through it); its files are removed after."""
        import shutil

        if not self.has_run(run):
            known = ", ".join(self.runs()) or "none"
            raise RlauditError(f"no run {run!r} in store {self.root} (runs: {known})")
        d = self.run_dir(run)
        trash = d.with_name(f".deleted-{run}-{time.time_ns():x}")
        with self._lock(run):
            os.replace(d, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ queries
    def connect(self, runs: list[str] | None = None, steps: Collection[int] | None = None, *,
                view: str = "rollouts", at_most: int | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with views `rollouts` (canonical rows of `runs`, default all; with `steps`, over
        only the parts that may hold those steps: see `rollouts_view`) and `rewards_long` (one row per rollout
        and reward signal). With another `view` name, only that view of the rows (for callers that build their
        own `rollouts` on it: each view bound over a 2,000-part run costs DuckDB ~4-9 ms). `at_most`: a lower
        memory limit in bytes, for a connection held open beside other work (`duck.settings`)."""
        con = duck.connect(self.root, at_most=at_most)
        self.rollouts_view(con, runs, view=view, steps=steps)
        if view != "rollouts":
            return con
        self.rewards_view(con, runs, steps=steps)
        return con

    def rollouts_view(self, con: duckdb.DuckDBPyConnection, runs: list[str] | None = None, view: str = "rollouts",
                      steps: Collection[int] | None = None, where: str | None = None) -> None:
        """Create the view `view` of the canonical rows of `runs` (default all). `steps`: only over the parts
        that may hold one of them (by the step range the manifest keeps per part; parts stored before ranges
        were kept are always included). Rows of other steps may remain: filter on `step` as well. Why: DuckDB
        opens every listed part's footer to skip it, ~0.25 ms each, so a lookup of a few rollouts in a
        2,000-part run costs ~0.5 CPU s without this. `where`: a filter (SQL) on columns every layout stores
        as they are (`rollout_id`, `step`, ...), applied in each part's scan, before the canonical columns are
        computed: DuckDB keeps a filter on the view above the projection that cuts the answer and reasoning out of
        the completion, so a 4% sample of a 1M run cut every row's spans (0.5 -> 0.3 CPU s)."""
        selects = canonical_selects(self._by_format(runs, steps), where)
        if not selects:
            con.register(f"_empty_{view}", ROLLOUT_SCHEMA.empty_table())
            selects = [f"SELECT * FROM _empty_{view}"]
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {' UNION ALL '.join(selects)}")

    def rewards_view(self, con: duckdb.DuckDBPyConnection, runs: list[str] | None = None,
                     view: str = "rewards_long", steps: Collection[int] | None = None, where: str | None = None
                     ) -> None:
        """Create the view `view`: one row per rollout of `runs` and reward signal (run, rollout_id, step,
        group_id, condition, task, signal, value), over the parts `rollouts_view` would read (`steps`, `where`
        as there). The signals a part's rollouts share come from its columns (layout 5), not from `rewards`
        rebuilt as a map: DuckDB builds a map ~6x slower than it reads a stored one."""
        keys = "run, rollout_id, step, group_id, condition, task"
        mapped = 'unnest(map_keys("rewards")) AS signal, unnest(map_values("rewards")) AS value'
        selects = []
        for (layout, signals), paths in self._by_format(runs, steps):
            read = f"read_parquet({sql_list(paths)})"
            only = f" AND ({where})" if where else ""
            if layout < REWARDS_LAYOUT:
                selects.append(f"SELECT {keys}, {mapped} FROM {read}{' WHERE ' + where if where else ''}")
                continue
            if signals:
                columns = ", ".join(sql_ident(reward_column(s)) for s in signals)
                selects.append(f"SELECT {keys}, unnest({sql_list(list(signals))}::VARCHAR[]) AS signal, "
                               f"unnest([{columns}]::DOUBLE[]) AS value FROM {read} WHERE rewards IS NULL{only}")
            selects.append(f"SELECT {keys}, {mapped} FROM {read} WHERE rewards IS NOT NULL{only}")
        if not selects:
            selects = [f"SELECT {keys}, NULL::VARCHAR AS signal, NULL::DOUBLE AS value FROM "
                       f"(SELECT NULL::VARCHAR AS run, NULL::VARCHAR AS rollout_id, NULL::BIGINT AS step, "
                       f"NULL::VARCHAR AS group_id, NULL::VARCHAR AS condition, NULL::VARCHAR AS task) WHERE FALSE"]
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {' UNION ALL '.join(selects)}")

    def _by_format(self, runs: list[str] | None, steps: Collection[int] | None
                   ) -> list[tuple[tuple[int, tuple[str, ...]], list[str]]]:
        """The parts of `runs` (default all; with `steps`, those that may hold one of them), grouped by (layout,
        shared signals): one read of each group. A lost part is an error (`missing_error`)."""
        wanted = None if steps is None else np.unique(np.asarray(list(steps), np.int64))
        listed: list[tuple[Path, tuple[int, tuple[str, ...]]]] = []
        for r in runs if runs is not None else self.runs():
            m = self.manifest(r)  # read once: parts and layouts of one version
            formats = self.part_formats(r, m)
            parts = self.parts(r, m)
            if wanted is not None:
                stored = self.stored_parts(r, m)
                parts = [p for p in parts if p.name not in stored or _may_hold(stored[p.name].steps, wanted)]
            lost = self.missing_part(parts)  # one listing, not a stat per part
            if lost is not None:
                raise self.missing_error(r, lost, m)
            listed += [(p, formats.get(p.name, (1, ()))) for p in parts]
        return format_groups(listed)

    def query(self, sql: str, params: list[Any] | None = None, runs: list[str] | None = None,
              steps: Collection[int] | None = None) -> pa.Table:
        """Run SQL against the views of `connect` and return an Arrow table."""
        with self.connect(runs, steps) as con:
            return con.sql(sql, params=params or None).to_arrow_table()

    def table(self, run: str, columns: list[str] | None = None) -> pa.Table:
        """All rows of one run (selected columns), ordered by step. For modest runs and tests; detectors that
        scale should push work into `query`."""
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        return self.query(f"SELECT {cols} FROM rollouts ORDER BY step, rollout_id", runs=[run])

    def summary(self, run: str) -> RunSummary:
        """Rows, steps, conditions, reward signals and graders of a run, merged from per-part counts cached
        beside it (`runstats`): a run that grew by a step reads only that step's part."""
        from .derived.runstats import connect_run_stats

        m = self.manifest(run)
        with connect_run_stats(self, run, "rs") as con:
            # the columns asked for, read once (a row per step and condition or signal): each query over the view
            # read the per-part files again (~7 ms each at 2,000 steps)
            con.execute("CREATE TEMP TABLE s AS SELECT kind, step, condition, signal, total, n FROM rs")
            n, lo, hi = con.execute("SELECT sum(n), min(step), max(step) FROM s WHERE kind = 0").fetchone()
            conds = [r[0] for r in con.execute("SELECT DISTINCT condition FROM s WHERE kind = 0 ORDER BY 1").fetchall()]
            signals = [r[0] for r in con.execute(
                "SELECT DISTINCT signal FROM s WHERE kind = 1 AND NOT total ORDER BY 1").fetchall()]
            graders = [r[0] for r in con.execute("SELECT DISTINCT signal FROM s WHERE kind = 2 ORDER BY 1").fetchall()]
        steps = (int(lo), int(hi)) if n else None
        return RunSummary(run=run, format=m["format"], rows=int(n or 0), steps=steps, conditions=conds,
                          signals=signals, graders=graders, source=m["source"],
                          notes=list(_notes(m).values()))

    # ------------------------------------------------------------------ derived data
    def derived(self, run: str, name: str, compute: Callable[[], pa.Table]) -> pa.Table:
        """A derived table cached per run version: computed once, reused by every detector that asks."""
        d = self.run_dir(run) / "derived"
        path = d / f"{name}-{self.fingerprint(run)}.parquet"
        with contextlib.suppress(FileNotFoundError):  # another process may replace it meanwhile
            return pq.read_table(path)
        table = compute()
        # The cache is an optimisation: a store that cannot be written (read-only, full) still gets the table.
        # Each writer has its own temporary name, so concurrent audits never write over each other's file.
        tmp = d / f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp"
        try:
            d.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, tmp)
            os.replace(tmp, path)
            for old in d.glob(f"{name}-*.parquet"):
                if old.name != path.name:
                    old.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        return table


def key_source(key: str) -> str:
    """What `part_source` gives for the part of one source file `key` (a manifest key) stored on its own: the
    same for that file's rows in a part it shares with other files."""
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def part_source(name: str) -> str:
    """The part of a stored part's file name that names its source (`Store._part_name`: the digest of the source
    key, without the ingest time): the same for every ingest of the same source, so a choice seeded by it (the CoT
    scan's chance pairings) is the same whenever and into whichever store the run is ingested."""
    stem = name.removesuffix(".parquet")
    digest, sep, stamp = stem.rpartition("-")
    return digest if sep and re.fullmatch(r"[0-9a-f]+", stamp) else stem


def _dictionary(schema: pa.Schema) -> list[str]:
    """The columns of a part with `schema` to dictionary-encode (`_DICTIONARY_COLUMNS`, and the keys of its maps
    whose keys are strings: `_DICTIONARY_KEYS`)."""
    names = set(schema.names)
    keys = [path for column, path in _DICTIONARY_KEYS.items()
            if column in names and pa.types.is_map(schema.field(column).type)
            and pa.types.is_string(schema.field(column).type.key_type)]
    return [c for c in _DICTIONARY_COLUMNS if c in names] + keys


def _codec(schema: pa.Schema) -> dict[str, Any]:
    """The writer's codec arguments for a part with `schema`: `PART_CODEC` for every column (each leaf of a nested
    one) but `_UNCOMPRESSED_COLUMNS`, which are written uncompressed."""
    leaves = _leaf_paths(schema)
    raw = [p for p in leaves if p.split(".")[0] in _UNCOMPRESSED_COLUMNS]
    if not raw:
        return dict(PART_CODEC)
    packed = [p for p in leaves if p not in raw]
    out = dict(PART_CODEC)
    out["compression"] = {p: PART_CODEC["compression"] for p in packed} | {p: "none" for p in raw}
    if PART_CODEC.get("compression_level") is not None:  # a level only for the compressed ones (Arrow refuses it
        out["compression_level"] = {p: PART_CODEC["compression_level"] for p in packed}  # for "none")
    return out


@functools.lru_cache(maxsize=16)
def _leaf_paths(schema: pa.Schema) -> tuple[str, ...]:
    """The Parquet column paths of `schema` (`rewards.key_value.key`, ...), as Arrow's writer names them: the
    names a per-column codec is given by (a column it does not name is written uncompressed)."""
    buf = io.BytesIO()
    pq.write_table(schema.empty_table(), buf)
    meta = pq.read_metadata(io.BytesIO(buf.getvalue()))
    return tuple(meta.schema.column(i).path for i in range(meta.num_columns))


def write_cached(path: Path, table: pa.Table, **parquet: Any) -> Path | pa.Table:
    """Write a derived table beside the run and return its path; where the store cannot be written (read-only,
    full, removed) return the table itself, for the caller to keep in memory: a cache is an optimisation, never a
    reason for a detector to fail (`write_atomic`)."""
    return path if write_atomic(path, lambda tmp: pq.write_table(table, tmp, **parquet)) else table


def write_atomic(path: Path, write: Callable[[Path], None]) -> bool:
    """Write one derived file through `write(temporary path)`, then rename it into place; False where the store
    cannot be written. Each writer has a temporary name of its own, so concurrent audits never write over each
    other's file, and readers see the whole file or none (atomic rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


#: bytes of an ingest's files asked into the page cache before it starts (`readahead`), at most
READAHEAD_BYTES = 4 << 30


def readahead_bytes() -> int:
    """What `readahead` may ask for: READAHEAD_BYTES, a quarter of the machine's memory, half a memory budget
    (`memory.budget`), whichever is least: files asked for beyond what the page cache keeps would be evicted
    before they are read, and read twice."""
    from .memory import budget

    most = READAHEAD_BYTES
    with contextlib.suppress(ValueError, OSError, AttributeError):
        most = min(most, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
    limit = budget()
    return min(most, limit[0] // 2) if limit is not None else most


def readahead(paths: list[Path], most: int = READAHEAD_BYTES) -> int:
    """Ask the kernel to read the first `most` bytes of `paths`, in order, into the page cache (`posix_fadvise`
    WILLNEED: the reads are queued, the call returns), before an ingest's threads start: the reader opens the
    files one after another, and the kernel reads ahead within a file, not across files, so a run read from
    disk stalled the ingest's bottleneck thread at each file. Asked up front on this thread, not as the reader
    goes: each system call is a release and re-acquisition of the GIL, which cost the reading thread more than it
    saved where the files were cached already (docs/performance.md, session 40). Returns the bytes asked for;
    nothing where the call does not exist (not Linux) or a file cannot be opened (the reader reports it)."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    asked = 0
    for path in paths:
        if asked >= most:
            break
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = min(os.fstat(fd).st_size, most - asked)
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
            asked += size
        except OSError:
            pass
        finally:
            os.close(fd)
    return asked


def listing(d: Path) -> set[str]:
    """The names in directory `d` (none when it is missing or unreadable): one `listdir` where a long run's
    thousands of parts would each cost a stat."""
    try:
        return set(os.listdir(d))
    except OSError:
        return set()


def prune_cached(base: Path, keep: Path, stems: set[str]) -> None:
    """Remove a derived cache's other versions (the directories of `base` other than `keep`) and the files in
    `keep` of parts the run no longer lists (`stems`: a file belongs to the part its name starts with, up to the
    first dot). Writers' temporary files (dot names) are left to their writers. A read-only store keeps its stale
    files, which no reader lists."""
    if not base.is_dir():
        return
    for d in base.iterdir():
        if d.is_dir() and d != keep:
            shutil.rmtree(d, ignore_errors=True)
    prune_files(keep, stems)


def prune_files(directory: Path, stems: set[str]) -> None:
    """Remove the files in `directory` of parts the run no longer lists (`stems`, as `prune_cached`); dot names
    (writers' temporary files) and subdirectories stay, and a file that cannot be removed (read-only store) too.
    `scandir` entries, not `Path`s with a stat each: the file type comes with the listing (every warm audit runs
    this over each cache of a 2,000-part run)."""
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for f in it:
            if not f.name.startswith(".") and f.name.split(".")[0] not in stems and f.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(f.path)


class _Lease:
    """A reader's claim on one version of a run: a file in `runs/<run>/leases/` holding the version, locked
    (`flock`) for as long as the reader lives, so a dead reader's lease is recognised and dropped."""

    def __init__(self, path: Path | None, fh: Any, manifest: dict[str, Any] | None):
        self.path, self._fh, self.manifest = path, fh, manifest

    @classmethod
    def acquire(cls, store: Store, run: str) -> _Lease:
        if not store.has_run(run):
            return cls(None, None, None)
        d = store.run_dir(run) / "leases"
        name = f"{os.getpid()}-{threading.get_ident()}-{time.time_ns():x}"
        fh = None
        try:
            d.mkdir(exist_ok=True)
            tmp = d / f".{name}"
            fh = open(tmp, "w+")
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write("0")  # "any version" until the manifest is read: nothing may be deleted meanwhile
            fh.flush()
            os.replace(tmp, d / name)
        except OSError:  # a read-only store: nothing can be deleted from it either
            if fh is not None:
                fh.close()
            fh = None
        manifest = store._latest_manifest(run)  # shared with the store's readers: not to be modified
        if fh is not None:
            fh.seek(0)
            fh.write(str(int(manifest.get("version", 0))))
            fh.truncate()
            fh.flush()
        return cls(d / name if fh is not None else None, fh, manifest)

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            self._fh.close()
            self._fh = None


def bound_memory(con: duckdb.DuckDBPyConnection, root: str | Path | None = None, at_most: int | None = None) -> None:
    """Set the memory limit (and, given a store root, the spill directory) of a DuckDB database the caller opened
    itself; the audit's own connections get these settings from `duck.connect` instead (setting them on an open
    database makes DuckDB trim the process's heap: see `rlaudit.duck`). DuckDB's own default limit is 80% of the
    machine's RAM, so on a big run its hash tables and temp tables would grow with the run; with a limit it spills
    them to `<store>/.tmp` instead. The limit is 1 GB, or less when the process runs under a memory budget
    (`RLAUDIT_MEMORY`, a cgroup limit, `ulimit -v`), or `RLAUDIT_DUCKDB_MEMORY` (`rlaudit.memory.duckdb_limit`);
    `at_most` lowers it for work that streams (a merge of small files), which then does not take a second
    gigabyte beside a detector's open connection. Within `memory.at_most(n)`, the database runs at most n
    threads."""
    from .memory import thread_limit

    limit, _, spill = duck.settings(root, at_most)
    con.execute(f"SET memory_limit = '{limit}MB'")
    threads = thread_limit()
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    if spill is not None:
        con.execute(f"SET temp_directory = '{spill.replace(chr(39), chr(39) * 2)}'")


class _Writers:
    """An ingest's part writers: each file's part is written by a worker thread, at most `n` at once (encoding
    and compressing a part is the slowest stage of ingest's pipeline: one writer left the second core idle), from the tables the caller
    hands over in file order (`write`; a short queue per part, so memory stays bounded by `n`). Leaving the
    block with an error aborts the parts still being written (their temporary files are removed, as when the
    caller wrote them)."""

    #: parts written at once, and what one holds (its queued tables and the one being written)
    MAX = 2
    MEMORY = 256 << 20

    def __init__(self, store: Store, run: str, files: int, digests: dict[str, tuple[int, int, str]] | None = None):
        self.store, self.run = store, run
        self.digests = digests or {}
        self.n = self.threads(files)
        self.pool = ThreadPoolExecutor(self.n, thread_name_prefix="rlaudit-part")
        self.queues: list[queue.Queue] = []

    @classmethod
    def threads(cls, parts: int) -> int:
        """Threads that write `parts` parts: at most MAX, as many as the memory budget gives MEMORY each."""
        from .memory import workers

        return max(1, min(cls.MAX, parts, workers(cls.MEMORY)))

    def open(self, part: str) -> _Part:
        """Start writing `part`: hand it the tables of one file after another (`_Part.add`), then `close` it."""
        q: queue.Queue = queue.Queue(maxsize=2)
        self.queues.append(q)
        files: list[tuple[SourceFile, os.stat_result | None]] = []
        return _Part(part, q, files, self.pool.submit(self._write, part, _queued(q), files), self)

    def _write(self, part: str, items: Iterator[Any], files: list[tuple[SourceFile, os.stat_result | None]]
               ) -> list[tuple[int, list[int] | None, str | None, tuple[str, ...]]]:
        """Write `part` from `items` (tables, and a `_FileEnd` after each file's); per file in order its rows,
        steps, the SHA-256 of its source read after its rows (None if it could not be read) and the part's shared
        reward signals."""
        out: list[tuple[int, list[int] | None, str | None]] = []

        def tables() -> Iterator[pa.Table]:
            rows, steps = 0, None
            for item in items:
                if isinstance(item, _FileEnd):
                    # the digest taken before reading (files of one size are hashed to find copies: a run of
                    # 15,625 small step files hashed ~15,000 of them twice) while the file is unchanged
                    file = files[len(out)][0]
                    out.append((rows, steps, _known_or_hashed(file.path, self.digests.get(file.relpath))))
                    rows, steps = 0, None
                    continue
                rows += item.num_rows
                steps = _union(steps, step_range(item)) if item.num_rows else steps
                yield item

        _, signals = self.store._write_part(self.run, part, tables())
        return [(*written, signals) for written in out]

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        for q in self.queues:  # only left open by an error while its tables were handed over
            with contextlib.suppress(queue.Empty):  # the caller is the only producer: room for the abort
                while True:
                    q.get_nowait()
            q.put_nowait(_ABORT)
        self.pool.shutdown(wait=True)


_END, _ABORT = object(), object()


@dataclass(frozen=True)
class _FileEnd:
    """In a part's queue: the tables of one file end here."""


class _Part:
    """A part being written by one of `_Writers`' threads from the tables of consecutive files."""

    def __init__(self, name: str, q: queue.Queue, files: list, future: Future, writers: _Writers):
        self.name, self.q, self.files, self.future, self.writers = name, q, files, future, writers
        self.rows = self.nbytes = 0

    def add(self, file: SourceFile, st: os.stat_result | None, tables: Iterator[pa.Table]) -> None:
        """Hand over `file`'s tables (consumed here; `st`: its stat before it was read)."""
        self.files.append((file, st))
        for table in tables:
            self.rows += table.num_rows
            self.nbytes += table.nbytes
            self._put(table)
        self._put(_FileEnd())

    def close(self) -> _Part:
        """No more files: the future gives, per file, (rows, steps, digest) once the part is written."""
        self._put(_END)
        self.writers.queues.remove(self.q)
        return self

    def _put(self, item: Any) -> None:
        while True:
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.future.done():  # the writer failed: its error, here
                    self.future.result()


class _Aborted(Exception):
    """A part's writer was told to stop (the ingest failed): its temporary file is removed."""


def _queued(q: queue.Queue) -> Iterator[pa.Table]:
    while (item := q.get()) is not _END:
        if item is _ABORT:
            raise _Aborted
        yield item


def _part_tables(raw: Iterator[tuple[SourceFile, Any]], ctx: ReadContext,
                 batch_rows: int = FINALIZE_ROWS) -> Iterator[tuple[SourceFile, Any]]:
    """The stream of `Reader.read_files` with each raw table finalized into a part table. Consecutive raw tables of one
    schema are finalized together up to `batch_rows` rows (`finalize_parts`: a file's fixed cost, paid once per
    batch), then handed on as they came, each file's tables and its end."""
    held: list[tuple[SourceFile, Any]] = []  # in order: tables, and the ends of their files
    first, rows = None, 0  # the batch's first table, its rows

    def flush() -> Iterator[tuple[SourceFile, Any]]:
        tables = iter(finalize_parts([(t, f) for f, t in held if t is not None], ctx))
        for f, t in held:
            yield f, (next(tables) if t is not None else None)

    for file, table in raw:
        if table is not None:
            if first is not None and (rows + table.num_rows > batch_rows or not same_raw_schema(first, table)):
                yield from flush()
                held, first, rows = [], None, 0
            first = table if first is None else first
            rows += table.num_rows
        held.append((file, table))
    yield from flush()


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
            **({"reward_weights": dict(options.reward_weights)} if options.reward_weights else {}),
            "conditions": [[r.name, r.pattern] for r in rules]}


def step_range(table: pa.Table) -> list[int] | None:
    """[first, last] step of `table`'s rows (None: no steps)."""
    mm = pc.min_max(table["step"]).as_py()
    return None if mm["min"] is None else [int(mm["min"]), int(mm["max"])]


def _union(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    if a is None or b is None:
        return a or b
    return [min(a[0], b[0]), max(a[1], b[1])]


def _may_hold(steps: list[int] | None, wanted: np.ndarray | None) -> bool:
    """Whether a part with step range `steps` ([first, last], None: unknown) may hold one of `wanted` (sorted)."""
    if wanted is None or steps is None:
        return True
    i = int(np.searchsorted(wanted, steps[0]))
    return i < len(wanted) and wanted[i] <= steps[1]


def sql_string(text: object) -> str:
    """A SQL string literal of `text` (single quotes doubled)."""
    return "'" + str(text).replace("'", "''") + "'"


def sql_ident(name: str) -> str:
    """A quoted SQL identifier of `name` (double quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def format_groups(parts: Iterable[tuple[Path, tuple[int, tuple[str, ...]]]]
                  ) -> list[tuple[tuple[int, tuple[str, ...]], list[str]]]:
    """Part files with their (layout, shared reward signals) (`Store.part_formats`), grouped by it, in a stable
    order: one `read_parquet` of each group (`canonical_selects`)."""
    by_format: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    for path, fmt in parts:
        by_format.setdefault(fmt, []).append(str(path))
    return sorted(by_format.items())


def canonical_selects(groups: list[tuple[tuple[int, tuple[str, ...]], list[str]]], where: str | None = None
                      ) -> list[str]:
    """One SELECT of the canonical columns (`layout.view_columns`) per group of `format_groups`, each filtered by
    `where` (SQL on columns every layout stores as they are) in its own scan; to be joined by UNION ALL."""
    filt = f" WHERE {where}" if where else ""
    return [f"SELECT {view_columns(*fmt)} FROM read_parquet({sql_list(paths)}){filt}" for fmt, paths in groups]


def sql_list(items: list[str]) -> str:
    """A SQL list literal of strings (file lists for `read_parquet`)."""
    return "[" + ", ".join(sql_string(s) for s in items) + "]"


def sql_when(condition: str, value: str = "1") -> str:
    """`CASE WHEN condition THEN value END`. An aggregate of it equals the aggregate of `value` FILTER (WHERE
    condition) (count, sum, min, max, avg, stddev: the same values in the same order, so the same result and
    type), and runs faster: DuckDB 2.0 evaluates a FILTER clause as a selection per aggregate. The per-part
    statistics' reward cells (30 filtered aggregates over a batch of 160,000 rollouts of the 1M benchmark, grouped
    by step, condition and task) took 58.7 CPU ms with FILTER and 30.7 with CASE, the same rows
    (`benchmarks/partstats.py`, 2026-12-05; 1.8x in a slower minute)."""
    return f"CASE WHEN {condition} THEN {value} END"
