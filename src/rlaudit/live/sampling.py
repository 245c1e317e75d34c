"""Bounded views of a growing run: what keeps the cost of a live audit flat as the run gets longer.

Detectors read the store. Run on the whole run every few steps, their cost would grow with the run: step 500
would rescan 500 steps. The live auditor instead hands them a *view* of the run that holds a bounded number of
steps (`StepSample`):

- the first `baseline` steps, always: emerging-behaviour discovery compares the end of the run with its start;
- the last `recent` steps: what the policy does now;
- `middle` steps spread evenly over the rest, so trends and onsets keep their shape.

A view is a `Store` whose `parts` lists only the Parquet parts of the chosen steps (`StoreView`), so every
detector works on it unchanged. Trainer logs write one file per step (TRL, verl, prime-rl) and live appends one
part per step, but an ingest gathers the files it reads at once into parts of `Store.part_rows` (a watch that
catches up on a run's history, a fleet's first pass) and a batch audit compacts small parts (`Store.compact`).
A part that holds other steps than the chosen ones is cut to the chosen steps' rows, written into a directory of
the view's own (`StoreView(steps=...)`): the detectors then read a chosen step's rows, not up to `part_rows` rows
per chosen step. Live ingests do not compact (`Store.ingest(compact=False)`): the fleet's auditor memory knows
parts by name. Only a part that is one source file of many steps (one JSONL for a whole run) holds steps the
index cannot see: it is cut all the same, but its steps are chosen among its first and last.

`PartIndex` learns the step range of each part once, from the Parquet footer statistics of its `step` column,
and the steps of its files from the manifest's entries (each file's step range), so finding the new parts of a
step costs one manifest read, not a data scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hashlib
import shutil
import tempfile
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import RlauditError
from ..layout import LAYOUT, part_signals
from ..store import Store, StoredPart


@dataclass(frozen=True)
class StepSample:
    """How many steps a heavy live audit reads: first `baseline`, last `recent`, `middle` spread between."""

    baseline: int = 10
    recent: int = 20
    middle: int = 20

    def __post_init__(self) -> None:
        if min(self.baseline, self.recent, self.middle) < 0 or self.baseline + self.recent < 2:
            raise RlauditError(f"step sample needs baseline + recent >= 2 and no negative sizes, got {self}")

    @property
    def size(self) -> int:
        return self.baseline + self.recent + self.middle

    def select(self, steps: Sequence[int]) -> list[int]:
        """The chosen steps among `steps` (any order, duplicates allowed), ascending."""
        ordered = sorted(set(int(s) for s in steps))
        if len(ordered) <= self.size:
            return ordered
        head = ordered[: self.baseline]
        tail = ordered[len(ordered) - self.recent:]
        middle = ordered[self.baseline: len(ordered) - self.recent]
        if self.middle and middle:
            picks = np.unique(np.linspace(0, len(middle) - 1, self.middle).round().astype(int))
            middle = [middle[i] for i in picks]
        else:
            middle = []
        return head + middle + tail


@dataclass(frozen=True)
class PartInfo:
    key: str  # manifest entry (source file or live key)
    path: Path
    lo: int  # step range of the part's rows
    hi: int
    rows: int
    steps: tuple[int, ...] = ()  # the first and last step of each of its files (the manifest's entries)


class PartIndex:
    """The parts of one run with their step ranges, updated incrementally from the run's manifest."""

    def __init__(self, store: Store, run: str):
        self.store, self.run = store, run
        self.parts: dict[str, PartInfo] = {}  # part file name -> info
        self._seen: set[tuple[str, str]] = set()  # (file key, SHA-256) of the files of the parts seen so far

    def refresh(self, manifest: dict | None = None) -> list[PartInfo]:
        """Parts that appeared (or were replaced) since the last refresh (of `manifest`: default the latest). A
        part that only regroups files already seen, unchanged (`Store.compact`, a carry-over), is indexed but
        not returned: its rows are not new (files without a digest, live appends, count as new)."""
        if manifest is None:
            if not self.store.has_run(self.run):
                return []
            manifest = self.store.manifest(self.run)
        parts_dir = self.store.run_dir(self.run) / "parts"
        listed = self.store.stored_parts(self.run, manifest)
        for gone in set(self.parts) - set(listed):
            del self.parts[gone]
        new = []
        for name, part in listed.items():
            if name in self.parts:
                continue
            path = parts_dir / name
            lo, hi, rows = _step_range(path)
            ranges = [manifest["files"][key].get("steps") for key in part.files]
            ends = {int(x) for r in ranges if r for x in r} if all(ranges) else set()
            info = PartInfo(key=part.files[0], path=path, lo=lo, hi=hi, rows=rows,
                            steps=tuple(sorted(ends | {lo, hi})))
            self.parts[name] = info
            known = {(key, manifest["files"][key].get("sha256") or f"part:{name}") for key in part.files}
            if rows and not known <= self._seen:
                new.append(info)
            self._seen |= known
        return sorted(new, key=lambda p: (p.lo, p.key))

    def steps(self) -> list[int]:
        """Steps known to be present: both ends of each file of each part (the steps of per-step files,
        exactly, whether a part holds one file or several)."""
        out: set[int] = set()
        for p in self.parts.values():
            if p.rows:
                out.update(p.steps or (p.lo, p.hi))
        return sorted(out)

    def max_step(self) -> int | None:
        his = [p.hi for p in self.parts.values() if p.rows]
        return max(his) if his else None

    def covering(self, steps: Sequence[int]) -> list[Path]:
        """Parts holding any of `steps`."""
        wanted = np.asarray(sorted(steps), dtype=np.int64)
        out = []
        for p in self.parts.values():
            if not p.rows or not len(wanted):
                continue
            i = np.searchsorted(wanted, p.lo)
            if i < len(wanted) and wanted[i] <= p.hi:
                out.append(p.path)
        return sorted(out)


def _step_range(path: Path) -> tuple[int, int, int]:
    """(min step, max step, rows) from the footer statistics of a canonical part (reads no row data)."""
    meta = pq.ParquetFile(path).metadata
    if meta.num_rows == 0:
        return 0, -1, 0
    col = meta.schema.to_arrow_schema().get_field_index("step")
    lo, hi = None, None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:  # no statistics: read the one column
            steps = pq.read_table(path, columns=["step"]).column("step")
            mm = pc.min_max(steps)
            return int(mm["min"].as_py()), int(mm["max"].as_py()), meta.num_rows
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return int(lo), int(hi), meta.num_rows


class StoreView(Store):
    """A read-only store that shows only some parts of one run (every other run is untouched).

    Derived tables are cached in memory for the life of the view, so detectors that share one (tokens, per-step
    counts) still compute it once, and nothing is written next to the real run's caches.
    """

    persist_derived = False  # derived data (e.g. `tokens.term_sets`) is kept in memory, not written beside the run

    def __init__(self, base: Store, run: str, parts: Sequence[Path], steps: Sequence[int] | None = None):
        """`steps`: the view holds only these steps' rows; parts holding other steps too are cut (`_cut`)."""
        super().__init__(base.root)
        self.base, self.view_run = base, run
        self._derived: dict[tuple[str, str], pa.Table] = {}
        self._cuts: dict[str, StoredPart] = {}  # the parts cut to `steps` (`_cut`), described as stored parts
        self._parts = list(parts) if steps is None else self._cut(list(parts), steps)

    def _cut(self, parts: list[Path], steps: Sequence[int]) -> list[Path]:
        """`parts` with each one that holds rows of other steps than `steps` replaced by a copy of the rows of
        `steps` (one that holds none is left out), written into a directory of this view's own under the store's
        `.tmp/` and removed with the view. A part of one step is taken as it is (its footer says so)."""
        wanted = sorted({int(s) for s in steps})
        out: list[Path] = []
        where: Path | None = None
        tag = hashlib.sha1(",".join(map(str, wanted)).encode()).hexdigest()[:8]
        for path in parts:
            lo, hi, rows = _step_range(path)
            if not rows or lo == hi:
                out.append(path)
                continue
            step = pq.read_table(path, columns=["step"]).column("step")
            keep = pc.is_in(step, value_set=pa.array(wanted, step.type))
            kept = pc.sum(keep).as_py() or 0
            if kept == rows:
                out.append(path)
            elif kept:
                try:
                    if where is None:
                        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
                        where = Path(tempfile.mkdtemp(prefix="view-", dir=self.root / ".tmp"))
                        weakref.finalize(self, shutil.rmtree, where, True)
                    # named as its part with the steps' digest after the ingest time: `store.part_source` gives
                    # the part's source, as for the part itself
                    cut = where / f"{path.stem}{tag}.parquet"
                    table = pq.read_table(path).filter(keep)
                    pq.write_table(table, cut, compression="lz4")
                except OSError:  # a store that cannot be written (read-only, full): the whole part, as before
                    out.append(path)
                    continue
                self._cuts[cut.name] = self._described(cut.name, path.name, keep, table)
                out.append(cut)
        return out

    def _described(self, name: str, origin: str, keep: pa.ChunkedArray, table: pa.Table) -> StoredPart:
        """The cut part `name` as a `StoredPart`: its source files are those of part `origin` with rows kept,
        each with its span among the kept rows (so the CoT scan batches and seeds by file as in the part)."""
        whole = self.base.stored_parts(self.view_run).get(origin)
        kept = np.concatenate([[0], np.cumsum(np.asarray(keep.to_numpy(zero_copy_only=False), bool))])
        files, spans = [], []
        for key, (first, n) in (zip(whole.files, whole.spans) if whole is not None else ()):
            if kept[first + n] > kept[first]:
                files.append(key)
                spans.append((int(kept[first]), int(kept[first + n] - kept[first])))
        bounds = pc.min_max(table.column("step"))
        return StoredPart(name=name, rows=table.num_rows, steps=[bounds["min"].as_py(), bounds["max"].as_py()],
                          layout=whole.layout if whole is not None else LAYOUT, files=tuple(files),
                          spans=tuple(spans), signals=part_signals(table.schema))

    def _latest_manifest(self, run: str) -> dict:
        """The base store's parse, shared by the base and every view of it: a live run makes a view per step, and
        each parsed the manifest (an entry per step) again."""
        return self.base._latest_manifest(run)

    def stored_parts(self, run: str, manifest: dict | None = None) -> dict[str, StoredPart]:
        # built by the base, once per manifest version for it and its views (O(files) each time)
        parts = self.base.stored_parts(run, manifest if manifest is not None else self.manifest(run))
        return {**parts, **self._cuts} if run == self.view_run and self._cuts else parts

    def parts(self, run: str, manifest: dict | None = None) -> list[Path]:
        return list(self._parts) if run == self.view_run else self.base.parts(run, manifest)

    def part_formats(self, run: str, manifest: dict | None = None) -> dict[str, tuple[int, tuple[str, ...]]]:
        formats = super().part_formats(run, manifest)  # (the cut parts' too: `stored_parts`)
        if run == self.view_run:  # a part of the view's snapshot that a newer version retired: its own schema
            formats.update({p.name: (LAYOUT, part_signals(pq.read_schema(p))) for p in self._parts
                            if p.name not in formats})
        return formats

    def derived(self, run: str, name: str, compute: Callable[[], pa.Table]) -> pa.Table:
        if run != self.view_run:
            return self.base.derived(run, name, compute)
        key = (name, self.fingerprint(run))
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def ingest(self, *args: object, **kwargs: object):  # type: ignore[override]
        raise RlauditError("a live audit view is read-only; ingest into the underlying store")

    def append(self, *args: object, **kwargs: object):  # type: ignore[override]
        raise RlauditError("a live audit view is read-only; append to the underlying store")
