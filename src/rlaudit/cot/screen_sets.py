"""The CoT screen's candidate rows, per stored part, so that a warm audit does not group every answer key of the
run to find the (few) prompt groups where two rollouts answered alike.

The screen (`cot.screen`) pairs rollouts of one prompt group with the same answer; its first step grouped the
cached answer keys (`screen_keys`) of the whole run by (group, key): 10M rows at 10M rollouts, 2.5 CPU s per
audit, usually to find no pair at all. A set of two rows with the same group and key lies within one part
unless the group spans parts, so:

- per part (`<keys cache>/sets/`): its candidate rows, those whose (group, key) occurs at least twice in the
  part (`<part>.parquet`, mostly empty), and the sorted 64-bit hashes of its groups (`<part>.groups.npy`);
- per run, an index: the sorted group hashes of a set of parts known to share no group
  (`sets/index/<digest>.npy`, with the parts in `<digest>.json`), extended by the parts added since once there
  are INDEX_AT of them.

An audit checks that the parts added since the newest index share no group hash with each other or with the
index (binary searches); then the candidate rows of the parts, filtered by the audit's scope, hold every set the
whole run's keys would give (a set within the scope is a set within its part). Where a group hash repeats
across parts (a group spread over two parts, or a hash collision), the screen groups every key as before: the
pairs are the same either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..derived import segments
from ..store import Store, sql_list, write_cached
from .shingles import byte_span_hashes

#: parts added since the newest index that make a new one (the merge rewrites the index: O(groups of the run))
INDEX_AT = 16
#: seconds a superseded index is kept for audits that may still read it (as `segments.GRACE`)
GRACE = 600.0


def candidate_keys(store: Store, run: str, keys_dir: Path, where: str,
                   held: dict[str, pa.Table] | None = None) -> str | None:
    """SQL of the cached answer keys (`screen_keys`, in `keys_dir`) of the run's rows within `where` that can
    form a pair, or None when the parts may share a prompt group (then every key must be grouped). `held`: the
    candidate rows written in this audit (`KeyWriter.sets`), merged into segments without reading them back."""
    parts = store.parts(run)
    if not parts:
        return None
    d = keys_dir / "sets"
    groups = {}
    files = []
    for part in parts:
        cand, grp = d / f"{part.stem}.parquet", d / f"{part.stem}.groups.npy"
        if not (cand.is_file() and grp.is_file()) and not _summarise(keys_dir / f"{part.stem}.parquet", cand, grp):
            return None
        files.append(cand)
        groups[part.stem] = grp
    _prune_parts(d, set(groups))
    if not _disjoint(d / "index", groups):
        return None
    files = segments.covering(files, "sets", held=held)
    return f"(SELECT * FROM read_parquet({sql_list([str(f) for f in files])}) WHERE {where})"


def _summarise(keys: Path, cand: Path, grp: Path) -> bool:
    """Write one part's candidate rows and group hashes (from its cached keys); False when it cannot."""
    try:
        table = pq.read_table(keys)
    except (OSError, pa.ArrowInvalid):
        return False
    return _write_sets(table, cand, grp) is not None


def save_sets(keys_dir: Path, stem: str, table: pa.Table) -> pa.Table | None:
    """Write the candidate rows and group hashes of one part from its keys `table` (just cached in `keys_dir`
    by `screen_keys`): a cold audit then does not read every part's keys back to find them. Returns the
    candidate rows written (None when they could not be)."""
    d = keys_dir / "sets"
    return _write_sets(table, d / f"{stem}.parquet", d / f"{stem}.groups.npy")


def _write_sets(table: pa.Table, cand: Path, grp: Path) -> pa.Table | None:
    counts = table.group_by(["group_id", "ck"], use_threads=False).aggregate([("ck", "count")])
    twice = counts.filter(pc.greater_equal(counts.column("ck_count"), 2)).drop_columns(["ck_count"])
    # (an empty table of the schema, not a slice: kept by the caller, a slice would hold the part's keys)
    rows = table.join(twice, ["group_id", "ck"], join_type="inner", use_threads=False) if len(twice) else \
        table.schema.empty_table()
    rows = rows.select(table.schema.names)
    hashes = np.unique(_hash(table.column("group_id")))
    if not isinstance(write_cached(cand, rows, compression="lz4"), Path):
        return None
    try:
        _atomic_save(grp, hashes)
    except OSError:
        return None
    return rows


def _hash(strings: pa.ChunkedArray) -> np.ndarray:
    from .screen_keys import _spans

    return byte_span_hashes(*_spans(strings))


def _disjoint(d: Path, groups: dict[str, Path]) -> bool:
    """Whether no group hash occurs in two of the parts `groups` (stem -> group hashes): checked against the
    newest index of a subset of them, then among the parts it does not hold; a new index once INDEX_AT are."""
    held: set[str] = set()
    index = np.zeros(0, np.uint64)
    best = None
    for meta in d.glob("*.json") if d.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            stems = json.loads(meta.read_text())
            if set(stems) <= groups.keys() and (best is None or len(stems) > len(best[1])):
                best = (meta, stems)
    if best is not None:
        with contextlib.suppress(OSError, ValueError):
            index = np.load(best[0].with_suffix(".npy"), mmap_mode="r")
            held = set(best[1])
    loose = [s for s in groups if s not in held]
    arrays = [np.load(groups[s]) for s in loose]
    new = np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)
    merged = np.unique(new)
    if len(merged) != len(new):
        return False  # a group hash in two of the parts since the index
    if len(index) and len(merged):
        i = np.searchsorted(index, merged)
        i[i == len(index)] = 0
        if np.any(index[i] == merged):
            return False
    if len(loose) >= INDEX_AT:
        stems = sorted(held) + sorted(loose)
        digest = hashlib.sha1(json.dumps(stems).encode()).hexdigest()[:16]
        with contextlib.suppress(OSError):
            _atomic_save(d / f"{digest}.npy", np.union1d(np.asarray(index), merged))
            _atomic_text(d / f"{digest}.json", json.dumps(stems))
            _prune(d, digest)
    return True


def _atomic_save(path: Path, array: np.ndarray) -> None:
    import os
    import threading

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp.npy")
    try:
        np.save(tmp, np.asarray(array, np.uint64), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _atomic_text(path: Path, text: str) -> None:
    import os
    import threading

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.time_ns():x}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _prune_parts(d: Path, stems: set[str]) -> None:
    """Remove the files of parts the run no longer lists (a read-only store keeps them: no reader lists them)."""
    for f in d.iterdir():
        if f.is_file() and not f.name.startswith(".") and f.name.split(".")[0] not in stems:
            with contextlib.suppress(OSError):
                f.unlink(missing_ok=True)


def _prune(d: Path, keep: str) -> None:
    """Remove indexes other than `keep` superseded more than GRACE seconds ago."""
    now = time.time()
    for f in d.iterdir():
        if not f.name.startswith(".") and f.name.split(".")[0] != keep:
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > GRACE:
                    f.unlink()
