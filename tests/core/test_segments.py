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


def test_fresh_writes_from_memory_the_segments_a_merge_would_write(tmp_path):
    """Files being written now (a cold audit): the level-1 segments holding only them are written from their
    tables as each group completes, under the names and with the rows of the segments a merge writes."""
    files = parts(tmp_path, 2 * FANOUT + 3)
    merged = tmp_path / "merged"
    merged.mkdir()
    copies = []
    for f in files:
        copies.append(merged / f.name)
        copies[-1].write_bytes(f.read_bytes())
    want = covering(copies, "cells")  # merged from the files
    with segments.Fresh({"cells": (files, "lz4")}, set(files[1:])) as fresh:  # the first file was there before
        for f, t in zip(files, _tables(files)):
            fresh.add(f, f, t)
    second = [p for p in want if p.name.startswith("L1-") and json.loads(pq.read_schema(p).metadata[b"rlaudit_members"])
              == [f.name for f in files[FANOUT:2 * FANOUT]]]
    seg_dir = tmp_path / "segments" / "cells"
    written = sorted(p.name for p in seg_dir.iterdir())
    assert written == [second[0].name]  # the second group; the first holds a file not written now
    ref = pq.read_table(second[0])  # DuckDB marks columns read from Parquet without nulls NOT NULL
    assert pq.read_table(seg_dir / written[0]).cast(ref.schema).equals(ref)
    got = covering(files, "cells")
    assert [p.name for p in got] == [p.name for p in want] and rows(got) == rows(files)


def test_fresh_gives_up_a_group_it_cannot_hold_or_whose_file_failed(tmp_path):
    files = parts(tmp_path, 2 * FANOUT)
    tables = _tables(files)
    with segments.Fresh({"cells": (files, "lz4")}, set(files), hold=tables[0].nbytes * (FANOUT - 1)) as fresh:
        for i, (f, t) in enumerate(zip(files, tables)):
            fresh.add(f, t if i == FANOUT else f, t)  # the second group's first file could not be written
    assert not (tmp_path / "segments").exists()
    assert rows(covering(files, "cells")) == rows(files)  # merged from the files instead


def test_merges_of_one_call_share_one_connection(tmp_path, monkeypatch):
    files = parts(tmp_path, 3 * FANOUT)
    opened = []
    real = duckdb.connect
    monkeypatch.setattr(segments.duckdb, "connect", lambda *a, **k: opened.append(1) or real(*a, **k))
    covering(files, "cells")
    assert len(opened) == 1
