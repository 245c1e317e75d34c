"""The `cot_grading` detector: which graders saw the policy's chain-of-thought, how often, since when.

Two methods, both emitting findings of kind `cot_grading`:

- `scan` (`cot_scan.py`): direct evidence. Where grader inputs are logged (or captured with `rlaudit.cot.capture`),
  look for the rollout's reasoning inside them. Severity high by default: any exposure is a training bug.
- `screen` (`cot_screen.py`): statistical evidence from scores alone, for graders whose input is unknown. Within a
  prompt group, rollouts with identical answers should get identical scores from a grader that reads only the
  answer; a score difference that tracks the reasoning is suspicious. Severity low/medium, labelled as
  statistical. Graders covered by the scan are not screened.

Options (`AuditConfig.options["cot_grading"]`): the `ScanParams` fields (k, min_matched, min_containment,
min_span, group_context), `min_exposed` (exposed rollouts needed for a finding, default 1), `severity`
(default "high"), `max_evidence` (5), `screen` (default True), `screen_alpha` (FDR level, 0.05).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ..derived import segments
from ..findings import Finding
from ..layout import view_columns
from ..memory import shared_jobs, workers
from .. import duck, progress
from ..store import (Store, canonical_selects, format_groups, key_source, listing, part_source,
                     sql_list, sql_string, write_atomic, write_cached)
from ..detectors import DetectContext, Detector, register
from .scan import (EMPTY_RESULTS, ScanParams, findings_from_results, iter_batches, read_scan_columns,
                   scan_file_batches, file_batches)
from . import kernels as cot_kernels
from .screen import screen
from .screen_keys import cache_dir as keys_cache, key_writer, screen_keys
from .screen_sets import candidate_keys
from . import summary as summaries


#: `ctx.cache`'s key of the scan `CotGradingDetector.prefetch` ran
_SCANNED = "cot_grading.scanned"


@register
class CotGradingDetector(Detector):
    name = "cot_grading"
    kinds = ("cot_grading",)
    description = "Graders that saw the reasoning: scan of logged grader inputs, plus a statistical screen."
    light = True  # once the scan (`prefetch`) is done: its per-part results and the evidence of a few parts

    def prefetch(self, ctx: DetectContext) -> None:
        """The scan of every stored part (`_scan`), for `detect`: it reads the parts alone."""
        ctx.cache[_SCANNED] = self._scan(ctx)

    def _scan(self, ctx: DetectContext) -> tuple[Any, ...]:
        """(options, params, extra, also, parts, per_part): the run's parts and their scan results (`scan_parts`),
        with the screen's answer keys (`also`) cached in the same read of each part."""
        options = ctx.config.options.get(self.name, {})
        params = ScanParams.from_options(options)
        key, extra = scan_key(ctx.store, ctx.run, params)
        # the scan reads every column the screen's answer keys need: it caches them too, each part read once
        also = key_writer(ctx.store, ctx.run) if options.get("screen", True) else None
        parts = ctx.store.parts(ctx.run)
        per_part = scan_parts(ctx.store, ctx.run, params, key, extra, also=also, per_part=True, segment=True)
        return options, params, extra, also, parts, per_part

    def detect(self, ctx: DetectContext) -> list[Finding]:
        scanned = ctx.cache.pop(_SCANNED, None)
        options, params, extra, also, parts, per_part = scanned if scanned is not None else self._scan(ctx)
        con = ctx.connect()
        where = ["TRUE"]
        if ctx.config.max_step is not None:
            where.append(f"step <= {int(ctx.config.max_step)}")
        if ctx.config.split:
            where.append(f"split = '{ctx.config.split}'")
        # counts and exposures from each part's summary of its results; the evidence reads only its parts
        summaries.register_summaries(con, per_part, parts)
        found = findings_from_results(con, _results_source(per_part, parts), ctx.run, params, " AND ".join(where),
                                      options, evidence_source="rollouts", extra_inputs=extra,
                                      part_rows=_part_rows(ctx.store, ctx.run, parts, " AND ".join(where)))
        if options.get("screen", True):
            scanned = set(con.execute("SELECT DISTINCT grader FROM _cot_counts WHERE NOT chance")
                          .fetchnumpy()["grader"].tolist())
            # only the rows that can pair, where no prompt group spans two parts; else every key
            keys = None
            if getattr(ctx.store, "persist_derived", True):
                keys = candidate_keys(ctx.store, ctx.run, keys_cache(ctx.store, ctx.run), " AND ".join(where),
                                      held=also.sets if also is not None else None,
                                      held_groups=also.groups if also is not None else None)
            if keys is None:
                keys = screen_keys(ctx.store, ctx.run, " AND ".join(where))
            found += screen(con, ctx.run, options, skip_signals=scanned, seed=ctx.config.seed, keys=keys)
        con.close()
        return found


def _results_source(per_part: dict[str, Any], parts: list[Path]) -> pa.Table | str:
    """The scan results of `parts` (`scan_parts(..., per_part=True)`) as `scan_parts` returns them."""
    values = [per_part[p.name] for p in parts]
    paths = [str(v) for v in values if isinstance(v, Path)]
    if len(paths) == len(values) and paths:
        return f"read_parquet({sql_list(paths)})"
    tables = [v if not isinstance(v, Path) else pq.read_table(v) for v in values]
    return pa.concat_tables([EMPTY_RESULTS, *tables])


def _part_rows(store: Store, run: str, parts: list[Path], where: str) -> Callable[[list[str]], str]:
    """A function: part file names -> SQL of their rows within `where`, in the columns of the `rollouts` view."""
    formats = store.part_formats(run)
    by_name = {p.name: p for p in parts}

    def rows(names: list[str]) -> str:
        selects = canonical_selects(format_groups((by_name[n], formats.get(n, (1, ()))) for n in names))
        return f"SELECT * FROM ({' UNION ALL '.join(selects)}) WHERE {where}"

    return rows


def scan_parts(store: Store, run: str, params: ScanParams, key: str, extra: str | None,
               only: set[str] | None = None, stride: int | None = None,
               also: Callable[[Path, pa.Table, int], None] | None = None,
               per_part: bool = False, segment: bool = False) -> pa.Table | str | dict[str, Any]:
    """The scan results of every stored part of the run, each part scanned once and cached beside the run
    (`derived/cot_scan/<key>/<part>.parquet`): a run that grows by a step scans only the new part. Returned as
    SQL over the cached files (or a table, for stores that keep derived data in memory); with `per_part`, a
    dict part name -> cached file or table.

    Chance pairings (see `cot_scan`) are drawn per source file: a part holding several files (`Store.part_rows`)
    is scanned file by file, in batches within each file's rows, and batch i of a file gets them when the run had
    at most `chance_rows` rollouts with grader inputs when the part was scanned, else when a hash of (the file's
    source, i) falls in 1/stride of the range, i.e. about `chance_rows` of them spread evenly over the run; the
    same batches at every ingest of the same files (`store.key_source`), however the files were grouped into
    parts (ingested at once or step by step), so a run audited twice gets the same findings.

    A shard of the run (`rlaudit.fleet.shard`) passes `only` (its part file names: only those are scanned and
    returned) and `stride`, the one `scan_stride` computed for the whole run, so each part gets the same chance
    pairings as in an unsharded scan.

    `also(part, columns, layout)` is called with the stored columns of each part the scan reads (every row; not
    for runs with captured grader inputs, which are scanned in DuckDB), for derived data of the same columns.

    Each part scanned now is summarised from its results in hand (`summary.summarise`); with `segment` (an audit
    of the whole run) the summaries of whole groups of parts scanned now go straight into the segments
    `register_summaries` reads (`summary.fresh`), not into a file each."""
    persist = getattr(store, "persist_derived", True)
    memo = store.__dict__.setdefault("_cot_scan_memo", {})
    parts = store.parts(run)
    layouts = store.part_layouts(run)
    base = store.run_dir(run) / "derived" / "cot_scan"
    cache = base / key
    if only is not None:
        parts = [p for p in parts if p.name in only]
    found, todo = _scanned(store, parts, key, cache, persist, memo)
    counts = None
    if todo:
        if persist:  # the row counts of the parts scanned before, for the stride; rescanned parts get new ones
            counts = RowCounts(cache)
            counts.drop(f"{p.stem}.parquet" for p in todo)
        if cot_kernels.use_numba():
            cot_kernels.compiled()  # compiled (or loaded from numba's cache) once, before the threads
        con = duck.connect()
        # captured inputs: the parts are scanned by SQL over their views
        selects = _part_selects(todo, store.part_formats(run)) if extra is not None else []
        _part_views(con, selects)
        if stride is None:
            stride = _stride(con, todo, found, params, counts)
        fresh = summaries.fresh([cache / f"{p.stem}.parquet" for p in parts],
                                [cache / f"{p.stem}.parquet" for p in todo]) if segment and persist else None
        with fresh or contextlib.nullcontext():
            # the parts to scan only: a live step scans one part of a run that lists thousands
            stored = store.stored_parts(run)
            files = {p.name: [(key_source(k), span) for k, span in zip(s.files, s.spans)]
                     for p in todo if (s := stored.get(p.name)) is not None}
            scanned = _scan_todo(con, todo, layouts, params, extra, stride, cache if persist else None, also,
                                 fresh, counts, files, selects)
        for path, value in zip(todo, scanned):
            found[path.name] = value
            if not persist:
                memo[(key, path.name)] = value
        con.close()
    if persist and only is None and base.is_dir():  # other parameters' results, and parts the run no longer lists
        for d in base.iterdir():
            if d.is_dir() and d.name != key:
                shutil.rmtree(d, ignore_errors=True)
        stems = {p.stem for p in parts}
        for f in cache.glob("*.parquet") if cache.is_dir() else []:
            if f.stem not in stems:
                with contextlib.suppress(OSError):  # a read-only store keeps its stale files
                    f.unlink(missing_ok=True)
        if counts is not None:
            counts.save(keep={f"{s}.parquet" for s in stems})
    elif counts is not None:
        counts.save()
    if per_part:
        return {p.name: found[p.name] for p in parts}
    return _results_source(found, parts)


#: Bytes one thread of the scan holds at a time, per row of `ScanParams.batch_rows` (texts, shingle arrays and
#: their sorts): what `memory.workers` weighs against the memory budget.
_BYTES_PER_BATCH_ROW = 16 << 10


def _chance(source: str, stride: int) -> Callable[[int], bool]:
    """Whether batch i of the rows of `source` (not the ingest time in a part's name: the same pairings at every
    ingest) gets chance pairings: about 1 in `stride` of them."""
    return (lambda b: zlib.crc32(f"{source}:{b}".encode()) % stride == 0) if stride > 1 else (lambda b: True)


def _scan_todo(con: duckdb.DuckDBPyConnection, todo: list[Path], layouts: dict[str, int], params: ScanParams,
               extra: str | None, stride: int, cache: Path | None,
               also: Callable[[Path, pa.Table, int], None] | None = None,
               fresh: segments.Fresh | None = None, counts: RowCounts | None = None,
               files: dict[str, list[tuple[str, tuple[int, int]]]] | None = None,
               selects: Sequence[str] = ()) -> list[Any]:
    """Scan the parts `todo`, each on a cursor of its own (of `con`'s database, where a part's rows are the
    temp view p<i> of its `selects`, with captured inputs `extra`), on `memory.workers` threads: per part the
    cached file (a table where the store cannot be written, or `cache` is None).
    `files`: per part name its source files' (source, (first row, rows)), scanned one after another (a part
    not listed is one file).
    `counts` receives the row count of each file written; `fresh` the summaries it plans (`summary.fresh`),
    handed over by the calling thread (`Fresh.add` is not for the workers), the others are written as files."""

    def one(i: int) -> Any:
        name = todo[i].name
        if extra is None:  # the part alone: read with Arrow
            layout = layouts.get(name, 1)
            raw = read_scan_columns(todo[i], layout)
            if also is not None:
                also(todo[i], raw, layout)
            sources = (files or {}).get(name)
            if not sources or sum(rows for _, (_, rows) in sources) != raw.num_rows:  # one file (or a part of a
                sources = [(part_source(name), (0, raw.num_rows))]  # view the manifest does not describe)
            batches = file_batches(raw, layout, params.batch_rows, [span for _, span in sources],
                                   spans=cot_kernels.use_numba())
            table = scan_file_batches(((b, _chance(source, stride)) for b, (source, _) in zip(batches, sources)),
                                      params)
        else:  # captured inputs are merged into the grader inputs by a join: per source file, in its rows' order
            sources = (files or {}).get(name) or [(part_source(name), None)]
            cur = con.cursor()
            try:
                _part_views(cur, selects[i:i + 1], first=i)
                table = scan_file_batches(((_captured_batches(cur, i, j, span, params, extra), _chance(source, stride))
                                           for j, (source, span) in enumerate(sources)), params)
            finally:
                cur.close()
        if cache is None:
            return table, None
        # no column statistics: the results are read whole (by their summary, or a sharded audit's merge)
        path = write_cached(cache / f"{todo[i].stem}.parquet", table, compression="lz4", use_dictionary=False,
                            write_statistics=False)
        if isinstance(path, Path):  # summarised here, from the table in hand, not read back by the main thread
            if counts is not None:
                counts.set(path, table.num_rows)
            summary = summaries.summarise(table, name)
            spath = summaries.summary_path(path)
            if fresh is not None and fresh.planned(spath):
                return path, (spath, summary)
            summaries.write_summary(spath, summary)
        return path, None

    def done(out: tuple[Any, tuple[Path, pa.Table] | None]) -> Any:
        value, planned = out
        if planned is not None and fresh is not None:
            spath, summary = planned
            fresh.add(spath, summary, lambda: summaries.write_summary(spath, summary))
        return value

    def shown(i: int) -> Any:
        out = one(i)
        parts_done.advance()
        return out

    n = min(len(todo), workers(params.batch_rows * _BYTES_PER_BATCH_ROW))
    with progress.tracking("CoT scan", len(todo)) as parts_done:
        if n <= 1:  # a thread waiting for this one (an audit's background scan) may scan some of the parts
            return [done(out) for out in shared_jobs(shown, len(todo))]
        with ThreadPoolExecutor(n, thread_name_prefix="cot-scan") as pool:
            return [done(out) for out in pool.map(shown, range(len(todo)))]


def _scanned(store: Store, parts: list[Path], key: str, cache: Path, persist: bool,
             memo: dict[Any, Any]) -> tuple[dict[str, Any], list[Path]]:
    """Scan results already at hand (part name -> file or table) and the parts still to scan."""
    found: dict[str, Any] = {}
    todo = []
    names = listing(cache) if persist else set()  # one listing, not a stat per part
    for path in parts:
        f = cache / f"{path.stem}.parquet"
        if (key, path.name) in memo:
            found[path.name] = memo[(key, path.name)]
        elif persist and f.name in names:
            found[path.name] = f
        else:
            todo.append(path)
    return found, todo


def _captured_batches(cur: duckdb.DuckDBPyConnection, i: int, j: int, span: tuple[int, int] | None,
                      params: ScanParams, extra: str) -> Iterator[pa.RecordBatch]:
    """The scan's batches of source file j of part view p<i> (its rows `span` of the part; None: every row), their
    grader inputs merged with the captured ones (`extra`), in the rows' stored order."""
    rows = "" if span is None else f" WHERE _row >= {span[0]} AND _row < {span[0] + span[1]}"
    cur.execute(f"CREATE OR REPLACE TEMP VIEW p{i}_{j} AS SELECT * FROM p{i}{rows}")
    return iter_batches(cur, params.batch_rows, f"p{i}_{j}", extra, order="_row")


def _part_selects(todo: list[Path], formats: dict[str, tuple[int, tuple[str, ...]]]) -> list[str]:
    """Each part's rows, with each row's position in the part as `_row` (which source file's rows it is among,
    and the order the scan batches them in: a join's output order is DuckDB's to choose)."""
    return [f"SELECT {view_columns(*formats.get(path.name, (1, ())))}, file_row_number AS _row "
            f"FROM read_parquet({sql_string(str(path))}, file_row_number = true)" for path in todo]


def _part_views(con: duckdb.DuckDBPyConnection, selects: Sequence[str], first: int = 0) -> None:
    """The temp views p<first>, p<first + 1>, ... of `selects` (`_part_selects`) on `con`: temp views are the
    connection's own, so each scanning thread's cursor makes the one it reads."""
    for i, select in enumerate(selects, first):
        con.execute(f"CREATE TEMP VIEW p{i} AS {select}")


def _stride(con: duckdb.DuckDBPyConnection, todo: list[Path], found: dict[str, Any], params: ScanParams,
            counts: RowCounts | None = None) -> int:
    """1 in `stride` batches gets chance pairings: about `chance_rows` rollouts with grader inputs in all.
    `counts`: the cached row counts of scanned parts (`RowCounts`), so that a warm audit does not open every
    result file's footer."""
    counted = 0
    for name, v in found.items():
        if not isinstance(v, Path):
            counted += v.num_rows
        elif counts is not None:
            counted += counts.rows(v)
        else:
            counted += pq.read_metadata(v).num_rows
    # one query over the part files (grader_inputs is stored as is in every layout), not one view per part
    files = ", ".join(sql_string(str(p)) for p in todo)
    new_rows = con.execute(f"SELECT count(*) FROM read_parquet([{files}], union_by_name = true) "
                           "WHERE cardinality(grader_inputs) > 0").fetchall()[0][0] or 0
    # rows already scanned count each rollout once (chance rows are a subset of them): a lower bound is enough
    total = int(new_rows) + counted // 2
    return max(1, -(-total // max(1, params.chance_rows)))


class RowCounts:
    """The row count of each cached result file of a scan cache, in one small file beside them
    (`rows.json`: result file name -> rows), which is all `_stride` needs of the parts scanned before: a warm
    audit then reads one file, not the footer of every part's results (O(parts) at 10M rollouts: ~0.2 CPU s for
    2,000 parts). A file the index does not name (results of an older version, a lost concurrent update) is
    counted from its footer and added. An entry is dropped when its part is scanned again (its file was
    missing) and replaced by the new count; a concurrent audit's update may be lost (each writes the whole
    index, atomically), which only costs a footer read later."""

    NAME = "rows.json"

    def __init__(self, cache: Path):
        self.path = cache / self.NAME
        try:
            self.counts: dict[str, int] = {str(k): int(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self.counts = {}
        self.changed = False

    def rows(self, results: Path) -> int:
        n = self.counts.get(results.name)
        if n is None:
            n = self.counts[results.name] = pq.read_metadata(results).num_rows
            self.changed = True
        return n

    def set(self, results: Path, rows: int) -> None:
        if self.counts.get(results.name) != rows:
            self.counts[results.name] = rows
            self.changed = True

    def drop(self, names: Iterable[str]) -> None:
        for name in names:
            if self.counts.pop(name, None) is not None:
                self.changed = True

    def save(self, keep: set[str] | None = None) -> None:
        """Write the index where it changed; `keep`: the file names still cached (others are dropped)."""
        if keep is not None:
            self.drop([n for n in self.counts if n not in keep])
        if self.changed:
            text = json.dumps(self.counts, sort_keys=True, separators=(",", ":"))
            write_atomic(self.path, lambda tmp: tmp.write_text(text))
            self.changed = False


def scan_stride(store: Store, run: str, params: ScanParams, key: str) -> int:
    """The stride `scan_parts` would use for the run's unscanned parts, computed once for the whole run by the
    driver of a sharded audit and handed to every shard (1 when nothing is left to scan)."""
    persist = getattr(store, "persist_derived", True)
    memo = store.__dict__.setdefault("_cot_scan_memo", {})
    cache = store.run_dir(run) / "derived" / "cot_scan" / key
    found, todo = _scanned(store, store.parts(run), key, cache, persist, memo)
    if not todo:
        return 1
    counts = RowCounts(cache) if persist else None
    con = duck.connect()
    try:
        return _stride(con, todo, found, params, counts)
    finally:
        con.close()
        if counts is not None:
            counts.save()


def scan_key(ctx_store: Store, run: str, params: ScanParams) -> tuple[str, str | None]:
    """The cache key of the run's scan results and the captured grader inputs merged into it (if any)."""
    from .capture import captured_inputs_path

    path = captured_inputs_path(ctx_store, run)
    captured = None
    if path.is_file():
        st = path.stat()
        captured = (str(path), f"{st.st_size:x}{st.st_mtime_ns:x}"[-12:])
    key = f"cot_scan-{params.cache_key()}" + (f"-{captured[1]}" if captured else "")
    return key, captured[0] if captured else None
