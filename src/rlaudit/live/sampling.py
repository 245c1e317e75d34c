"""Bounded views of a growing run: what keeps the cost of a live audit flat as the run gets longer.

Detectors read the store. Run on the whole run every few steps, their cost would grow with the run: step 500
would rescan 500 steps. The live auditor instead hands them a *view* of the run that holds a bounded number of
steps (`StepSample`):

- the first `baseline` steps, always: emerging-behaviour discovery compares the end of the run with its start;
- the last `recent` steps: what the policy does now;
- `middle` steps spread evenly over the rest, so trends and onsets keep their shape.

A view is a `Store` whose `parts` lists only the Parquet parts of the chosen steps (`StoreView`), so every
detector works on it unchanged. Trainer logs write one file per step (TRL, verl, prime-rl), live ingests keep a
part per file (`PART_ROWS`) and live appends one part per step, so parts map onto steps; a part that spans many
steps (one JSONL for a whole run, or files a batch ingest grouped: `Store.part_rows`) is included whenever one of
its steps is chosen, which degrades to a full scan only for single-file runs.

`PartIndex` learns the step range of each part once, from the Parquet footer statistics of its `step` column,
so finding the new parts of a step costs one manifest read, not a data scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import RlauditError
from ..store import Store


#: The part size of the ingests of live and fleet audits (`Store.ingest(part_rows=...)`): a part per source file,
#: so that parts map onto steps and a view of some steps reads those steps only. A batch ingest gathers files into
#: parts of `Store.part_rows`; a view of such a run reads every part that holds a chosen step (up to
#: `Store.part_rows` rows a chosen step, not a step's rows).
PART_ROWS = 1


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


class PartIndex:
    """The parts of one run with their step ranges, updated incrementally from the run's manifest."""

    def __init__(self, store: Store, run: str):
        self.store, self.run = store, run
        self.parts: dict[str, PartInfo] = {}  # part file name -> info

    def refresh(self, manifest: dict | None = None) -> list[PartInfo]:
        """Parts that appeared (or were replaced) since the last refresh (of `manifest`: default the latest)."""
        if manifest is None:
            if not self.store.has_run(self.run):
                return []
            manifest = self.store.manifest(self.run)
        parts_dir = self.store.run_dir(self.run) / "parts"
        listed = {name: p.files[0] for name, p in self.store.stored_parts(self.run, manifest).items()}
        for gone in set(self.parts) - set(listed):
            del self.parts[gone]
        new = []
        for name, key in listed.items():
            if name in self.parts:
                continue
            path = parts_dir / name
            lo, hi, rows = _step_range(path)
            info = PartInfo(key=key, path=path, lo=lo, hi=hi, rows=rows)
            self.parts[name] = info
            if rows:
                new.append(info)
        return sorted(new, key=lambda p: (p.lo, p.key))

    def steps(self) -> list[int]:
        """Steps known to be present: both ends of each part (the steps of per-step parts, exactly)."""
        out: set[int] = set()
        for p in self.parts.values():
            if p.rows:
                out.update((p.lo, p.hi))
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

    def __init__(self, base: Store, run: str, parts: Sequence[Path]):
        super().__init__(base.root)
        self.base, self.view_run = base, run
        self._parts = list(parts)
        self._derived: dict[tuple[str, str], pa.Table] = {}

    def parts(self, run: str, manifest: dict | None = None) -> list[Path]:
        return list(self._parts) if run == self.view_run else self.base.parts(run, manifest)

    def part_layouts(self, run: str, manifest: dict | None = None) -> dict[str, int]:
        layouts = super().part_layouts(run, manifest)
        if run == self.view_run:  # a part of the view's snapshot that a newer version retired: written now
            from ..layout import LAYOUT

            layouts.update({p.name: LAYOUT for p in self._parts if p.name not in layouts})
        return layouts

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
