"""Parts that hold several source files (`Store.part_rows`): each file's rows stay its own when files change,
are replaced or vanish, and a grouped store holds exactly the rows a store of one part per file holds."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.errors import RlauditError
from rlaudit.store import Store

from .step_files import write_rows, write_source


def _answers(store: Store, run: str = "r") -> list[str]:
    return sorted(store.table("r", ["answer"])["answer"].to_pylist())


def _on_disk(store: Store, run: str = "r") -> set[str]:
    return {p.name for p in (store.run_dir(run) / "parts").iterdir()}


def test_consecutive_files_share_parts_up_to_part_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "part_rows", 20)
    src = write_source(tmp_path, [8, 8, 8, 8, 8, 3])
    store = Store(tmp_path / "store")
    report = store.ingest(src, run="r", format="canonical")
    assert report.files_read == 6 and report.rows_added == 43
    parts = store.stored_parts("r")
    # a part closes after the file that takes it to 20 rows: 8+8+8, 8+8+3
    assert [p.files for p in parts.values()] == [("f000.jsonl", "f001.jsonl", "f002.jsonl"),
                                                 ("f003.jsonl", "f004.jsonl", "f005.jsonl")]
    assert [p.rows for p in parts.values()] == [24, 19]
    assert [p.steps for p in parts.values()] == [[0, 5], [6, 10]]
    files = store.manifest("r")["files"]
    assert [files[f"f00{i}.jsonl"]["offset"] for i in range(6)] == [0, 8, 16, 0, 8, 16]
    for p in parts.values():  # one row group per part, not one per file
        assert pq.ParquetFile(store.run_dir("r") / "parts" / p.name).metadata.num_row_groups == 1
    assert _on_disk(store) == set(parts)
    assert _answers(store) == sorted(f"a{i}" for i in range(43))
    # the step ranges select parts: a lookup of step 7 opens only the second part
    first, second = parts
    with store.connect(["r"], steps=[7]) as con:
        assert con.execute("SELECT count(*) FROM rollouts WHERE step = 7").fetchone()[0] == 4
        [view] = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'rollouts'").fetchone()
        assert second in view and first not in view


def test_a_changed_file_takes_only_its_own_rows_out_of_a_shared_part(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "part_rows", 100)
    src = write_source(tmp_path, [8, 8, 8])
    store = Store(tmp_path / "store")
    store.ingest(src, run="r", format="canonical")
    [old] = store.stored_parts("r")
    (src / "f000.jsonl").unlink()  # its source gone: its rows must stay
    write_rows(src / "f001.jsonl", 8, 5, tag="x")  # changed: 5 new rows replace its 8
    monkeypatch.setattr(Store, "retire_grace", 0.0)
    report = store.ingest(src, run="r", format="canonical")
    assert report.files_read == 1 and report.files_skipped == 1
    assert _answers(store) == sorted([f"a{i}" for i in range(8)] + [f"a{i}x" for i in range(8, 13)]
                                     + [f"a{i}" for i in range(16, 24)])
    parts = store.stored_parts("r")
    assert old not in parts and old not in _on_disk(store)  # retired, then deleted (no reader holds it)
    kept = [p for p in parts.values() if "f000.jsonl" in p.files]
    assert [p.files for p in kept] == [("f000.jsonl", "f002.jsonl")] and kept[0].rows == 16
    assert _on_disk(store) == set(parts)
    again = store.ingest(src, run="r", format="canonical")  # idempotent afterwards
    assert again.files_read == 0 and _answers(store) == _answers(store)


def test_a_live_append_under_a_grouped_key_replaces_only_that_files_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "part_rows", 100)
    src = write_source(tmp_path, [4, 4, 4])
    store = Store(tmp_path / "store")
    store.ingest(src, run="r", format="canonical")
    rows = store.query("SELECT * FROM rollouts WHERE answer = 'a5'", runs=["r"])
    store.append("r", rows, key="f001.jsonl")  # the key of the middle file: its 4 rows become this 1
    assert _answers(store) == sorted([f"a{i}" for i in range(4)] + ["a5"] + [f"a{i}" for i in range(8, 12)])


def test_a_part_closes_at_part_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "part_bytes", 1)  # every file is over the byte limit: a part each
    src = write_source(tmp_path, [3, 3, 3])
    store = Store(tmp_path / "store")
    store.ingest(src, run="r", format="canonical")
    assert [p.files for p in store.stored_parts("r").values()] == [("f000.jsonl",), ("f001.jsonl",), ("f002.jsonl",)]


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=7), part_rows=st.integers(1, 25),
       changes=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=4), data=st.data())
def test_grouped_parts_hold_what_one_part_per_file_holds(tmp_path_factory, sizes, part_rows, changes, data):
    """Through a first ingest and rounds of changed and removed files, a store with grouped parts holds the same
    rows as a store with one part per file, and every file's offset and rows point at its own rows."""
    tmp = tmp_path_factory.mktemp("groups")
    src = write_source(tmp, sizes)
    grouped, single = Store(tmp / "grouped"), Store(tmp / "single")
    grouped.part_rows, single.part_rows = part_rows, 1
    names = sorted(p.name for p in src.iterdir())
    for round_, (which, rows) in enumerate([(None, 0)] + changes):
        if which is not None and names:
            name = names[which % len(names)]
            if data.draw(st.booleans(), label="remove"):
                (src / name).unlink()
                names.remove(name)
            else:
                write_rows(src / name, 1000 * (round_ + 1), rows, tag=f"r{round_}")
        if not names:
            break
        for store in (grouped, single):
            store.ingest(src, run="r", format="canonical")
        assert _answers(grouped) == _answers(single)
        for part in grouped.stored_parts("r").values():
            table = pq.read_table(grouped.run_dir("r") / "parts" / part.name, columns=["prompt"])
            assert table.num_rows == part.rows
            entries = [grouped.manifest("r")["files"][f] for f in part.files]
            assert [e["offset"] for e in entries] == [sum(e["rows"] for e in entries[:i]) for i in range(len(entries))]


def test_the_cot_scan_pairs_by_source_file_whatever_the_parts(tmp_path, monkeypatch):
    """The CoT scan's chance pairings are drawn per source file (`cot.detector.scan_parts`): a run stored in
    grouped parts gets the scan results, per rollout and pairing, of the same run stored a part per file, also
    where only some batches get pairings (`chance_rows` below the run's rows with grader inputs)."""
    import duckdb

    from rlaudit.audit import audit
    from rlaudit.detectors import AuditConfig
    from rlaudit.organisms import simulate

    simulate("cot_midrun", tmp_path / "run", format="prime-rl", steps=24, prompts=16, generations=8, seed=3)
    config = AuditConfig(detectors=["cot_grading"], options={"cot_grading": {"chance_rows": 300, "batch_rows": 64}})
    scans = {}
    for rows in ("1", None):
        if rows:
            monkeypatch.setenv("RLAUDIT_PART_ROWS", rows)
        else:
            monkeypatch.delenv("RLAUDIT_PART_ROWS")
        root = tmp_path / f"store-{rows}"
        result = audit([tmp_path / "run"], store=root, config=config)
        store = Store(root)
        scans[rows] = (len(store.parts("run")), [(f.title, f.fields) for f in result.findings], duckdb.sql(
            f"SELECT * EXCLUDE (part) FROM read_parquet('{store.run_dir('run')}/derived/cot_scan/*/*.parquet', "
            "union_by_name=true, filename=part) ORDER BY ALL").fetchall())
    (per_file, findings_a, rows_a), (grouped, findings_b, rows_b) = scans["1"], scans[None]
    assert per_file == 24 and grouped == 1
    chance = [r for r in rows_a if r[-1] is True]
    assert 0 < len(chance) < len(rows_a) // 2  # some batches paired, not all
    assert rows_a == rows_b and findings_a == findings_b and findings_a


def test_part_rows_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RLAUDIT_PART_ROWS", "8")
    assert Store(tmp_path / "s").part_rows == 8
    for bad in ("0", "many", "-3", ""):
        monkeypatch.setenv("RLAUDIT_PART_ROWS", bad)
        with pytest.raises(RlauditError, match="RLAUDIT_PART_ROWS=.*whole number of rows"):
            Store(tmp_path / "s")


def test_live_ingests_group_files_and_never_compact(tmp_path, monkeypatch):
    """A live audit's ingests (the auditor's, `watch`'s and the fleet worker's) group the files one poll reads, as
    any ingest does (their views cut parts to the steps they read), and leave the small parts of earlier polls
    as they are: the fleet's auditor memory knows parts by name. A batch ingest afterwards compacts them."""
    from rlaudit.live.auditor import LiveAuditor

    monkeypatch.setattr(Store, "part_rows", 32)
    src = write_source(tmp_path, [8, 8, 8])
    auditor = LiveAuditor(tmp_path / "store", "r")
    auditor.ingest(src, format="canonical")
    assert [p.files for p in auditor.store.stored_parts("r").values()] == [("f000.jsonl", "f001.jsonl", "f002.jsonl")]
    for f in range(3, 7):  # a poll per step file
        write_rows(src / f"f{f:03d}.jsonl", 8 * f, 8)
        assert auditor.ingest(src, format="canonical").parts_compacted == 0
    assert [len(p.files) for p in auditor.store.stored_parts("r").values()] == [3, 1, 1, 1, 1]
    report = auditor.store.ingest(src, run="r", format="canonical")  # a batch audit's ingest
    assert report.parts_compacted == 3  # 8 x 4 = 32 rows: a full group
    assert [len(p.files) for p in auditor.store.stored_parts("r").values()] == [3, 4]


def test_a_part_that_disagrees_with_its_manifest_is_an_error_not_a_wrong_split(tmp_path, monkeypatch):
    """A shared part whose rows do not add up to its files' entries (a corrupted manifest or part) cannot be split
    by their offsets: the ingest that would split it stops with an error naming the part, and the run is as it was."""
    monkeypatch.setattr(Store, "part_rows", 100)
    src = write_source(tmp_path, [8, 8, 8])
    store = Store(tmp_path / "store")
    store.ingest(src, run="r", format="canonical")
    path = store.run_dir("r") / "run.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["f001.jsonl"]["rows"] = 7
    path.write_text(json.dumps(manifest))
    before = path.read_bytes()
    write_rows(src / "f000.jsonl", 0, 5, tag="x")
    with pytest.raises(RlauditError, match=r"holds 24 rows, its manifest entries 23 .*runs rm r"):
        store.ingest(src, run="r", format="canonical")
    assert path.read_bytes() == before
