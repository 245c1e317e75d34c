"""`rlaudit.derived.segments`: per-part files read through merged segments hold exactly the rows of the files asked for,
with few files to open; a failed merge costs nothing but speed."""

from __future__ import annotations

import json
import os
import time

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaudit.derived import segments
from rlaudit.derived.segments import FANOUT, covering


def parts(d, n, start=0):
    out = []
    for i in range(start, start + n):
        p = d / f"p{i:05d}.cells.parquet"
        if not p.exists():
            pq.write_table(pa.table({"part": [i] * 3, "v": [i * 10 + j for j in range(3)]}), p)
        out.append(p)
    return out


def rows(files):
    if not files:
        return []
    con = duckdb.connect()
    names = ", ".join(f"'{f}'" for f in files)
    return sorted(con.execute(f"SELECT part, v FROM read_parquet([{names}])").fetchall())


def test_few_files_are_read_loose(tmp_path):
    files = parts(tmp_path, FANOUT - 1)
    assert covering(files, "cells") == files
    assert not (tmp_path / "segments").exists()


def test_loose_files_merge_into_segments_holding_exactly_their_rows(tmp_path):
    files = parts(tmp_path, 2 * FANOUT + 5)
    got = covering(files, "cells")
    assert len(got) == 2 + 5
    assert sum(f.parent.name == "cells" for f in got) == 2  # two level-1 segments
    assert rows(got) == rows(files)
    assert covering(files, "cells") == got  # nothing new to merge: the same files


def test_segments_written_from_held_tables_equal_those_read_back(tmp_path):
    """`covering(held=...)`: a level-1 segment of files whose rows the caller holds is written from them, with
    the same rows and members as one merged from the files; files not held are read back as before."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files_a = parts(tmp_path / "a", 2 * FANOUT + 3)
    files_b = parts(tmp_path / "b", 2 * FANOUT + 3)
    held = {f.name: pq.read_table(f) for f in files_b[:FANOUT + 4]}  # the first segment's files, and a few more
    got_a, got_b = covering(files_a, "cells"), covering(files_b, "cells", held=held)
    assert [f.name for f in got_a] == [f.name for f in got_b]  # the same segments (named by their members)
    assert rows(got_b) == rows(files_b) == rows(got_a)
    for a, b in zip(got_a[:2], got_b[:2]):
        assert pq.read_schema(a).metadata[b"rlaudit_members"] == pq.read_schema(b).metadata[b"rlaudit_members"]
    # a run grown to the next level merges segments written either way
    more = parts(tmp_path / "b", FANOUT * FANOUT - len(files_b), start=len(files_b))
    assert rows(covering(files_b + more, "cells")) == rows(files_b + more)


def test_held_tables_stop_at_their_budget():
    """`Held` keeps tables only while their bytes fit its budget (the rest are read back from their files)."""
    table = pa.table({"v": list(range(1000))})
    held = segments.Held(budget=int(2.5 * table.nbytes))
    for i in range(4):
        held.keep(f"p{i}.parquet", table)
    assert sorted(held) == ["p0.parquet", "p1.parquet"] and held.size == 2 * table.nbytes


def test_segments_merge_into_the_next_level(tmp_path):
    files = parts(tmp_path, FANOUT * FANOUT + 3)
    got = covering(files, "cells")
    assert len(got) == 1 + 3 and got[0].name.startswith("L2-")
    assert rows(got) == rows(files)
    # the run grows: new files stay loose until there are FANOUT of them
    more = parts(tmp_path, FANOUT - 3, start=len(files))
    got2 = covering(files + more, "cells")
    assert rows(got2) == rows(files + more)
    assert len(got2) == 1 + 1 and got2[1].name.startswith("L1-")


def test_a_subset_reads_only_segments_wholly_inside_it(tmp_path):
    files = parts(tmp_path, 3 * FANOUT)
    covering(files, "cells")
    subset = files[:FANOUT] + files[FANOUT + 1:2 * FANOUT]  # the second segment lost a member
    got = covering(subset, "cells", merge=False)
    assert rows(got) == rows(subset)
    assert sum(f.name.startswith("L1-") for f in got) == 1


def test_a_failed_merge_leaves_the_loose_files(tmp_path, monkeypatch):
    files = parts(tmp_path, 2 * FANOUT)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segments, "_write", full)
    assert covering(files, "cells") == files


def test_superseded_segments_are_removed_after_the_grace_period(tmp_path, monkeypatch):
    files = parts(tmp_path, FANOUT * FANOUT)
    covering(files[:FANOUT * (FANOUT - 1)], "cells")  # 15 level-1 segments
    seg_dir = tmp_path / "segments" / "cells"
    assert len(list(seg_dir.glob("L1-*"))) == FANOUT - 1
    got = covering(files, "cells")  # the 16th: one level-2 segment supersedes them
    assert [f.name[:3] for f in got] == ["L2-"]
    assert len(list(seg_dir.glob("L1-*"))) == FANOUT  # kept for readers that may still use them
    monkeypatch.setattr(segments, "GRACE", 0.0)
    time.sleep(0.01)
    covering(files, "cells")
    assert not list(seg_dir.glob("L1-*")) and rows(covering(files, "cells")) == rows(files)


def test_two_merges_of_the_same_files_write_one_segment(tmp_path):
    files = parts(tmp_path, FANOUT)
    a = covering(files, "cells")
    os.remove(a[0])
    b = covering(files, "cells")
    assert a == b and len(list((tmp_path / "segments" / "cells").iterdir())) == 1


@pytest.mark.parametrize("n", [0, 1, FANOUT, 3 * FANOUT + 7])
def test_rows_are_exact_for_any_count(tmp_path, n):
    files = parts(tmp_path, n)
    assert rows(covering(files, "cells")) == rows(files)


def test_a_torn_segment_is_written_again(tmp_path):
    files = parts(tmp_path, FANOUT + 2)
    seg = covering(files, "cells")[0]
    seg.write_bytes(seg.read_bytes()[:50])  # torn (not by a writer: those rename whole files into place)
    got = covering(files, "cells")
    assert got[0] == seg and rows(got) == rows(files)
    assert pq.read_schema(seg).metadata[b"rlaudit_members"]


def _tables(files):
    return [pq.read_table(f) for f in files]


def _fresh(files, fresh, written, **kw):
    """Hand `files` (every file of a run, `fresh` the ones computed now) to a `Fresh` as a cold audit does: a
    planned file's table to `add`, the others written by the caller; `written` collects every file write."""
    tables = {f: pq.read_table(f) for f in files}
    for f in fresh:
        f.unlink()

    def write(f, t):
        written.append(f)
        pq.write_table(t, f)
        return f

    with segments.Fresh({"cells": (files, "lz4")}, set(fresh), **kw) as plan:
        for f in files:
            if f not in fresh:
                continue
            if plan.planned(f):
                plan.add(f, tables[f], lambda f=f: write(f, tables[f]))
            else:
                write(f, tables[f])
    return plan, tables


def test_fresh_writes_from_memory_the_segments_a_merge_would_write(tmp_path):
    """Files being computed now (a cold audit): the level-1 segments holding only them are written from their
    tables as each group completes, under the names and with the rows of the segments a merge writes, and those
    files are not written at all; the files outside such a group are."""
    files = parts(tmp_path, 2 * FANOUT + 3)
    want_rows = rows(files)
    merged = tmp_path / "merged"
    merged.mkdir()
    copies = []
    for f in files:
        copies.append(merged / f.name)
        copies[-1].write_bytes(f.read_bytes())
    want = covering(copies, "cells")  # merged from the files
    written: list = []
    _fresh(files, files[1:], written)  # the first file was there before
    second = [p for p in want if p.name.startswith("L1-") and json.loads(pq.read_schema(p).metadata[b"rlaudit_members"])
              == [f.name for f in files[FANOUT:2 * FANOUT]]]
    seg_dir = tmp_path / "segments" / "cells"
    written_segs = sorted(p.name for p in seg_dir.iterdir())
    assert written_segs == [second[0].name]  # the second group; the first holds a file not written now
    assert sorted(written) == sorted(files[1:FANOUT] + files[2 * FANOUT:])  # the second group's files: not
    ref = pq.read_table(second[0])  # DuckDB marks columns read from Parquet without nulls NOT NULL
    assert pq.read_table(seg_dir / written_segs[0]).cast(ref.schema).equals(ref)
    got = covering(files, "cells")
    assert [p.name for p in got] == [p.name for p in want] and rows(got) == want_rows
    assert segments.held(seg_dir) == {f.name for f in files[:2 * FANOUT]}  # both record their rows


def test_fresh_gives_up_a_group_it_cannot_hold_or_write(tmp_path, monkeypatch):
    """A group whose tables exceed the budget, or whose segment cannot be written, gets its files after all."""
    files = parts(tmp_path, 2 * FANOUT)
    want = rows(files)
    one = pq.read_table(files[0]).nbytes
    written: list = []
    _fresh(files, files, written, hold=one * (FANOUT - 1))
    assert sorted(written) == sorted(files) and not (tmp_path / "segments").exists()
    assert rows(covering(files, "cells")) == want  # merged from the files instead

    other = tmp_path / "b"
    other.mkdir()
    files = parts(other, 2 * FANOUT)
    real = segments._write

    def fail_second(seg_dir, level, sources, *a, **k):
        if sources[0][0] == files[FANOUT]:
            raise OSError(28, "No space left on device")
        return real(seg_dir, level, sources, *a, **k)

    monkeypatch.setattr(segments, "_write", fail_second)
    written = []
    _fresh(files, files, written)
    assert sorted(written) == sorted(files[FANOUT:])
    monkeypatch.setattr(segments, "_write", real)
    assert rows(covering(files, "cells")) == want


def _sql_rows(sources):
    con = duckdb.connect()
    sql = " UNION ALL ".join(segments.select_sql(sources))
    return sorted(con.execute(f"SELECT part, v FROM ({sql})").fetchall()) if sql else []


def test_files_held_only_by_segments_are_read_by_their_ranges(tmp_path, monkeypatch):
    """Files a segment holds without the files being there: the whole run, any subset of it (a reader of a few
    parts: no segment that holds others is read whole) and each file alone give exactly their rows, through
    merges into the next level and after the segments merged are removed."""
    files = parts(tmp_path, FANOUT * FANOUT + 5)
    want = {f.name: rows([f]) for f in files}
    written: list = []
    _fresh(files, files, written)  # every complete group into a segment, the last 5 files written
    assert sorted(written) == sorted(files[-5:])
    assert not any(f.is_file() for f in files[:-5])

    def check(subset):
        assert _sql_rows(covering(subset, "cells", merge=False)) == sorted(r for f in subset for r in want[f.name])

    check(files)
    check(files[3:7] + files[FANOUT + 2:FANOUT + 3] + files[-2:])  # parts of segments, and loose files
    for f in files[::37]:
        assert sorted(segments.read_member(f, "cells").to_pylist(), key=lambda r: r["v"]) == [
            {"part": p, "v": v} for p, v in want[f.name]]
    got = covering(files, "cells")  # the sixteen level-1 segments merge into one of level 2
    assert [getattr(p, "name", "")[:3] for p in got][0] == "L2-"
    assert _sql_rows(got) == sorted(r for f in files for r in want[f.name])
    monkeypatch.setattr(segments, "GRACE", 0.0)
    time.sleep(0.01)
    covering(files, "cells")  # the level-1 segments removed: the level-2 one holds the ranges
    assert not list((tmp_path / "segments" / "cells").glob("L1-*"))
    check(files[3:7] + files[-3:])
    assert segments.read_member(files[40], "cells").num_rows == 3


def test_a_segment_missing_a_member_is_read_only_by_the_ranges_of_the_others(tmp_path, monkeypatch):
    """A member of a segment left the run (a replaced part): the segment is never read whole again (that
    member's rows would count); the members still wanted whose files are not there are read by their ranges,
    and the segment is kept for them however old it is."""
    files = parts(tmp_path, FANOUT + 2)
    want = {f.name: rows([f]) for f in files}
    _fresh(files, files, [])
    wanted = files[:3] + files[4:]  # the fourth part left
    monkeypatch.setattr(segments, "GRACE", 0.0)
    time.sleep(0.01)
    got = covering(wanted, "cells")
    assert _sql_rows(got) == sorted(r for f in wanted for r in want[f.name])
    assert all(isinstance(p, segments.Rows) or p.parent == tmp_path for p in got)
    assert len(list((tmp_path / "segments" / "cells").glob("L1-*"))) == 1


def test_merges_of_one_call_share_one_connection(tmp_path, monkeypatch):
    files = parts(tmp_path, 3 * FANOUT)
    opened = []
    real = segments.duck.connect
    monkeypatch.setattr(segments.duck, "connect", lambda *a, **k: opened.append(1) or real(*a, **k))
    covering(files, "cells")
    assert len(opened) == 1


@pytest.mark.parametrize("codec", ["lz4", "uncompressed", {"compression": "none", "use_dictionary": ["part"],
                                                           "write_statistics": False,
                                                           "column_encoding": {"v": "DELTA_BINARY_PACKED"}}])
def test_segments_from_memory_keep_each_members_range_across_row_groups(tmp_path, monkeypatch, codec):
    """A segment written from tables in memory, by DuckDB's COPY (a codec's name) or pyarrow's writer (its
    options: then in row groups of ROW_GROUP rows that cut across members): each member is still read exactly
    by its range, through DuckDB (`select_sql`) and pyarrow (`read_member`), and a merge into the next level
    (DuckDB's COPY from the files, the codec's name) holds the same rows."""
    monkeypatch.setattr(segments, "ROW_GROUP", 2)  # members of 3 rows: every member spans two row groups
    files = parts(tmp_path, FANOUT * FANOUT + 1)
    want = {f.name: rows([f]) for f in files}
    tables = {f: pq.read_table(f) for f in files}
    for f in files:
        f.unlink()
    with segments.Fresh({"cells": (files, codec)}, set(files)) as plan:
        for f in files:
            if plan.planned(f):
                plan.add(f, tables[f], lambda: pytest.fail("no group is given up"))
            else:
                pq.write_table(tables[f], f)
    seg = sorted((tmp_path / "segments" / "cells").glob("L1-*"))[0]
    if isinstance(codec, dict):
        assert pq.ParquetFile(seg).metadata.num_row_groups == FANOUT * 3 // 2
        assert pq.ParquetFile(seg).metadata.created_by.startswith("parquet-cpp-arrow")
    else:
        assert pq.ParquetFile(seg).metadata.created_by.startswith("DuckDB")
    for subset in (files[1:2], files[5:9] + files[FANOUT + 3:FANOUT + 4], files[::7]):
        assert _sql_rows(covering(subset, "cells", merge=False)) == sorted(r for f in subset for r in want[f.name])
    for f in files[:FANOUT + 2]:
        assert sorted(segments.read_member(f, "cells").to_pylist(), key=lambda r: r["v"]) == [
            {"part": p, "v": v} for p, v in want[f.name]]
    got = covering(files, "cells", compression=codec)
    assert [getattr(p, "name", "")[:3] for p in got][0] == "L2-"
    assert _sql_rows(got) == sorted(r for f in files for r in want[f.name])


def test_codecs_name_the_same_compression_for_both_writers():
    assert segments.duckdb_codec({"compression": "none", "use_dictionary": True}) == "uncompressed"
    assert segments.duckdb_codec({"compression": "lz4"}) == segments.duckdb_codec("lz4") == "lz4"


def _members(subset, **kw):
    got = segments.read_members(subset, "cells", **kw)
    return {p.name: sorted((r["part"], r["v"]) for r in t.to_pylist()) for p, t in got}


@pytest.mark.parametrize("row_group", [2, segments.ROW_GROUP])
def test_read_members_gives_each_file_its_own_rows_once(tmp_path, monkeypatch, row_group):
    """`read_members`: every file asked for exactly once with exactly its rows, whether loose, in a segment read
    whole (row groups cutting across members), held only by a segment's range (its file gone, another member
    left), or in a segment a merge of this call has just written."""
    monkeypatch.setattr(segments, "ROW_GROUP", row_group)
    files = parts(tmp_path, 2 * FANOUT + 5)
    want = {f.name: rows([f]) for f in files}
    _fresh(files, files[:FANOUT], [])  # the first group: a segment only (the files are not written)
    assert not any(f.is_file() for f in files[:FANOUT])
    # the second group merges in this call; the last 5 stay loose
    got = _members(files)
    assert got == want and len(list(segments.read_members(files, "cells"))) == len(files)
    assert len(list((tmp_path / "segments" / "cells").glob("L1-*"))) == 2
    # a subset: only segments wholly inside it are read whole; the others by their members' ranges
    subset = files[2:5] + files[FANOUT + 1:FANOUT + 3] + files[-2:]
    assert _members(subset, merge=False) == {f.name: want[f.name] for f in subset}
    # a member left the run: the others of its segment are read by their ranges (those without files) or
    # loose (one written again): each once
    pq.write_table(pa.table({"part": [7] * 3, "v": [70, 71, 72]}), files[7])
    wanted = files[:3] + files[4:]
    read = [p.name for p, _ in segments.read_members(wanted, "cells")]
    assert sorted(read) == sorted(f.name for f in wanted)
    assert _members(wanted) == {f.name: want[f.name] for f in wanted}
    assert list(segments.read_members([], "cells")) == []


def test_a_merge_that_does_not_grow_writes_no_segment_but_removes_superseded_ones(tmp_path, monkeypatch):
    """`grow=False` (a reader of the whole run that reads it once): the rows are those of the files, loose files
    stay loose, and segments no longer used (their members left the run) are still removed after the grace
    period."""
    files = parts(tmp_path, 3 * FANOUT)
    covering(files[:FANOUT], "cells")  # one level-1 segment of the first 16
    seg_dir = tmp_path / "segments" / "cells"
    (old,) = seg_dir.glob("L1-*")
    got = list(segments.read_members(files, "cells", grow=False))
    assert sorted(p.name for p, _ in got) == sorted(p.name for p in files)
    assert all(t.column("part").to_pylist() == [int(p.name[1:6])] * 3 for p, t in got)
    assert list(seg_dir.glob("L1-*")) == [old]  # the other 32 files were not merged
    monkeypatch.setattr(segments, "GRACE", 0.0)
    for p in files[:FANOUT]:
        p.unlink()  # their parts left the run (their rows stay readable from the segment until then)
    time.sleep(0.01)
    rest = files[FANOUT:]
    assert rows(covering(rest, "cells", grow=False)) == rows(rest)
    assert not list(seg_dir.glob("L1-*"))
