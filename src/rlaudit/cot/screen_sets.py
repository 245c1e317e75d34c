"""The CoT screen's candidate rows, per stored part, so that a warm audit does not group every answer key of the
run to find the (few) prompt groups where two rollouts answered alike.

The screen (`cot.screen`) pairs rollouts of one prompt group with the same answer; its first step grouped the
cached answer keys (`screen_keys`) of the whole run by (group, key): 10M rows at 10M rollouts, 2.5 CPU s per
audit, usually to find no pair at all. A set of two rows with the same group and key lies within one part
unless the group spans parts, so:

- per part (`<keys cache>/sets/`): the sorted 64-bit hashes of its groups (`<part>.groups.npy`, which marks the
  part done) and its candidate rows, those whose (group, key) occurs at least twice in the part
  (`<part>.parquet`, written before the hashes and only where there are any: nearly every part has none);
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
from ..store import Store, listing, prune_cached, sql_list, write_cached
from ..text import byte_spans
from . import kernels as _kernels
from .shingles import byte_span_hashes

#: parts added since the newest index that make a new one (the merge rewrites the index: O(groups of the run))
INDEX_AT = 16
#: seconds a superseded index is kept for audits that may still read it (as `segments.GRACE`)
GRACE = 600.0


def candidate_keys(store: Store, run: str, keys_dir: Path, where: str, held: dict[str, pa.Table] | None = None,
                   held_groups: dict[str, np.ndarray] | None = None) -> str | None:
    """SQL of the answer keys (`screen_keys.keys_of`) of the run's rows within `where` that can form a pair,
    from the candidate rows cached per part in `keys_dir` (those of a part not done yet are computed here), or
    None when the parts may share a prompt group (then every key must be grouped: `screen_keys`). `held`: the
    candidate rows written in this audit (`KeyWriter.sets`), merged into segments without reading them back;
    `held_groups`: the group hashes written in this audit (`KeyWriter.groups`, by part stem), not read back."""
    parts = store.parts(run)
    if not parts:
        return None
    d = keys_dir / "sets"
    groups = {}
    files = []
    names = listing(d)  # one listing, not two stats per part (and paths built only for the files used)
    layouts = None
    for part in parts:
        stem = part.stem
        made = False
        if f"{stem}.groups.npy" not in names:
            layouts = layouts if layouts is not None else store.part_layouts(run)
            if not _summarise(keys_dir, part, layouts.get(part.name, 1)):
                return None
            made = True
        # written before the group hashes, and only where the part has candidates
        cand = f"{stem}.parquet"
        if ((d / cand).is_file() if made else cand in names):
            files.append(d / cand)
        groups[stem] = d
    _prune_parts(d, set(groups))
    prune_cached(keys_dir.parent, keys_dir, set(groups))  # keys a fallback cached for parts since removed
    if not _disjoint(d / "index", groups, held_groups or {}):
        return None
    if not files:
        return f"(SELECT * FROM ({_NO_ROWS}) WHERE FALSE AND {where})"
    files = segments.covering(files, "sets", held=held)
    return f"(SELECT * FROM read_parquet({sql_list([str(f) for f in files])}) WHERE {where})"


#: The columns of the cached keys (`screen_keys`), without rows: the candidates of a run where no part has any.
_NO_ROWS = ("SELECT NULL::VARCHAR AS rollout_id, NULL::BIGINT AS step, NULL::VARCHAR AS split, "
            "NULL::VARCHAR AS group_id, NULL::UBIGINT AS ck")


def _summarise(keys_dir: Path, part: Path, layout: int) -> bool:
    """Write one part's candidate rows and group hashes, from its cached keys where a fallback cached them
    (`screen_keys`), else from the part (a part the scan did not hand over); False when it cannot."""
    from .screen_keys import part_keys

    try:
        table = pq.read_table(keys_dir / f"{part.stem}.parquet")
    except (OSError, pa.ArrowInvalid):
        try:
            table = part_keys(part, layout)
        except (OSError, pa.ArrowInvalid):
            return False
    return save_sets(keys_dir, part.stem, table) is not None


def save_sets(keys_dir: Path, stem: str, table: pa.Table) -> tuple[pa.Table, np.ndarray] | None:
    """Write the candidate rows and group hashes of one part from its keys `table` (`screen_keys.keys_of`: the
    scan hands over the columns it read, so a cold audit reads no part twice). Returns the candidate rows and
    the group hashes written (None when they could not be)."""
    d = keys_dir / "sets"
    cand, grp = d / f"{stem}.parquet", d / f"{stem}.groups.npy"
    group = table.column("group_id")
    group = group.chunk(0) if group.num_chunks == 1 else group.combine_chunks()
    encoded = pc.dictionary_encode(group)
    ids = encoded.indices.to_numpy(zero_copy_only=False) if group.null_count == 0 else \
        pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    repeated = _repeated(ids, table.column("ck").to_numpy())
    # (an empty table of the schema, not a slice: kept by the caller, a slice would hold the part's keys)
    rows = table.take(pa.array(repeated)) if len(repeated) else table.schema.empty_table()
    # each distinct group once (a null group hashes as the empty string, as it did row by row)
    names = encoded.dictionary if group.null_count == 0 else pa.concat_arrays([encoded.dictionary,
                                                                               pa.array([""], group.type)])
    hashes = _sorted_distinct(_hash(names))
    if len(rows):
        if not isinstance(write_cached(cand, rows, compression="lz4"), Path):
            return None
    else:
        with contextlib.suppress(OSError):  # a stale file of an earlier write of the part
            cand.unlink(missing_ok=True)
    try:
        _atomic_save(grp, hashes)
    except OSError:
        return None
    return rows, hashes


def _sorted_distinct(values: np.ndarray) -> np.ndarray:
    """`np.unique` of `values` by one sort (numpy 2's `unique` hashes first, then sorts: ~4x the time for a
    part's ~1,000 group hashes)."""
    out = np.sort(values)
    return out[np.concatenate(([True], out[1:] != out[:-1]))] if len(out) else out


def _repeated(group: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The rows (ascending) whose (group, key) pair occurs at least twice: the candidate rows."""
    if len(key) < 2:
        return np.zeros(0, np.int64)
    by_key = np.sort(key)
    dup = by_key[1:] == by_key[:-1]
    if not dup.any():  # no two rows share a key (most parts): one sort decides
        return np.zeros(0, np.int64)
    rows = np.flatnonzero(np.isin(key, by_key[1:][dup]))  # only rows whose key repeats can pair
    order = rows[np.lexsort((group[rows], key[rows]))]
    g, k = group[order], key[order]
    same = (g[1:] == g[:-1]) & (k[1:] == k[:-1])
    twice = np.zeros(len(order), bool)
    twice[1:] |= same
    twice[:-1] |= same
    return np.sort(order[twice])


def _hash(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if _kernels.use_numba():  # the same hashes, compiled (~0.3 ms a part less)
        return _kernels.span_hashes(*byte_spans(strings))
    return byte_span_hashes(*byte_spans(strings))


def _disjoint(d: Path, groups: dict[str, Path], in_hand: dict[str, np.ndarray]) -> bool:
    """Whether no group hash occurs in two of the parts `groups` (stem -> the directory of its group hashes,
    `<stem>.groups.npy`, unless `in_hand` holds them): checked against the newest index of a subset of them,
    then among the parts it does not hold; a new index once INDEX_AT are."""
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
    arrays = [in_hand[s] if s in in_hand else np.load(groups[s] / f"{s}.groups.npy") for s in loose]
    new = np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)
    merged = _sorted_distinct(new)
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
            _atomic_save(d / f"{digest}.npy", _sorted_distinct(np.concatenate([np.asarray(index), merged])))
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
    for f in d.iterdir():  # a stat only for the names of parts not listed
        if not f.name.startswith(".") and f.name.split(".")[0] not in stems and f.is_file():
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
