"""Items 2, 8, 9, 10: one atomic version per ingest, snapshot reads during writes, safe caches, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from rlaudit.errors import BadInputError, RlauditError
from rlaudit.readers.base import ReadOptions
from rlaudit.store import Store

SRC = Path(os.environ.get("RLAUDIT_TEST_SRC") or Path(__file__).resolve().parents[2] / "src")


def _lines(path: Path, start: int, stop: int, bad_at: int | None = None) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for i in range(start, stop):
            if i == bad_at:
                fh.write('{"step": "x", "prompt": 1}\n')
                continue
            fh.write(json.dumps({"step": i // 4, "prompt": f"q{i}", "completion": f"<think>t</think>a{i}",
                                 "rewards": {"r": float(i % 2)}}) + "\n")


def _run_dir(tmp_path: Path, files: int = 3, rows: int = 8) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for f in range(files):
        _lines(src / f"part{f}.jsonl", f * rows, (f + 1) * rows)
    return src


# ---------------------------------------------------------------- item 8: an ingest is one atomic version
def test_failed_reingest_with_new_options_leaves_previous_version(tmp_path, store):
    src = _run_dir(tmp_path)
    store.ingest(src, run="r")
    before, manifest = store.table("r"), store.manifest("r")
    _lines(src / "part2.jsonl", 100, 101, bad_at=100)  # a bad record in the last file
    with pytest.raises(BadInputError):
        store.ingest(src, run="r", options=ReadOptions(think_tags=ReadOptions().think_tags.__class__("<t>", "</t>"),
                                                       strict=True))
    assert store.manifest("r") == manifest  # options, files, version: untouched
    assert store.table("r").equals(before)
    assert not (store.run_dir("r") / "quarantine.jsonl").exists()


def _killer_script(src: Path, root: Path, sleep_after: int) -> str:
    return textwrap.dedent(f"""
        import sys, time
        from rlaudit.store import Store
        from rlaudit.readers.base import ReadOptions
        s = Store({str(root)!r})
        real = Store._file_entry  # once per file, after its part is written
        n = {{"files": 0}}
        def slow(self, *a, **k):
            n["files"] += 1
            if n["files"] == {sleep_after}:
                time.sleep(2.5)  # longer than the old periodic commit interval
            if n["files"] == {sleep_after} + 1:
                print("PART", flush=True)  # some parts written, the ingest not finished
                time.sleep(60)
            return real(self, *a, **k)
        Store._file_entry = slow
        s.ingest({str(src)!r}, run="r", options=ReadOptions(group_size=int(sys.argv[1])))
    """)


def _kill_mid_ingest(tmp_path: Path, src: Path, root: Path, group_size: int) -> None:
    script = tmp_path / "ingest_slowly.py"
    script.write_text(_killer_script(src, root, sleep_after=2))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(group_size)], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "PART"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killed_first_ingest_leaves_no_run(tmp_path):
    src = _run_dir(tmp_path, files=4)
    root = tmp_path / "store"
    _kill_mid_ingest(tmp_path, src, root, group_size=2)
    store = Store(root)
    assert store.runs() == []
    report = store.ingest(src, run="r")
    assert report.rows_added == 32 and store.summary("r").rows == 32
    assert {p.name for p in (store.run_dir("r") / "parts").iterdir()} == {p.name for p in store.parts("r")}


def test_killed_reingest_with_new_options_leaves_previous_version(tmp_path):
    src = _run_dir(tmp_path, files=4)
    root = tmp_path / "store"
    store = Store(root)
    store.ingest(src, run="r", options=ReadOptions(group_size=4))
    before, manifest = store.table("r"), store.manifest("r")
    _kill_mid_ingest(tmp_path, src, root, group_size=2)
    assert store.manifest("r") == manifest
    assert store.table("r").equals(before)  # no mix of rows read under two option sets


# ---------------------------------------------------------------- items 2, 9: readers see one version
def test_reader_keeps_its_snapshot_while_an_ingest_replaces_parts(tmp_path, store):
    store.retire_grace = 0.0  # only the lease protects the reader
    src = tmp_path / "one"
    src.mkdir()
    _lines(src / "run.jsonl", 0, 8)
    store.ingest(src, run="r")
    with store.reading(["r"]):
        con = store.connect(["r"])
        _lines(src / "run.jsonl", 8, 16)
        store.ingest(src, run="r")  # the grown file's part is replaced; the old one is retired, not deleted
        assert con.sql("SELECT count(*) FROM rollouts").fetchall()[0][0] == 8
        assert store.summary("r").rows == 8  # the pinned version
    assert store.summary("r").rows == 16
    _lines(src / "run.jsonl", 16, 17)
    store.ingest(src, run="r")  # no lease any more: retired parts are deleted now
    assert {p.name for p in (store.run_dir("r") / "parts").iterdir()} <= {p.name for p in store.parts("r")} | {
        r[0] for r in store.manifest("r")["retired"]}
    assert len(list((store.run_dir("r") / "parts").iterdir())) == 1  # nobody reads the old versions


def test_lease_of_a_dead_reader_is_dropped(tmp_path, store):
    store.retire_grace = 0.0
    src = tmp_path / "one"
    src.mkdir()
    _lines(src / "run.jsonl", 0, 8)
    store.ingest(src, run="r")
    leases = store.run_dir("r") / "leases"
    leases.mkdir(exist_ok=True)
    (leases / "12345-dead").write_text("0")  # nobody holds its lock
    _lines(src / "run.jsonl", 8, 16)
    store.ingest(src, run="r")
    _lines(src / "run.jsonl", 16, 24)
    store.ingest(src, run="r")
    assert not (leases / "12345-dead").exists()
    assert len(list((store.run_dir("r") / "parts").iterdir())) == 1


def test_concurrent_derived_cache_writers_never_collide(tmp_path, store, monkeypatch):
    src = _run_dir(tmp_path)
    store.ingest(src, run="r")
    table = pa.table({"x": list(range(1000))})
    errors, results = [], []
    started = threading.Barrier(6)

    def compute():
        time.sleep(0.05)
        return table

    def work():
        try:
            started.wait()
            results.append(Store(store.root).derived("r", "thing", compute).num_rows)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [1000] * 6
    assert [p.name for p in (store.run_dir("r") / "derived").iterdir()] == [f"thing-{store.fingerprint('r')}.parquet"]


def test_derived_cache_in_a_store_that_cannot_be_written(tmp_path, store, monkeypatch):
    src = _run_dir(tmp_path)
    store.ingest(src, run="r")
    import pyarrow.parquet as pq

    def read_only(*a, **k):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(pq, "write_table", read_only)
    assert store.derived("r", "thing", lambda: pa.table({"x": [1]})).num_rows == 1


# ---------------------------------------------------------------- item 10: the same rollouts only once
def test_store_inside_the_source_is_not_ingested(tmp_path):
    src = _run_dir(tmp_path)
    store = Store(src / "audit-store")  # the store inside the source directory (a name readers do not skip)
    for _ in range(3):
        report = store.ingest(src, run="r", format="canonical")
    assert store.summary("r").rows == 24
    assert any("inside the store" in n for n in report.notes)


def test_symlink_loop_ingests_each_file_once(tmp_path, store):
    from tests.readers.trainer_files import verl_step

    src = tmp_path / "dump"
    for step in (1, 2):
        verl_step(src, step, ["q1", "q2"], ["a", "b"], [1.0, 0.0])
    (src / "sub").mkdir()
    (src / "sub" / "loop").symlink_to(src, target_is_directory=True)
    report = store.ingest(src, run="r")
    assert report.format == "verl" and store.summary("r").rows == 4
    assert any("symbolic links" in n for n in report.notes)


def test_file_linked_under_another_name_is_ingested_once(tmp_path, store):
    # a link to a file (not to a directory): its real path is the target's, found by the link itself
    src = tmp_path / "verlish"
    src.mkdir()
    _lines(src / "a.jsonl", 0, 8)
    _lines(src / "b.jsonl", 8, 16)
    (src / "c.jsonl").symlink_to(src / "a.jsonl")
    report = store.ingest(src, run="r", format="canonical")
    assert store.summary("r").rows == 16
    assert any("symbolic links" in n and "c.jsonl" in n for n in report.notes)


def test_missing_part_is_an_error_for_every_reader(tmp_path, store):
    # found by one listing of the parts directory (`Store.missing_part`), not a stat per part: the same error
    src = _run_dir(tmp_path)
    store.ingest(src, run="r")
    lost = store.parts("r")[0]
    lost.unlink()
    for read in (lambda: store.connect(["r"]), lambda: store.query("SELECT count(*) FROM rollouts", runs=["r"]),
                 lambda: store.summary("r")):
        with pytest.raises(RlauditError, match=f"part file {lost} is missing; ingest its source again"):
            read()


def test_copied_file_under_another_name_is_ingested_once(tmp_path, store):
    src = tmp_path / "verlish"
    src.mkdir()
    _lines(src / "1.jsonl", 0, 8)
    (src / "01.jsonl").write_bytes((src / "1.jsonl").read_bytes())
    report = store.ingest(src, run="r", format="canonical")
    assert store.summary("r").rows == 8
    assert any("repeat another file" in n for n in report.notes)


def test_missing_part_is_repaired_by_the_next_ingest(tmp_path, store):
    src = _run_dir(tmp_path)
    store.ingest(src, run="r")
    store.parts("r")[0].unlink()  # the part the three files share (`Store.part_rows`)
    with pytest.raises(RlauditError, match="missing; ingest its source again"):
        store.summary("r")
    report = store.ingest(src, run="r")
    assert report.files_read == 3 and store.summary("r").rows == 24


def test_runs_rm_removes_a_run(tmp_path, store):
    src = _run_dir(tmp_path)
    store.ingest(src, run="r")
    store.delete("r")
    assert store.runs() == [] and not any((store.root / "runs").iterdir())
    with pytest.raises(RlauditError, match="no run"):
        store.delete("r")


def test_heavy_audits_during_watch_survive_a_growing_file(tmp_path, store, test_detectors):
    """A background heavy audit reads parts a re-ingest replaces meanwhile (the file grew): it must see its
    snapshot, not fail with 'No files found'."""
    from rlaudit.live import LiveAuditor, LiveConfig

    from tests.live.helpers import GoblinCounter

    class SlowReader(GoblinCounter):
        name = "test_slow_reader"

        def detect(self, ctx):
            time.sleep(0.4)  # the writer appends and the watcher re-ingests meanwhile
            return super().detect(ctx)

    from rlaudit.detectors import DETECTORS

    DETECTORS.append(SlowReader)
    try:
        store.retire_grace = 0.0
        src = tmp_path / "growing"
        src.mkdir()
        auditor = LiveAuditor(store, "g", LiveConfig(detectors=["test_slow_reader"], every_step=(), every=1,
                                                     background="thread", track=False))
        for i in range(12):
            _lines(src / "run.jsonl", i * 8, (i + 1) * 8)
            store.ingest(src, run="g")
            auditor.update()
            time.sleep(0.15)
        auditor.close()
    finally:
        DETECTORS.remove(SlowReader)
    assert not [f for f in auditor.findings if f.kind == "audit_error"], [f.title for f in auditor.findings]
    assert not auditor.errors
    assert len(auditor.heavy_runs) >= 3


# ---------------------------------------------------------------- parts written by two threads (`store._Writers`)
def _entries(store: Store, run: str) -> dict:
    return {k: {f: v for f, v in e.items() if f != "part"} for k, e in store.manifest(run)["files"].items()}


def test_two_part_writers_store_what_one_does(tmp_path, monkeypatch):
    src = _run_dir(tmp_path, files=7, rows=40)
    monkeypatch.setattr(Store, "part_rows", 80)  # parts of two files: four parts, two written at once
    stores = {}
    for n in (1, 2):
        monkeypatch.setattr("rlaudit.store._Writers.MAX", n)
        monkeypatch.setenv("RLAUDIT_THREADS", "2")
        stores[n] = Store(tmp_path / f"store{n}")
        seen = []
        stores[n].ingest(src, run="r", progress=lambda done, total, rows: seen.append((done, total, rows)))
        # as each file's rows are read (the rows so far) and as each file is recorded (the files done), in order
        done, rows = [c[0] for c in seen], [c[2] for c in seen]
        assert done == sorted(done) and set(range(1, 8)) <= set(done) <= set(range(8))
        assert rows == sorted(rows) and {40 * (i + 1) for i in range(7)} <= set(rows)
        assert seen[-1] == (7, 7, 280) and {c[1] for c in seen} == {7}
    assert _entries(stores[1], "r") == _entries(stores[2], "r")
    assert stores[1].table("r").equals(stores[2].table("r"))
    for name in ("r",):
        parts = stores[2].run_dir(name) / "parts"
        assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in stores[2].parts(name))


def test_progress_counts_the_rows_of_a_file_while_it_is_read(tmp_path, store, monkeypatch):
    """One large file (read in several chunks): its rows show as they are read, before the file counts as done."""
    monkeypatch.setattr("rlaudit.readers.jsonl.CHUNK_BYTES", 1 << 20)  # ~6 MB of lines: several chunks
    src = tmp_path / "src"
    src.mkdir()
    _lines(src / "big.jsonl", 0, 60_000)
    seen = []
    store.ingest(src, run="r", progress=lambda done, total, rows: seen.append((done, total, rows)))
    assert seen[0] == (0, 1, 0)  # once the files are listed, before they are hashed and read
    during = [rows for done, _, rows in seen[1:] if done == 0]
    assert len(during) >= 3 and during == sorted(during) and 0 < during[0] < during[-1] == 60_000
    assert seen[-1] == (1, 1, 60_000)


@pytest.mark.parametrize("fail", ["writer", "reader"])
def test_a_failure_with_parts_in_flight_keeps_the_previous_version(tmp_path, monkeypatch, fail):
    """A writer that fails (disk full) or a bad record under --strict while two parts are being written: the
    ingest raises, nothing is committed, and no part or temporary file of it is left once the next ingest ran."""
    monkeypatch.setenv("RLAUDIT_THREADS", "2")
    monkeypatch.setattr(Store, "part_rows", 1)  # a part per file: several parts in flight
    src = _run_dir(tmp_path, files=2, rows=40)
    store = Store(tmp_path / "store")
    store.ingest(src, run="r")
    before, manifest = store.table("r"), store.manifest("r")
    for f in range(2, 6):
        _lines(src / f"part{f}.jsonl", f * 40, (f + 1) * 40, bad_at=4 * 40 + 7 if fail == "reader" else None)
    if fail == "writer":
        real = Store._write_part
        calls = {"n": 0}

        def full(self, run, part, tables):
            calls["n"] += 1
            if calls["n"] == 3:  # the third new part: two others written or in flight
                next(iter(tables))
                raise OSError(28, "No space left on device")
            return real(self, run, part, tables)

        monkeypatch.setattr(Store, "_write_part", full)
        with pytest.raises(OSError, match="No space left"):
            store.ingest(src, run="r")
    else:
        with pytest.raises(BadInputError, match="part4.jsonl"):
            store.ingest(src, run="r", options=ReadOptions(strict=True))
    assert store.manifest("r") == manifest
    assert store.table("r").equals(before)
    parts = store.run_dir("r") / "parts"
    assert not [p for p in parts.iterdir() if p.name.endswith(".tmp")]  # writers aborted, their files removed
    monkeypatch.undo()
    report = store.ingest(src, run="r")  # the next ingest stores the new files and removes the orphans
    assert report.files_read == 4 and store.summary("r").rows == 80 + 4 * 40 - (fail == "reader")
    assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in store.parts("r"))


# ---------------------------------------------------------------- the parts' codec (`store.PART_CODEC`)
def test_parts_of_an_older_codec_stay_and_are_read_beside_new_ones(tmp_path, monkeypatch):
    """A run stored with zstd parts (before LZ4, every column compressed) and grown by an ingest of this version:
    the old parts are kept byte for byte, the new ones are LZ4 but for the uncompressed completion, and the run
    reads (Arrow and DuckDB) as a run written with one codec."""
    import duckdb
    import pyarrow.parquet as pq

    def codecs(store: Store) -> dict[str, set[str]]:
        return {p.name: {pq.ParquetFile(p).metadata.row_group(0).column(i).compression
                         for i in range(pq.ParquetFile(p).metadata.num_columns)} for p in store.parts("r")}

    src = _run_dir(tmp_path, files=2, rows=40)
    old = Store(tmp_path / "old")
    monkeypatch.setattr("rlaudit.store.PART_CODEC", {"compression": "zstd", "compression_level": 1})
    monkeypatch.setattr("rlaudit.store._UNCOMPRESSED_COLUMNS", ())
    old.ingest(src, run="r")
    monkeypatch.undo()
    before = {name: (old.run_dir("r") / "parts" / name).read_bytes() for name in codecs(old)}
    assert set().union(*codecs(old).values()) == {"ZSTD"}
    for f in range(2, 4):
        _lines(src / f"part{f}.jsonl", f * 40, (f + 1) * 40)
    old.ingest(src, run="r")
    now = codecs(old)
    assert {name: (old.run_dir("r") / "parts" / name).read_bytes() for name in before} == before
    assert [v for k, v in now.items() if k not in before] == [{"LZ4", "UNCOMPRESSED"}]  # the new files: one part
    new = Store(tmp_path / "new")
    new.ingest(src, run="r")
    assert set().union(*codecs(new).values()) == {"LZ4", "UNCOMPRESSED"}
    assert old.table("r").equals(new.table("r"))
    query = "SELECT * FROM read_parquet({}) ORDER BY step, prompt"
    rows = [duckdb.sql(query.format([str(p) for p in s.parts("r")])).fetchall() for s in (old, new)]
    assert rows[0] == rows[1] and len(rows[0]) == 160


def test_parts_leave_only_the_completion_uncompressed(tmp_path, monkeypatch):
    """Every column of a part, each leaf of the nested ones (maps, lists), is written with `PART_CODEC` but the
    completion (`store._UNCOMPRESSED_COLUMNS`); a codec with a level (zstd) gets it for the compressed ones only,
    and the rows read back are the same whatever the codec."""
    import pyarrow.parquet as pq

    from rlaudit.store import _codec

    def compression(store: Store) -> dict[str, str]:
        meta = pq.ParquetFile(store.parts("r")[0]).metadata
        return {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).compression
                for i in range(meta.num_columns)}

    src = _run_dir(tmp_path, files=1, rows=40)
    lz4 = Store(tmp_path / "lz4")
    lz4.ingest(src, run="r")
    found = compression(lz4)
    assert {"rewards.key_value.key", "rewards.key_value.value", "tool_calls.list.element.name"} <= set(found)
    assert {k for k, v in found.items() if v != "LZ4"} == {"completion"} and found["completion"] == "UNCOMPRESSED"
    monkeypatch.setattr("rlaudit.store.PART_CODEC", {"compression": "zstd", "compression_level": 3})
    schema = pq.read_schema(lz4.parts("r")[0])  # (with its reward columns)
    assert _codec(schema)["compression_level"] == {p: 3 for p in found if p != "completion"}
    zstd = Store(tmp_path / "zstd")
    zstd.ingest(src, run="r")
    assert {k for k, v in compression(zstd).items() if v != "ZSTD"} == {"completion"}
    assert zstd.table("r").equals(lz4.table("r"))


def test_parts_keep_statistics_of_the_scalar_columns_only(tmp_path):
    """A part's row groups carry min/max where a reader prunes by them (step, split, condition, ids: the step
    range of a part is read back from them, and DuckDB skips row groups by a `step` filter), and none for the
    texts and nested columns (`store._STATISTICS_COLUMNS`); a query filtered by step still skips the other parts."""
    import duckdb
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    store = Store(tmp_path / "store")
    store.ingest(_run_dir(tmp_path, files=2, rows=40), run="r")
    parts = store.parts("r")
    meta = pq.ParquetFile(parts[0]).metadata
    stats = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).statistics
             for i in range(meta.num_columns)}
    for col in ("step", "split", "condition", "rollout_id"):
        assert stats[col] is not None and stats[col].has_min_max, col
    for col in ("completion", "prompt", "metadata", "grader_inputs.key_value.value"):
        assert stats[col] is None or not stats[col].has_min_max, col
    lo = meta.row_group(0).column(list(stats).index("step")).statistics.min
    assert store.manifest("r")["files"]  # the step ranges came from ingest; the statistics agree with them
    assert lo == min(e["steps"][0] for e in store.manifest("r")["files"].values() if e.get("steps"))
    paths = [str(p) for p in parts]
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet({paths}) WHERE step = {lo}").fetchall()[0][0]
    assert n == store.table("r").filter(pc.equal(store.table("r").column("step"), lo)).num_rows > 0


def test_readers_share_a_parsed_manifest_until_its_bytes_change(tmp_path):
    """`Store.manifest` parses the run's manifest once per content (a long run's is ~650 kB, and an audit read
    it ~23 times): the same object while the file is unchanged, the new version after an ingest or any rewrite
    (even one of the same size within one timestamp tick), and a corrupt file is still a clear error."""
    store = Store(tmp_path / "store")
    src = _run_dir(tmp_path, files=2)
    store.ingest(src, run="r")
    first = store.manifest("r")
    assert store.manifest("r") is first
    _lines(src / "part2.jsonl", 16, 24)
    store.ingest(src, run="r")
    second = store.manifest("r")
    assert second is not first and len(second["files"]) == len(first["files"]) + 1
    path = store.run_dir("r") / "run.json"
    edited = json.loads(path.read_text())
    edited["format"] = "x" * len(str(edited.get("format", "")))  # same length, other bytes
    path.write_text(json.dumps(edited, indent=1, sort_keys=True))
    assert store.manifest("r")["format"] == edited["format"]
    path.write_text("{not json")
    with pytest.raises(RlauditError, match="corrupt manifest"):
        store.manifest("r")
    with pytest.raises(RlauditError, match="no run"):
        store.manifest("nope")



def test_parts_dictionary_encode_the_maps_keys_and_read_back_the_same_maps(tmp_path):
    """The keys of `rewards` and `grader_inputs` (a few names repeated in every rollout) are dictionary-encoded in
    a part (`store._DICTIONARY_KEYS`), and the part reads back, through Arrow and through DuckDB, exactly as the
    same table written without a dictionary: keys in their order, keys missing from some rollouts, NaN, empty maps."""
    import duckdb
    import pyarrow.parquet as pq

    from rlaudit.layout import read_part

    src = tmp_path / "src"
    src.mkdir()
    with open(src / "run.jsonl", "w", encoding="utf-8") as fh:
        for i in range(30):
            rewards = {"b": float(i), "a": -0.5} if i % 3 else {"a": float("nan")}
            graders = {} if i % 4 == 0 else {"judge": f"q{i} <think>t</think>a{i}", "aux": "x"}
            fh.write(json.dumps({"step": i // 6, "prompt": f"q{i}", "completion": f"<think>t</think>a{i}",
                                 "rewards": rewards, "grader_inputs": graders}) + "\n")
    store = Store(tmp_path / "store")
    store.ingest(src, run="r")
    [part] = store.parts("r")
    meta = pq.ParquetFile(part).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    for key in ("rewards.key_value.key", "grader_inputs.key_value.key"):
        assert "RLE_DICTIONARY" in encodings[key], (key, encodings[key])
    assert "RLE_DICTIONARY" not in encodings["rewards.key_value.value"]

    # (the shared signals of the part's rollouts are columns, the others' maps stay: `layout.split_rewards`)
    table = read_part(part, ["rollout_id", "prompt", "rewards", "grader_inputs"])
    plain = tmp_path / "plain.parquet"
    pq.write_table(table, plain, use_dictionary=False)
    assert repr(pq.read_table(plain).to_pylist()) == repr(table.to_pylist())  # repr: NaN equal to NaN
    assert table.column("grader_inputs").to_pylist()[1] == [("judge", "q1 <think>t</think>a1"), ("aux", "x")]
    query = ("SELECT rollout_id, map_keys(rewards), map_values(rewards), rewards['b'], grader_inputs['judge'], "
             "map_keys(grader_inputs) FROM {} ORDER BY rollout_id")
    con = store.connect(["r"])
    got = con.sql(query.format("rollouts")).fetchall()
    want = duckdb.sql(query.format(f"read_parquet('{plain}')")).fetchall()
    assert len(got) == 30 and repr(got) == repr(want)
    logged_b = dict(con.sql("SELECT prompt, rewards['b'] FROM rollouts").fetchall())
    assert all(logged_b[f"q{i}"] == float(i) for i in range(30) if i % 3)
    con.close()
