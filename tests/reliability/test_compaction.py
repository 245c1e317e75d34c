"""Compaction (`Store.compact`): runs of small parts (live appends, live ingests, an ingest per step) are merged
into parts of about `part_rows` rows without changing a row, and every file's entry points at its own rows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.errors import RlauditError
from rlaudit.store import Store

from .step_files import write_rows, write_source


def _per_file(store: Store, run: str = "r") -> dict[str, list[str]]:
    """Each file's rows as its manifest entry places them (part, offset, rows): the answers, in order."""
    out = {}
    for key, entry in store.manifest(run)["files"].items():
        if entry.get("part"):
            table = pq.read_table(store.run_dir(run) / "parts" / entry["part"], columns=["completion"])
            rows = table.slice(int(entry.get("offset") or 0), int(entry["rows"]))
            out[key] = rows.column("completion").to_pylist()
    return out


def _live_store(tmp_path: Path, sizes: list[int]) -> Store:
    """A run ingested as live audits ingest: a part per file."""
    store = Store(tmp_path / "store")
    store.ingest(write_source(tmp_path, sizes), run="r", format="canonical", part_rows=1)
    assert len(store.stored_parts("r")) == sum(1 for s in sizes if s)
    return store


def test_compact_merges_consecutive_small_parts_and_keeps_every_files_rows(tmp_path):
    store = _live_store(tmp_path, [8] * 10)
    before = _per_file(store)
    assert store.compact("r", part_rows=32) == 7  # 4 x 8 closes at 32, twice; the last two files with `whole`
    parts = store.stored_parts("r")
    assert [len(p.files) for p in parts.values()] == [4, 4, 2]
    assert [p.steps for p in parts.values()] == [[0, 7], [8, 15], [16, 19]]
    assert _per_file(store) == before
    files = store.manifest("r")["files"]
    assert [files[f"f{i:03d}.jsonl"]["offset"] for i in range(10)] == [0, 8, 16, 24] * 2 + [0, 8]
    for p in parts.values():  # one row group each
        assert pq.ParquetFile(store.run_dir("r") / "parts" / p.name).metadata.num_row_groups == 1
    assert store.compact("r", part_rows=32) == 0  # nothing small is left next to anything small


def test_a_batch_ingest_merges_only_complete_groups(tmp_path):
    """An ingest merges the groups that are full (or ended by a part that cannot join them); the run's last group
    waits for more parts, so a run ingested step by step is not rewritten at every step."""
    store = _live_store(tmp_path, [8] * 7)
    before = _per_file(store)
    report = store.ingest(tmp_path / "src", run="r", format="canonical", part_rows=32)
    assert report.files_read == 0 and report.files_skipped == 7 and report.parts_compacted == 3
    assert [len(p.files) for p in store.stored_parts("r").values()] == [4, 1, 1, 1]
    assert store.ingest(tmp_path / "src", run="r", format="canonical", part_rows=32).parts_compacted == 0
    write_rows(tmp_path / "src" / "f007.jsonl", 56, 8)  # one more step fills the last group
    report = store.ingest(tmp_path / "src", run="r", format="canonical", part_rows=32)
    assert report.files_read == 1 and report.parts_compacted == 3
    assert [len(p.files) for p in store.stored_parts("r").values()] == [4, 4]
    assert {k: v for k, v in _per_file(store).items() if k in before} == before


def test_parts_that_are_not_small_are_never_rewritten(tmp_path):
    """Parts above a quarter of `part_rows` stay as they are (a batch ingest's grouped parts, big step files):
    they break a group of small parts, which is merged on either side."""
    store = _live_store(tmp_path, [3, 3, 12, 3, 3, 3])
    big = next(p.name for p in store.stored_parts("r").values() if p.rows == 12)
    assert store.compact("r", part_rows=20) == 3  # [3, 3] | 12 | [3, 3, 3]
    parts = list(store.stored_parts("r").values())
    assert [p.rows for p in parts] == [6, 12, 9] and parts[1].name == big


def test_a_changed_file_in_a_compacted_part_takes_only_its_own_rows(tmp_path, monkeypatch):
    store = _live_store(tmp_path, [8] * 4)
    store.compact("r", part_rows=100)
    assert len(store.stored_parts("r")) == 1
    (tmp_path / "src" / "f000.jsonl").unlink()  # its source gone: its rows stay
    write_rows(tmp_path / "src" / "f002.jsonl", 500, 5)
    monkeypatch.setattr(Store, "retire_grace", 0.0)
    store.ingest(tmp_path / "src", run="r", format="canonical", part_rows=100)
    answers = sorted(store.table("r", ["answer"])["answer"].to_pylist())
    assert answers == sorted([f"a{i}" for i in range(16)] + [f"a{i}" for i in range(500, 505)]
                             + [f"a{i}" for i in range(24, 32)])


def test_old_parts_are_retired_not_deleted_under_a_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "retire_grace", 0.0)
    store = _live_store(tmp_path, [8] * 4)
    old = set(store.stored_parts("r"))
    with store.reading(["r"]) as pinned:  # a reader of the version before
        store.compact("r", part_rows=100)
        assert all((store.run_dir("r") / "parts" / name).is_file() for name in old)
        assert len(Store(store.root).stored_parts("r")) == 1 and len(store.stored_parts("r", pinned["r"])) == 4
    store.compact("r", part_rows=100)  # a commit after the lease: nothing to merge, nothing committed
    store.ingest(tmp_path / "src", run="r", format="canonical", part_rows=100)
    assert {p.name for p in (store.run_dir("r") / "parts").iterdir()} == set(store.stored_parts("r"))


def test_a_part_that_disagrees_with_its_manifest_stops_compaction(tmp_path):
    store = _live_store(tmp_path, [8] * 3)
    manifest = json.loads((store.run_dir("r") / "run.json").read_text())
    manifest["files"]["f001.jsonl"]["rows"] = 7  # says 7, the part holds 8
    (store.run_dir("r") / "run.json").write_text(json.dumps(manifest))
    before = (store.run_dir("r") / "run.json").read_bytes()
    with pytest.raises(RlauditError, match=r"holds 8 rows, its manifest entries 7.*inconsistent"):
        store.compact("r", part_rows=100)
    assert (store.run_dir("r") / "run.json").read_bytes() == before


def test_parts_of_another_schema_are_not_merged(tmp_path):
    """A part written with another schema (an older version of the store, another layout) is left apart."""
    store = _live_store(tmp_path, [4] * 3)
    first = next(iter(store.stored_parts("r").values()))
    path = store.run_dir("r") / "parts" / first.name
    pq.write_table(pq.read_table(path).drop_columns(["metadata"]), path)  # as a store without the column
    assert store.compact("r", part_rows=100) == 1
    assert [p.rows for p in store.stored_parts("r").values()] == [4, 8]


def test_compacting_a_run_that_does_not_exist_names_it(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(RlauditError, match="no run 'nope'"):
        store.compact("nope")
    assert not (tmp_path / "store" / "runs" / "nope").exists()


def test_runs_compact_on_the_command_line(tmp_path, capsys):
    from rlaudit.cli import main

    store = _live_store(tmp_path, [8] * 5)
    main(["runs", "compact", "r", "--store", str(store.root)])
    assert "r: 5 part(s) -> 1" in capsys.readouterr().err
    main(["runs", "compact", "r", "--store", str(store.root)])
    assert "r: 1 part(s), none small enough to merge" in capsys.readouterr().err
    for argv, error in ((["runs", "compact", "nope"], "no run 'nope'"),
                        (["runs", "shrink", "r"], "rlaudit runs compact NAME")):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--store", str(store.root)])
        assert exit_.value.code == 2 and error in " ".join(capsys.readouterr().err.split())


def test_live_appends_are_compacted(tmp_path):
    """Rows appended a step at a time (`Store.append`: the TRL callback, live hooks) are parts of one step."""
    logged = Store(tmp_path / "logged")
    logged.ingest(write_source(tmp_path, [12]), run="h", format="canonical")
    store = Store(tmp_path / "store")
    for step in range(3):
        rows = logged.query(f"SELECT * FROM rollouts WHERE step = {step}", runs=["h"])
        store.append("r", rows, key=f"step-{step:04d}")
    assert len(store.stored_parts("r")) == 3
    before = _per_file(store)
    assert store.compact("r", part_rows=64) == 2
    assert _per_file(store) == before and store.summary("r").rows == 12


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=9), part_rows=st.integers(2, 40),
       whole=st.booleans())
def test_compaction_keeps_every_row_where_it_belongs(tmp_path_factory, sizes, part_rows, whole):
    """Whatever the parts' sizes, compaction keeps each file's rows where its entry says, never merges a part
    that is not small, and leaves nothing to merge for a second pass over the whole run."""
    tmp = tmp_path_factory.mktemp("compact")
    store = Store(tmp / "store")
    store.ingest(write_source(tmp, sizes), run="r", format="canonical", part_rows=1)
    before, parts_before = _per_file(store), store.stored_parts("r")
    fewer = store.compact("r", part_rows=part_rows, whole=whole)
    parts = store.stored_parts("r")
    assert _per_file(store) == before and len(parts) == len(parts_before) - fewer
    big = {name for name, p in parts_before.items() if p.rows > max(1, part_rows // 4)}
    assert big <= set(parts)  # untouched, under their names
    for p in parts.values():
        table = pq.read_table(store.run_dir("r") / "parts" / p.name, columns=["step"])
        assert table.num_rows == p.rows
    assert store.compact("r", part_rows=part_rows, whole=True) == 0 or not whole


def test_an_audit_finds_the_same_after_compaction(tmp_path, monkeypatch):
    """A run ingested a part per step file (as a live audit stores it) and the same run compacted give the same
    findings, evidence and numbers: every detector reads rows, not parts."""
    from rlaudit.audit import audit, audit_store
    from rlaudit.organisms import simulate

    simulate("goblin_persona", tmp_path / "run", format="trl", seed=2, steps=30)
    monkeypatch.setenv("RLAUDIT_PART_ROWS", "1")
    per_step = audit([tmp_path / "run"], store=tmp_path / "store")
    monkeypatch.delenv("RLAUDIT_PART_ROWS")
    store = Store(tmp_path / "store")
    parts = len(store.stored_parts("run"))
    assert parts >= 30 and store.compact("run") == parts - 1
    compacted = audit_store(store, ["run"])
    assert len(store.stored_parts("run")) == 1
    assert {f.kind for f in per_step.findings} >= {"emerging_behavior", "generalization"}
    # the same, but for the last bits of sums taken in another order (a reward correlation: 0.5693616540091865 /
    # 0.569361654009187)
    assert _rounded([f.to_json() for f in compacted.findings]) == _rounded([f.to_json() for f in per_step.findings])


def _rounded(obj: object) -> object:
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj
