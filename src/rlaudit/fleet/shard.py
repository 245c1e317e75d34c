"""One large run audited in shards: step ranges of its stored parts, prepared in parallel, merged by the driver.

Where the cost is. A full audit of a large run spends most of its CPU in two per-part scans (README and
docs/emerging.md, docs/cot-grading.md): tokenising every rollout into term sets (`tokens.term_sets`, read by the
emerging, generalization and attribution detectors) and the CoT-grading shingle scan of every logged grader
input (`cot_grading.scan_parts`). Both are already computed *per stored part* and cached beside the run, and
the detectors only aggregate those cached per-part tables (per-step counts, prevalence curves, exposure rates)
with DuckDB. So a run shards along its parts:

1. `plan` orders the run's parts by step (Parquet footer statistics, nothing read) and cuts them into N
   contiguous groups of about equal rows: shard i covers steps [lo_i, hi_i]. A part is never split (it is the
   unit of the derived data; an ingest gathers consecutive trainer files into parts of `Store.part_rows`).
2. The driver fixes what must be the same for every shard, computed on the whole run exactly as an unsharded
   audit would: the term vocabulary (chosen on a sample of the whole run) and the CoT scan's chance-pairing
   stride (from the whole run's rows with grader inputs).
3. Each shard task (`prepare_shard`, on any engine: inline, local processes, Ray) runs the same DuckDB/numpy
   code over its parts only (`term_sets(..., only=)` and their `termcells`, `scan_parts(..., only=, stride=)`),
   writes the per-part results into the run's derived cache (the store is shared, as for every fleet task) and
   returns a small partial result: rows per step, and per step and grader the scanned pairs and exposed rollouts.
4. The driver merges: the per-part derived tables are disjoint by construction (each part belongs to one
   shard), so their union is the whole run's, the same files an unsharded audit writes; the per-step partials
   are concatenated and checked against the manifest (every part in exactly one shard, row totals equal). It
   then runs the detectors (`audit_store`), which find every part's data cached and only aggregate: the
   findings are those of an unsharded audit, byte for byte (`tests/fleet/test_shard.py`).

What is not sharded: the aggregation phase of each detector (DuckDB over the cached per-part tables: emerging
term curves, generalization, attribution's paired statistics, the CoT screen), training_health, reward_health and
monitorability (per-step SQL aggregates over the rollouts, a few seconds per million rows), and ingest (one
writer per run's manifest). A shard that fails (a lost worker) costs time, not correctness: the driver's
detectors compute whatever part it left undone.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audit import audit_store
from ..errors import RlauditError

log = logging.getLogger("rlaudit.fleet")

#: Detectors that read the run's term sets (tokenisation is sharded for them).
TERM_DETECTORS = ("emerging", "generalization", "attribution")


@dataclass
class Shard:
    index: int
    parts: list[str]  # part file names, in step order
    lo: int | None  # first and last step of its parts
    hi: int | None
    rows: int


@dataclass
class ShardTask:
    store: str
    run: str
    shard: Shard
    vocab: dict[str, Any] | None = None  # tokens.VocabOptions fields; None: no term sets
    cot: dict[str, Any] | None = None  # ScanParams fields; None: no CoT scan
    cot_key: str = ""
    cot_extra: str | None = None
    stride: int = 1


@dataclass
class ShardResult:
    index: int
    ok: bool = True
    error: str = ""
    parts: int = 0
    rows: int = 0
    per_step: list[list[Any]] = field(default_factory=list)  # [step, rollouts]
    exposure: list[list[Any]] = field(default_factory=list)  # [step, grader, pairs, exposed] (no chance pairs)
    seconds: dict[str, float] = field(default_factory=dict)  # terms, cot, total, cpu
    host: str = ""


@dataclass
class ShardedAudit:
    result: Any  # rlaudit.audit.AuditResult
    shards: list[ShardResult]
    plan: list[Shard]
    per_step: list[list[Any]]  # merged [step, rollouts]
    exposure: list[list[Any]]  # merged [step, grader, pairs, exposed]
    seconds: dict[str, float]  # plan, shards, detectors, total; cpu_shards (CPU-s in the shard tasks)


def part_steps(store: Any, run: str) -> list[tuple[str, int | None, int | None, int]]:
    """(part name, first step, last step, rows) of every stored part, from Parquet footers (nothing read)."""
    import pyarrow.parquet as pq

    out = []
    for path in store.parts(run):
        meta = pq.read_metadata(path)
        lo = hi = None
        names = meta.schema.names
        if "step" in names:
            col = names.index("step")
            for g in range(meta.num_row_groups):
                st = meta.row_group(g).column(col).statistics
                if st is None or not st.has_min_max:
                    lo = hi = None
                    break
                lo = st.min if lo is None else min(lo, st.min)
                hi = st.max if hi is None else max(hi, st.max)
        if lo is None and meta.num_rows:  # no statistics: read the step column of this part
            steps = pq.read_table(path, columns=["step"]).column(0)
            import pyarrow.compute as pc

            mm = pc.min_max(steps).as_py()
            lo, hi = mm["min"], mm["max"]
        out.append((path.name, None if lo is None else int(lo), None if hi is None else int(hi), meta.num_rows))
    return out


def plan(store: Any, run: str, shards: int) -> list[Shard]:
    """The run's parts in step order, cut into at most `shards` contiguous groups of about equal rows."""
    if shards < 1:
        raise RlauditError(f"--shards must be >= 1, got {shards}")
    parts = sorted(part_steps(store, run), key=lambda p: (p[1] is None, p[1] or 0, p[2] or 0, p[0]))
    total = sum(p[3] for p in parts)
    groups: list[list[tuple[str, int | None, int | None, int]]] = [[]]
    done = 0
    for p in parts:
        # start the next group once this one holds its share of the rows (never an empty group)
        if groups[-1] and len(groups) < shards and done >= total * len(groups) / shards:
            groups.append([])
        groups[-1].append(p)
        done += p[3]
    out = []
    for i, g in enumerate(x for x in groups if x):
        los = [p[1] for p in g if p[1] is not None]
        his = [p[2] for p in g if p[2] is not None]
        out.append(Shard(index=i, parts=[p[0] for p in g], lo=min(los) if los else None,
                         hi=max(his) if his else None, rows=sum(p[3] for p in g)))
    return out


def prepare_shard(task: ShardTask) -> ShardResult:
    """One shard's share (see the module doc): term sets and CoT scan results of its parts, cached in the store;
    returns per-step partials. Never raises."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = ShardResult(index=task.shard.index, host=socket.gethostname(), parts=len(task.shard.parts))
    try:
        _prepare(task, out)
    except Exception as exc:  # noqa: BLE001 - the driver computes what a failed shard left undone
        out.ok, out.error = False, f"{type(exc).__name__}: {exc}"
    out.seconds["total"] = time.perf_counter() - t0
    out.seconds["cpu"] = time.process_time() - c0
    return out


def _prepare(task: ShardTask, out: ShardResult) -> None:
    from ..derived import termcells, tokens
    from ..cot.detector import scan_parts
    from ..cot.scan import ScanParams
    from .. import duck
    from ..store import Store, canonical_selects, format_groups

    store = Store(task.store)
    only = set(task.shard.parts)
    with store.reading([task.run]):
        paths = [p for p in store.parts(task.run) if p.name in only]
        formats = store.part_formats(task.run)
        if len(paths) != len(only):
            raise RlauditError(f"run {task.run!r}: {len(only) - len(paths)} part(s) of shard {task.shard.index} are "
                               "no longer listed (an ingest replaced them); the driver audits what is stored")
        t = time.perf_counter()
        if task.vocab is not None:
            sets = tokens.term_sets(store, task.run, tokens.VocabOptions(**task.vocab), only=only)
            termcells.term_cells(store, task.run, sets, prune=False)  # the shard's parts' cell tables too
        out.seconds["terms"] = time.perf_counter() - t
        con = duck.connect()
        sel = " UNION ALL ".join(canonical_selects(format_groups((p, formats.get(p.name, (1, ()))) for p in paths)))
        con.execute(f"CREATE TEMP VIEW shard AS {sel}")
        out.per_step = [list(r) for r in con.execute(
            "SELECT step, count(*) FROM shard GROUP BY step ORDER BY step").fetchall()]
        out.rows = sum(r[1] for r in out.per_step)
        t = time.perf_counter()
        if task.cot is not None:
            results = scan_parts(store, task.run, ScanParams(**task.cot), task.cot_key, task.cot_extra,
                                 only=only, stride=task.stride)
            if not isinstance(results, str):
                con.register("scan_tbl", results)
                results = "scan_tbl"
            out.exposure = [list(r) for r in con.execute(
                f"SELECT step, grader, count(*), count(*) FILTER (WHERE exposed) FROM {results} "
                "WHERE NOT chance GROUP BY ALL ORDER BY 1, 2").fetchall()]
        out.seconds["cot"] = time.perf_counter() - t
        con.close()


def sharded_audit(store: Any, run: str, engine: Any, shards: int, config: Any = None) -> ShardedAudit:
    """Audit one stored run with its per-part scans spread over `engine` in `shards` step ranges (module doc)."""
    from ..derived import tokens
    from ..detectors import AuditConfig, ordered
    from ..cot.detector import scan_key, scan_stride
    from ..cot.scan import ScanParams
    from ..detectors.emerging import Params

    config = config or AuditConfig()
    names = {c.name for c in ordered(config.detectors)}
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    with store.reading([run]):  # one version for the shards and the detectors; no part of it is deleted
        if not store.has_run(run):
            raise RlauditError(f"no run {run!r} in store {store.root}")
        the_plan = plan(store, run, shards)
        base = ShardTask(store=str(Path(store.root).resolve()), run=run, shard=the_plan[0] if the_plan else
                         Shard(0, [], None, None, 0))
        if names & set(TERM_DETECTORS):
            vocab = Params.from_options(config.options.get("emerging", {})).vocab
            tokens.term_sets(store, run, vocab, only=set())  # the whole run's vocabulary, chosen once, cached
            base.vocab = dataclasses.asdict(vocab)
        if "cot_grading" in names:
            params = ScanParams.from_options(config.options.get("cot_grading", {}))
            base.cot = dataclasses.asdict(params)
            base.cot_key, base.cot_extra = scan_key(store, run, params)
            base.stride = scan_stride(store, run, params, base.cot_key)
        seconds["plan"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        tasks = [dataclasses.replace(base, shard=s) for s in the_plan]
        results: list[ShardResult] = []
        for task, res, err in engine.map(prepare_shard, tasks):
            if res is None:
                res = ShardResult(index=task.shard.index, ok=False, error=err)
            if not res.ok:
                log.warning("fleet: shard %d of run %s failed (%s); the driver computes its parts", res.index,
                            run, res.error)
            results.append(res)
        results.sort(key=lambda r: r.index)
        seconds["shards"] = time.perf_counter() - t1
        seconds["cpu_shards"] = sum(r.seconds.get("cpu", 0.0) for r in results)
        per_step, exposure = _merge(store, run, the_plan, results)
        t2 = time.perf_counter()
        result = audit_store(store, [run], config)
        seconds["detectors"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    return ShardedAudit(result=result, shards=results, plan=the_plan, per_step=per_step, exposure=exposure,
                        seconds=seconds)


def _merge(store: Any, run: str, the_plan: list[Shard], results: list[ShardResult]
           ) -> tuple[list[list[Any]], list[list[Any]]]:
    """Concatenate the shards' per-step partials (their parts are disjoint, so no step's rollouts are counted
    twice) and check them against the plan and the manifest."""
    listed = [p for s in the_plan for p in s.parts]
    if len(listed) != len(set(listed)) or set(listed) != {p.name for p in store.parts(run)}:
        raise RlauditError(f"run {run!r}: shard plan does not cover every part exactly once")  # a bug, never data
    ok = [r for r in results if r.ok]
    rows: dict[int, int] = {}
    for r in ok:
        for step, n in r.per_step:
            rows[step] = rows.get(step, 0) + n
    expected = sum(s.rows for s in the_plan if any(r.index == s.index for r in ok))
    if sum(rows.values()) != expected:
        raise RlauditError(f"run {run!r}: shards counted {sum(rows.values())} rollouts, their parts hold {expected}")
    exposure: dict[tuple[int, str], list[int]] = {}
    for r in ok:
        for step, grader, pairs, exposed in r.exposure:
            acc = exposure.setdefault((step, grader), [0, 0])
            acc[0] += pairs
            acc[1] += exposed
    return ([[s, n] for s, n in sorted(rows.items())],
            [[s, g, a[0], a[1]] for (s, g), a in sorted(exposure.items())])
