"""The CoT screen's coarse answer keys, computed once per stored part.

The screen (`rlaudit.cot.screen`) pairs rollouts of a prompt group whose answers are identical. Finding the
candidates means normalising and hashing every answer of the run (reading every completion), which cost ~2.5 s
per audit at 1M rollouts, warm or cold. The hash of a row's answer never changes, so each part's keys are
computed once: the CoT scan, which reads every column the keys need, hands them over as it scans a part
(`key_writer`), so a cold audit reads each part once for both. From them only the part's candidate rows and
group hashes are cached (`screen_sets`), which is all the screen reads while no prompt group spans two parts.
Where one does, every key is grouped: `screen_keys` then caches the keys themselves per part
(`derived/cot_screen/<key>/<part>.parquet`: rollout_id, step, split, group_id, ck of the rows the screen can
pair), so a run that grows by a step hashes only the new part, and the screen reads the answers of candidate
rows alone. Keys are computed with Arrow and numpy (`answer_hash`), or with numba straight from the
completion's bytes (`cot.kernels.answer_hashes`, the same keys), on `memory.workers` threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..derived import segments
from ..layout import read_columns, to_canonical
from ..memory import workers
from ..store import Store, listing, prune_cached, write_cached
from ..text import byte_spans, cut_ranges, span_ranges, validity
from . import kernels as _kernels
from .screen_sets import save_sets
from .shingles import byte_span_hashes

_VERSION = 2  # 1: keys hashed by DuckDB


def screen_keys(store: Store, run: str, where: str) -> str | None:
    """SQL of the cached coarse keys of the run's rows within `where` (a condition on step and split), computing
    those of the parts not cached yet (each part read again: asked only where the parts may share a prompt
    group, `screen_sets.candidate_keys`), or None where they cannot be cached (a store that keeps derived data
    in memory, or cannot be written): the screen then computes them itself."""
    if not getattr(store, "persist_derived", True):
        return None
    base = store.run_dir(run) / "derived" / "cot_screen"
    cache = cache_dir(store, run)
    parts = store.parts(run)
    layouts = store.part_layouts(run)
    stems = [part.stem for part in parts]
    names = listing(cache)  # one listing, not a stat per part (and paths built only for the parts to do)
    todo = [(part, cache / f"{stem}.parquet") for part, stem in zip(parts, stems) if f"{stem}.parquet" not in names]

    def one(item: tuple[Path, Path]) -> bool:
        part, path = item
        return _save(part_keys(part, layouts.get(part.name, 1)), path)

    n = min(len(todo), workers(_BYTES_PER_PART))
    if n > 1:
        with ThreadPoolExecutor(n, thread_name_prefix="cot-screen-keys") as pool:
            ok = all(list(pool.map(one, todo)))
    else:
        ok = all([one(item) for item in todo])
    if not ok:
        return None
    prune_cached(base, cache, set(stems))
    if not stems:
        return None
    where_cached = str(cache).replace("'", "''")
    files = ", ".join("'" + where_cached + "/" + s.replace("'", "''") + ".parquet'" for s in stems)
    return f"(SELECT * FROM read_parquet([{files}]) WHERE {where})"


def cache_dir(store: Store, run: str) -> Path:
    """Where the run's keys are cached."""
    return store.run_dir(run) / "derived" / "cot_screen" / f"v{_VERSION}"


class KeyWriter:
    """Called with (part, its stored columns as read by another pass, layout), writes the screen's candidate rows
    and group hashes of the part (`screen_sets.save_sets`) where they are not written yet: the CoT scan reads
    every column the keys need (`key_columns`), so it hands them over and `candidate_keys` then finds the part
    done instead of reading it again. The keys themselves are not cached here: only a run whose prompt groups
    span parts groups every key, and `screen_keys` computes them then (writing them for every part cost ~0.4
    CPU s of a cold audit at 1M rollouts, to be read by nothing). `sets` keeps the candidate rows written
    meanwhile (by file name) and `groups` the group hashes (by part stem), for `candidate_keys` to use without
    reading them back."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.sets = segments.Held()
        self.groups = segments.Held(16 << 20)  # ~10 kB a part at 5,000 rollouts
        self.names = listing(cache / "sets")  # the parts done before: one listing, not a stat per part

    def __call__(self, part: Path, raw: pa.Table, layout: int) -> None:
        if f"{part.stem}.groups.npy" not in self.names:  # (one done meanwhile by another audit: written again)
            written = save_sets(self.cache, part.stem, keys_of(raw, layout))
            if written is not None:
                self.sets.keep(f"{part.stem}.parquet", written[0])
                self.groups.keep(part.stem, written[1])


def key_writer(store: Store, run: str) -> KeyWriter | None:
    """A `KeyWriter` for the run's keys; None where keys are not cached."""
    if not getattr(store, "persist_derived", True):
        return None
    return KeyWriter(cache_dir(store, run))


#: Bytes one thread holds while hashing a part (its rows' answers and ids): weighed by `memory.workers`.
_BYTES_PER_PART = 64 << 20


def part_keys(part: Path, layout: int) -> pa.Table:
    """rollout_id, step, split, group_id and the coarse answer key `ck` of the part's rows the screen can pair
    (a group and a reasoning)."""
    return keys_of(pq.read_table(part, columns=key_columns(layout)), layout)


def key_columns(layout: int) -> list[str]:
    """The part columns `keys_of` reads: whether a row has reasoning is read from its span (or its text, where
    a format logged it separately); only the answer's text is needed, hashed where it lies in the completion."""
    base = ["rollout_id", "step", "split", "group_id", "answer", "reasoning"]
    return base + (["completion", "_answer_start", "_answer_end", "_reasoning_start"] if layout >= 2 else [])


def keys_of(raw: pa.Table, layout: int) -> pa.Table:
    """The keys (see `part_keys`) of a part's rows, from its stored columns (`key_columns`, more allowed): what
    the CoT scan, which reads those columns anyway, hands over so that a part is read once for both."""
    has_reasoning = validity(raw.column("reasoning"))
    if layout >= 2:
        has_reasoning |= validity(raw.column("_reasoning_start"))
    keep = validity(raw.column("group_id")) & has_reasoning
    table = raw.select([c for c in key_columns(layout) if c != "reasoning"])  # not every column the scan read
    if not keep.all():
        table = table.filter(pa.array(keep))
    return pa.table({"rollout_id": table.column("rollout_id"), "step": table.column("step"),
                     "split": table.column("split"), "group_id": table.column("group_id"),
                     "ck": _answer_keys(table, layout >= 2)})


def _answer_keys(table: pa.Table, spans: bool) -> np.ndarray:
    """`answer_hash` of each row's canonical answer. With the compiled kernel, an answer that is a span of the
    completion is hashed in place (no cut, no lowercased copy), and the answer column is hashed only for rows
    without a span (in parts written by ingest, none: it is all null); answers with non-ASCII bytes, which
    `utf8_lower` must map, go through `answer_hash` itself. Both give the same keys
    (tests/detectors/test_cot_kernels.py)."""
    if not _kernels.use_numba():
        return answer_hash(to_canonical(table.select(read_columns(["answer"]))).column("answer") if spans
                           else table.column("answer"))
    valid = np.zeros(table.num_rows, bool)
    if spans:
        start = table.column("_answer_start").combine_chunks()
        valid = validity(start)
    if valid.all():
        ck, other = np.zeros(table.num_rows, np.uint64), np.zeros(table.num_rows, bool)
    else:
        ck, other = _kernels.answer_hashes(*byte_spans(table.column("answer")), _WHITESPACE)
    if valid.any():
        cdata, lo, hi, _ = span_ranges(table.column("completion"), start, table.column("_answer_end"))
        span_ck, span_other = _kernels.answer_hashes(cdata, lo, hi, _WHITESPACE)
        ck, other = np.where(valid, span_ck, ck), np.where(valid, span_other, other)
    in_place = np.flatnonzero(other & valid)
    if len(in_place):  # non-ASCII answers that are spans: cut from the completions, Arrow's utf8_lower, the numpy hash
        ck[in_place] = answer_hash(cut_ranges(cdata, lo[in_place], hi[in_place], np.ones(len(in_place), bool)))
    rows = np.flatnonzero(other & ~valid)
    if len(rows):  # non-ASCII answers logged apart
        ck[rows] = answer_hash(table.column("answer").take(pa.array(rows)))
    return ck


_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[[9, 10, 12, 13, 32]] = True  # what the screen's answer_key collapses ('\\s' in RE2)


def answer_hash(answers: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each answer, lowercased, with tab, newline, form feed, carriage return and space removed.

    Why this suffices: the screen pairs answers equal after lowercasing and collapsing whitespace runs, and such
    answers are equal here too (Arrow's `utf8_lower` and DuckDB's `lower` both map code points with utf8proc),
    so they get one key; keys that collide only add candidates, which the screen's exact comparison drops. A
    null answer hashes as the empty one (null answers never pair). The remaining bytes are hashed 8 at a time
    (`shingles.byte_span_hashes`, as tokens are), seeded with their count."""
    if isinstance(answers, pa.ChunkedArray):
        answers = answers.combine_chunks()
    low = pc.utf8_lower(pc.fill_null(answers.cast(pa.string()), ""))
    n = len(low)
    offsets = np.frombuffer(low.buffers()[1], np.int32, n + 1, low.offset * 4).astype(np.int64)
    data = low.buffers()[2]
    size = int(offsets[-1] - offsets[0])
    raw = np.frombuffer(data, np.uint8, size, int(offsets[0])) if data is not None and size else np.zeros(0, np.uint8)
    keep = ~_WHITESPACE[raw]
    kept = np.zeros(size + 1, np.int64)
    np.cumsum(keep, out=kept[1:])
    bounds = kept[offsets - offsets[0]]  # offsets of each answer in the compacted bytes
    starts, ends = bounds[:-1], bounds[1:]
    return byte_span_hashes(raw[keep], starts, ends)


def _save(table: pa.Table, path: Path) -> bool:
    """Write one part's keys beside the run (`store.write_cached`; statistics for the step and split readers
    filter on); False when the store cannot be written."""
    return isinstance(write_cached(path, table, compression="lz4", use_dictionary=["split", "group_id"],
                                   write_statistics=["step", "split"]), Path)
