"""partstats: per-part tables are computed once, merged into one combined file, and a replaced part's rows leave
the merged result (checked through `Store.summary`, which reads them, against a direct scan)."""

from __future__ import annotations

from pathlib import Path
import pytest

from rlaudit.derived import partstats
from rlaudit.derived.partstats import _combined_stems
from rlaudit.schema import canonical_table


def _rows(step: int, n: int, tag: str) -> dict:
    return {"run": ["r"] * n, "rollout_id": [f"{tag}:{step}:{i}" for i in range(n)], "step": [step] * n,
            "split": ["train"] * n, "group_id": [f"{step}-{i // 4}" for i in range(n)],
            "sample_index": [i % 4 for i in range(n)], "condition": [f"c{step % 3}"] * n, "system_prompt": [None] * n,
            "task": ["t"] * n, "prompt": ["p"] * n, "completion": ["c"] * n, "reasoning": [None] * n,
            "answer": ["a"] * n, "rewards": [[(f"s{step % 2}", float(i))] for i in range(n)], "reward": [0.0] * n,
            "advantage": [None] * n, "grader_inputs": [[] for _ in range(n)], "metadata": [None] * n}


def _direct(store):
    return store.query("SELECT count(*), min(step), max(step) FROM rollouts", runs=["r"]).to_pylist()[0]


def test_compaction_and_replaced_parts(store, monkeypatch):
    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    base = store.run_dir("r") / "derived" / "partstats" / "run_stats"
    for step in range(1, 8):
        store.append("r", canonical_table(_rows(step, 8 + step, "a")), key=f"s{step}")
        s, d = store.summary("r"), _direct(store)
        assert (s.rows, s.steps) == (d["count_star()"], (d["min(step)"], d["max(step)"]))
        assert s.conditions == sorted({f"c{k % 3}" for k in range(1, step + 1)})
    (combined,) = base.glob("v1-duckdb*/combined.parquet")
    stems = _combined_stems(combined)
    assert len(stems) == 6 and {p.stem for p in store.parts("r")} - stems  # the 7th is loose
    store.append("r", canonical_table(_rows(2, 3, "b")), key="s2")  # replaces a part the combined file holds
    store.append("r", canonical_table(_rows(9, 5, "b")), key="s9")
    s, d = store.summary("r"), _direct(store)
    assert s.rows == d["count_star()"] == sum(8 + k for k in range(1, 8)) - 10 + 3 + 5
    store.persist_derived = False  # a store that writes nothing reads the combined file as it is
    assert store.summary("r").rows == s.rows


def test_prune_cached_drops_other_versions_and_gone_parts_but_not_writers_temp_files(tmp_path):
    from rlaudit.store import prune_cached

    base = tmp_path / "derived" / "x"
    keep, old = base / "v2", base / "v1"
    for d in (keep, old):
        d.mkdir(parents=True)
    for name in ("p1.parquet", "p1.counts.arrow", "p2.parquet", "combined.parquet", ".p3.parquet.1.2.tmp"):
        (keep / name).write_text("x")
    (old / "p1.parquet").write_text("x")
    prune_cached(base, keep, {"p1", "combined"})
    assert not old.exists()
    assert sorted(f.name for f in keep.iterdir()) == [".p3.parquet.1.2.tmp", "combined.parquet", "p1.counts.arrow",
                                                      "p1.parquet"]
    prune_cached(tmp_path / "absent", tmp_path / "absent" / "v1", set())  # nothing cached yet: no error


def test_the_combined_file_is_written_under_a_small_duckdb_limit(monkeypatch):
    """A streaming merge (`segments`) gets COMPACT_MEMORY, not the default gigabyte (a 10M-rollout run's merge took
    ~750 MB more beside emerging's open scope); `bound_memory`'s `at_most` never raises the limit."""
    import duckdb

    import pytest

    from rlaudit import memory
    from rlaudit.derived import partstats
    from rlaudit.store import bound_memory

    con = duckdb.connect()
    bound_memory(con, at_most=partstats.COMPACT_MEMORY)
    small = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    bound_memory(con, at_most=1 << 40)
    default = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    con.close()
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}

    def in_bytes(setting: str) -> float:  # DuckDB prints e.g. "244.1 MiB"
        value, unit = setting.split()
        return float(value) * units[unit]

    limit = memory.duckdb_limit()  # 1 GB, or less under a memory budget
    as_set = lambda n: (n >> 20) * 1_000_000  # noqa: E731 - bound_memory sets "<n >> 20>MB"; DuckDB's MB is 10^6
    assert in_bytes(small) == pytest.approx(as_set(min(limit, partstats.COMPACT_MEMORY)), rel=0.01)
    assert in_bytes(default) == pytest.approx(as_set(limit), rel=0.01)


def test_a_registered_view_keeps_its_rows_when_another_audit_compacts(store, monkeypatch):
    """The merged rows are a view (read per query): when another audit rewrites the combined file meanwhile,
    with parts this view reads loose, no row is counted twice (the combined file is read by stem)."""
    import duckdb

    import rlaudit.derived.runstats  # noqa: F401 - defines the kind

    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    for step in range(1, 5):
        store.append("r", canonical_table(_rows(step, 8, "a")), key=f"s{step}")
    stats = partstats.part_stats(store, "r", "run_stats")
    for step in range(5, 7):  # two loose parts
        store.append("r", canonical_table(_rows(step, 8, "a")), key=f"s{step}")
    mine = partstats.part_stats(store, "r", "run_stats")
    assert mine.combined is not None and len(mine.files) == 2 and stats.combined == mine.combined
    con = duckdb.connect()
    mine.register(con, "rs")
    before = con.execute("SELECT count(*), sum(n) FROM rs WHERE kind = 0").fetchall()
    monkeypatch.setattr(partstats, "COMPACT_AT", 1)
    again = partstats.part_stats(store, "r", "run_stats")  # another audit compacts all
    assert not again.files and len(_combined_stems(again.combined)) == 6
    assert con.execute("SELECT count(*), sum(n) FROM rs WHERE kind = 0").fetchall() == before


def _rows_of(stats, kind: str) -> list:
    import duckdb

    con = duckdb.connect()
    stats.register(con, "t")
    return sorted(map(repr, con.execute("SELECT * FROM t").fetchall()))


def test_an_audit_reads_each_part_once_for_every_kind(store, monkeypatch):
    """A cold audit computes every kind its detectors declare (and the summary's) in one read of each part, and
    writes each kind's rows straight into its combined file; the tables equal those computed kind by kind."""
    from rlaudit.detectors import AuditConfig, run_detectors

    monkeypatch.setattr(partstats, "BATCH_PARTS", 16)  # two batches
    for step in range(1, 21):
        store.append("r", canonical_table(_rows(step, 6 + step % 4, "a")), key=f"s{step}")
    calls = []
    compute = partstats._compute
    monkeypatch.setattr(partstats, "_compute", lambda parts, *a: calls.append((len(parts), sorted(k.name for k in a[1])))
                        or compute(parts, *a))
    found = run_detectors(store, "r", AuditConfig(detectors=["reward_health", "training_health"]))
    assert not [f for f in found if f.kind == "audit_error"]
    kinds = ["reward_health", "run_stats", "training_health"]
    assert sorted(calls) == [(4, kinds), (16, kinds)]  # (two worker threads: either batch may start first)
    base = store.run_dir("r") / "derived" / "partstats"
    for kind in kinds:
        # (beside training_health's, the rollup of its small kinds: `training_stats._small_rollup`)
        assert [p.name for p in base.glob(f"{kind}/v*/*.parquet")
                if not p.name.startswith("combined.small-")] == ["combined.parquet"]
    combined = next(base.glob("run_stats/v*/combined.parquet"))
    import pyarrow.parquet as pq

    rows = pq.read_table(combined).to_pylist()
    for part in store.parts("r"):  # each part's rows are its own (its step, its rows)
        step = pq.read_table(part, columns=["step"]).column("step").to_pylist()
        assert [(r["step"], r["n"]) for r in rows if r["_stem"] == part.stem and r["kind"] == 0] == \
            [(step[0], len(step))]
    calls.clear()
    store.summary("r")
    assert calls == []
    merged = {k: _rows_of(partstats.part_stats(store, "r", k), k) for k in kinds}
    store.persist_derived = False  # kind by kind, in memory
    assert {k: _rows_of(partstats.part_stats(store, "r", k), k) for k in kinds} == merged


def test_a_combined_file_that_cannot_be_written_leaves_the_tables_in_memory(store, monkeypatch):
    """A cache is an optimisation: where the combined file cannot be written, the tables that went into it are
    computed again and kept in memory, and the merged rows are the same."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(partstats, "BATCH_PARTS", 16)
    for step in range(1, 19):
        store.append("r", canonical_table(_rows(step, 5, "a")), key=f"s{step}")
    want = _rows_of(partstats.part_stats(store, "r", "run_stats"), "run_stats")
    base = store.run_dir("r") / "derived" / "partstats"
    import shutil

    shutil.rmtree(base)

    class Full(pq.ParquetWriter):
        def write_table(self, *a, **k):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "ParquetWriter", Full)
    stats = partstats.part_stats(store, "r", "run_stats")
    # the first batch's tables went into the file that failed: recomputed, kept in memory; the rest written loose
    assert stats.combined is None and (len(stats.tables), len(stats.files)) == (16, 2)
    assert _rows_of(stats, "run_stats") == want
    assert not [p for p in base.rglob(".*")] and not list(base.rglob("combined.parquet"))  # no partial file


def test_registered_rows_name_their_part_when_asked(store, monkeypatch):
    """`register(..., stems=True)` gives every row its part's file stem: from the combined file, from loose
    per-part files and from tables kept in memory alike."""
    import duckdb
    import pyarrow.parquet as pq

    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    for step in range(1, 5):
        store.append("r", canonical_table(_rows(step, 4 + step, "a")), key=f"s{step}")
    partstats.part_stats(store, "r", "run_stats")  # four parts: a combined file
    store.append("r", canonical_table(_rows(5, 3, "a")), key="s5")  # one more part: loose
    want = sorted((p.stem, pq.read_table(p, columns=["step"]).column("step")[0].as_py()) for p in store.parts("r"))

    def stems(stats) -> list:
        con = duckdb.connect()
        stats.register(con, "t", stems=True)
        return sorted(con.execute("SELECT DISTINCT _stem, step FROM t WHERE kind = 0").fetchall())

    stats = partstats.part_stats(store, "r", "run_stats")
    assert stats.combined is not None and len(stats.files) == 1
    assert stems(stats) == want
    import shutil

    shutil.rmtree(store.run_dir("r") / "derived")
    store.persist_derived = False  # every part computed into memory
    stats = partstats.part_stats(store, "r", "run_stats")
    assert len(stats.tables) == 5 and not stats.files and stats.combined is None
    assert stems(stats) == want


def test_batches_computed_by_two_threads_equal_one_thread(tmp_path, monkeypatch):
    """Batches computed ahead by worker threads (`_computed`) are written in the run's part order, and every kind's
    rows equal those of one thread and of the kind computed alone in memory."""
    import pyarrow.parquet as pq

    from rlaudit.store import Store

    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    kinds = ("run_stats", "reward_health", "training_health")
    got = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("RLAUDIT_THREADS", threads)
        store = Store(tmp_path / f"s{threads}")
        for step in range(1, 12):
            store.append("r", canonical_table(_rows(step, 5 + step % 3, "a")), key=f"s{step:02d}")
        stats = partstats.part_stats(store, "r", kinds[0], also=kinds[1:], batch=2)
        # a batch's rows are one row group, in the query's order (`_Batch.with_stems`); the batches in part order
        combined = pq.ParquetFile(stats.combined)
        groups = [sorted(set(combined.read_row_group(i, columns=["_stem"]).column("_stem").to_pylist()))
                  for i in range(combined.num_row_groups)]
        parts = [p.stem for p in store.parts("r")]
        assert groups == [sorted(parts[i:i + 2]) for i in range(0, len(parts), 2)]
        got[threads] = {k: _rows_of(partstats.part_stats(store, "r", k), k) for k in kinds}
        store.persist_derived = False
        assert got[threads] == {k: _rows_of(partstats.part_stats(store, "r", k), k) for k in kinds}
    assert got["1"] == got["2"] and all(got["1"].values())


def test_batches_hold_at_most_batch_steps_steps():
    """A batch also stops at BATCH_STEPS steps (the parts' step ranges; a part of unknown steps counts one): the
    kinds keep rows per step, so a batch of many small steps holds tables that grow with its steps."""
    parts = [Path(f"p{i}.parquet") for i in range(6)]
    spans = {"p0.parquet": 3, "p1.parquet": 3, "p2.parquet": 5, "p4.parquet": 2, "p5.parquet": 4}
    assert partstats._batches(parts, {}, 99, 10**9, spans, 6) == [parts[0:2], parts[2:4], parts[4:6]]
    assert partstats._batches(parts, {}, 99, 10**9, spans, 10**6) == [parts]
    assert partstats._batches(parts, {}, 99, 10**9, {"p0.parquet": 50}, 6) == [parts[0:1], parts[1:6]]


def test_batches_hold_about_batch_rows_rollouts(store, monkeypatch):
    """Parts are batched by the rows the manifest gives (a part is never split; one bigger than a batch is a
    batch of its own), at most `batch` parts a batch; the tables are those of one part a batch."""
    monkeypatch.setattr(partstats, "COMPACT_AT", 3)
    sizes = [4, 3, 9, 2, 2, 2, 5]
    for step, n in enumerate(sizes, 1):
        store.append("r", canonical_table(_rows(step, n, "a")), key=f"s{step}")
    names = [p.name for p in store.parts("r")]
    rows = dict(zip(names, sizes))
    cut = [[p.name for p in b] for b in partstats._batches(store.parts("r"), rows, 3, 8)]
    assert cut == [names[0:2], names[2:3], names[3:6], names[6:7]]
    parts = store.parts("r")  # rows the manifest does not give count as a sixteenth of BATCH_ROWS each
    assert partstats._batches(parts, {}, 2, 10**9) == [parts[i:i + 2] for i in range(0, 7, 2)]
    assert partstats._batches(parts, {}, 99, partstats.BATCH_ROWS) == [parts]
    assert partstats._batches(parts, {}, 99, 8) == [[p] for p in parts]
    kinds = ("run_stats", "reward_health", "training_health")
    calls = []
    compute = partstats._compute
    monkeypatch.setattr(partstats, "_compute", lambda parts, *a: calls.append(len(parts)) or compute(parts, *a))
    got = {k: _rows_of(partstats.part_stats(store, "r", k, also=kinds, batch_rows=8), k) for k in kinds}
    assert sorted(calls) == [1, 1, 2, 3]
    import shutil

    shutil.rmtree(store.run_dir("r") / "derived")
    calls.clear()
    monkeypatch.setenv("RLAUDIT_THREADS", "1")  # one connection serves every batch, closed at the end
    opened = []
    connect = partstats.duck.connect
    monkeypatch.setattr(partstats.duck, "connect", lambda *a, **k: opened.append(connect(*a, **k)) or opened[-1])
    assert {k: _rows_of(partstats.part_stats(store, "r", k, also=kinds, batch=1), k) for k in kinds} == got
    assert calls == [1] * 7 and len(opened) == 1
    import duckdb

    with pytest.raises(duckdb.ConnectionException):
        opened[0].execute("SELECT 1")


def test_a_batch_holds_fewer_rollouts_under_a_memory_budget(monkeypatch):
    """Without a budget a batch of per-part statistics holds BATCH_ROWS rollouts; under one, what the budget's
    sample share holds at BYTES_PER_ROW each, never fewer than MIN_BATCH_ROWS (nor more than BATCH_ROWS)."""
    from rlaudit import memory

    monkeypatch.setattr(memory, "budget", lambda: None)
    assert partstats._budget_rows() == partstats.BATCH_ROWS
    share = memory.SAMPLE_SHARE
    for left, want in [(1 << 20, partstats.MIN_BATCH_ROWS), (1 << 40, partstats.BATCH_ROWS),
                       (int(200_000 * partstats.BYTES_PER_ROW / share) + 1, 200_000)]:
        monkeypatch.setattr(memory, "budget", lambda left=left: (left, "test"))
        assert partstats._budget_rows() == want
