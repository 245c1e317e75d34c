"""Attribution from per-part statistics: a warm audit after a new step reads only that step's part.

Every estimate of `trace.attribute` is a sum over comparison groups of per-group quantities (U and pairs of the
paired preference, paired difference sums, the pressure's covariance sum, the outcome-matched U and pairs), and a
comparison group lies within one step. A stored part never changes, so for each behaviour and each part holding
whole steps, what attribution needs from its rollouts is computed once and cached beside the run
in one file per part and behaviour (`derived/attribution/v<VERSION>-duckdb<version>/<behaviour key>/<part>.parquet`,
merged into segments by `rlaudit.derived.segments`; the parts of a complete level-1 group that an audit computes
at once are written into their segment only, each row once, and count as cached there) holding rows of three
kinds (`kind`):

- `g`, groups: per comparison group (its DuckDB hash key, as `load_frames` groups), its step, size, rollouts with a
  reward, the sd of the total reward and its largest |total|, the condition and task of its first rollout; per
  signal (components, the residual `other`, the total) U, pairs, the paired difference sum, the pressure's
  covariance sum *before* the signal's weight and the group's 1/sd (both are run-wide decisions applied when the
  tables are merged), and the outcome-matched U and pairs; the advantage check's centred sums.
  These are exactly the per-group values `attribute` computes from a frame of the whole run (within-group ranks
  and sums do not depend on other groups), so the merged estimates, bootstrap and p-values equal it.
- `s`, steps: per step, what the run-wide decisions need: rows, rows with a finite total, the sum of squared totals,
  the R factor of [components | total] over those rows (the component weights are fitted by least squares on
  the stacked R factors: the same minimiser as `lstsq` over every row, stable, not the normal equations), and per
  signal its finite, infinite and equal-to-the-total counts; the behaviour's sum and whether it is 0/1.
- `c`, conditions and tasks: per step, condition and task, rollouts, the behaviour's sum and the first row it appears at.

The keys: the behaviour (spec, where, direction), the split of the audit's scope, the comparison key and the
outcome signals; the step limit (`max_step`) filters the merged steps. A part with rollouts whose total is
missing (rebuilt from the fitted weights) keeps its groups in `<part>.<weights>.parquet`, keyed by those weights. The step or group sample
of a large run (`trace._step_sample`) is decided as `load_frames` decides it, from cached per-part counts
(`partstats`), and only the kept steps' tables are merged.

Not cached (the caller traces them from the rows, `trace.load_frames`): behaviours without a SQL form (Python
predicates, judges), runs whose steps are split across parts (a comparison group could span two parts), runs
sampled by comparison group (few, very large steps), and a non-numeric behaviour with non-0/1 values in some part.
A store that keeps derived data in memory, or cannot be written, gets the tables in memory for this audit.
The audit that computes the tables traces from them as computed (`_Ctx._hand_over`), not read back.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import duck, progress, stats
from ..derived import segments
from ..behaviors import Behavior
from ..layout import reward_sql, view_columns
from ..derived.partstats import CompiledKind, define, each_signal, part_stats
from ..memory import duckdb_limit, round_robin, workers
from ..store import Store, prune_cached, prune_files, sql_list, sql_string, write_cached
from . import trace as tr
from .prefilter import gated_sql

VERSION = 1
#: parts read and computed together (`_Ctx.ensure`): at most BATCH_PARTS of them, and no more parts once a batch
#: holds BATCH_ROWS rollouts (what 16 parts of the 1M-rollout benchmark's 5,000-row steps held): a part that
#: groups many step files (`Store.part_rows`) is a batch's worth on its own
BATCH_PARTS = 16
BATCH_ROWS = 80_000
#: rows per Arrow record batch of a streamed read (`_Ctx._stream`)
STREAM_ROWS = 16_384
#: bytes a batch holds per rollout while its tables are computed (its columns, the sort and the per-signal arrays)
_BYTES_PER_ROW = 2_000
#: bytes of computed tables kept for the trace instead of read back (`_Ctx._hand_over`; the 1M-rollout benchmark's
#: behaviour: ~60 MB of peak RSS); a larger run reads them back, so that its peak does not grow with it
HAND_OVER = 128 << 20
#: per part, split and step: what `load_frames` counts before it reads any rollout (the step sample, the
#: comparison key, the signals), so that those decisions need no scan of the run
def meta_sql(signals: tuple[str, ...]) -> str:
    """The per-step counts, and a row per signal a step's rollouts have (`partstats.SIGNAL_COLUMNS`)."""
    has = ", ".join(f"bool_or(_h{i}) AS h{i}" for i in range(len(signals)))
    per_signal = each_signal(signals, lambda i, name: (
        f"SELECT _part, split, step, NULL, NULL, NULL, NULL, NULL, {name} FROM steps WHERE h{i}"))
    return f"""
WITH steps AS (SELECT _part, split, step, count(*) AS n, count(group_id) AS n_group, count(reward) AS n_reward,
                      count(advantage) AS n_adv, count(task) AS n_task, {has}
               FROM src GROUP BY _part, split, step)
SELECT _part, split, step, n, n_group, n_reward, n_adv, n_task, NULL::VARCHAR AS signal FROM steps
UNION ALL
{per_signal}
"""


def meta_arrow(keys: Any, signals: tuple[str, ...], schema: pa.Schema) -> pa.Table:
    """`meta_sql`'s rows from the batch's columns (`partstats.CompiledKind`; `grouped.Keys` of its rows)."""
    from ..derived import grouped

    t = keys.table
    ids, first = keys.groups(*grouped.STEP)
    g, step = len(first), grouped.keyed(keys, grouped.STEP, first)
    counts = {name: grouped.count(ids, g, np.asarray(t.column(f"_is_{name}").to_numpy(zero_copy_only=False), bool))
              for name in ("n_group", "n_reward", "n_adv", "n_task")}
    pieces = [(g, {**step, "n": grouped.count(ids, g), **counts})]
    for i, name in enumerate(signals):
        has = grouped.count(ids, g, keys.bools(f"_h{i}")[0]) > 0  # bool_or: some rollout has it
        pieces.append((int(has.sum()), {**grouped.pick(step, has), "signal": name}))
    return grouped.table(schema, pieces)


#: computed with the other per-part statistics in one read of each part (the detector declares it)
META = define("attribution_meta", VERSION, meta_sql,
              ("split", "step", "group_id", "reward", "advantage", "task", "rewards"),
              CompiledKind((("_part", "_part"), ("split", "split"), ("step", "step"),
                            ("_is_n_group", "group_id IS NOT NULL"), ("_is_n_reward", "reward IS NOT NULL"),
                            ("_is_n_adv", "advantage IS NOT NULL"), ("_is_n_task", "task IS NOT NULL")), meta_arrow))
_COUNTS = ("n", "n_group", "n_reward", "n_adv", "n_task")
_TOTAL, _OTHER = "total", "other"  # the column names of the total and the residual (components: `_name`)
_STATS = ("u", "pairs", "diff", "pnum", "mu", "mpairs")
_CHECK = ("ok_n", "a_mean", "a_m2", "rc_mean", "rc_m2", "c_arc", "s_xa", "s_xrc")


@dataclass
class Item:
    behavior: Behavior
    where: str
    direction: str
    expr: str


def traces(store: Store, run: str, con: duckdb.DuckDBPyConnection, max_step: int | None, split: str | None,
           items: list[tuple[Behavior, str, str]], *, outcome_signals: list[str], advantage_scale: str,
           n_boot: int, seed: int, also: tuple[str, ...] = ()) -> list[tr.Trace] | None:
    """One trace per (behaviour, where, direction) of `items`, with evidence, from per-part statistics; None when
    the run or a behaviour is not cacheable (module doc), for the caller to trace from the rows. `con`: the
    audit's scoped connection (used only for the comparison key of runs without group ids). `also`: the audit's
    other kinds of per-part statistics, computed with `attribution_meta` where it is missing (`_meta`)."""
    specs = [Item(b, w, d, gated_sql(b, w)) for b, w, d in items]
    if any(it.expr is None or it.where not in ("answer", "reasoning") for it in specs):
        return None
    manifest = store.manifest(run)
    parts = store.parts(run, manifest)
    layouts = store.part_formats(run, manifest)
    meta = _meta(store, run, max_step, split, also)
    if meta is None:
        return None
    step_of_part, steps_arr, rows_arr = meta["part_steps"], meta["steps"], meta["rows"]
    probe = steps_arr[np.linspace(0, len(steps_arr) - 1, min(len(steps_arr), 16)).astype(np.int64)]
    n_signals = len(_union(meta["signals"], set(probe.tolist())))
    columns = lambda k: k + len(specs) + 6  # noqa: E731  (as `load_frames`: no text columns here)
    traced, where_sql, sampled, warnings = tr._step_sample(steps_arr, rows_arr, columns(n_signals), None)
    kept = set(steps_arr.tolist()) if traced is None else set(traced.tolist())
    share = tr.step_share(int(rows_arr.sum()), columns(n_signals), None) if traced is not None else None
    counts = {k: sum(v for s, v in meta[k].items() if s in kept) for k in _COUNTS}
    n = counts["n"]
    signals = sorted(_union(meta["signals"], kept))
    if not signals and counts["n_reward"] == 0:
        return None
    key, grouping, group_key, key_warnings = tr._group_key(con, n, counts["n_group"], where_sql)
    warnings = key_warnings + warnings
    if not sampled and tr._group_sample(n, key, columns(len(signals)), None) is not None:
        return None
    order = _scan_order(parts, layouts)
    needed = [p for p in order if step_of_part.get(p.stem, set()) & kept]
    sample = None
    if share is not None:  # a sampled run: its needed parts' tables hold only the steps of the share (module doc)
        every = np.array(sorted(set().union(*(step_of_part.get(p.stem, set()) for p in needed))), np.int64)
        sample = (share[0], every[stats.stable_uniform(every) < share[0]].tolist())
    ctx = _Ctx(store, run, split, key, outcome_signals, specs, layouts, counts["n_reward"] > 0,
               counts["n_adv"] > 0, meta["part_signals"], meta["part_rows"], order, sample)
    ctx.ensure(needed)  # every needed part's tables of every behaviour (computed for the parts not cached)
    out = []
    for i, it in enumerate(specs):
        t = ctx.trace(i, needed, kept, signals, n, grouping, group_key, warnings, advantage_scale, n_boot, seed,
                      sampled and traced is not None, run)
        if t is None:
            return None
        out.append(t)
    if ctx.persist:
        _prune(ctx, {p.stem for p in parts})
    return out


def _prune(ctx: _Ctx, stems: set[str]) -> None:
    """Remove other versions of the cache, the tables of parts the run no longer lists, and the directories of
    behaviours no audit traced for `segments.GRACE` seconds (an audit tracing them may still be reading)."""
    prune_cached(ctx.root.parent, ctx.root, set())  # other versions; `ctx.root` holds directories only
    now = time.time()
    for d in ctx.root.iterdir() if ctx.root.is_dir() else []:
        if not d.is_dir():
            continue
        if d in ctx.dirs:
            with contextlib.suppress(OSError):
                os.utime(d)
            prune_files(d, stems)
        else:
            with contextlib.suppress(OSError):
                if now - d.stat().st_mtime > segments.GRACE:
                    shutil.rmtree(d, ignore_errors=True)


# ================================================================================================ run-wide counts
def _meta(store: Store, run: str, max_step: int | None, split: str | None, also: tuple[str, ...] = ()
          ) -> dict[str, Any] | None:
    """Per-step counts in the audit's scope from the cached per-part table, each part's steps and signals (in the
    split, at any step: a part's cached tables do not depend on the step limit); None when a step is split
    across parts or the scope holds no rollouts."""
    from ..derived.partstats import scope_sql

    # with the audit's other kinds (`also`) where they are missing: an audit whose generalization computed nothing
    # (no behaviour it follows) would otherwise read every part for these counts alone, then again for the rest
    stats = part_stats(store, run, META.name, also=also)
    within = "TRUE" if max_step is None else f"step <= {int(max_step)}"
    sums = ", ".join(f"sum({k})::BIGINT AS {k}" for k in _COUNTS)
    # grouped by DuckDB: a run of 15,625 steps has ~110,000 rows here, a Python loop over them ~0.2 s a warm audit
    with duck.connect(store.root) as con:
        stats.register(con, "meta", stems=True)
        con.execute(f"CREATE TEMP TABLE m AS SELECT * FROM meta WHERE {scope_sql(None, split)}")
        if con.execute("SELECT count(*) FROM (SELECT step FROM m GROUP BY step HAVING count(DISTINCT _stem) > 1)"
                       ).fetchone()[0]:
            return None  # one step in two parts: its groups may span them
        per_stem = con.execute("""SELECT _stem, list(DISTINCT signal) FILTER (WHERE signal IS NOT NULL),
                                         sum(n) FILTER (WHERE signal IS NULL)::BIGINT,
                                         list(DISTINCT step) FILTER (WHERE signal IS NULL AND """ + within + """)
                                  FROM m GROUP BY _stem""").fetchall()
        signal_steps = con.execute(f"""SELECT step, list(DISTINCT signal) FROM m
                                       WHERE signal IS NOT NULL AND {within} GROUP BY step""").fetchall()
        counts = con.execute(f"""SELECT step, {sums} FROM m WHERE signal IS NULL AND {within}
                                 GROUP BY step ORDER BY step""").fetchnumpy()
    part_signals = {stem: set(sig) for stem, sig, _, _ in per_stem if sig}
    part_rows = {stem: int(n) for stem, _, n, _ in per_stem if n is not None}  # stems with rows of counts
    part_steps = {stem: set(st) for stem, _, _, st in per_stem if st}
    steps = np.asarray(counts["step"], np.int64)
    out: dict[str, Any] = {k: dict(zip(steps.tolist(), np.asarray(counts[k], np.int64).tolist())) for k in _COUNTS}
    out["signals"] = {int(step): set(sig) for step, sig in signal_steps}
    if not int(np.asarray(counts["n"], np.int64).sum()):
        return None
    return {**out, "part_steps": part_steps, "part_signals": part_signals, "part_rows": part_rows, "steps": steps,
            "rows": np.asarray(counts["n"], np.int64)}


def _union(per_step: dict[int, set[str]], steps: set[int]) -> set[str]:
    out: set[str] = set()
    for s in steps & set(per_step):
        out |= per_step[s]
    return out


def _scan_order(parts: list[Path], layouts: dict[str, tuple[int, tuple[str, ...]]]) -> list[Path]:
    """The parts in the order of `Store.connect`'s view (by layout, then as listed): the order rows are read."""
    return sorted(parts, key=lambda p: layouts.get(p.name, (1, ())))


# ================================================================================================ the cache
class _Ctx:
    """The cache of one audit's behaviours: where their tables live, computing and reading them.

    One file per part and behaviour (`<part>.parquet`) holds its three tables as rows of three kinds (`kind`:
    'g' groups, 's' steps, 'c' conditions and tasks); a part with totals rebuilt from the fitted weights keeps
    its groups in `<part>.<weights>.parquet` instead."""

    def __init__(self, store: Store, run: str, split: str | None, key: str, outcome: list[str], items: list[Item],
                 layouts: dict[str, tuple[int, tuple[str, ...]]], has_reward: bool, has_adv: bool,
                 signals: dict[str, set[str]],
                 rows: dict[str, int], order: list[Path], sample: tuple[float, list[int]] | None = None) -> None:
        self.store, self.split, self.key, self.outcome, self.items = store, split, key, outcome, items
        self.layouts, self.has_reward, self.has_adv, self.signals = layouts, has_reward, has_adv, signals
        self.rows = rows  # per part, its rollouts in the split (the memory of a batch)
        self.order = order  # every part of the run, in scan order: what segments are merged and planned over
        self.persist = getattr(store, "persist_derived", True)
        self.root = store.run_dir(run) / "derived" / "attribution" / f"v{VERSION}-duckdb{duckdb.__version__}"
        #: (share, steps): the tables hold only the steps whose hash is below the share (the steps of the parts
        #: whose tables are computed), in directories of that share; None: every step
        self.sample = sample
        shared = [sample[0]] if sample is not None else []
        self.dirs = [self.root / _digest([it.behavior.spec, it.where, it.direction, split, key, sorted(outcome),
                                          has_reward, has_adv] + shared) for it in items]
        self.memo = store.__dict__.setdefault("_attribution_memo", {})
        #: per behaviour, the tables of each kind ('g', 's', 'c') computed by this audit, with the parts they
        #: hold ("stems"), for `_tables` to use instead of reading them back (`_hand_over`); None once given up
        self.computed: list[dict[str, Any] | None] = [{"stems": set(), "g": [], "s": [], "c": []} for _ in items]
        self._computed_bytes = 0
        self._lock = threading.Lock()

    def _held(self, i: int) -> set[str]:
        """Names of behaviour `i`'s part files whose rows a segment holds (a cold audit writes the parts of a
        complete level-1 group into the segment only: `ensure`)."""
        return segments.held(self.dirs[i] / "segments" / "parts") if self.persist else set()

    def _entry(self, i: int, stem: str, tag: str = "", held: set[str] | None = None) -> Path | pa.Table | None:
        """A part's table of behaviour `i`: in memory, or its file's path (the file may be missing where
        `held`, the names `_held` gives, lists it: its rows are then a range of a segment); None when not cached."""
        name = f"{stem}{tag}.parquet"
        hit = self.memo.get((str(self.dirs[i]), name))
        if hit is not None:
            return hit
        path = self.dirs[i] / name
        return path if self.persist and (path.is_file() or name in (held or ())) else None

    def _keep(self, i: int, stem: str, table: pa.Table, tag: str = "") -> Path | pa.Table:
        """Write one part's table of behaviour `i` (or keep it in memory where it cannot be written); returns
        `write_cached`'s answer."""
        name = f"{stem}{tag}.parquet"
        kept = (write_cached(self.dirs[i] / name, table, compression="lz4", use_dictionary=False) if self.persist
                else table)  # lz4, no dictionaries: 2 ms a file against 8 with zstd (82 columns)
        if isinstance(kept, pa.Table):  # not written: kept in memory for this store object
            self.memo[(str(self.dirs[i]), name)] = kept
        return kept

    def ensure(self, parts: list[Path], weights: dict[str, Any] | None = None,
               tags: dict[str, str] | None = None) -> None:
        """Compute the tables of the parts not cached (with `weights`: the weight-keyed groups), up to BATCH_PARTS
        parts (BATCH_ROWS rollouts) per computation (the groups of different parts are independent, so a batch
        gives each part's values; one computation per part would cost more in overhead than the work). Batches run in `memory.workers`
        threads, each writing its own parts' files: most of a batch is numpy and Arrow work that releases the
        GIL, and one thread left the second core idle for most of a cold attribution. Each thread reads its
        batches by one streamed query (`_stream`), not one query a batch: a term behaviour's pattern (its
        Unicode classes) cost DuckDB ~20 ms to compile in every query that evaluates it.

        The parts of a level-1 segment `_tables` would merge next from files all computed now are written into
        that segment only, from the tables in hand (`segments.Fresh`, fed in part order by this thread): each
        row is written once, and nothing is read back to merge (the 1M-rollout benchmark: 192 of its 200 parts'
        tables were written as files and again into segments, the files ~0.4 CPU s on top of the segments)."""
        held = [self._held(i) for i in range(len(self.items))]
        todo = []
        for p in parts:
            miss = [i for i in range(len(self.items))
                    if self._entry(i, p.stem, tags[p.stem] if weights is not None else "", held[i]) is None]
            if miss:
                todo.append((p, miss))
        share = self.sample[0] if self.sample is not None else 1.0  # of each part's rows, read and computed
        batches: list[list[tuple[Path, list[int]]]] = []
        size = 0.0
        for item in todo:
            if not batches or len(batches[-1]) >= BATCH_PARTS or size >= BATCH_ROWS:
                batches.append([])
                size = 0.0
            batches[-1].append(item)
            size += self.rows.get(item[0].stem, 0) * share
        if not batches:
            return
        rows = max(int(sum(self.rows.get(p.stem, 0) for p, _ in b) * share) for b in batches)
        n = min(len(batches), workers(max(rows, 1) * _BYTES_PER_ROW))
        fresh = [self._fresh(i, todo) for i in range(len(self.items))] if weights is None else []
        planned = lambda i, path: bool(fresh) and fresh[i] is not None and fresh[i].planned(path)  # noqa: E731
        # one DuckDB thread per connection also where one thread computes: under the sample's step filter a
        # parallel scan streamed the parts' rows out of their order (`_stream` checks it)
        with _Connections(self.store.root, n, single=self.sample is not None) as cons, \
                contextlib.ExitStack() as stack:
            for f in fresh:
                if f is not None:
                    stack.enter_context(f)

            def produce(k: int) -> Iterator[list[tuple[int, Path, pa.Table]]]:
                """Thread k's batches k, k + n, ... computed from one streamed read (`_stream`)."""
                for batch, table in self._stream(cons.get(), batches[k::n]):
                    yield self._compute(batch, table, weights, tags, planned)

            shown = stack.enter_context(progress.tracking("attribution tables", sum(len(b) for b in batches)))
            for k, kept in enumerate(round_robin(produce, n, len(batches), "rlaudit-attribution")):
                shown.advance(len(batches[k]))
                for i, path, table in kept:  # planned parts: their file is written only if the group is given up
                    # (`_keep` holds what cannot be written at all in memory)
                    fresh[i].add(path, table, functools.partial(self._keep, i, path.stem, table))

    def _fresh(self, i: int, todo: list[tuple[Path, list[int]]]) -> segments.Fresh | None:
        """Behaviour `i`'s level-1 segments of the run's parts (as `_tables` merges their files) that hold only
        parts computed now."""
        if not self.persist:
            return None
        now = {self.dirs[i] / f"{p.stem}.parquet" for p, miss in todo if i in miss}
        return segments.Fresh({"parts": ([self.dirs[i] / f"{p.stem}.parquet" for p in self.order], "lz4")}, now)

    def _compute(self, batch: list[tuple[Path, list[int]]], table: pa.Table, weights: dict[str, Any] | None,
                 tags: dict[str, str] | None, planned: Callable[[int, Path], bool]) -> list[tuple[int, Path, pa.Table]]:
        """Compute, from one batch's rows (`table`, as `_stream` gives them), the tables of the behaviours it
        misses and keep each part's (its file), but for those `planned` into a segment; returns (behaviour, the
        part's file, the table) of the latter, in part order per behaviour, for `ensure` to hand to
        `segments.Fresh`."""
        miss = sorted({i for _, m in batch for i in m})
        signals = self._batch_signals(batch)
        tables = part_tables(table, miss, [self.items[i] for i in miss], signals, self.outcome, weights)
        out = []
        for i, kinds in zip(miss, tables):
            if weights is None:
                self._hand_over(i, [part.stem for part, m in batch if i in m], kinds)
            t = pa.concat_tables(kinds, promote_options="default")
            stems = [part.stem for part, m in batch if i in m]
            for stem, own in zip(stems, _split_by_part(t, stems)):
                tag = tags[stem] if weights is not None else ""
                path = self.dirs[i] / f"{stem}{tag}.parquet"
                if planned(i, path):
                    out.append((i, path, own))
                else:
                    self._keep(i, stem, own, tag)
        return out

    def _hand_over(self, i: int, stems: list[str], kinds: list[pa.Table]) -> None:
        """Keep the tables of kind 'g', 's', 'c' of `stems` that a batch computed for behaviour `i`, for `_tables`
        (a cold audit then reads back none of what it wrote: ~0.2 CPU s of the 1M-rollout benchmark), up to
        HAND_OVER bytes in all; beyond it every behaviour's tables are read back as before."""
        size = sum(k.nbytes for k in kinds)
        with self._lock:
            if self.computed[i] is None:
                return
            self._computed_bytes += size
            if self._computed_bytes > HAND_OVER:
                self.computed = [None] * len(self.items)
                return
            self.computed[i]["stems"].update(stems)
            for kind, table in zip("gsc", kinds):
                self.computed[i][kind].append(table)

    def _batch_signals(self, batch: list[tuple[Path, list[int]]]) -> list[str]:
        """The signals of a batch's parts (its rows' `_s<j>`: the j-th of them)."""
        return sorted(set().union(*(self.signals.get(p.stem, set()) for p, _ in batch)))

    def _stream(self, con: duckdb.DuckDBPyConnection, batches: list[list[tuple[Path, list[int]]]]
                ) -> Iterator[tuple[list[tuple[Path, list[int]]], pa.Table]]:
        """Each of `batches` with its rows in the audit's split, in scan order, read by one streamed query over
        all their parts (`_select`), cut at the batches' parts: the columns `part_tables` needs (`load_frames`
        reads the same columns through the same expressions; term behaviours gated by `prefilter`, to the same
        values), the batch's signals as `_s<j>`, and `_part`, each row's part, a dictionary of the batch's
        stems (a stem string per row, `parse_filename`, cost ~0.05 CPU s per 1M rows). The rows arrive in the
        order of the parts (one DuckDB scan, insertion order kept), which is checked."""
        parts = [p for b in batches for p, _ in b]
        signals = sorted(set().union(*(self._batch_signals(b) for b in batches)))
        ends = np.cumsum([len(b) for b in batches])
        reader = con.sql(self._select(parts, signals)).to_arrow_reader(STREAM_ROWS)
        pending: list[pa.RecordBatch] = []
        j, last = 0, -1
        for rb in reader:
            index = np.asarray(rb.column("_part").to_numpy(zero_copy_only=False), np.int64)
            if index.size and (index[0] < last or (np.diff(index) < 0).any()):
                raise RuntimeError("attribution: the rows of a streamed read arrived out of their parts' order")
            last = int(index[-1]) if index.size else last
            while True:
                cut = int(np.searchsorted(index, ends[j]))
                pending.append(rb.slice(0, cut))
                if cut == len(index):
                    break
                yield batches[j], self._batch_rows(batches[j], pending, reader.schema, signals, ends[j] - len(batches[j]))
                pending, j, rb, index = [], j + 1, rb.slice(cut), index[cut:]
        for k in range(j, len(batches)):  # the last batch, and any whose rows are all outside the split
            yield batches[k], self._batch_rows(batches[k], pending, reader.schema, signals, ends[k] - len(batches[k]))
            pending = []

    def _select(self, parts: list[Path], signals: list[str]) -> str:
        """The query of `_stream`: `parts` in their order (a UNION ALL of one read per run of parts of one
        layout), `_part` each row's index in `parts`."""
        selects, at = [], 0
        while at < len(parts):
            fmt = self.layouts.get(parts[at].name, (1, ()))
            run = [parts[at]]
            while at + len(run) < len(parts) and self.layouts.get(parts[at + len(run)].name, (1, ())) == fmt:
                run.append(parts[at + len(run)])
            # the signals from the stored columns (`reward_sql`), not from `rewards` rebuilt as a map
            sig = "".join(f", {reward_sql(s, *fmt)} AS _s{j}" for j, s in enumerate(signals))
            selects.append(f"SELECT {view_columns(*fmt)}{sig}, file_index + {at} AS _part "
                           f"FROM read_parquet({sql_list([str(p) for p in run])})")
            at += len(run)
        split = f"split = {sql_string(self.split)}" if self.split else "TRUE"
        if self.sample is not None:  # (read on one DuckDB thread: `ensure`)
            split += f" AND step IN ({', '.join(map(str, self.sample[1])) or 'NULL'})"
        beh = "".join(f", {it.expr} AS _b{i}" for i, it in enumerate(self.items))
        if any(it.where == "reasoning" for it in self.items):
            beh += ", reasoning IS NOT NULL AS _has_r"
        sig = "".join(f", _s{j}" for j in range(len(signals)))
        return (f"SELECT {self.key} AS _group, step, condition, task, reward, advantage{beh}{sig}, _part "
                f"FROM ({' UNION ALL '.join(selects)}) WHERE {split}")

    def _batch_rows(self, batch: list[tuple[Path, list[int]]], chunks: list[pa.RecordBatch], schema: pa.Schema,
                    signals: list[str], first: int) -> pa.Table:
        """One batch's rows of a `_stream` (`chunks`, its parts' indices from `first`, not copied into one chunk
        per column: numpy copies each column as it is asked for), with its own signals as `_s<j>` and `_part` a
        dictionary of its parts' stems."""
        t = pa.Table.from_batches(chunks, schema)
        own = {s: j for j, s in enumerate(self._batch_signals(batch))}
        names = [f"_s{own[s]}" if s in own else None for s in signals]
        keep = [c for c in t.column_names if not c.startswith("_s") or names[int(c[2:])] is not None]
        t = t.select(keep).rename_columns([names[int(c[2:])] if c.startswith("_s") else c for c in keep])
        at = t.schema.get_field_index("_part")
        index = pc.subtract(pc.cast(t.column(at), pa.int32()), pa.scalar(first, pa.int32()))
        stems = pa.array([p.stem for p, _ in batch], pa.string())
        return t.set_column(at, "_part", pa.chunked_array(
            [pa.DictionaryArray.from_arrays(c, stems) for c in index.chunks], pa.dictionary(pa.int32(), pa.string())))

    def _tables(self, i: int, stems: list[str], tags: dict[str, str], kept: set[int]) -> dict[str, pa.Table]:
        """Behaviour `i`'s rows of each kind for `stems` (and the weight-keyed groups of `tags`) at the `kept`
        steps, merged: segments of many parts where they exist (`rlaudit.derived.segments`), else the parts' files."""
        computed = self.computed[i]
        if not tags and computed is not None and computed["g"] and computed["stems"] >= set(stems):
            if self.persist:  # what has accumulated is still merged (as below)
                self._covering(i, [self.dirs[i] / f"{s}.parquet" for s in stems], tags)
            return self._computed_tables(computed, set(stems), kept)
        files, mem = [], []
        held = self._held(i)
        for s in stems:
            for tag in ("", tags[s]) if tags.get(s) else ("",):
                e = self._entry(i, s, tag, held)
                (mem if isinstance(e, pa.Table) else files).append(e)
        steps = pa.array(sorted(kept), pa.int64())
        out: dict[str, list[pa.Table]] = {k: [] for k in "gsc"}
        for t in mem:
            t = t.filter(pc.is_in(t.column("step"), steps))
            for k in "gsc":
                out[k].append(t.filter(pc.equal(t.column("kind"), k)))
        if files:
            paths = self._covering(i, files, tags) if self.persist else files
            with duck.connect(self.store.root, threads=1) as con:
                con.register("_kept", pa.table({"step": steps}))
                every = con.sql(f"SELECT * FROM ({_select(paths)}) "
                                "WHERE step IN (SELECT step FROM _kept)").to_arrow_table()
            kind = every.column("kind")
            for k in "gsc":  # one scan, split here (a scan per kind read every file three times)
                t = every.filter(pc.equal(kind, k))
                # the columns of the other kinds are all NULL here
                out[k].append(t.select([c for c in t.column_names if t.column(c).null_count < t.num_rows
                                        or c in ("cond", "task")]))
        out = {k: pa.concat_tables(v, promote_options="default") for k, v in out.items()}
        out["s"] = out["s"].sort_by("step")  # the run-wide fit sums and stacks them: in one order, however stored
        return out

    @staticmethod
    def _computed_tables(computed: dict[str, Any], stems: set[str], kept: set[int]) -> dict[str, pa.Table]:
        """`_tables` from the tables this audit computed (`_hand_over`): the rows of `stems` at the `kept` steps,
        the steps in step order (as `_tables` orders them)."""
        steps = pa.array(sorted(kept), pa.int64())
        wanted = pa.array(sorted(stems), pa.string())
        out = {}
        for k in "gsc":
            t = pa.concat_tables(computed[k], promote_options="default")
            keep = pc.and_(pc.is_in(t.column("step"), steps), pc.is_in(t.column("part"), wanted))
            if pc.sum(keep).as_py() != t.num_rows:  # (a filter keeping every row still copies every column)
                t = t.filter(keep)
            out[k] = t.select([c for c in t.column_names if t.column(c).null_count < t.num_rows
                               or c in ("cond", "task")])
        out["s"] = out["s"].sort_by("step")
        return out

    def _covering(self, i: int, files: list[Path], tags: dict[str, str]) -> list[Path | segments.Rows]:
        """`segments.covering` of `files`, merged over every part of the run: a merge over some parts (a step
        limit, a sampled run) would in time remove the segments holding the others, now often their only copy.
        Parts not computed are not there and no segment holds them: a merge passes them over."""
        every = [self.dirs[i] / f"{p.stem}{t}.parquet" for p in self.order
                 for t in (("", tags[p.stem]) if tags.get(p.stem) else ("",))]
        if set(every) == set(files):
            return segments.covering(files, "parts")
        segments.covering(every, "parts")
        return segments.covering(files, "parts", merge=False)

    # ------------------------------------------------------------------------------------------- one behaviour
    def trace(self, i: int, parts: list[Path], kept: set[int], signals: list[str], n: int, grouping: str,
              group_key: str, warnings: list[str], scale: str, n_boot: int, seed: int, step_clusters: bool,
              run: str) -> tr.Trace | None:
        it = self.items[i]
        stems = [p.stem for p in parts]
        tags: dict[str, str] = {}
        rows = self._tables(i, stems, tags, kept)
        steps = rows["s"]
        fit = _fit(steps, signals, n, self.has_reward, self.outcome)
        if it.where == "reasoning" and not _col(steps, "n_reasoning").sum():
            return None  # `load_frames` raises the error
        numeric = bool(it.behavior.numeric or not _all(steps, "all01"))
        if numeric and not it.behavior.numeric:
            return None  # non-0/1 values of a presence behaviour: parts with 0/1 values were labelled as presence
        missing = pc.less(steps.column("n_known"), steps.column("n"))
        stems_missing = set(steps.column("part").filter(missing).to_pylist())
        rebuilt = [p for p in parts if p.stem in stems_missing]
        if rebuilt:  # their groups are kept under the weights that rebuilt their totals
            tag = "." + _digest([fit.reward_none, fit.names, [float(w).hex() for w in fit.weights]])
            tags = {p.stem: tag for p in rebuilt}
            self.ensure(rebuilt, weights={"none": fit.reward_none, "names": fit.names,
                                          "weights": dict(zip(fit.names, fit.weights))}, tags=tags)
            rows = self._tables(i, stems, tags, kept)
        return _assemble(it, rows["g"], steps, rows["c"], fit, stems, n, grouping, group_key, warnings,
                         scale, n_boot, seed, step_clusters, run, self, parts, numeric)


class _Connections:
    """One DuckDB connection per thread computing batches (`_Ctx.ensure`), opened at its first batch and closed
    on leaving: a connection per batch cost ~13 ms of CPU each. With `threads` > 1 (batches computed in parallel
    by our own threads) each runs on one DuckDB thread, with its share of DuckDB's memory limit: DuckDB's own
    threads cost more CPU than they saved there (the 1M-rollout benchmark's reads: 2.0 -> 1.8 CPU s)."""

    def __init__(self, root: Path, threads: int, single: bool = False) -> None:
        self.root, self.threads, self.single = root, threads, single
        self._local = threading.local()
        self._opened: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()

    def __enter__(self) -> _Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        for con in self._opened:
            con.close()

    def get(self) -> duckdb.DuckDBPyConnection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = duck.connect(
                self.root, at_most=duckdb_limit() // self.threads if self.threads > 1 else None,
                threads=1 if self.threads > 1 or self.single else None)
            with self._lock:
                self._opened.append(con)
        return con


def _select(paths: list[Path | segments.Rows]) -> str:
    """The rows of `paths` (`segments.covering`'s answer: whole files, and segments' row ranges of parts held
    only there), as one SELECT: the files' columns differ with their parts' signals, so unioned by name."""
    files = [str(p) for p in paths if not isinstance(p, segments.Rows)]
    selects = [f"SELECT * FROM read_parquet({sql_list(files)}, union_by_name = true)"] if files else []
    for r in paths:
        if isinstance(r, segments.Rows):
            rows = " OR ".join(f"file_row_number BETWEEN {lo} AND {hi - 1}" for lo, hi in r.ranges)
            selects.append(f"SELECT * EXCLUDE (file_row_number) FROM read_parquet({sql_string(str(r.path))}, "
                           f"file_row_number = true) WHERE {rows}")
    return " UNION ALL BY NAME ".join(selects)


def _split_by_part(t: pa.Table, stems: list[str]) -> list[pa.Table]:
    """The rows of `t` of each part of `stems` (column `part`), in their order: one stable sort and slices (a
    filter per part cost O(parts x rows))."""
    code = np.asarray(pc.fill_null(pc.index_in(t.column("part"), value_set=pa.array(stems, pa.string())),
                                   len(stems)).to_numpy(zero_copy_only=False), np.int64)
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(len(stems) + 1))
    t = t.take(pa.array(order))
    return [t.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def _name(signal: str) -> str:
    """A component's name in column names: hex, as DuckDB matches column names without regard to case."""
    return "c" + signal.encode().hex()


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _col(t: pa.Table | _Sorted, name: str, fill: float = 0.0) -> np.ndarray:
    if name not in t.column_names:
        return np.full(t.num_rows, fill)
    if isinstance(t, _Sorted):
        return t.numbers(name, fill)
    column = t.column(name)
    return np.asarray((column if column.null_count == 0 else pc.fill_null(column, fill)).to_numpy(
        zero_copy_only=False), np.float64)


class _Sorted:
    """The rows of a table in `order`, column by column as they are asked for: `_assemble` reads every numeric
    column of the merged groups as numpy, so each is reordered there (an Arrow `take` of the whole table, ~80
    columns, cost ~0.1-0.2 CPU s of a cold 1M-rollout audit)."""

    def __init__(self, table: pa.Table, order: np.ndarray) -> None:
        self.table, self.order = table, order
        self.num_rows, self.column_names = table.num_rows, table.column_names
        self._indices = pa.array(order)

    def column(self, name: str) -> pa.Array | pa.ChunkedArray:
        return self.table.column(name).take(self._indices)

    def numbers(self, name: str, fill: float) -> np.ndarray:
        return _col(self.table, name, fill)[self.order]


def _all(t: pa.Table, name: str) -> bool:
    return name not in t.column_names or bool(pc.all(pc.fill_null(t.column(name), True)).as_py() is not False)


# ================================================================================================ one part
def part_tables(t: pa.Table, idx: list[int], items: list[Item], signals: list[str], outcome: list[str],
                weights: dict[str, Any] | None) -> list[list[pa.Table]]:
    """The tables (module doc) of the parts whose rows are `t` (`_part`: each row's part) for each behaviour
    `items[i]` (its values in column `_b<idx[i]>`): per behaviour its rows of kind 'g' (groups), 's' (steps) and
    'c' (conditions and tasks) as three tables (only 'g' with `weights`), each row with its part. `weights`: the run-wide fit ({"none": no total
    logged, "names", "weights"}) that rebuilds missing totals: then only the groups of the parts; without it, the
    parts with a missing total get no groups (they are computed again under the fit's weights)."""
    keys = np.asarray(t.column("_group").to_numpy(zero_copy_only=False))
    order = np.argsort(keys, kind="stable")  # by group key, each group's rows in their order: one sort
    sorted_keys = keys[order]
    groups = tr._Groups.of(np.cumsum(np.r_[False, sorted_keys[1:] != sorted_keys[:-1]]).astype(np.int64)
                           if keys.size else np.zeros(0, np.int64))
    step = np.asarray(t.column("step").to_numpy(zero_copy_only=False), np.int64)[order]

    def strings(name: str, rows: np.ndarray) -> pa.Array:
        """Column `name` at the sorted `rows` (only those: a take of every row's string cost more)."""
        return t.column(name).take(pa.array(order[rows])).cast(pa.string())

    def floats(name: str) -> np.ndarray:
        return np.asarray(pc.fill_null(t.column(name), float("nan")).to_numpy(zero_copy_only=False),
                          np.float64)[order]

    reward, adv_logged = floats("reward"), floats("advantage")
    raw_comps = {s: floats(f"_s{j}") for j, s in enumerate(signals)}
    comps = {s: np.where(np.isinf(v), np.nan, v) for s, v in raw_comps.items()}
    local = [s for s in signals if np.isfinite(comps[s]).any()]
    known = np.isfinite(reward)
    matrix = np.column_stack([np.nan_to_num(comps[s], nan=0.0) for s in local]) if local else None
    other = np.where(known, reward - (matrix.sum(axis=1) if matrix is not None else 0.0), 0.0)
    total = np.where(known, reward, np.nan)
    if weights is not None:
        names = weights["names"]
        g = (np.column_stack([np.nan_to_num(comps[s], nan=0.0) if s in comps else np.zeros(len(step))
                              for s in names]) if names else np.zeros((len(step), 0)))
        if weights["none"]:
            total = g.sum(axis=1)
        else:
            total = reward.copy()
            total[~known] = g[~known] @ np.array([weights["weights"][s] for s in names]) if names else np.nan
    steps_u, step_at, step_code = np.unique(step, return_index=True, return_inverse=True)
    step_code = step_code.ravel()
    steps_cols = _reward_steps(step, steps_u, reward, known, comps, raw_comps, signals, local)
    steps_cols["part"] = strings("_part", step_at)
    # the groups of a part with a missing total are left to the pass with the fit's weights
    missing = np.asarray(steps_cols["n_known"]) < np.asarray(steps_cols["n"])
    rebuilt = pa.array(sorted(set(steps_cols["part"].filter(pa.array(missing)).to_pylist())), pa.string())
    group_part = strings("_part", groups.starts)
    keep_group = (np.asarray(pc.invert(pc.is_in(group_part, rebuilt)))
                  if weights is None else np.ones(groups.n, bool))
    outcome_vals = [comps[s] for s in local if tr.is_outcome_signal(s, outcome)]
    measured = np.any([np.isfinite(v) for v in outcome_vals], axis=0) if outcome_vals else None
    behaviours = []
    for i, it in zip(idx, items):
        raw = np.nan_to_num(floats(f"_b{i}"), nan=0.0)
        numeric = bool(it.behavior.numeric or not np.isin(np.unique(raw), (0.0, 1.0)).all())
        x = raw if it.direction == "up" else (-raw if numeric else 1.0 - raw)
        behaviours.append((i, it, raw, x, tr.behavior_labels(groups, x, numeric)))
    pairs = _Mixed.of(groups, [b[4] for b in behaviours], outcome_vals)
    cond, task = strings("condition", groups.starts), strings("task", groups.starts)
    has_total = np.isfinite(total)
    r = np.where(has_total, total, 0.0)
    n = groups.sum(has_total.astype(float))
    r_c = np.where(has_total, r - np.nan_to_num(tr._ratio(groups.sum(r), n))[groups.codes], 0.0)
    sd = np.sqrt(tr._ratio(groups.sum(r_c**2), n - 1))
    starts = groups.starts
    out = []
    for i, it, raw, x, labels in behaviours:
        x_c = np.where(has_total, x - np.nan_to_num(tr._ratio(groups.sum(x * has_total), n))[groups.codes], 0.0)
        cols: dict[str, Any] = {
            "kind": pa.array(["g"] * groups.n, pa.string()), "part": group_part,
            "key": pa.array(keys[order][starts]), "step": pa.array(step[starts]), "size": pa.array(groups.sizes),
            "rollouts": pa.array(n), "sd": pa.array(sd),
            "rmax": pa.array(np.maximum.reduceat(np.abs(r), starts) if len(r) else np.zeros(0)),
            "cond": cond, "task": task}
        for name, values, kind in ([(s, comps[s], "component") for s in local] + [(_OTHER, other, "other"),
                                                                                   (_TOTAL, total, "total")]):
            key = name if kind == "component" else "\x00" + name  # the rank cache's key
            d = pairs.pair_stats(values, labels, key)
            c = np.where(has_total, np.nan_to_num(values, nan=0.0), 0.0)
            d["pnum"] = groups.sum(x_c * c)
            if outcome_vals and kind != "total" and not (kind == "component" and tr.is_outcome_signal(name, outcome)):
                d["mu"], d["mpairs"] = pairs.matched_stats(np.where(measured, values, np.nan), labels,
                                                           f"matched:{key}")
            column = _name(name) if kind == "component" else name
            for k in _STATS:
                if k in d:
                    cols[f"{k}|{column}"] = pa.array(np.asarray(d[k], np.float64))
        ok = np.isfinite(adv_logged)
        if ok.any():
            a = np.where(ok, adv_logged, 0.0)
            rc = np.where(ok, r_c, 0.0)
            cnt = groups.sum(ok.astype(float))
            a_mean = np.nan_to_num(tr._ratio(groups.sum(a), cnt))
            rc_mean = np.nan_to_num(tr._ratio(groups.sum(rc), cnt))
            da = np.where(ok, a - a_mean[groups.codes], 0.0)
            drc = np.where(ok, rc - rc_mean[groups.codes], 0.0)
            check = {"ok_n": cnt, "a_mean": a_mean, "a_m2": groups.sum(da * da), "rc_mean": rc_mean,
                     "rc_m2": groups.sum(drc * drc), "c_arc": groups.sum(da * drc), "s_xa": groups.sum(x_c * a),
                     "s_xrc": groups.sum(x_c * rc)}
            cols.update({k: pa.array(v) for k, v in check.items()})
        tables = [pa.table(cols) if keep_group.all() else pa.table(cols).filter(pa.array(keep_group))]
        if weights is None:
            steps_item = dict(steps_cols, kind=pa.array(["s"] * len(steps_u), pa.string()))
            steps_item["x"] = pa.array(np.bincount(step_code, weights=raw, minlength=len(steps_u)))
            not01 = np.bincount(step_code, weights=~np.isin(raw, (0.0, 1.0)), minlength=len(steps_u))
            steps_item["all01"] = pa.array(not01 == 0)
            if it.where == "reasoning":  # `load_frames` refuses to trace reasoning in a run without any
                has_r = np.asarray(t.column("_has_r").to_numpy(zero_copy_only=False), bool)[order]
                steps_item["n_reasoning"] = pa.array(np.bincount(step_code, weights=has_r,
                                                                 minlength=len(steps_u)))
            tables += [pa.table(steps_item), _cond_table(t, order, step_code, steps_u, steps_cols["part"], raw)]
        out.append(tables)
    return out


class _Mixed:
    """The pair statistics of a batch's groups, computed over the rows of its mixed groups only: those where some
    behaviour of the batch labels rollouts both 1 and 0 (`behavior_labels`). Only they hold a (with, without)
    pair; in every other group U, the pairs, the paired difference and the outcome-matched U and pairs are 0
    (U = r1 - n1 (n1 + 1) / 2 with r1 the sum of ranks 1..n1, exactly 0, when n0 = 0), so they are set to 0 there.
    A group's ranks and sums depend only on its own rows, taken whole and in order, so the mixed groups' values
    are the same additions as over every row: identical. An emerging behaviour is often all or nothing within a
    prompt's group (the 1M-rollout benchmark's: 1.5% of its groups mixed), and ranking every row of every signal
    (twice with outcome matching) was most of `part_tables`. The rank cache is shared by the batch's behaviours,
    hence one subset, the union of their mixed groups."""

    def __init__(self, n: int, at: np.ndarray, rows: np.ndarray, groups: tr._Groups, sub: np.ndarray | None) -> None:
        self.n, self.at, self.rows, self.groups, self.sub = n, at, rows, groups, sub
        self.ranks = tr._RankCache()

    @classmethod
    def of(cls, groups: tr._Groups, labels: list[np.ndarray], outcome_vals: list[np.ndarray]) -> _Mixed:
        """`labels`: each behaviour's; `outcome_vals`: the outcome signals' values, whose equal values within a
        group make the outcome-matched sub-groups (`trace._refine`)."""
        mixed = np.zeros(groups.n, bool)
        for lab in labels:
            mixed |= (groups.sum(lab == 1) > 0) & (groups.sum(lab == 0) > 0)
        at = np.flatnonzero(mixed)
        rows = np.flatnonzero(mixed[groups.codes])
        renumber = np.cumsum(mixed) - 1
        sub_groups = tr._Groups.of(renumber[groups.codes[rows]])
        sub = (tr._refine(sub_groups.codes, [v[rows] for v in outcome_vals]) if outcome_vals and rows.size
               else None)
        return cls(groups.n, at, rows, sub_groups, sub)

    def _spread(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n)
        out[self.at] = values
        return out

    def pair_stats(self, values: np.ndarray, labels: np.ndarray, key: str) -> dict[str, np.ndarray]:
        """`trace._pair_stats` over every group."""
        if not self.rows.size:
            return {k: np.zeros(self.n) for k in ("u", "pairs", "diff")}
        d = tr._pair_stats(self.groups, values[self.rows], labels[self.rows], self.ranks, key)
        return {k: self._spread(v) for k, v in d.items()}

    def matched_stats(self, values: np.ndarray, labels: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        """`trace._matched_stats` over every group."""
        if self.sub is None:
            return np.zeros(self.n), np.zeros(self.n)
        u, pairs = tr._matched_stats(self.groups, values[self.rows], labels[self.rows], self.sub, self.ranks, key)
        return self._spread(u), self._spread(pairs)


def _reward_steps(step: np.ndarray, steps_u: np.ndarray, reward: np.ndarray, known: np.ndarray,
                  comps: dict[str, np.ndarray], raw_comps: dict[str, np.ndarray], signals: list[str],
                  local: list[str]) -> dict[str, Any]:
    """Per step: rows, rows with a total, the sum of squared totals, the R factor of [components | total] over
    those rows, and per signal its finite, infinite and equal-to-the-total counts (`trace.build_signals`)."""
    at = np.nan_to_num(reward, nan=np.inf)
    code = np.searchsorted(steps_u, step)
    by_step = np.argsort(code, kind="stable")  # each step's rows in their order: the same sums and R factors
    bounds = np.searchsorted(code[by_step], np.arange(len(steps_u) + 1))
    count = lambda mask: np.bincount(code, weights=mask, minlength=len(steps_u)).astype(np.int64).tolist()  # noqa: E731
    cols: dict[str, list[Any]] = {"step": steps_u.tolist(), "n": np.diff(bounds).tolist(), "n_known": count(known),
                                  "y2": [], "rfac": []}
    # [components | total] of every row, each step's rows with a total taken from it (a stack per step cost
    # ~0.1 CPU s of a cold 1M-rollout audit)
    matrix = np.column_stack([np.nan_to_num(comps[c], nan=0.0) for c in local] + [reward])
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        rows = by_step[lo:hi]
        rows = rows[known[rows]]
        cols["y2"].append(float(np.sum(reward[rows] ** 2)))
        if rows.size:
            cols["rfac"].append(json.dumps({"names": local, "r": np.linalg.qr(matrix[rows], mode="r").tolist()}))
        else:
            cols["rfac"].append(None)
    for c in signals:
        v = comps[c]
        fin = np.isfinite(v)
        cols[f"f|{_name(c)}"] = count(fin)
        cols[f"i|{_name(c)}"] = count(np.isinf(raw_comps[c]))
        cols[f"c|{_name(c)}"] = count(fin & np.isclose(np.where(fin, v, 0.0), at, rtol=1e-9, atol=1e-12))
    return {k: pa.array(v, pa.string() if k == "rfac" else None) for k, v in cols.items()}


def _cond_table(t: pa.Table, order: np.ndarray, step_code: np.ndarray, steps_u: np.ndarray, step_part: pa.Array,
                raw: np.ndarray) -> pa.Table:
    """Per step, kind ('c' condition, 't' task) and name: rollouts, the behaviour's sum, and the first row (in
    the part's row order) it appears at; rows without a name are left out, as `load_frames` codes them -1.
    `order`: the rows of `t` as sorted (`raw`, `step_code`: the code of each one's step in `steps_u`, whose parts
    are `step_part`). The names are coded once (a dictionary) and grouped in numpy: Arrow's group_by on the
    (step, name) strings, and taking every row's name and part to feed it, cost several times more."""
    out = []
    for kind, column in (("c", "condition"), ("t", "task")):
        enc = pc.dictionary_encode(t.column(column).combine_chunks().cast(pa.string()))
        names = enc.dictionary
        code = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), np.int64)[order]
        rows = np.flatnonzero(code >= 0)
        width = max(len(names), 1)
        uniq, at, inv = np.unique(step_code[rows] * width + code[rows], return_index=True, return_inverse=True)
        inv = inv.ravel()
        seen = np.argsort(at, kind="stable")  # in order of first appearance, as Arrow's group_by gave them
        first = np.full(len(uniq), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, inv, order[rows])
        count = np.bincount(inv, minlength=len(uniq)).astype(np.int64)
        xsum = np.bincount(inv, weights=raw[rows], minlength=len(uniq))
        sc, nc = (uniq // width)[seen], (uniq % width)[seen]
        out.append(pa.table({"kind": pa.array(["c"] * len(uniq), pa.string()), "part": step_part.take(pa.array(sc)),
                             "step": pa.array(steps_u[sc]), "ck": pa.array([kind] * len(uniq), pa.string()),
                             "name": names.take(pa.array(nc)), "first": pa.array(first[seen]),
                             "rows": pa.array(count[seen]), "xsum": pa.array(xsum[seen], pa.float64())}))
    return pa.concat_tables(out)


# ================================================================================================ run-wide decisions
@dataclass
class _Fit:
    """`trace.build_signals`'s decisions, made from the kept steps' `steps` rows instead of every rollout."""

    names: list[str]  # the components (signals with a finite value somewhere)
    weights: list[float]
    other: bool  # the residual total - sum(components) is a signal of its own
    reward_none: bool
    aliases: set[str]
    notes: list[str]
    applies: dict[str, float]
    total_name: str
    other_name: str


def _fit(steps: pa.Table, signals: list[str], n: int, has_reward: bool, outcome: list[str]) -> _Fit:
    notes: list[str] = []
    count = {(k, s): int(_col(steps, f"{k}|{_name(s)}").sum()) for s in signals for k in ("f", "i", "c")}
    infinite = {s: count["i", s] for s in signals if count["i", s]}
    if infinite:
        notes.append("infinite values treated as 'did not apply': " + ", ".join(
            f"{k} ({c})" for k, c in infinite.items()) + ".")
    names = [s for s in signals if count["f", s]]
    n_known = int(_col(steps, "n_known").sum())
    reward_none = not has_reward or n_known == 0
    aliases = set()
    if not reward_none:
        for name in names:
            if count["f", name] == n and count["c", name] == n:
                aliases.add(name)
                notes.append(f"signal {name!r} equals the total reward: it cannot be separated from the total.")
    weights = np.ones(len(names))
    total_name = "reward" if "reward" not in names else "reward_total"
    other_name = "other" if "other" not in names else "other_residual"
    other = False
    if reward_none:
        notes.append("no total reward logged: the total is the sum of the components.")
    else:
        if names:
            fit, resid_ss = _lstsq(steps, names, n_known)
            scale = max(1.0, float(np.sqrt(_col(steps, "y2").sum() / n_known)))
            if np.sqrt(resid_ss / n_known) <= 1e-6 * scale:
                weights = np.where(np.abs(fit - np.round(fit)) < 1e-9, np.round(fit), fit)
                if not np.allclose(weights, 1.0):
                    notes.append("component weights fitted from the total: " + ", ".join(
                        f"{nm}={w:.4g}" for nm, w in zip(names, weights)) + ".")
            else:
                other = True
                notes.append(f"the components do not add up to the total; {other_name!r} = total - sum(components) "
                             "is attributed as a signal of its own.")
        if n_known < n:
            notes.append(f"{n - n_known} rollout(s) without a total reward: rebuilt from the components.")
    applies = {s: count["f", s] / n for s in names}
    applies[other_name] = 1.0
    applies[total_name] = 1.0 if reward_none or names else n_known / n
    return _Fit(names, [float(w) for w in weights], other, reward_none, aliases, notes, applies, total_name,
                other_name)


def _lstsq(steps: pa.Table, names: list[str], n_known: int) -> tuple[np.ndarray, float]:
    """The least-squares weights of the total on the components over every row with a total, and the residual
    sum of squares, from the steps' R factors of [components | total] (stacked and factored again: the R factor
    of all the rows, so the same minimiser as `lstsq` over them; the rank cut-off is `lstsq`'s for those rows)."""
    k = len(names)
    at = {nm: j for j, nm in enumerate(names)}
    blocks = []
    for text in steps.column("rfac").to_pylist():
        if text is None:
            continue
        f = json.loads(text)
        r = np.asarray(f["r"], np.float64).reshape(-1, len(f["names"]) + 1)
        m = np.zeros((r.shape[0], k + 1))
        for j, nm in enumerate(f["names"]):
            if nm in at:  # a signal with no finite value in the kept steps has a zero column here
                m[:, at[nm]] = r[:, j]
        m[:, k] = r[:, -1]
        blocks.append(m)
    r = np.linalg.qr(np.vstack(blocks), mode="r")
    full = np.zeros((k + 1, k + 1))
    full[:r.shape[0]] = r[:k + 1]
    r11, rhs, rho = full[:k, :k], full[:k, k], full[k, k]
    fit, *_ = np.linalg.lstsq(r11, rhs, rcond=np.finfo(np.float64).eps * max(n_known, k))
    return fit, float(np.sum((r11 @ fit - rhs) ** 2) + rho**2)


# ================================================================================================ the trace
def _assemble(it: Item, groups: pa.Table, steps: pa.Table, cond: pa.Table, fit: _Fit, stems: list[str], n: int,
              grouping: str, group_key: str, warnings: list[str], scale: str, n_boot: int, seed: int,
              step_clusters: bool, run: str, ctx: _Ctx, parts: list[Path], numeric: bool) -> tr.Trace:
    """`trace.attribute` from the merged tables: the same per-group values in the same (key) order."""
    groups = _Sorted(groups, np.argsort(np.asarray(groups.column("key").to_numpy(zero_copy_only=False)),
                                        kind="stable"))
    rollouts, sd, rmax = _col(groups, "rollouts"), _col(groups, "sd", np.nan), _col(groups, "rmax")
    tiny = 1e-9 * max(1.0, float(rmax.max()) if rmax.size else 1.0)
    varies = np.isfinite(sd) & (sd > tiny) & (rollouts >= 2)
    inv = (1.0 / np.where(varies, sd, 1.0)) if scale == "group" else np.ones(groups.num_rows)
    inv_scale = np.where(varies, inv, 0.0)
    signals = [tr._Signal(nm, "component", np.zeros(0), w, tr.is_outcome_signal(nm, ctx.outcome), nm in fit.aliases)
               for nm, w in zip(fit.names, fit.weights)]
    col_of = {nm: _name(nm) for nm in fit.names}
    if fit.other:
        signals.append(tr._Signal(fit.other_name, "other", np.zeros(0), 1.0, False))
        col_of[fit.other_name] = _OTHER
    signals.append(tr._Signal(fit.total_name, "total", np.zeros(0), 1.0, False, True))
    col_of[fit.total_name] = _TOTAL
    per_group = {}
    for s in signals:
        c = col_of[s.name]
        d = {k: _col(groups, f"{k}|{c}") for k in ("u", "pairs", "diff", "mu", "mpairs")}
        d["pressure"] = s.weight * _col(groups, f"pnum|{c}") * inv_scale
        per_group[s.name] = d
    group_steps = np.asarray(groups.column("step").to_numpy(zero_copy_only=False), np.int64)
    clusters = np.unique(group_steps, return_inverse=True)[1].ravel() if step_clusters else None
    results = tr._summarise(signals, per_group, rollouts, group_steps, n_boot, seed, 0.95, clusters, fit.applies)
    top = results[0]
    n_total = float(rollouts.sum())
    x_total = float(_col(steps, "x").sum())
    missing = int((_col(groups, "size") - rollouts).sum())
    adv_warnings = [f"{missing} rollout(s) have no reward at all and add no pressure."] if missing else []
    degenerate = int(((rollouts >= 2) & ~varies).sum())
    adv_notes = ([f"{degenerate} group(s) where every rollout got the same total reward give no advantage "
                  "(no pressure) and only ties to the paired preference."] if degenerate else [])
    rank = {s: j for j, s in enumerate(stems)}
    breakdowns = {}
    for kind, column in (("c", "cond"), ("t", "task")):
        names, gcode, rows, xsum = _codes(cond, kind, rank, groups.column(column))
        breakdowns[kind] = (names, tr._breakdown_of(names, gcode, rows, xsum, per_group, signals, top.signal,
                                                     n_total, clusters) if names else {})
    by_condition = breakdowns["c"][1]
    task_names = breakdowns["t"][0]
    by_task = breakdowns["t"][1] if len(task_names) > 1 else {}
    warnings = list(warnings) + adv_warnings
    if top.groups_used < tr.MIN_GROUPS:
        warnings.append(f"Only {top.groups_used} group(s) contain rollouts both with and without the behaviour: "
                        "no confidence intervals or tests.")
    elif top.groups_used < tr.FEW_GROUPS:
        warnings.append(f"Only {top.groups_used} groups contain rollouts both with and without the behaviour: "
                        "the intervals are rough.")
    check = _advantage_check(groups, inv_scale, ctx.has_adv)
    if check and check.get("correlation") is not None and check["correlation"] < 0.9:
        warnings.append(
            f"The logged advantage correlates only {check['correlation']:.2f} with the GRPO advantage rebuilt from "
            "the rewards (different normalisation, KL in the reward, or a different estimator): pressures are "
            "computed from the rebuilt advantage.")
    t = tr.Trace(
        run=run, behavior=it.behavior.name, behavior_spec=it.behavior.spec, where=it.where, numeric=numeric,
        grouping=grouping, group_key=group_key, rollouts=n, groups=groups.num_rows, groups_used=top.groups_used,
        prevalence=x_total / n if n else math.nan, signals=results, by_condition=by_condition, by_task=by_task,
        condition=tr._argmax_pressure(by_condition), task=tr._argmax_pressure(by_task), advantage_check=check,
        warnings=warnings, notes=fit.notes + adv_notes, direction=it.direction)
    tr.assess([t])
    t.evidence = _evidence(ctx, it, t, groups, per_group, fit, parts, steps, numeric)
    return t


def _codes(cond: pa.Table, kind: str, rank: dict[str, int], first_of_group: pa.ChunkedArray
           ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names in order of first appearance in the scan, each group's code (-1: none), rollouts and behaviour sum
    per name."""
    t = cond.filter(pc.equal(cond.column("ck"), kind)) if cond.num_rows else cond
    first: dict[str, tuple[int, int]] = {}
    rows: dict[str, float] = {}
    xsum: dict[str, float] = {}
    if t.num_rows:
        for part, name, f, r, x in zip(t.column("part").to_pylist(), t.column("name").to_pylist(),
                                       t.column("first").to_pylist(), t.column("rows").to_pylist(),
                                       t.column("xsum").to_pylist()):
            pos = (rank[part], int(f))
            first[name] = min(first.get(name, pos), pos)
            rows[name] = rows.get(name, 0) + r
            xsum[name] = xsum.get(name, 0.0) + x
    names = sorted(first, key=first.__getitem__)
    code = pc.index_in(first_of_group.cast(pa.string()), value_set=pa.array(names, pa.string()))
    gcode = np.asarray(pc.fill_null(code, -1).to_numpy(zero_copy_only=False), np.int64)  # none: -1
    return (names, gcode, np.array([rows[nm] for nm in names], np.int64),
            np.array([xsum[nm] for nm in names], np.float64))


def _advantage_check(groups: _Sorted, inv: np.ndarray, has_adv: bool) -> dict[str, Any] | None:
    """`trace._advantage_check` from per-group centred sums, merged exactly (the parallel-variance formulas)."""
    if not has_adv or "ok_n" not in groups.column_names:
        return None
    c = {k: _col(groups, k) for k in _CHECK}
    n = c["ok_n"].sum()
    if n < 3:
        return None
    b_mean, b_m2, c_ab = c["rc_mean"] * inv, c["rc_m2"] * inv**2, c["c_arc"] * inv
    ma, mb = (c["ok_n"] * c["a_mean"]).sum() / n, (c["ok_n"] * b_mean).sum() / n
    m2a = c["a_m2"].sum() + (c["ok_n"] * (c["a_mean"] - ma) ** 2).sum()
    m2b = b_m2.sum() + (c["ok_n"] * (b_mean - mb) ** 2).sum()
    cab = c_ab.sum() + (c["ok_n"] * (c["a_mean"] - ma) * (b_mean - mb)).sum()
    corr = float(np.clip(cab / np.sqrt(m2a * m2b), -1.0, 1.0)) if m2a > 0 and m2b > 0 else None
    return {"rollouts": int(n), "correlation": corr, "pressure_logged": float(c["s_xa"].sum() / n),
            "pressure_rebuilt": float((c["s_xrc"] * inv).sum() / n)}


def _evidence(ctx: _Ctx, it: Item, t: tr.Trace, groups: _Sorted, per_group: dict[str, dict[str, np.ndarray]],
              fit: _Fit, parts: list[Path], steps: pa.Table, numeric: bool) -> list[Any]:
    """`trace._evidence_rows` and `trace.evidence_for`: the same groups chosen from the merged tables, then only
    their rollouts read (from the parts holding their steps)."""
    top = t.top
    d = per_group[top.signal]
    direction = 1.0 if not top.paired_preference < 0.5 else -1.0
    candidates = (d["pairs"] > 0) & (direction * d["diff"] > 0)
    if t.condition is not None:
        in_cond = candidates & np.asarray(pc.fill_null(pc.equal(groups.column("cond"), t.condition), False))
        if in_cond.any():
            candidates = in_cond
    gsteps = np.asarray(groups.column("step").to_numpy(zero_copy_only=False), np.int64)
    chosen = np.flatnonzero(candidates)
    chosen = chosen[np.argsort(-gsteps[chosen], kind="stable")][:3]
    if not chosen.size:
        return []
    keys = np.asarray(groups.column("key").to_numpy(zero_copy_only=False))[chosen]
    wanted = set(gsteps[chosen].tolist())
    owner = dict(zip(steps.column("step").to_pylist(), steps.column("part").to_pylist()))
    stems = {owner[s] for s in wanted}
    paths = [p for p in parts if p.stem in stems]
    by_format: dict[tuple[int, tuple[str, ...]], list[Path]] = {}
    for p in paths:
        by_format.setdefault(ctx.layouts.get(p.name, (1, ())), []).append(p)
    split = f"split = {sql_string(ctx.split)}" if ctx.split else "TRUE"
    with duck.connect(ctx.store.root) as con:
        con.execute("CREATE TEMP VIEW all_rollouts AS " + " UNION ALL ".join(
            f"SELECT {view_columns(*fmt)} FROM read_parquet({sql_list([str(p) for p in ps])})"
            for fmt, ps in sorted(by_format.items())))
        con.execute(f"CREATE TEMP VIEW rollouts AS SELECT * FROM all_rollouts WHERE {split}")
        sig = "".join(f", CAST(rewards[{sql_string(s)}] AS DOUBLE) AS _s{j}" for j, s in enumerate(fit.names))
        rows = con.sql(
            f"SELECT * FROM (SELECT {ctx.key} AS _group, rollout_id, reward, {it.expr} AS _b{sig} FROM rollouts "
            f"WHERE step IN ({', '.join(map(str, sorted(wanted)))})) "
            f"WHERE _group IN ({', '.join(str(int(k)) for k in keys)})").to_arrow_table()

        def floats(name: str) -> np.ndarray:
            return np.asarray(pc.fill_null(rows.column(name), float("nan")).to_numpy(zero_copy_only=False), np.float64)

        comps = {s: np.where(np.isinf(v), np.nan, v) for s, v in ((s, floats(f"_s{j}"))
                                                                   for j, s in enumerate(fit.names))}
        reward = floats("reward")
        frame = tr.Frame.build(np.asarray(rows.column("_group").to_numpy(zero_copy_only=False)),
                               step=np.zeros(rows.num_rows, np.int64), condition=np.zeros(rows.num_rows, np.int64),
                               condition_names=[], task=np.zeros(rows.num_rows, np.int64), task_names=[],
                               behavior=np.nan_to_num(floats("_b"), nan=0.0), components=comps, reward=reward,
                               advantage=None, rollout_id=rows.column("rollout_id").combine_chunks())
        signals = _row_signals(frame, fit, ctx.outcome)
        mgroups = tr._Groups.of(frame.group)
        raw = frame.behavior
        x = raw if it.direction == "up" else (-raw if numeric else 1.0 - raw)
        labels = tr.behavior_labels(mgroups, x, numeric)
        values = next(s.values for s in signals if s.name == top.signal)
        ukeys = np.unique(np.asarray(rows.column("_group").to_numpy(zero_copy_only=False)))
        found = (tr.group_pair(values, labels, mgroups.starts[g], mgroups.starts[g] + mgroups.sizes[g], direction)
                 for g in (int(np.searchsorted(ukeys, k)) for k in keys))
        t.evidence_rows = [p for p in found if p is not None]
        return tr.evidence_for(con, frame, t, prepared=_Signals(signals))


@dataclass
class _Signals:
    signals: list[tr._Signal]


def _row_signals(frame: tr.Frame, fit: _Fit, outcome: list[str]) -> list[tr._Signal]:
    """`trace.build_signals`'s signals of a few rows, with the run's decisions (`_fit`)."""
    names = fit.names
    matrix = (np.column_stack([np.nan_to_num(frame.components[s], nan=0.0) for s in names]) if names
              else np.zeros((len(frame.group), 0)))
    reward = frame.reward
    known = np.isfinite(reward)
    if fit.reward_none:
        total = matrix.sum(axis=1)
    else:
        total = reward.copy()
        total[~known] = matrix[~known] @ np.array(fit.weights) if names else np.nan
    out = [tr._Signal(s, "component", frame.components[s], w, tr.is_outcome_signal(s, outcome), s in fit.aliases)
           for s, w in zip(names, fit.weights)]
    if fit.other:
        out.append(tr._Signal(fit.other_name, "other", np.where(known, reward - matrix.sum(axis=1), 0.0), 1.0, False))
    out.append(tr._Signal(fit.total_name, "total", total, 1.0, False, True))
    return out
