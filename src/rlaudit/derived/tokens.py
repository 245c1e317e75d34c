"""Per-rollout term sets: which words and n-grams (1-3 tokens) each rollout's answer and reasoning contain.

Discovery of emerging behaviours, cross-condition generalisation, attribution and live alerts all ask the same
question of every rollout ("does it say X?"), so the answer is computed once per stored part and cached beside
the run (`term_sets`: an appended step adds only its own part's data; an audit limited by `max_step` or `split`
filters the cached rows instead of recomputing them).

Derived data (`TermSets`):

- `term-vocab`: the candidate terms (term_id, where, term, n_tokens). Candidates are chosen on a
  deterministic sample of rollouts (by hash of rollout id): an n-gram qualifies when it reaches
  `min_prevalence` of the sampled rollouts of some step bin, overall or within one condition (so a tic
  confined to a small persona is not drowned by the rest of the traffic); of those, the `max_terms` per
  `where` whose binned prevalence varies most are kept (constant words cannot emerge). The number that
  qualified before the cut is stored (`n_qualified`): discovery counts them all as tested hypotheses.
- per part, `terms`: one row per rollout with its scope keys (step, split, condition, task, group, a hash of
  the prompt), style features of answer and reasoning (`answer__exclamation`, `reasoning__length`, ...;
  the values of `Behavior.sql`, so they agree with `style:NAME` specs: computed to the same values by
  `rlaudit.derived.styles`, the length from the token count) and the *distinct* candidate term ids
  found in the answer and in the reasoning (`answer_terms`, `reasoning_terms`). An occurrence does not
  count when the same n-gram, or its key token (its rarest word: "zebra" of "the zebra"), occurs in the
  rollout's prompt (copying the question is not a tic). The lists are kept once, in the part's flat term lists
  (`termcells.TermLists`): the cached term-set file holds the other columns, `with_lists` joins them back, and
  the questions about a few terms' rollouts gather them from the lists (`TermSets.pairs`); and `counts`: per
  step the rollouts containing each
  term and those whose prompt holds it (`term_step_counts`), so that prevalences can be computed among the
  rollouts *at risk*, those whose prompt does not already contain the term. The candidate ids each prompt holds
  are kept once per prompt, not per rollout, in the part's flat lists (`termcells.TermLists`: `promptterms`
  rows are made from them), which the same worker writes right after (a part counts as cached only when they
  are there too).

Tokens are `behaviors.TOKEN_PATTERN` runs of the lower-cased text, so a discovered n-gram, used as a term
spec, matches exactly the rollouts counted here (up to the prompt exclusion). `tokhash` tokenises and hashes
the texts in numpy (the same tokens as the RE2 pattern, several times faster), numpy matches n-grams by 64-bit
keys (`_compute_part`) through an open-addressing hash table (`_Lookup`), one batch of parts at a time, so
memory is bounded by the batch size, not the run size. With numba installed (the `fast` extra) tokenising ASCII
texts and matching each row's n-grams run as compiled loops instead (`rlaudit.kernels`: one pass per row rather
than a dozen numpy passes over every occurrence; the same term sets, `RLAUDIT_KERNEL=numpy|numba` picks one). Batches are computed by two threads where a second
core and the memory budget allow (`workers`); the cached files are LZ4-compressed Parquet (cheaper to write
and read than zstd).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import kernels, segments, styles
from .. import duck, memory, progress
from ..behaviors import STYLE_FEATURES, TOKEN_PATTERN, re2_cursor
from ..errors import RlauditError
from ..layout import PART_SCHEMA, SPANS, read_columns, read_stored, to_canonical
from ..cot.shingles import splitmix64
from ..store import Store, atomic_write_text, prune_cached, write_cached
from ..text import byte_spans, cut_ranges, span_ranges, validity
from .tokhash import span_term_ids, string_hashes, text_term_ids, token_hashes

WHERES = ("answer", "reasoning")
VOCAB = "term-vocab"
ROLLOUT_TERMS = "rollout-terms"

_TOKENS = TOKEN_PATTERN.replace("'", "''")
#: the canonical columns the term sets read of each part (`_read_parts`)
_COLUMNS = ["rollout_id", "step", "split", "condition", "task", "group_id", "prompt", "answer", "reasoning"]
#: whether a rollout has reasoning (DuckDB's `trim` strips spaces, ASCII and Unicode, not other whitespace)
_HAS_REASONING = "(reasoning IS NOT NULL AND length(trim(reasoning)) > 0) AS has_reasoning"
#: `termcells.CELL` over the stored parts' columns (the prompt's key as in the term sets)
_CELL = "hash(step, split, task, condition, hash(coalesce(prompt, '')))"


@dataclass(frozen=True)
class VocabOptions:
    """How candidate terms are chosen (see module doc)."""

    max_terms: int = 4000  # per where
    min_prevalence: float = 0.01  # in some step bin (overall or within one condition)
    min_count: int = 5  # rollouts in that bin
    sample: int = 40_000  # rollouts sampled for the choice (20 bins of ~2,000)
    bins: int = 20
    max_n: int = 3


def style_columns() -> list[tuple[str, str, str]]:
    """(column name, where, feature name) of every per-rollout style column."""
    return [(f"{where}__{name}", where, name) for where in WHERES for name in STYLE_FEATURES]


def tokens_sql(column: str) -> str:
    """DuckDB expression: the list of tokens of `column` (see `behaviors.tokenize`)."""
    return f"regexp_extract_all(lower(coalesce({column}, '')), '{_TOKENS}')"


def ngram_rows_sql(source: str, key: str, column: str, max_n: int = 3) -> str:
    """SQL yielding (key, term) for every 1..max_n-gram occurrence of `column` in `source` (with repeats).

    Tokens are unnested side by side with their shifted copies, so an n-gram is the concatenation of one
    row's columns: no per-rollout list building, which is what makes this fast in DuckDB.
    """
    shifted = ", ".join(f"unnest(tk[{k + 1}:]) AS w{k + 1}" for k in range(max_n))
    parts = []
    for n in range(1, max_n + 1):
        expr = " || ' ' || ".join(f"w{k + 1}" for k in range(n))
        cond = f" WHERE w{n} IS NOT NULL" if n > 1 else ""
        parts.append(f"SELECT {key}, {expr} AS term FROM pos{cond}")
    return (f"WITH pos AS (SELECT {key}, {shifted} FROM (SELECT {key}, {tokens_sql(column)} AS tk FROM {source})) "
            + " UNION ALL ".join(parts))


def vocabulary(store: Store, run: str, options: VocabOptions = VocabOptions()) -> pa.Table:
    """The cached `term-vocab` table of a run (see module doc)."""
    return term_sets(store, run, options).vocab


def rollout_terms(store: Store, run: str, options: VocabOptions = VocabOptions()) -> pa.Table:
    """The `rollout-terms` rows of a run as one Arrow table (see module doc). For tests and small runs: the
    detectors read the per-part cache through `TermSets.register` without materialising the run."""
    sets = term_sets(store, run, options)
    tables = [sets.part_table(i, "terms") for i in range(len(sets.parts))]
    if not tables:
        return pa.table({})
    from . import termcells  # termcells builds on this module

    # each rollout's prompt terms (`prompt_terms`), from the prompts' lists beside the cell tables
    con = duck.connect()
    termcells.term_cells(store, run, sets).register(con, "promptterms", "pt")
    rt = pa.concat_tables(tables)
    con.register("rt", rt.append_column("_row", pa.array(np.arange(rt.num_rows))))
    out = con.sql("""SELECT rt.* EXCLUDE (_row), coalesce(p.ids, []::INTEGER[]) AS prompt_terms
                     FROM rt LEFT JOIN (SELECT prompt_key, list(DISTINCT term_id ORDER BY term_id) AS ids
                                        FROM pt GROUP BY 1) p USING (prompt_key)
                     ORDER BY rt._row""").to_arrow_table()
    con.close()
    return out


def term_step_counts(store: Store, run: str, options: VocabOptions = VocabOptions()) -> pa.Table:
    """Per-step counts of every candidate term: (where, term_id, step, split, x, m), where x counts the
    rollouts whose text contains the term and m those whose prompt does (not at risk). For reasoning terms only
    rollouts with reasoning count. An audit limited by `max_step` sums these instead of re-reading every
    rollout's term set. (Parts that share a step are summed.)"""
    sets = term_sets(store, run, options)
    con = duck.connect()
    sets.register(con)
    out = con.sql('SELECT "where", term_id, step, split, sum(x) AS x, sum(m) AS m FROM step_counts '
                  "GROUP BY ALL").to_arrow_table()
    con.close()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Per-part cache. The vocabulary is chosen on a sample of the whole run; every stored part's term sets and
# per-step counts are then computed on their own (bounded memory: one part at a time) and cached beside the run
# under the vocabulary's id, so a part is tokenised once per vocabulary, and a run that grows by a step only
# tokenises the new part as long as the vocabulary is kept (see `REUSE_GROWTH`).

#: A cached vocabulary is kept while the run only grew (its parts are all still stored) by at most this share of
#: the rows it was chosen on; beyond that it is chosen again (and every part re-tokenised). Terms that qualify
#: only in the added rows wait for that re-choice: a rise confined to the last few percent of a run cannot pass
#: the window test (early vs late 20% of steps) anyway.
REUSE_GROWTH = 0.05
#: version of the cached per-part files' layout (in their directory's name, so files of an older layout are
#: neither read nor mixed with new ones, and are pruned): 2 dropped the per-rollout `prompt_terms` column, 3 the
#: term lists (read from the part's `termcells.TermLists`: `with_lists`)
FORMAT = 3
#: Rollouts tokenised together when several parts lack their term sets (one DuckDB query for many small parts)
BATCH_ROWS = 50_000
#: memory a term-set worker thread may take at most (see `workers`)
WORKER_MEMORY = 600 << 20


@dataclass
class TermSets:
    """A run's vocabulary and, per stored part, its term sets and per-step counts (files, or tables in memory
    for stores that do not persist derived data)."""

    vocab: pa.Table
    parts: list[tuple[str, Any]]  # (part name, {"terms": path|table, "counts": path|table})

    def part_table(self, i: int, kind: str) -> pa.Table:
        """Part i's term sets (with their lists: `with_lists`) or per-step counts."""
        name, entry = self.parts[i]
        v = entry[kind]
        if isinstance(v, pa.Table):
            return v
        # the per-step counts of a part computed in a cold audit may be held by a segment only
        if kind == "counts":
            return segments.read_member(Path(v), kind)
        return with_lists(pq.read_table(v), Path(v).parent, name)

    def holding(self, where: str, term_id: int) -> pa.Table:
        """`rid` of the rollouts of these parts whose `where` term set holds `term_id`: what a term's value over
        the view `register` makes (whose files hold no lists) is computed from (`emerging.Scope.sampled_value_sql`).
        From each part's flat term lists: ~0.5 ms a part (0.05 CPU s for the 100 sampled parts at 1M rollouts)."""
        return self.pairs(where, [term_id]).select(["rid"])

    def pairs(self, where: str, term_ids: Sequence[int]) -> pa.Table:
        """(rid, term_id) of every rollout of these parts whose `where` term set holds one of `term_ids`, from each
        part's flat term lists (one pass over a part's ids for all of them): how the emerging detector asks
        single rollouts about a few terms (`emerging.Scope.hits`) without reading every rollout's term lists."""
        from . import termcells  # termcells builds on this module

        place = WHERES.index(where)
        wanted = np.unique(np.asarray(term_ids, np.int64))
        rids, terms = [np.zeros(0, np.uint64)], [np.zeros(0, np.int32)]
        member = termcells.id_mask(wanted, self.vocab.num_rows - 1)
        for name, entry in self.parts if len(wanted) else []:
            v = entry["terms"]
            if isinstance(v, pa.Table):
                ids, off = _list_parts(v.column(LIST_COLUMNS[place]))
                rid = np.asarray(v.column("rid").to_numpy(), np.uint64)
            else:
                t = termcells.TermLists.load(termcells.lists_file(Path(v).parent, name), only=where)
                (off, ids), rid = t.lists[place], t.rid
            rows, at = termcells.flat_hits(off, ids, member)
            rids.append(rid[rows])
            terms.append(np.asarray(ids[at], np.int32))
        return pa.table({"rid": pa.array(np.concatenate(rids), pa.uint64()),
                         "term_id": pa.array(np.concatenate(terms), pa.int32())})

    def count_tables(self) -> Iterator[tuple[str, pa.Table]]:
        """Every part's per-step counts, one part at a time (name, rows): the files through their segments
        (`segments.read_members`; superseded segments removed, no new ones written: the dense counts built from
        these rows are what later audits read), then the tables held in memory."""
        files = {Path(e["counts"]).name: name for name, e in self.parts if not isinstance(e["counts"], pa.Table)}
        paths = [Path(e["counts"]) for _, e in self.parts if not isinstance(e["counts"], pa.Table)]
        if paths and len({p.parent for p in paths}) == 1:
            for path, table in segments.read_members(paths, "counts", grow=False):
                yield files[path.name], table
        else:
            for path in paths:
                yield files[path.name], segments.read_member(path, "counts")
        for name, e in self.parts:
            if isinstance(e["counts"], pa.Table):
                yield name, e["counts"]

    def register(self, con: duckdb.DuckDBPyConnection, terms: str | None = "rt",
                 counts: str | None = "step_counts") -> None:
        """Views `terms` (one row per rollout) and `counts` (per part and step) over the cached parts (a view
        named None is not made). `counts` only for the run's every part (its segments are merged, which needs
        the whole run: `segments.covering`). The files of `terms` hold no term lists (`_write_kind`): readers of
        the lists take them from `rows` or `holding`."""
        for kind, view in (("terms", terms), ("counts", counts)):
            if view is None:
                continue
            # the per-step counts are read whole by every audit: through segments; the term sets (one row per
            # rollout) are read for a few parts at a time
            union_view(con, view, [p[kind] for _, p in self.parts],
                       _empty_terms if kind == "terms" else lambda: _EMPTY["counts"],
                       segment="counts" if kind == "counts" else None)


def union_view(con: duckdb.DuckDBPyConnection, view: str, entries: list[Any], empty: Callable[[], pa.Table],
               segment: str | None = None, compression: segments.Codec = "lz4", merge: bool = True) -> None:
    """View `view` over per-part derived tables, each a cached Parquet file or (stores that keep derived data in
    memory) an Arrow table; `empty()` gives the columns when there are none. `segment` (a kind name): the files
    are read through segments (`rlaudit.derived.segments`; a file a cold audit wrote into a segment only is read from
    it), with `merge` merging what has accumulated first (into segments compressed with `compression`): the
    whole run's files; a reader of some parts passes `merge=False`."""
    files = [Path(e) for e in entries if not isinstance(e, pa.Table)]
    sources: list[Path | segments.Rows] = list(files)
    if segment is not None and files and len({f.parent for f in files}) == 1:
        sources = segments.covering(files, segment, merge=merge, compression=compression)
    tables = [e for e in entries if isinstance(e, pa.Table)]
    selects = segments.select_sql(sources)
    if tables:
        con.register(f"_{view}_mem", pa.concat_tables(tables))
        selects.append(f"SELECT * FROM _{view}_mem")
    if not selects:
        con.register(f"_{view}_empty", empty())
        selects.append(f"SELECT * FROM _{view}_empty")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {' UNION ALL BY NAME '.join(selects)}")


_EMPTY: dict[str, pa.Table] = {}


def term_sets(store: Store, run: str, options: VocabOptions = VocabOptions(),
              only: set[str] | None = None) -> TermSets:
    """The run's vocabulary and per-part term sets, computing (and caching) what is missing.

    `only` (part file names): compute and return only those parts' term sets (a shard of the run, see
    `rlaudit.fleet.shard`); the vocabulary is still the whole run's, so a part's term sets are the same whether
    computed in a shard or in one audit."""
    persist = getattr(store, "persist_derived", True)
    memo = store.__dict__.setdefault("_term_sets_memo", {})
    okey = hashlib.sha1(repr(options).encode()).hexdigest()[:10]
    manifest = store.manifest(run)
    rows_of = {name: p.rows for name, p in store.stored_parts(run, manifest).items()}
    layouts = store.part_layouts(run)
    parts = store.parts(run)
    names = [p.name for p in parts]
    rows = sum(rows_of.get(n, 0) for n in names)
    base = store.run_dir(run) / "derived" / "tokens"
    vocab, vocab_id = _cached_vocab(store, run, options, okey, names, rows, base, persist, memo)
    done: dict[str, Any] = memo.setdefault(("parts", vocab_id), {})
    vdir = base / f"{vocab_id}-f{FORMAT}"
    missing = []
    if only is not None:
        parts = [p for p in parts if p.name in only]
    from . import stepcounts, termcells  # both build on this module

    # each cache directory listed once (a long run has thousands of parts: not five stats per part), with the
    # files whose rows a segment holds (a cold audit writes most parts' counts and cell tables as segments only)
    cdir = termcells.cell_dir(vdir)
    listed = {d: set(os.listdir(d)) if persist and d.is_dir() else set() for d in (vdir, cdir)}
    in_segments = segments.held(vdir / "segments" / "counts") if persist else set()
    cells_held = termcells.segments_held(vdir) if persist else {}
    for path in parts:
        if path.name not in done and persist:
            files = _part_files(vdir, path)
            # a part is cached when its cell tables are too (they are written right after, by the same worker);
            # found, they are memoised for `termcells.term_cells`, which then looks for nothing again
            cells = (termcells.cached(files["terms"], path.name, listed[cdir], cells_held)
                     if files["terms"].name in listed[vdir]
                     and (files["counts"].name in listed[vdir] or files["counts"].name in in_segments) else None)
            if cells is not None:
                done[path.name] = files
                termcells.remember(store, path.name, files["terms"], cells)
        if path.name not in done:
            missing.append(path)
    # small parts (a step each, in live runs or TRL logs) are tokenised together, in batches of about
    # BATCH_ROWS rollouts of one layout, and their results split per part again
    batches: list[list[Path]] = []
    size = 0
    n_workers = workers()
    limit = BATCH_ROWS // n_workers  # two threads hold two half-size batches: the memory of one full batch
    for path in missing:
        layout = layouts.get(path.name, 1)
        rows = rows_of.get(path.name, 0)
        # a part joins a batch only within the limit: parts that hold several step files (`Store.part_rows`,
        # 16,384 rows and a file more) would otherwise make batches of up to ~1.8x it
        if not batches or size + rows > limit or layouts.get(batches[-1][0].name, 1) != layout:
            batches.append([])
            size = 0
        batches[-1].append(path)
        size += rows
    _matcher(vocab)  # built once, before the threads share it
    if missing and kernels.use_numba():
        kernels.compiled()  # compiled (or loaded from numba's cache) once, before the threads
        styles.compiled()

    def compute(batch: list[Path]) -> list[tuple[Path, dict[str, Any], dict[str, Any], dict[str, pa.Table],
                                                  Any]]:  # (the last: the counts for `feed`, a table or PartCounts)
        result = _compute_parts(batch, layouts.get(batch[0].name, 1), vocab, options, with_cells=True, db=db,
                                dense_ids=feed_ids)
        out = []
        for path, (terms, counts, cells, *dense) in zip(batch, result):
            # the tables a segment written from memory will hold are not written as files (`_fresh_segments`)
            planned = {kind for kind, f in _segmented_files(vdir, path).items() if fresh and fresh.planned(f)}
            entry = _store_part(vdir, path, terms, counts, persist, skip="counts" in planned)
            kept = termcells.keep(store, path.name, entry["terms"], cells, skip=planned)
            if not isinstance(kept.get(termcells.LISTS), (Path, type(None))):
                entry["terms"] = terms  # its lists could not be written: the term sets stay in memory whole
            out.append((path, entry, kept,
                        {kind: t for kind, t in {"counts": counts, **cells}.items() if kind in planned},
                        dense[0] if dense else counts))
        return out

    # batches are computed by `workers()` threads (numpy, Arrow and DuckDB release the GIL), each writing its
    # own parts' files (term sets, per-step counts and the cell tables `termcells.term_cells` reads), in order
    # through `memory.in_order`: at most one computed batch per thread waits for this thread (`Executor.map`
    # would run ahead through every batch and keep each result until taken); the kinds read through segments
    # are merged from the tables at hand where a segment's parts are all computed now (`_fresh_segments`)
    fresh = _fresh_segments(vdir, parts, missing) if persist and only is None and missing else None
    # every part computed now (a cold audit): the dense step counts built as the parts' counts come
    # (`stepcounts.Feed`), not read back from their files by the first detector that asks
    feed = stepcounts.Feed(stepcounts.cache_dir(vdir), vocab, {p.name for p in parts}) \
        if persist and only is None and missing and len(missing) == len(parts) else None
    feed_ids = feed.ids if feed is not None else None  # the parts' counts handed over dense (`PartCounts`)
    cell_entries: dict[str, dict[str, Any]] = {}
    # one pooled DuckDB database for the batches' reads (each through a cursor of it), handed back after the workers
    with (duck.connect() if missing else contextlib.nullcontext()) as db, fresh or contextlib.nullcontext(), \
            progress.tracking("term sets", len(missing)) as shown:
        for result in memory.in_order(compute, batches, max(1, min(n_workers, len(batches))), "rlaudit-terms"):
            shown.advance(len(result))
            for path, entry, cells, tables, counts in result:
                if feed is not None:
                    feed.add(path.name, counts)
                done[path.name] = entry
                termcells.remember(store, path.name, entry["terms"], cells)
                cell_entries[path.name] = cells
                if tables:
                    files = _segmented_files(vdir, path)
                    for kind, table in tables.items():
                        fresh.add(files[kind], table, functools.partial(_write_kind, files[kind], kind, table))
    if feed is not None:
        feed.close()
    if fresh is not None and fresh.kept:  # neither segment nor file could be written: kept in memory
        for path in missing:
            for kind, f in _segmented_files(vdir, path).items():
                if f in fresh.kept:
                    (done[path.name] if kind == "counts" else cell_entries[path.name])[kind] = fresh.kept[f]
    out = [(path.name, done[path.name]) for path in parts]
    if persist and only is None:
        prune_cached(base, vdir, {p.stem for p in parts})
        _drop_window_rows(vdir, listed[vdir])
    return TermSets(vocab=vocab, parts=out)


def _drop_window_rows(vdir: Path, names: set[str]) -> None:
    """Remove the window rows' files (`<part>.rows.parquet`: each window rollout's term lists) that earlier
    versions cached beside the term sets: the emerging detector now asks the parts' flat lists (`TermSets.pairs`),
    and nothing reads them. `names`: the directory's listing, as `term_sets` took it (no second listing)."""
    for name in names:
        if name.endswith(".rows.parquet"):
            with contextlib.suppress(OSError):
                (vdir / name).unlink()


def _segmented_files(vdir: Path, part: Path) -> dict[str, Path]:
    """Where a part's derived tables read through segments are cached: its per-step counts and cell tables."""
    from . import termcells  # termcells builds on this module

    return {"counts": _part_files(vdir, part)["counts"], **termcells.cell_files(vdir, part.name)}


def _fresh_segments(vdir: Path, parts: list[Path], missing: list[Path]) -> segments.Fresh:
    """The level-1 segments of the run's `parts` (in order) that hold only parts computed now (`missing`):
    written from the tables in memory as their parts are computed, instead of per-part files that a merge would
    then read back and write again (a cold audit writes each row once). Parts outside such a group (the run's
    last, incomplete group; a new step) get their files, as before."""
    from . import termcells  # termcells builds on this module

    files = [_segmented_files(vdir, p) for p in parts]
    todo = {p.name for p in missing}
    fresh = {f for p, fs in zip(parts, files) if p.name in todo for f in fs.values()}
    compression = {"counts": COUNTS_SEGMENTS, **termcells.SEGMENT_COMPRESSION}
    return segments.Fresh({kind: ([fs[kind] for fs in files], compression[kind]) for kind in files[0]}, fresh)


#: How the per-step counts' segments written from memory are encoded (`segments.Codec`): LZ4 with every column
#: in a dictionary, no statistics (no reader filters them: `stepcounts` reads them whole, once per run). One
#: 16-part segment of the 1M-rollout benchmark (91k rows; CPU ms to write / for DuckDB to read, size): DuckDB's
#: COPY 12.5 / 3.8 / 0.18 MB, this 5.3 / 3.9 / 0.21 MB; without dictionaries 4.4 / 7.4 / 0.49 MB.
COUNTS_SEGMENTS = {"compression": "lz4", "use_dictionary": True, "write_statistics": False}


def workers() -> int:
    """Threads computing term sets: two on a machine with two cores or more, unless a memory budget
    (`rlaudit.memory`) leaves less than WORKER_MEMORY per extra thread beside DuckDB's share (a batch of
    BATCH_ROWS rollouts takes a few hundred MB while it is tokenised). `RLAUDIT_THREADS` overrides this, as it
    does for every per-part pool."""
    setting = memory.threads_setting()
    if setting is not None:
        return setting
    if memory.usable_cores() < 2:
        return 1
    b = memory.budget()
    if b is not None and b[0] < memory.duckdb_limit() + 2 * WORKER_MEMORY:
        return 1
    return 2


def _store_part(vdir: Path, path: Path, terms: pa.Table, counts: pa.Table, persist: bool, skip: bool = False
                ) -> dict[str, Any]:
    """Write one part's term sets and counts beside the run (or keep the tables where the store cannot be
    written); `skip`: not the counts (a segment written from memory holds them: `_fresh_segments`), whose entry
    is then the file's path all the same (`segments.covering` finds its rows)."""
    if not _EMPTY:
        _EMPTY.update({"terms": terms.schema.empty_table(), "counts": counts.schema.empty_table()})
    if not persist:
        return {"terms": terms, "counts": counts}
    files = _part_files(vdir, path)
    # the lists are kept once, in the part's flat term lists (`termcells.TermLists`, written by the same worker)
    written = _write_kind(files["terms"], "terms", terms.drop_columns(LIST_COLUMNS))
    return {"terms": written if isinstance(written, Path) else terms,
            "counts": files["counts"] if skip else _write_kind(files["counts"], "counts", counts)}


def _part_files(vdir: Path, part: Path) -> dict[str, Path]:
    """Where a part's term sets and per-step counts are cached (`vdir`: the vocabulary's directory)."""
    return {kind: vdir / f"{part.stem}.{kind}.parquet" for kind in ("terms", "counts")}


def _write_kind(path: Path, kind: str, table: pa.Table) -> Path | pa.Table:
    """Write one part's term sets (without their lists: `_store_part`), counts or cell table
    (`termcells.write`). LZ4: about twice as fast to write and four times as fast to read as zstd, for 1.5x the
    size. Column statistics only for step and split: a part is one row group, and only a filter on those can skip
    it (`step IN (...)` of a sampled scope); the others' statistics cost ~10% of the write and no read got
    cheaper.

    Why the term lists are not in the term-set file (FORMAT 3): they were ~3.7 of ~5.1 CPU ms of a part's write
    (their list levels and delta encoding; ~4.1-5.8 of ~6 ms measured again on 20 parts of the 1M-rollout
    benchmark, 532 KB a part with them, 118 KB without; 17.5 CPU s of the cold 10M-rollout audit wrote term-set
    files), and the same lists are written anyway, uncompressed, in the part's `termcells.TermLists` file, which
    the cell tables' readers use; questions about single rollouts and a few terms ask those lists
    (`TermSets.pairs`)."""
    if kind == "terms":  # the rows' ids, sorted within a row, delta-encoded (7.5 -> 6.0 CPU ms a part)
        lists = {f"{f.name}.list.element": "DELTA_BINARY_PACKED" for f in table.schema if pa.types.is_list(f.type)}
        return write_cached(path, table, compression="lz4", use_dictionary=False, write_statistics=["step", "split"],
                            column_encoding=lists or None)
    if kind == "counts":
        return write_cached(path, table, compression="lz4", use_dictionary=False, write_statistics=True)
    from . import termcells  # termcells builds on this module

    return termcells.write(path, kind, table)


def _cached_vocab(store: Store, run: str, options: VocabOptions, okey: str, names: list[str], rows: int,
                  base: Path, persist: bool, memo: dict[Any, Any]) -> tuple[pa.Table, str]:
    """The vocabulary to use (cached or chosen now) and its id."""
    meta_path, vocab_path = base / f"vocab-{okey}.json", base / f"vocab-{okey}.parquet"
    meta = memo.get(("vocab", okey))
    if meta is None and persist and meta_path.is_file() and vocab_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            meta = {**json.loads(meta_path.read_text()), "table": pq.ParquetFile(vocab_path).read()}
    if meta is not None:
        old = set(meta["parts"])
        grew = rows - meta["rows"]
        if old <= set(names) and 0 <= grew <= REUSE_GROWTH * max(meta["rows"], 1):
            return meta["table"], meta["id"]
    table = _compute_vocab(store, run, options)
    digest = hashlib.sha1(okey.encode())
    for col in ("where", "term", "term_id", "key_token"):
        digest.update(repr(table.column(col).to_pylist()).encode())
    vocab_id = digest.hexdigest()[:16]
    meta = {"parts": names, "rows": rows, "id": vocab_id}
    memo[("vocab", okey)] = {**meta, "table": table}
    if persist and isinstance(write_cached(vocab_path, table), Path):
        with contextlib.suppress(OSError):
            atomic_write_text(meta_path, json.dumps(meta))
    return table, vocab_id


def _compute_vocab(store: Store, run: str, o: VocabOptions) -> pa.Table:
    """The vocabulary (see module doc), chosen on the rollouts whose `hash(rollout_id) % 1000` falls below the
    sampled share. The sample is filtered in each part's scan (`Store.rollouts_view`'s `where`) and its rows are
    ordered by (bin, condition): the compiled count (`_sample_df`) wants each cell's rows adjacent, and the row
    order changes nothing chosen (counts per cell, n-grams named by their tokens). Its cells are computed once for
    both places (`_SampleCells`)."""
    con = store.connect([run])
    n = con.execute("SELECT count(*) FROM rollouts").fetchall()[0][0]
    per_mille = 1000 if n <= o.sample else max(1, int(1000 * o.sample / n))
    store.rollouts_view(con, [run], "sampled", where=f"hash(rollout_id) % 1000 < {per_mille}")
    sample = _binned(con.sql("SELECT step, condition, answer, reasoning FROM sampled").to_arrow_table(), o.bins)
    con.close()
    cells = _SampleCells.of(sample)
    # the two places are independent: one thread each where a second core is free (numpy, numba and DuckDB
    # release the GIL; the choice was ~3 CPU s of a cold 1M audit, all on one core)
    with ThreadPoolExecutor(max_workers=max(1, min(len(WHERES), workers()))) as pool:
        frames = list(pool.map(lambda where: _qualified(sample, cells, where, o), WHERES))
    table = pa.concat_tables(frames)
    return table.append_column("term_id", pa.array(range(table.num_rows), pa.int32()))


def _binned(rows: pa.Table, bins: int) -> pa.Table:
    """The sampled `rows` (in the order read) with their step bin, ordered by (bin, condition), stably: equal
    to SQL's `ORDER BY bin, condition` over the rows numbered as read. Binned here, not by window functions in
    the scan's query (`min(step) OVER ()` ran on one thread: ~0.4 s wall against ~0.25 s for the plain scan on
    two cores, at 1M rollouts)."""
    step = np.asarray(rows.column("step").to_numpy(), np.int64)
    lo, hi = (int(step.min()), int(step.max())) if len(step) else (0, 0)
    bin_ = np.minimum(bins - 1, (bins * (step - lo)) // (hi - lo + 1)).astype(np.int32)
    table = pa.table({"bin": pa.array(bin_, pa.int32()), "condition": rows.column("condition"),
                      "answer": rows.column("answer"), "reasoning": rows.column("reasoning")})
    order = pc.sort_indices(table, sort_keys=[("bin", "ascending", "at_end"), ("condition", "ascending", "at_end")])
    return table.take(order)


@dataclass(frozen=True)
class _SampleCells:
    """Each sampled rollout's (bin, condition) cell, `cell` = bin * n_cond + condition index (the NULL condition
    a condition of its own, index `null_cond`, -1 if none), and the rollouts per cell (`rows`, every cell up to
    the last bin's). Computed once for both places."""

    cell: np.ndarray
    rows: np.ndarray
    n_cond: int
    null_cond: int

    @staticmethod
    def of(sample: pa.Table) -> _SampleCells:
        cond = pc.dictionary_encode(sample.column("condition").combine_chunks(), null_encoding="encode")
        n_cond = max(len(cond.dictionary), 1)
        nulls = np.flatnonzero(np.asarray(cond.dictionary.is_null()))
        bins = np.asarray(sample.column("bin").to_numpy(), np.int64)
        cell = bins * n_cond + np.asarray(cond.indices.to_numpy(), np.int64)
        rows = np.bincount(cell, minlength=(int(bins.max()) + 1 if len(bins) else 1) * n_cond)
        return _SampleCells(cell, rows, n_cond, int(nulls[0]) if len(nulls) else -1)


def _qualified(sample: pa.Table, cells: _SampleCells, where: str, o: VocabOptions) -> pa.Table:
    """The candidate terms of `where` chosen on the `sample` of rollouts (their step bin and condition): see
    `VocabOptions`, `_prevalences` and `_name_terms`."""
    d = _sample_df(sample, cells, where, o)
    return _name_terms(sample, where, d.qualified, d.first, (d.uniq, d.total), o)


@dataclass
class _SampleDF:
    """A place's n-grams in the vocabulary sample (`_sample_df`): those found in `min_count` sampled rollouts or
    more (`uniq`, their keys, sorted; `total`: the sampled rollouts holding each; `first`: one occurrence of each
    to name it by (row, start token, n)), and of those the ones that qualify (`qualified`: (k, pmax, spread),
    `k` an index into `uniq`; see `_prevalences`)."""

    qualified: pa.Table
    first: dict[str, np.ndarray]
    uniq: np.ndarray
    total: np.ndarray


def _prevalences(records: tuple[np.ndarray, np.ndarray, np.ndarray], n_terms: int, cells: _SampleCells,
                 o: VocabOptions) -> pa.Table:
    """(k, pmax, spread) of the n-grams k < n_terms whose prevalence reaches `min_prevalence`, from the rollouts
    holding each per cell (`records`: (k, cell, rows), one per (n-gram, cell) holding it): per step bin overall
    (rows holding it / rows of the bin) and, where the sample has more than one condition, per (bin, condition)
    (NULL conditions left out there); pmax, the highest prevalence over cells where at least `min_count` rows
    hold it; spread, the highest less the lowest overall (0 when some bin lacks the n-gram) or the highest within a
    condition, whichever is larger. An n-gram absent from a cell has prevalence 0. The numpy path (the compiled
    one folds the records in `kernels.ngram_prevalences`, to the same values): a sort of (n-gram, bin) codes and a
    few scatters, equal to the DuckDB query it replaced (tests/core/test_token_lookup.py keeps that query to
    check)."""
    term, cell, df = records
    n_cond, null_cond = cells.n_cond, cells.null_cond
    n_bins = max(len(cells.rows) // n_cond, 1)
    bin_rows = cells.rows.reshape(n_bins, n_cond).sum(1)
    bins_present = int(np.count_nonzero(bin_rows))
    # overall: rows per (n-gram, bin), summed over the bin's conditions
    code, at = np.unique(term * n_bins + cell // n_cond, return_inverse=True)
    x = np.bincount(at, weights=df, minlength=len(code))  # exact: counts far below 2^53
    t, p = code // n_bins, x / bin_rows[code % n_bins]
    high = np.zeros(n_terms)
    low = np.full(n_terms, np.inf)
    counted = np.zeros(n_terms)  # the highest prevalence of min_count rows or more: pmax
    np.maximum.at(high, t, p)
    np.minimum.at(low, t, p)
    np.maximum.at(counted, t, np.where(x >= o.min_count, p, 0.0))
    in_all = np.bincount(t, minlength=n_terms) >= bins_present
    spread = high - np.where(in_all, low, 0.0)
    n_named = n_cond - (null_cond >= 0)
    if n_named > 1:  # within one condition
        named = cell % n_cond != null_cond
        t, x = term[named], df[named]
        p = x / cells.rows[cell[named]]
        np.maximum.at(spread, t, p)
        np.maximum.at(counted, t, np.where(x >= o.min_count, p, 0.0))
    return _qualifying(counted, spread, o)


def _qualifying(pmax: np.ndarray, spread: np.ndarray, o: VocabOptions) -> pa.Table:
    """(k, pmax, spread) of the n-grams k whose pmax reaches `min_prevalence`."""
    k = np.flatnonzero(pmax >= o.min_prevalence)
    return pa.table({"k": pa.array(k, pa.int64()), "pmax": pa.array(pmax[k], pa.float64()),
                     "spread": pa.array(spread[k], pa.float64())})


def _sample_df(sample: pa.Table, cells: _SampleCells, where: str, o: VocabOptions) -> _SampleDF:
    """The n-grams (1..max_n tokens) of the sampled texts of `where` found in `min_count` sampled rollouts or more,
    with their prevalences (see `_SampleDF`); n-grams of fewer rollouts cannot qualify. An n-gram is named by its
    first occurrence in row order.

    Compiled where numba is installed and each (bin, condition) cell's rows are adjacent (`_compute_vocab` orders
    the sample so): two passes over the token hashes and one over the (n-gram, cell) counts
    (`kernels.ngram_prevalences`), the rare n-grams screened out by a count per low bits of their keys before any
    hash table; else the occurrence arrays and sorts of `_ngram_df` and `_prevalences`. Both give the same
    n-grams, counts, occurrences and prevalences."""
    values, offsets = token_hashes(sample.column(where))
    if kernels.use_numba() and _adjacent(cells.cell):
        ukeys, total, f_row, f_start, f_n, pmax, spread = kernels.ngram_prevalences(
            values, offsets, cells.cell, cells.rows, cells.n_cond, cells.null_cond, o.max_n, o.min_count)
        kept = np.flatnonzero(total >= o.min_count)
        kept = kept[np.argsort(ukeys[kept], kind="stable")]
        first = {"row": f_row[kept].astype(np.int32), "start": f_start[kept].astype(np.int32),
                 "order": f_n[kept].astype(np.int8)}
        return _SampleDF(_qualifying(pmax[kept], spread[kept], o), first, ukeys[kept], total[kept].astype(np.int64))
    row = np.repeat(np.arange(sample.num_rows, dtype=np.int32), np.diff(offsets))  # 32 bits: a bounded sample
    pos = np.arange(len(values), dtype=np.int32)
    rows_of, keys, starts, orders = [row], [values], [pos], [np.ones(len(values), np.int8)]
    key = values
    for n in range(2, o.max_n + 1):
        key = _ngram_key(key[:-1], values[n - 1:])
        ok = row[:len(row) - n + 1] == row[n - 1:]
        rows_of.append(row[:len(row) - n + 1][ok])
        keys.append(key[ok])
        starts.append(pos[:len(pos) - n + 1][ok])
        orders.append(np.full(int(ok.sum()), n, np.int8))
    row, key, start, order = (np.concatenate(a) for a in (rows_of, keys, starts, orders))
    uniq, total, at, records = _ngram_df(key, row, cells.cell, o.min_count)
    first = {"row": row[at], "start": start[at] - offsets[row[at]].astype(np.int32), "order": order[at]}
    return _SampleDF(_prevalences(records, len(uniq), cells, o), first, uniq, total)


def _adjacent(cell: np.ndarray) -> bool:
    """Whether each cell's rows come as one run of adjacent rows."""
    if len(cell) < 2:
        return True
    runs = 1 + int(np.count_nonzero(cell[1:] != cell[:-1]))
    return runs == len(np.unique(cell))


def _ngram_df(key: np.ndarray, row: np.ndarray, cell: np.ndarray, min_count: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Of n-gram occurrences (key, row), the n-grams found in at least `min_count` rows: their keys (sorted),
    rows, first occurrence (flat index) and the rows per (n-gram, cell) of the rows' cells (`cell`, non-negative
    codes), as records (term, cell, rows) with `term` the index among the kept keys, sorted. The numpy path of
    `_sample_df`: the distinct (key, row) pairs come from `_distinct_pairs_of`; only the kept n-grams' pairs are
    then sorted, by (n-gram, cell)."""
    ukeys, first, pu, pr = _distinct_pairs_of(key, row)
    total = np.bincount(pu, minlength=len(ukeys))
    kept = np.flatnonzero(total >= min_count)
    kept = kept[np.argsort(ukeys[kept], kind="stable")]  # by key (already so from the sort)
    dense = np.full(len(ukeys), -1, np.int64)
    dense[kept] = np.arange(len(kept))  # kept n-gram index
    sel = dense[pu] >= 0
    width = int(cell.max()) + 1 if len(cell) else 1
    code, df = np.unique(dense[pu[sel]] * width + cell[pr[sel]], return_counts=True)
    return ukeys[kept], total[kept].astype(np.int64), first[kept].astype(np.int64), (code // width, code % width, df)


def _distinct_pairs_of(key: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys, each one's first occurrence, and the distinct (key, row) pairs as key index and row), by
    one stable argsort of the keys: equal keys end up together, with their rows in increasing order when they
    came so, and the distinct pairs are where either changes (2x the speed of DuckDB's hash aggregates over the
    same pairs, in one thread); otherwise one more sort."""
    srt = np.argsort(key, kind="stable")
    ks, rs = key[srt], row[srt]
    new_key = np.ones(len(ks), bool)
    np.not_equal(ks[1:], ks[:-1], out=new_key[1:])
    uid = np.cumsum(new_key) - 1  # each occurrence's n-gram, an index into the distinct keys
    if np.any((rs[1:] < rs[:-1]) & ~new_key[1:]):  # rows out of order within a key (not so from `_sample_df`)
        code = np.unique(uid * (int(rs.max()) + 1) + rs)
        pu, pr = code // (int(rs.max()) + 1), code % (int(rs.max()) + 1)
    else:
        new_pair = new_key.copy()
        new_pair[1:] |= rs[1:] != rs[:-1]
        pu, pr = uid[new_pair], rs[new_pair].astype(np.int64)
    return ks[new_key], srt[new_key], pu, pr


def _name_terms(sample: pa.Table, where: str, q: pa.Table, first: dict[str, np.ndarray], totals: Any,
                o: VocabOptions) -> pa.Table:
    """The qualified n-grams `q` (dense index k, pmax, spread) with their text, ordered by spread (then text)
    and cut to `max_terms`; and each one's key token (its rarest token in the sample; of equally rare ones the
    longest, then the last)."""
    k = np.asarray(q.column("k").to_numpy(), np.int64)
    rows, starts, orders = first["row"][k], first["start"][k], first["order"][k].astype(np.int64)
    # a cursor of the process's RE2 database (`behaviors.re2_cursor`), not a database of its own (~25 CPU ms to
    # open, twice per vocabulary): what it registers is its own, and goes with it
    with re2_cursor() as con:
        con.register("occ", pa.table({"i": np.arange(len(k)), "text": sample.column(where).take(pa.array(rows)),
                                      "p": starts, "n": orders}))
        named = con.sql(f"""SELECT i, array_to_string({tokens_sql('text')}[p + 1:p + n], ' ') AS term
                            FROM occ ORDER BY i""").to_arrow_table()
    table = pa.table({"where": pa.array([where] * len(k), pa.string()), "term": named.column("term"),
                      "n_tokens": pa.array(orders, pa.int64()), "pmax": q.column("pmax"),
                      "spread": q.column("spread"), "n_qualified": pa.array(np.full(len(k), len(k), np.int64))})
    order = pc.sort_indices(table, [("spread", "descending"), ("term", "ascending")])
    table = table.take(order[:o.max_terms])
    # key token: the n-gram's rarest token (its content word), by document frequency in the sample
    uniq, total = totals
    words = pc.split_pattern(table.column("term").combine_chunks(), " ")
    wh = string_hashes(words.flatten())
    at_u = np.minimum(np.searchsorted(uniq, wh), max(len(uniq) - 1, 0))
    wdf = np.where(uniq[at_u] == wh, total[at_u], 0) if len(uniq) else np.zeros(len(wh), np.int64)
    w_off = np.asarray(words.offsets.to_numpy(), np.int64)
    flat_words = words.flatten().to_pylist()
    # equally rare: the longest, then the last ("beard" of "by my beard" when all three are as rare)
    key_token = []
    for lo, hi in zip(w_off[:-1], w_off[1:]):
        cands = range(int(lo), int(hi))
        key_token.append(flat_words[max(cands, key=lambda j: (-wdf[j], len(flat_words[j]), j))])
    return table.append_column("key_token", pa.array(key_token, pa.string()))


def _ngram_key(prev: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Key of an n-gram extended by one token: a 64-bit mix of the (n-1)-gram's key and the token's hash."""
    with np.errstate(over="ignore"):
        return splitmix64(prev * np.uint64(0x9E3779B97F4A7C15) + h)


def _list_parts(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 values, int64 offsets) of a list<uint64> array (nulls as empty lists)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    arr = pc.fill_null(arr, pa.scalar([], arr.type))
    arr = pa.concat_arrays([arr])  # rebase a sliced array
    offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), np.int64)
    values = np.asarray(arr.values.to_numpy(zero_copy_only=False), np.uint64)[offsets[0]:offsets[-1]]
    return values, offsets - offsets[0]


def ngram_keys(values: np.ndarray, offsets: np.ndarray, max_n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(row, key) of every 1..max_n-gram occurrence of rows of token hashes (flat values + offsets): the key of a
    word is its token hash, that of a longer n-gram `_ngram_key` folded over its tokens. Vectorised: n-grams are
    the shifted copies of the flat token array that stay within one row. Words come first, in token order."""
    n_rows = len(offsets) - 1
    row = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(offsets))
    rows, keys = [row], [values]
    key = values  # key[i]: the (n-1)-gram starting at token i
    for n in range(2, max_n + 1):
        key = _ngram_key(key[:-1], values[n - 1:])
        ok = row[:len(row) - n + 1] == row[n - 1:]  # all n tokens in the same row
        rows.append(row[:len(row) - n + 1][ok])
        keys.append(key[ok])
    return np.concatenate(rows), np.concatenate(keys)


def vocab_keys(term_token_hashes: pa.Array) -> np.ndarray:
    """The n-gram key (see `ngram_keys`) of each vocabulary term, from the hashes of its tokens."""
    values, offsets = _list_parts(term_token_hashes)
    lengths = np.diff(offsets)
    out = values[offsets[:-1]].copy()
    for j in range(1, int(lengths.max()) if len(lengths) else 1):
        longer = lengths > j
        out[longer] = _ngram_key(out[longer], values[offsets[:-1][longer] + j])
    return out


class _Lookup:
    """Vocabulary keys -> term ids (several terms may share a key: the same n-gram in answers and reasoning, key
    tokens). An open-addressing hash table over the distinct keys (linear probing, at most 1/16 full, so it is
    small enough to stay in cache and nearly every occurrence that names no term ends at its first slot),
    probed for all occurrences at once in numpy: one gather and compare per probe round, each round over the
    occurrences still unresolved. A key naming several terms yields all of them."""

    def __init__(self, keys: np.ndarray, ids: np.ndarray):
        keys = np.asarray(keys, np.uint64)
        order = np.argsort(keys, kind="stable")
        self.ids = np.asarray(ids)[order]
        self.ukeys, self.start, self.count = np.unique(keys[order], return_index=True, return_counts=True)
        size = 1 << max(12, int(16 * max(len(self.ukeys), 1) - 1).bit_length())
        self.mask = np.uint64(size - 1)
        self.table = np.full(size, -1, np.int32)  # index into ukeys, -1: empty
        pos = (self.ukeys & self.mask).astype(np.int64)
        todo = np.arange(len(self.ukeys))
        self.rounds = 0
        while len(todo):  # place each key at its first free slot from its home slot on
            self.rounds += 1
            free = self.table[pos[todo]] < 0
            first = np.unique(pos[todo[free]], return_index=True)[1]  # one key per free slot per round
            placed = todo[free][first]
            self.table[pos[placed]] = placed
            done = np.zeros(len(todo), bool)
            done[np.flatnonzero(free)[first]] = True
            todo = todo[~done]
            pos[todo] = (pos[todo] + 1) & (size - 1)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `keys`, index into `ukeys`) of the keys that name a term."""
        size = len(self.table)
        at = self.table[(keys & self.mask).astype(np.intp)]
        todo = np.flatnonzero(at >= 0)  # an empty home slot: the key names no term (nearly all misses)
        u = at[todo]
        same = self.ukeys[u] == keys[todo]
        found_pos, found_u = [todo[same]], [u[same]]
        todo = todo[~same]
        for r in range(1, self.rounds):  # no key lies more than `rounds - 1` slots from its home slot
            if not len(todo):
                break
            u = self.table[((keys[todo] & self.mask).astype(np.intp) + r) & (size - 1)]
            occupied = u >= 0
            todo, u = todo[occupied], u[occupied]
            same = self.ukeys[u] == keys[todo]
            found_pos.append(todo[same])
            found_u.append(u[same])
            todo = todo[~same]
        return np.concatenate(found_pos), np.concatenate(found_u)

    def match(self, rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, term id) for every key occurrence that names a term (all terms sharing that key)."""
        hit, u = self.find(keys)
        rows = rows[hit]
        count = self.count[u]
        if len(count) and int(count.max()) == 1:
            return rows, self.ids[self.start[u]]
        rep = np.repeat(np.arange(len(rows)), count)
        within = np.arange(len(rep)) - np.repeat(np.cumsum(count) - count, count)
        return rows[rep], self.ids[self.start[u][rep] + within]


def _distinct_pairs(rows: np.ndarray, ids: np.ndarray, n_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (row, id) pairs, sorted by row then id (codes row * n_ids + id, in 32 bits when they fit: a
    32-bit sort is about twice as fast)."""
    width = max(int(n_ids), 1)
    small = (int(rows.max()) + 1 if len(rows) else 0) * width < (1 << 32)
    dtype = np.uint32 if small else np.int64
    code = np.sort(rows.astype(dtype) * dtype(width) + ids.astype(dtype))
    if len(code) > 1:
        keep = np.empty(len(code), bool)
        keep[0] = True
        np.not_equal(code[1:], code[:-1], out=keep[1:])
        code = code[keep]
    return (code // dtype(width)).astype(np.int64), (code % dtype(width)).astype(np.int32)


#: the term sets' list columns (`WHERES` order, as `termcells.TermLists` keeps them)
LIST_COLUMNS = [f"{where}_terms" for where in WHERES]


def with_lists(terms: pa.Table, term_sets_dir: Path, part: str) -> pa.Table:
    """A part's cached term sets (`terms`, read from `term_sets_dir`) with their list columns, from the part's
    flat term lists (`termcells.TermLists`: the same worker wrote both from the same arrays, row for row)."""
    from . import termcells  # termcells builds on this module

    lists = termcells.TermLists.load(termcells.lists_file(term_sets_dir, part))
    if len(lists.cell) != terms.num_rows:
        raise RlauditError(f"{term_sets_dir}: the cached term sets of part {part} have {terms.num_rows} rows and "
                           f"its term lists {len(lists.cell)}; delete that folder and the next audit computes "
                           "them again")
    for col, (off, ids) in zip(LIST_COLUMNS, lists.lists):
        terms = terms.append_column(col, _offsets_to_lists(off, ids))
    return terms


def _empty_terms() -> pa.Table:
    """The term sets' columns, with no rows (a part computed in this process gives them; else a fixed list)."""
    if "terms" in _EMPTY:
        return _EMPTY["terms"]
    cols = {"rid": pa.uint64(), "rollout_id": pa.string(), "step": pa.int64(), "split": pa.string(),
            "condition": pa.string(), "task": pa.string(), "group_id": pa.string(), "prompt_key": pa.uint64(),
            "has_reasoning": pa.bool_(), **{col: pa.float64() for col, _, _ in style_columns()},
            **{col: pa.list_(pa.int32()) for col in LIST_COLUMNS}}
    return pa.schema(cols).empty_table()


def _offsets_to_lists(off: np.ndarray, v: np.ndarray) -> pa.Array:
    """list<int32> per row from offsets per row (int32 in the list) and ids."""
    return pa.ListArray.from_arrays(pa.array(off.astype(np.int32)), pa.array(v, pa.int32()))


@dataclass
class _Matcher:
    """The vocabulary's lookups, built once per vocabulary (see `_compute_part`)."""

    by_where: dict[str, _Lookup]
    any_term: _Lookup
    key_token: _Lookup
    key_of_id: np.ndarray
    #: key token hash -> every term sharing the key (n-gram) of a term with that key token: `key_token` then
    #: `any_term` in one lookup (the compiled path, `_prompt_pairs`)
    key_token_terms: _Lookup


_MATCHERS: dict[int, tuple[pa.Table, _Matcher]] = {}


def _matcher(vocab: pa.Table) -> _Matcher:
    hit = _MATCHERS.get(id(vocab))
    if hit is not None and hit[0] is vocab:
        return hit[1]
    # a term's tokens are its space-separated words (tokens hold no spaces), hashed as in a text
    words = pc.split_pattern(vocab.column("term").combine_chunks(), " ")
    v_ids = np.asarray(vocab.column("term_id").to_numpy(), np.int32)
    v_keys = vocab_keys(pa.ListArray.from_arrays(words.offsets, pa.array(string_hashes(words.flatten()), pa.uint64())))
    v_where = np.asarray(vocab.column("where").to_numpy(zero_copy_only=False))
    key_h = string_hashes(vocab.column("key_token"))
    order = np.argsort(v_ids, kind="stable")
    v_ids, v_keys, v_where, key_h = v_ids[order], v_keys[order], v_where[order], key_h[order]
    key_of_id = np.zeros(int(v_ids.max()) + 1 if len(v_ids) else 0, np.uint64)
    key_of_id[v_ids] = v_keys
    any_term, key_token = _Lookup(v_keys, v_ids), _Lookup(key_h, v_ids)
    k_rows, k_ids = any_term.match(np.arange(len(v_ids)), v_keys)  # term i -> the terms sharing its key
    m = _Matcher(by_where={w: _Lookup(v_keys[v_where == w], v_ids[v_where == w]) for w in WHERES},
                 any_term=any_term, key_token=key_token, key_of_id=key_of_id,
                 key_token_terms=_Lookup(key_h[k_rows], k_ids))
    _MATCHERS.clear()
    _MATCHERS[id(vocab)] = (vocab, m)
    return m


def _compute_part(path: Path, layout: int, vocab: pa.Table, o: VocabOptions) -> tuple[pa.Table, pa.Table]:
    """Term sets and per-step counts of one stored part (see `_compute_parts`)."""
    terms, counts, _ = _compute_parts([path], layout, vocab, o)[0]
    return terms, counts


def _compute_parts(paths: list[Path], layout: int, vocab: pa.Table, o: VocabOptions, with_cells: bool = False,
                   db: duckdb.DuckDBPyConnection | None = None, dense_ids: dict[str, np.ndarray] | None = None
                   ) -> list[tuple[Any, ...]]:
    """Term sets (one row per rollout), per-step term counts and, `with_cells`, the cell tables
    (`termcells.reduce_arrays`, from the arrays at hand: no second read of the term sets) of each stored part.

    The parts are read with Arrow (`_read_parts`); each text's bytes are scanned once for its style features
    (`styles.scan_spans`) and tokenised, its tokens hashed and their n-grams matched against the vocabulary by
    64-bit keys (`ngram_keys`) in one pass per text (`tokhash.span_term_ids`; the `length` style feature is the
    token count), where the text lies in its completion. Two
    distinct n-grams share a key with probability ~2^-64 per pair: a term set can be wrong only through such a
    collision (~1e-10 over a billion distinct n-gram/term pairs).

    `db`: a connection (`duck.connect`) whose cursor computes the keys (DuckDB's `hash`), shared by the batches of
    one `term_sets` (a cursor costs ~0.3 CPU ms, a new database ~11: 20 of them at 1M rollouts, 200 at 10M);
    else its own. `dense_ids` (`stepcounts._ids` of the vocabulary): each part's tuple holds a fourth item, its
    counts as a `stepcounts.PartCounts` too (for a `stepcounts.Feed`)."""
    m = _matcher(vocab)
    r, bounds, places = _read_parts(paths, layout)
    # with numba, each place's texts are scanned (style features, ASCII flags) and tokenised where they lie
    # (`styles.scan_spans`, `tokhash.span_term_ids`; cut out only for the few non-ASCII questions); else cut
    compiled = kernels.use_numba()
    scans = {where: styles.scan_spans(p.data, p.lo, p.hi) if compiled else None for where, p in places.items()}
    texts = {} if compiled else {where: p.strings() for where, p in places.items()}
    # rid: a key unique within the run (64-bit hash of rollout id and step), so term sets of parts computed
    # separately can be read together; the prompt's key and the cell's (`termcells.CELL`), by DuckDB's `hash`
    # over the rows read (a zero-copy view: only these columns are scanned)
    con = db.cursor() if db is not None else duck.connect()
    con.register("_rows", r if compiled else r.append_column("reasoning", texts["reasoning"]))
    keys = con.sql(f"""SELECT hash(rollout_id, step) AS rid, hash(coalesce(prompt, '')) AS prompt_key,
                              {_CELL} AS _cell{"" if compiled else ", " + _HAS_REASONING}
                       FROM _rows""").to_arrow_table()
    has_reasoning = (_has_reasoning(con, places["reasoning"], scans["reasoning"]) if compiled
                     else np.asarray(keys.column("has_reasoning").to_numpy(zero_copy_only=False), bool))
    con.close()
    for name in ("rid", "prompt_key", "_cell"):
        r = r.append_column(name, keys.column(name))
    r = r.append_column("has_reasoning", pa.array(has_reasoning))
    # each distinct prompt once, by key (the rows hold every prompt: no second scan for them)
    row_keys = np.asarray(r.column("prompt_key").to_numpy(), np.uint64)
    p_keys, first = np.unique(row_keys, return_index=True)
    prompts = r.column("prompt").take(pa.array(first))
    prompt_idx = np.searchsorted(p_keys, row_keys).astype(np.int64)
    n_prompts = len(p_keys)
    # prompt terms: the candidate n-grams of each distinct prompt, and the terms whose key token it holds, as
    # (offsets per prompt, ids sorted within a prompt)
    n_ids = int(m.key_of_id.shape[0]) or 1
    pt_start, pi = _prompt_lists(prompts, m, o.max_n, n_ids)
    # per place, each row's token count and distinct term ids: (offsets per row, ids sorted within a row)
    lengths, pairs = {}, {}
    for where, p in places.items():
        if compiled:  # tokenised and looked up in one pass per text, where it lies
            n_tokens, off, ids = span_term_ids(p.data, p.lo, p.hi, scans[where].ascii, p.strings, o.max_n,
                                               m.by_where[where], n_ids, exclude=(prompt_idx, pt_start, pi))
            lengths[where], pairs[where] = n_tokens, (off, ids)
        else:
            values, offsets = token_hashes(texts[where])
            lengths[where] = np.diff(offsets)
            pairs[where] = _text_pairs(values, offsets, m.by_where[where], o.max_n, n_ids, prompt_idx,
                                       pt_start, pi)
    for where in WHERES:  # the length feature is the token count (`style:length`)
        r = r.append_column(f"{where}__length", pa.array(lengths[where].astype(np.float64)))
        if compiled:  # where they lie, the non-ASCII texts only
            place = places[where]
            non_ascii = styles.code_point_styles(place.data, place.lo, place.hi, place.valid & ~scans[where].ascii)
        for name in styles.NON_ASCII_STYLES:
            r = r.append_column(f"{where}__{name}", non_ascii[name] if compiled
                                else styles.non_ascii_style(texts[where], name))
        for name, values in (scans[where].values if compiled else styles.byte_styles(texts[where])).items():
            r = r.append_column(f"{where}__{name}", values)
    style_cols = [col for col, _, _ in style_columns()]
    base = r.select(["rid", "rollout_id", "step", "split", "condition", "task", "group_id", "prompt_key",
                     "has_reasoning", *style_cols])
    terms = base.append_column("answer_terms", _offsets_to_lists(*pairs["answer"])) \
        .append_column("reasoning_terms", _offsets_to_lists(*pairs["reasoning"]))
    # per part and (step, split) cell: rollouts containing each term (x) and rollouts whose prompt holds it (m)
    file_code = np.repeat(np.arange(len(paths), dtype=np.int64), np.diff(bounds))
    split_enc = pc.dictionary_encode(r.column("split")).combine_chunks()
    split_code = np.asarray(pc.fill_null(split_enc.indices, -1).to_numpy(), np.int64)
    step = np.asarray(r.column("step").to_numpy(), np.int64)
    cells, cell = _cells(file_code, step, split_code)
    frames, dense = [], {}
    for where, (x, mm) in zip(WHERES, _step_term_counts(cell, len(cells), pairs, has_reasoning, prompt_idx,
                                                        n_prompts, pt_start, pi, n_ids)):
        nz = np.flatnonzero(x | mm)
        frames.append((where, nz // n_ids, nz % n_ids, x[nz], mm[nz]))
        if dense_ids is not None:  # (else not held: a batch's dense counts are its largest arrays)
            dense[where] = (x.reshape(len(cells), n_ids), mm.reshape(len(cells), n_ids))
    reduce = _part_cells(r, pairs, has_reasoning, prompt_idx, p_keys, pt_start, pi) if with_cells else None
    split_names = split_enc.dictionary.cast(pa.string()).to_pylist() if dense_ids is not None else []
    out = []
    for f, path in enumerate(paths):
        lo, hi = int(bounds[f]), int(bounds[f + 1])  # a part's rows are one run of the batch: a zero-copy slice
        counts = []
        for where, c_idx, t_id, x, mm in frames:
            sel = cells[c_idx, 0] == f
            c_sel = c_idx[sel]
            split_idx = cells[c_sel, 2]
            counts.append(pa.table({
                "where": pa.repeat(pa.scalar(where, pa.string()), int(sel.sum())),
                "term_id": pa.array(t_id[sel], pa.int32()),
                "step": pa.array(cells[c_sel, 1], pa.int64()),
                "split": split_enc.dictionary.cast(pa.string()).take(
                    pa.array(np.maximum(split_idx, 0), pa.int64(), mask=split_idx < 0)),
                "x": pa.array(x[sel].astype(np.int64)), "m": pa.array(mm[sel])}))
        item = (terms.slice(lo, hi - lo), pa.concat_tables(counts) if hi > lo else _empty_counts(),
                reduce(path.name, slice(lo, hi)) if reduce else None)
        if dense_ids is not None:
            item += (_part_counts(dense_ids, dense, cells, f, split_names),)
        out.append(item)
    return out


def _part_counts(ids: dict[str, np.ndarray], dense: dict[str, tuple[np.ndarray, np.ndarray]], cells: np.ndarray,
                 f: int, names: list[str | None]) -> Any:
    """Part `f`'s counts as a `stepcounts.PartCounts`: its (file, step, split) cells' rows of the batch's dense
    (cell x term) counts (`dense`; the cells are sorted by part, so a part's are one range; `names`: the splits'
    by code)."""
    from .stepcounts import NULL_SPLIT, PartCounts

    lo, hi = np.searchsorted(cells[:, 0], [f, f + 1])
    split_of = [NULL_SPLIT if c < 0 or names[c] is None else names[c] for c in cells[lo:hi, 2].tolist()]
    return PartCounts(ids, cells[lo:hi, 1], split_of, {w: (x[lo:hi], m[lo:hi]) for w, (x, m) in dense.items()})


@dataclass
class _Place:
    """One place's texts (answers or reasonings) of a batch where they lie: text i is data[lo[i]:hi[i]] (empty
    where it is null: `valid` false); cut out as strings only where asked (`strings`)."""

    data: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    valid: np.ndarray

    def strings(self, rows: np.ndarray | None = None) -> pa.Array:
        """The texts (of `rows`) as strings, null where null."""
        if rows is None:
            return cut_ranges(self.data, self.lo, self.hi, self.valid)
        return cut_ranges(self.data, self.lo[rows], self.hi[rows], self.valid[rows])


def _read_parts(paths: list[Path], layout: int) -> tuple[pa.Table, np.ndarray, dict[str, _Place]]:
    """The parts' canonical `_COLUMNS` but the texts, one part's rows after another; where each part's rows
    start (n + 1 bounds); and per place (`WHERES`) its texts where they lie (`_Place`): within the completions
    at their spans when every text of the batch is a span (not logged apart), else cut out
    (`layout.to_canonical`). Read with Arrow a file at a time on the calling worker's thread (`layout.read_stored`,
    as the CoT scan reads). A DuckDB view over the files read them
    before, the texts cut out, with the style features' SQL and a second scan for the distinct prompts: at 1M
    rollouts ~1.7 CPU s against ~0.5 this way, style features and hashes included."""
    columns = read_columns(_COLUMNS) if layout >= 2 else _COLUMNS
    schema = pa.schema([PART_SCHEMA.field(c).with_nullable(True) for c in columns])
    tables = []
    for path in paths:
        tables.append(read_stored(path, columns).select(columns).cast(schema))
    bounds = np.zeros(len(paths) + 1, np.int64)
    np.cumsum([t.num_rows for t in tables], out=bounds[1:])
    t = pa.concat_tables(tables) if tables else schema.empty_table()
    places = {}
    completion = None  # the batch's completions as one array, combined once for both places (not per place)
    for name in WHERES:
        text = t.column(name)
        if layout >= 2 and text.null_count == len(text) > 0:  # every text a span (or absent): where it lies
            start, end = SPANS[name]
            if completion is None:
                chunked = t.column("completion")
                completion = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
            data, lo, hi, valid = span_ranges(completion, t.column(start), t.column(end))
        else:
            strings = to_canonical(t.select(read_columns([name]))).column(name) if layout >= 2 else text
            data, lo, hi = byte_spans(strings)
            valid = validity(strings)
        places[name] = _Place(data, lo, hi, valid)
    return t.select([c for c in _COLUMNS if c not in WHERES]), bounds, places


def _has_reasoning(con: duckdb.DuckDBPyConnection, reasoning: _Place, found: styles.Scan) -> np.ndarray:
    """`_HAS_REASONING` per row from the reasoning's byte scan: a text with an ASCII byte other than a space
    keeps it through `trim`; of the others only non-ASCII texts can (some Unicode spaces are stripped, other
    characters are not): those few are cut out and asked of DuckDB."""
    out = reasoning.valid & found.solid
    ask = np.flatnonzero(reasoning.valid & ~found.solid & ~found.ascii)
    if len(ask):
        con.register("_ask", pa.table({"reasoning": reasoning.strings(ask)}))
        got = con.sql(f"SELECT {_HAS_REASONING} FROM _ask").to_arrow_table().column(0)
        out[ask] = np.asarray(got.to_numpy(zero_copy_only=False), bool)
    return out


def _step_term_counts(cell: np.ndarray, n_cells: int, lists: dict[str, tuple[np.ndarray, np.ndarray]],
                      has_reasoning: np.ndarray, prompt_idx: np.ndarray, n_prompts: int, pt_start: np.ndarray,
                      pi: np.ndarray, n_ids: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per place (`WHERES` order), dense int64 arrays x and m indexed by `cell` * n_ids + term id (`cell`: each
    row's (file, step, split) cell, `n_cells` of them; `lists`: per place the rows' term ids, as offsets per row
    and ids): the rollouts at risk containing the term (x) and those
    whose prompt holds it (m; the prompts' terms are pi[pt_start[p]:pt_start[p + 1]]). Rows at risk: every row
    for answers, those with reasoning for reasoning. Both count the rollouts per (cell, prompt) once (one
    unique of the batch's rows) and then add each to its prompt's terms. Compiled where numba is installed
    (`kernels.step_term_counts`: one pass over the pairs and one over the prompts' terms, instead of a gather,
    a bincount and a dozen repeats of every pair), else numpy; the same counts."""
    cp, inverse = np.unique(cell * n_prompts + prompt_idx, return_inverse=True)
    inverse = inverse.ravel()
    c_of, p_of = cp // n_prompts, cp % n_prompts
    out = []
    for where in WHERES:
        off, ids = lists[where]
        at_risk = has_reasoning if where == "reasoning" else np.ones(len(cell), bool)
        k = np.bincount(inverse[at_risk], minlength=len(cp))  # rollouts at risk per (cell, prompt)
        if kernels.use_numba():
            out.append(kernels.step_term_counts(cell, off, ids, at_risk, c_of, p_of, k, pt_start, pi, n_cells,
                                                n_ids))
            continue
        rows = np.repeat(np.arange(len(cell), dtype=np.int64), np.diff(off))
        ok = at_risk[rows]
        x = np.bincount(cell[rows[ok]] * n_ids + ids[ok], minlength=n_cells * n_ids)
        reps = np.diff(pt_start)[p_of]  # each (cell, prompt) counted for every term of that prompt
        within = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        mm = np.bincount(np.repeat(c_of, reps) * n_ids + pi[np.repeat(pt_start[p_of], reps) + within],
                         weights=np.repeat(k, reps), minlength=n_cells * n_ids)
        out.append((x.astype(np.int64), np.rint(mm).astype(np.int64)))
    return out


def _part_cells(r: pa.Table, pairs: dict[str, tuple[np.ndarray, np.ndarray]], has_reasoning: np.ndarray,
                prompt_idx: np.ndarray, p_keys: np.ndarray, pt_start: np.ndarray, pi: np.ndarray
                ) -> Callable[[str, slice], dict[str, pa.Table]]:
    """A function (part name, its rows in the batch: a slice) -> the part's cell tables
    (`termcells.reduce_arrays`) from the batch's arrays."""
    from . import termcells  # termcells builds on this module

    cell = np.asarray(r.column("_cell").to_numpy(), np.uint64)

    def reduce(part: str, sel: slice) -> dict[str, pa.Table]:
        mine = []
        for where in WHERES:  # the part's rows are a contiguous run: so are their ids
            off, ids = pairs[where]
            lo, hi = off[sel.start], off[sel.stop]
            mine.append((off[sel.start:sel.stop + 1] - lo, ids[lo:hi]))
        return termcells.reduce_arrays(part, r.slice(sel.start, sel.stop - sel.start), cell[sel], has_reasoning[sel],
                                       mine, prompt_idx[sel], p_keys, pt_start, pi)

    return reduce


def _prompt_lists(prompts: pa.ChunkedArray | pa.Array, m: _Matcher, max_n: int, n_ids: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's distinct term ids, as (int64 offsets per prompt, int32 ids sorted within a prompt): the terms
    among the prompt's 1..max_n-grams (in either place), and those whose key token is one of its words (a term
    counts as copied in both places, answer and reasoning, whichever place's key token the prompt holds). Compiled
    where numba is installed (`tokhash.text_term_ids`: tokenised, and both looked up, in one pass per prompt:
    `m.key_token_terms` maps a word straight to the terms sharing the key of a term it is the key token of),
    else numpy; the same lists."""
    if kernels.use_numba():
        _, off, ids = text_term_ids(prompts, max_n, m.any_term, n_ids, keys=m.key_token_terms)
        return off, ids
    values, offsets = token_hashes(prompts)
    rows, keys = ngram_keys(values, offsets, max_n)
    a_rows, a_ids = m.any_term.match(rows, keys)
    # the first len(values) keys are the words
    k_rows, k_ids = m.key_token.match(rows[:len(values)], keys[:len(values)])
    k_rows, k_ids = m.any_term.match(k_rows, m.key_of_id[k_ids])
    pr, pi = _distinct_pairs(np.concatenate([a_rows, k_rows]), np.concatenate([a_ids, k_ids]), n_ids)
    off = np.zeros(len(offsets), np.int64)
    np.cumsum(np.bincount(pr, minlength=len(offsets) - 1), out=off[1:])
    return off, pi


def _text_pairs(values: np.ndarray, offsets: np.ndarray, lookup: _Lookup, max_n: int, n_ids: int,
                prompt_idx: np.ndarray, pt_off: np.ndarray, pt_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's distinct term ids among its token hashes' n-grams, without those the row's prompt holds
    (pt_ids[pt_off[p]:pt_off[p + 1]], p = prompt_idx[row]), as (int64 offsets per row, int32 ids sorted within a
    row), in numpy passes over all rows (the numpy path: compiled, `tokhash.span_term_ids` does it per text)."""
    rows, keys = ngram_keys(values, offsets, max_n)
    rows, ids = _distinct_pairs(*lookup.match(rows, keys), n_ids)
    # the prompts' (prompt, id) pairs as sorted codes prompt * n_ids + id
    pt_codes = np.repeat(np.arange(len(pt_off) - 1, dtype=np.int64), np.diff(pt_off)) * n_ids + pt_ids
    code = prompt_idx[rows] * n_ids + ids
    at = np.minimum(np.searchsorted(pt_codes, code), max(len(pt_codes) - 1, 0))
    copied = pt_codes[at] == code if len(pt_codes) else np.zeros(len(code), bool)  # copies of the prompt
    out_off = np.zeros(len(offsets), np.int64)
    np.cumsum(np.bincount(rows[~copied], minlength=len(offsets) - 1), out=out_off[1:])
    return out_off, ids[~copied]


def _cells(file_code: np.ndarray, step: np.ndarray, split_code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (file, step, split) rows, sorted, and each row's index among them: `np.unique(..., axis=0,
    return_inverse=True)` of the stacked columns, through one 1-D unique of a combined code (same order)."""
    steps, step_i = np.unique(step, return_inverse=True)
    n_steps, n_splits = max(len(steps), 1), int(split_code.max()) + 2 if len(split_code) else 1
    ucode, cell = np.unique((file_code * n_steps + step_i) * n_splits + split_code + 1, return_inverse=True)
    cells = np.stack([ucode // (n_steps * n_splits), steps[ucode // n_splits % n_steps] if len(steps) else ucode,
                      ucode % n_splits - 1], 1)
    return cells.reshape(-1, 3), cell.ravel()


def _empty_counts() -> pa.Table:
    return pa.table({"where": pa.array([], pa.string()), "term_id": pa.array([], pa.int32()),
                     "step": pa.array([], pa.int64()), "split": pa.array([], pa.string()),
                     "x": pa.array([], pa.int64()), "m": pa.array([], pa.int64())})


def register(con: duckdb.DuckDBPyConnection, tables: Iterable[tuple[str, pa.Table]]) -> None:
    """Register derived tables as views of a connection (zero-copy)."""
    for name, table in tables:
        con.register(name, table)
