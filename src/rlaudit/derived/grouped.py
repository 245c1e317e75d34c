"""GROUP BY over a batch's rows in compiled passes: what the per-part statistics' compiled form computes with
(`partstats.CompiledKind`: each kind's query over `src`, computed from the same rows as Arrow columns).

Why: DuckDB ran each kind as a query of a dozen hash aggregates and union branches over a temp table it first
built from the batch's parts (the 1M benchmark's batch of 315,000 rollouts: the table ~135 ms, the four kinds'
queries ~377 ms, on one thread). The rows of a batch come as Arrow columns instead (DuckDB still reads the parts
and evaluates every per-row expression: ~100 ms), and each GROUP BY becomes dense group ids of its keys (one pass
over the keys with a small open-addressing table that grows with the groups, `_dense`; a row with its
predecessor's key, as rows come in runs of one step, group and prompt, takes its id without a probe) and
aggregates per group (one pass each, in row order, so a sum adds its values in the order DuckDB's
single-threaded aggregate adds them).

`Keys` holds a batch's key columns as integer codes (strings dictionary-encoded, NULL a code of its own, so that
NULL keys group together as in SQL) and gives the group ids of any combination of them; `count`, `total`,
`extremes` and `moments` aggregate a value per group where a mask holds, with SQL's NULL for an empty aggregate;
`bucket_groups` and `pairs` group the rows kept by (step, sketch bucket) and (step, value); `table` assembles a
kind's rows, UNION ALL style, in its query's columns. Compiled only (numba): without it the queries run.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..kernels import Compiled, jit
from .kernels import _MIX, _splitmix64  # the term-set kernels' key mix


#: the keys every kind's rows are grouped by at least: each part's rows per split and step (`partstats`)
STEP = ("_part", "split", "step")


def _dense(keys):
    """Per row, its key's group id (0, 1, ... in order of first appearance), and the first row of each group.
    A row with its predecessor's key takes its id without a probe (a batch's rows come in runs of one step, one
    group, one prompt), and the table grows with the groups, not the rows (a table sized for every row was
    ~20 MB of fresh pages per grouping of 315,000 rows). A table of one key, not `_pairs` with a constant second
    key: 315,000 keys in runs of 8, or 40,000 distinct keys at random, grouped in 3.2 / 5.1 ms against 5.8-7.0 /
    9.3-11.5 through `_pairs`' table (session 50, /work/scratch/s50/densecmp.py), and a batch groups ~40 times."""
    n = len(keys)
    cap = 1024
    mask = np.uint64(cap - 1)
    slot_key = np.empty(cap, np.int64)
    slot_id = np.full(cap, -1, np.int64)
    ids = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    groups = 0
    for i in range(n):
        k = keys[i]
        if i > 0 and k == keys[i - 1]:
            ids[i] = ids[i - 1]
            continue
        h = _splitmix64(np.uint64(k)) & mask
        while True:
            g = slot_id[h]
            if g < 0:
                slot_key[h] = k
                slot_id[h] = groups
                first[groups] = i
                ids[i] = groups
                groups += 1
                if 2 * groups > cap:  # half full: twice the slots, every key placed again
                    cap *= 2
                    mask = np.uint64(cap - 1)
                    new_key = np.empty(cap, np.int64)
                    new_id = np.full(cap, -1, np.int64)
                    for j in range(groups):
                        kj = keys[first[j]]
                        hj = _splitmix64(np.uint64(kj)) & mask
                        while new_id[hj] >= 0:
                            hj = (hj + np.uint64(1)) & mask
                        new_key[hj] = kj
                        new_id[hj] = j
                    slot_key, slot_id = new_key, new_id
                break
            if slot_key[h] == k:
                ids[i] = g
                break
            h = (h + np.uint64(1)) & mask
    return ids, first[:groups].copy()


def _count(ids, groups, keep):
    """Rows per group where keep."""
    n = np.zeros(groups, np.int64)
    for i in range(len(ids)):
        if keep[i]:
            n[ids[i]] += 1
    return n


def _sums(ids, groups, x, keep):
    """Per group, the sum of x where keep (in row order) and the rows kept."""
    s = np.zeros(groups)
    n = np.zeros(groups, np.int64)
    for i in range(len(ids)):
        if keep[i]:
            s[ids[i]] += x[i]
            n[ids[i]] += 1
    return s, n


def _extremes(ids, groups, x, keep):
    """Per group, the least and greatest x where keep, and how many rows were kept."""
    lo = np.zeros(groups)
    hi = np.zeros(groups)
    n = np.zeros(groups, np.int64)
    for i in range(len(ids)):
        if keep[i]:
            g = ids[i]
            v = x[i]
            if n[g] == 0:
                lo[g] = v
                hi[g] = v
            else:
                if v < lo[g]:
                    lo[g] = v
                if v > hi[g]:
                    hi[g] = v
            n[g] += 1
    return lo, hi, n


def _moments(ids, groups, x, keep):
    """Per group, the rows kept, their sum (in row order) and the sum of squared deviations from their running
    mean (DuckDB's `stddev_samp` state: its update, in row order)."""
    n = np.zeros(groups, np.int64)
    s = np.zeros(groups)
    mean = np.zeros(groups)
    m2 = np.zeros(groups)
    for i in range(len(ids)):
        if keep[i]:
            g = ids[i]
            v = x[i]
            n[g] += 1
            s[g] += v
            diff = (v - mean[g]) / n[g]
            new = mean[g] + diff
            m2[g] += (v - new) * (v - mean[g])
            mean[g] = new
    return n, s, m2


def _bucket(v, log_gamma):
    """The sign and logarithmic bucket of a finite value, as `reward_stats.bucket_sql`: 0 for zero, else
    ceil(ln |v| / ln gamma) (libm's log, as DuckDB's `ln`)."""
    sg = np.int64(0)
    b = np.int64(0)
    if v > 0:
        sg = np.int64(1)
    elif v < 0:
        sg = np.int64(-1)
    if v != 0:
        b = np.int64(np.ceil(math.log(abs(v)) / log_gamma))
    return sg, b


def _buckets(x, keep, log_gamma):
    """Per kept value its sign and bucket (`_bucket`); 0, 0 elsewhere."""
    sgn = np.zeros(len(x), np.int8)
    b = np.zeros(len(x), np.int32)
    for i in range(len(x)):
        if keep[i]:
            sg, bb = _bucket(x[i], log_gamma)
            sgn[i] = sg
            b[i] = bb
    return sgn, b


def _find(slot_a, slot_b, slot_id, a, b):
    """The slot of key (a, b) in an open-addressing table (its id, or -1 where it is free)."""
    mask = np.uint64(len(slot_id) - 1)
    h = _splitmix64(np.uint64(a) * _MIX ^ np.uint64(b)) & mask
    while slot_id[h] >= 0 and (slot_a[h] != a or slot_b[h] != b):
        h = (h + np.uint64(1)) & mask
    return h


def _pairs(a, b, keep):
    """Dense ids of the key pairs (a[i], b[i]) of the rows kept (-1 elsewhere), in order of first appearance, the
    first row of each and its rows; a row with its predecessor's pair takes its id without a probe."""
    n = len(a)
    cap = 1024
    slot_a = np.empty(cap, np.int64)
    slot_b = np.empty(cap, np.int64)
    slot_id = np.full(cap, -1, np.int64)
    ids = np.full(n, -1, np.int64)
    first = np.empty(n, np.int64)
    rows = np.zeros(n, np.int64)
    groups = 0
    last = -1
    for i in range(n):
        if not keep[i]:
            continue
        if last >= 0 and a[i] == a[last] and b[i] == b[last]:
            ids[i] = ids[last]
            rows[ids[i]] += 1
            last = i
            continue
        last = i
        h = _find(slot_a, slot_b, slot_id, a[i], b[i])
        if slot_id[h] >= 0:
            ids[i] = slot_id[h]
            rows[ids[i]] += 1
            continue
        slot_a[h] = a[i]
        slot_b[h] = b[i]
        slot_id[h] = groups
        first[groups] = i
        ids[i] = groups
        rows[groups] = 1
        groups += 1
        if 2 * groups > cap:  # half full: twice the slots, every key placed again
            cap *= 2
            new_a = np.empty(cap, np.int64)
            new_b = np.empty(cap, np.int64)
            new_id = np.full(cap, -1, np.int64)
            for j in range(groups):
                r = first[j]
                hj = _find(new_a, new_b, new_id, a[r], b[r])
                new_a[hj] = a[r]
                new_b[hj] = b[r]
                new_id[hj] = j
            slot_a, slot_b, slot_id = new_a, new_b, new_id
    return ids, first[:groups].copy(), rows[:groups].copy()


def _bucket_groups(step_of, steps, x, keep, log_gamma, limit):
    """The sketch's buckets (`_buckets`) of the kept values per step: the first row of each (step, sign, bucket),
    in order of first appearance, and its rows. Counted in a dense array over the (step, sign, bucket) range
    the values span where it holds at most `limit` slots (one increment a row, no probe), else by `_pairs`."""
    n = len(x)
    b = np.zeros(n, np.int64)
    lo = np.int64(1) << 40
    hi = -lo
    for i in range(n):
        if keep[i]:
            sg, bb = _bucket(x[i], log_gamma)
            b[i] = (bb << 2) | (sg + 1)  # the bucket and the sign in one key
            lo = min(lo, b[i])
            hi = max(hi, b[i])
    width = hi - lo + 1
    if width > 0 and steps * width <= limit:
        counts = np.zeros(steps * width, np.int64)
        order = np.empty(min(steps * width, n), np.int64)
        first = np.empty(min(steps * width, n), np.int64)
        m = 0
        for i in range(n):
            if keep[i]:
                at = step_of[i] * width + b[i] - lo
                if counts[at] == 0:
                    order[m] = at
                    first[m] = i
                    m += 1
                counts[at] += 1
        rows = np.empty(m, np.int64)
        for j in range(m):
            rows[j] = counts[order[j]]
        return first[:m].copy(), rows
    _, first, rows = _pairs(step_of, b, keep)
    return first, rows


def _build() -> SimpleNamespace:
    import numba

    glob = globals()
    # helpers are looked up as globals when the kernels compile: jitted versions must be in place first
    glob["_splitmix64"] = jit(getattr(_splitmix64, "py_func", _splitmix64), inline="always")
    for name in ("_find", "_bucket"):
        glob[name] = jit(getattr(glob[name], "py_func", glob[name]), inline="always")
    glob["_pairs"] = jit(getattr(_pairs, "py_func", _pairs))
    t = numba.types
    i64, f64, b1 = (t.Array(d, 1, "C", readonly=True) for d in (t.int64, t.float64, t.boolean))
    return SimpleNamespace(dense=jit(_dense, (i64,)), count=jit(_count, (i64, t.int64, b1)),
                           sums=jit(_sums, (i64, t.int64, f64, b1)), extremes=jit(_extremes, (i64, t.int64, f64, b1)),
                           moments=jit(_moments, (i64, t.int64, f64, b1)),
                           buckets=jit(_buckets, (f64, b1, t.float64)),
                           pairs=jit(_pairs.py_func, (i64, i64, b1)),
                           bucket_groups=jit(_bucket_groups, (i64, t.int64, f64, b1, t.float64, t.int64)))


compiled = Compiled(_build)


def dense(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id per row, first row of each group) of int64 `keys`, ids in order of first appearance."""
    return compiled().dense(np.ascontiguousarray(keys, np.int64))


def codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, int]:
    """(code per row, the distinct values, how many codes) of a column: strings and booleans dictionary-encoded
    (a NULL is a value of its own), integers and floats by their dense ids (a NULL, again, a code of its own)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) or pa.types.is_boolean(values.type):
        enc = pc.dictionary_encode(values, null_encoding="encode")
        return np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64), enc.dictionary, len(enc.dictionary)
    raw = np.asarray(values.to_numpy(zero_copy_only=False))
    keys = raw.view(np.int64) if raw.dtype.itemsize == 8 and raw.dtype.kind in "iuf" else raw.astype(np.int64)
    if values.null_count:  # the NULLs' slot keeps whatever bits Arrow left there: one code for all of them
        ids, first = dense(np.where(np.asarray(values.is_null()), np.int64(-(1 << 63)), keys))
    else:
        ids, first = dense(keys)
    return ids, values.take(pa.array(first)), len(first)


class Keys:
    """A batch's key columns as codes (`codes`), made once each, and the group ids of combinations of them."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.n = table.num_rows
        self._codes: dict[str, tuple[np.ndarray, pa.Array, int]] = {}
        self._groups: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._values: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def floats(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """`floats` of column `name`, made once (several kinds read the signals' columns)."""
        if (name, "f") not in self._values:
            self._values[(name, "f")] = floats(self.table.column(name))
        return self._values[(name, "f")]

    def bools(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """`bools` of column `name`, made once."""
        if (name, "b") not in self._values:
            self._values[(name, "b")] = bools(self.table.column(name))
        return self._values[(name, "b")]

    def code(self, name: str) -> tuple[np.ndarray, pa.Array, int]:
        if name not in self._codes:
            self._codes[name] = codes(self.table.column(name))
        return self._codes[name]

    def groups(self, *names: str, where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(group id per row, first row of each group) of the rows' `names` (with `where`: of those rows only,
        ids per row of `where`'s rows, first rows as rows of the batch)."""
        key = names if where is None else None
        if key is not None and key in self._groups:
            return self._groups[key]
        combined, size = np.zeros(self.n, np.int64), 1
        for name in names:
            c, _, count = self.code(name)
            count = max(count, 1)
            if size * count >= 1 << 62:  # re-densify before the codes could overflow
                combined, first = dense(combined)
                size = max(len(first), 1)
            combined = combined * count + c
            size *= count
        if where is None:
            out = dense(combined)
        else:
            rows = np.flatnonzero(where)
            ids, first = dense(combined[rows])
            out = (ids, rows[first])
        if key is not None:
            self._groups[key] = out
        return out

    def take(self, name: str, rows: np.ndarray) -> pa.Array:
        """The values of column `name` at `rows` (each group's first row: its key's value), from its codes'
        distinct values (a take of a few values, not of the batch's chunked column)."""
        c, values, _ = self.code(name)
        return values.take(pa.array(c[rows], pa.int64()))

    def coalesced(self, name: str, name_as: str) -> None:
        """Key `name_as`: string column `name` with NULL as '' (SQL's `coalesce(name, '')`), from its codes."""
        if name_as in self._codes:
            return
        c, values, _ = self.code(name)
        recode, filled, count = codes(pc.fill_null(values, ""))
        self._codes[name_as] = (recode[c], filled, count)


def count(ids: np.ndarray, groups: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Rows per group where `keep` (SQL's count of a CASE that is NULL elsewhere)."""
    if keep is None:
        return np.bincount(ids, minlength=groups).astype(np.int64)
    return compiled().count(ids, int(groups), np.ascontiguousarray(keep, bool))


def total(ids: np.ndarray, groups: int, x: np.ndarray, keep: np.ndarray) -> pa.Array:
    """SQL's sum of x per group over the rows kept (NULL where none), added in row order."""
    s, n = compiled().sums(ids, int(groups), np.ascontiguousarray(x, np.float64), np.ascontiguousarray(keep, bool))
    return pa.array(s, pa.float64(), mask=n == 0)


def extremes(ids: np.ndarray, groups: int, x: np.ndarray, keep: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """SQL's min and max of x per group over the rows kept (NULL where none)."""
    lo, hi, n = compiled().extremes(np.ascontiguousarray(ids, np.int64), int(groups),
                                    np.ascontiguousarray(x, np.float64), np.ascontiguousarray(keep, bool))
    return pa.array(lo, mask=n == 0), pa.array(hi, mask=n == 0)


def moments(ids: np.ndarray, groups: int, x: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """(rows, SQL's avg, SQL's stddev_samp) of x per group over the rows kept: avg NULL where none, the standard
    deviation NULL for fewer than two rows."""
    n, s, m2 = compiled().moments(np.ascontiguousarray(ids, np.int64), int(groups),
                                  np.ascontiguousarray(x, np.float64), np.ascontiguousarray(keep, bool))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s / n
        sd = np.sqrt(m2 / (n - 1))
    return n, pa.array(mean, mask=n == 0), pa.array(sd, mask=n < 2)


def buckets(x: np.ndarray, keep: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(sign as int8, bucket as int32) of each kept value (0, 0 elsewhere): `_buckets`."""
    return compiled().buckets(np.ascontiguousarray(x, np.float64), np.ascontiguousarray(keep, bool),
                              math.log(gamma))


def pairs(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group id per row, -1 where not kept; first row of each group; rows of each group) of the pairs (a, b) of
    the rows `keep` selects: `_pairs`."""
    c = np.ascontiguousarray
    return compiled().pairs(c(a, np.int64), c(b, np.int64), c(keep, bool))


#: the most slots `bucket_groups` counts in directly (a step's buckets between the batch's least and greatest)
BUCKET_SLOTS = 1 << 21


def bucket_groups(step_of: np.ndarray, steps: int, x: np.ndarray, keep: np.ndarray, gamma: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each (step, sign, bucket) of the kept values, its rows): `_bucket_groups`."""
    c = np.ascontiguousarray
    return compiled().bucket_groups(c(step_of, np.int64), int(steps), c(x, np.float64), c(keep, bool),
                                    math.log(gamma), BUCKET_SLOTS)


def floats(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values with NULL as NaN, whether each is NULL) of a numeric column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_float64(column.type):
        column = column.cast(pa.float64())
    values = np.asarray(column.to_numpy(zero_copy_only=False), np.float64)  # (Arrow gives NaN at a NULL)
    if not column.null_count:
        return values, np.zeros(len(column), bool)
    return values, np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)


def bools(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values with NULL as False, whether each is NULL) of a boolean column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not column.null_count:
        return np.asarray(column.to_numpy(zero_copy_only=False), bool), np.zeros(len(column), bool)
    null = np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
    return np.asarray(pc.fill_null(column, False).to_numpy(zero_copy_only=False), bool), null


def table(schema: pa.Schema, pieces: list[tuple[int, dict[str, Any]]]) -> pa.Table:
    """The rows of several SELECTs of one UNION ALL in `schema`'s columns: each piece (rows, columns by name;
    the columns it does not name are NULL, a scalar is repeated). Built a column at a time, the NULLs of
    consecutive pieces that lack a column as one array (most pieces name a few of a kind's many columns)."""
    pieces = [(rows, columns) for rows, columns in pieces if rows]
    if not pieces:
        return schema.empty_table()
    arrays = []
    for field in schema:
        parts: list[pa.Array] = []
        missing = 0
        for rows, columns in pieces:
            value = columns.get(field.name)
            if value is None:
                missing += rows
                continue
            if missing:
                parts.append(pa.nulls(missing, field.type))
                missing = 0
            parts.append(_column(value, rows, field.type))
        if missing:
            parts.append(pa.nulls(missing, field.type))
        arrays.append(parts[0] if len(parts) == 1 else pa.concat_arrays(parts))
    return pa.Table.from_arrays(arrays, schema=schema)


def _column(value: Any, rows: int, typ: pa.DataType) -> pa.Array:
    """A piece's column as an array of `typ`: an array as it is (cast where its type differs), a scalar
    repeated."""
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if isinstance(value, pa.Array):
        return value if value.type == typ else value.cast(typ)
    if isinstance(value, np.ndarray):
        return pa.array(value, typ)
    if isinstance(value, str):
        return pa.array([value], typ).take(pa.array(np.zeros(rows, np.int64)))
    return pa.array(np.full(rows, value), typ)


def pick(columns: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """`columns` (a piece of `table`) at the groups `keep` selects (scalars stay)."""
    mask = pa.array(keep)
    return {k: (v.filter(mask) if isinstance(v, (pa.Array, pa.ChunkedArray)) else v[keep] if isinstance(v, np.ndarray)
                else v) for k, v in columns.items()}


def keyed(keys: Keys, names: tuple[str, ...], first: np.ndarray) -> dict[str, pa.Array]:
    """The key columns `names` of groups whose first rows are `first`."""
    return {name: keys.take(name, first) for name in names}
