"""Store properties through the readers: idempotent, incremental, atomic (crash mid-ingest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaudit.layout import LAYOUT
from rlaudit.readers import trl as trl_module
from rlaudit.readers.base import ReadOptions

from .trainer_files import primerl_step, trl_step, verifiers_episode, verifiers_trace
from tests.old_layouts import store_as_layout


def _steps(out, steps):
    for s in steps:
        trl_step(out, s, [f"prompt {s}"] * 4, [f"<think>r{s}</think>a{i}" for i in range(4)],
                 rewards={"r": [float(i) for i in range(4)]})


def test_same_files_twice_add_nothing(tmp_path, store):
    out = tmp_path / "run"
    _steps(out, [1, 2, 3])
    first = store.ingest(out)
    before = store.table("run")
    version = store.manifest("run")["version"]
    again = store.ingest(out)
    assert first.rows_added == 12 and again.rows_added == 0 and again.files_skipped == 3 and again.files_read == 0
    assert store.table("run").equals(before)
    # nothing new, no new version: the manifest is not written again (a long run's took ~1 s)
    assert store.manifest("run")["version"] == version
    manifest = store.run_dir("run") / "run.json"
    stamp = manifest.stat().st_mtime_ns
    store.ingest(out)
    assert manifest.stat().st_mtime_ns == stamp
    _steps(out, [4])
    assert store.ingest(out).rows_added == 4 and store.manifest("run")["version"] > version


def test_only_new_step_files_are_read(tmp_path, store):
    out = tmp_path / "run"
    _steps(out, [1, 2])
    store.ingest(out)
    _steps(out, [3])
    report = store.ingest(out)
    assert report.files_read == 1 and report.files_skipped == 2 and report.rows_added == 4
    assert store.summary("run").steps == (1, 3) and store.summary("run").rows == 12


def test_a_grown_file_replaces_its_rows(tmp_path, store):
    run = tmp_path / "prime"

    def episode(i):
        return verifiers_episode([verifiers_trace(None, "q", f"a{i}", None, {"r": (1.0, 1.0)})], 1, group="g")

    primerl_step(run, 1, [episode(0), episode(1)], subset="all")
    store.ingest(run)
    primerl_step(run, 1, [episode(2)], subset="all")  # the live `all` stream grows
    report = store.ingest(run)
    assert report.files_read == 1 and report.rows_added == 3
    assert store.summary("prime").rows == 3


def test_changed_options_reread_everything(tmp_path, store):
    out = tmp_path / "run"
    _steps(out, [1])
    store.ingest(out)
    report = store.ingest(out, options=ReadOptions(group_size=2))
    assert report.files_read == 1 and store.summary("run").rows == 4
    assert store.table("run", ["group_id"]).column(0).to_pylist() == ["1:0", "1:0", "1:1", "1:1"]


def test_crash_mid_ingest_leaves_previous_state_and_next_ingest_recovers(tmp_path, store, monkeypatch):
    out = tmp_path / "run"
    _steps(out, [1, 2])
    store.ingest(out)
    before = store.table("run")
    _steps(out, [3, 4, 5])
    real_raw = trl_module.TrlReader._raw
    calls = {"n": 0}

    def crashing_raw(self, table, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second new file: one new part may already be written
            raise RuntimeError("simulated crash")
        return real_raw(self, table, *args, **kwargs)

    monkeypatch.setattr(trl_module.TrlReader, "_raw", crashing_raw)
    monkeypatch.setattr(trl_module, "SMALL_FILE_ROWS", 0)  # each file read alone: a call of `_raw` each
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.ingest(out)
    # the previous state is intact and readable (the manifest lists only committed parts)
    assert store.table("run").equals(before)
    parts_dir = store.run_dir("run") / "parts"
    monkeypatch.setattr(trl_module.TrlReader, "_raw", real_raw)
    report = store.ingest(out)
    assert store.summary("run").rows == 20 and store.summary("run").steps == (1, 5)
    assert report.rows_added == 12
    listed = {p.name for p in store.parts("run")}
    on_disk = {p.name for p in parts_dir.iterdir()}
    assert on_disk == listed  # orphans of the crashed ingest were removed, no temp files left


COMPLETIONS = ["<think>plan</think>\n\nanswer", "  <think>déjà vu\n</think>\u00a0réponse\u3000", "<think>cut off mid",
               "no tags at all ", "pre-opened</think>done", ""]


def test_parts_keep_spans_and_every_reader_gets_the_split_text(tmp_path, store):
    """Parts hold the completion once plus spans; the view, `Store.table` and the Arrow path (`read_part`, used
    by live tracking) all give the reference split, Unicode and unclosed tags included."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlaudit.layout import LAYOUT, read_part
    from rlaudit.text import split_reasoning

    out = tmp_path / "run"
    trl_step(out, 1, ["p"] * len(COMPLETIONS), COMPLETIONS, rewards={"r": [1.0] * len(COMPLETIONS)})
    store.ingest(out)
    ref_r, ref_a = split_reasoning(pa.array(COMPLETIONS))
    rows = store.table("run", ["completion", "reasoning", "answer"])
    assert rows["completion"].to_pylist() == COMPLETIONS
    assert rows["reasoning"].to_pylist() == ref_r.to_pylist()
    assert rows["answer"].to_pylist() == ref_a.to_pylist()
    [part] = store.parts("run")
    stored = pq.read_table(part)
    assert stored["reasoning"].null_count == stored["answer"].null_count == len(COMPLETIONS)  # no second copy
    assert store.part_layouts("run") == {part.name: LAYOUT}
    arrow = read_part(part, ["reasoning", "answer"])
    assert arrow.column_names == ["reasoning", "answer"]
    assert arrow["reasoning"].to_pylist() == ref_r.to_pylist() and arrow["answer"].to_pylist() == ref_a.to_pylist()


def test_parts_written_before_spans_existed_stay_readable(tmp_path, store):
    """A run stored by an earlier version (text columns, no span columns, no layout in the manifest) reads as
    before, alone and next to parts written now."""
    import json

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rlaudit.schema import ROLLOUT_SCHEMA

    out = tmp_path / "run"
    _steps(out, [1, 2])
    store.part_rows = 1  # a part per file, as layout 1 stored them
    store.ingest(out)
    expected = store.table("run")
    manifest = store.manifest("run")
    for entry in manifest["files"].values():  # rewrite every part the way layout 1 stored it: with the text
        path = store.run_dir("run") / "parts" / entry["part"]
        ids = pq.read_table(path, columns=["rollout_id"]).column(0)
        old = expected.filter(pc.is_in(expected["rollout_id"], ids)).cast(ROLLOUT_SCHEMA)
        pq.write_table(old.drop_columns(["tool_calls", "tool_outputs"]), path)  # layout 1 had no tool columns
        del entry["layout"]
    (store.run_dir("run") / "run.json").write_text(json.dumps(manifest))
    assert set(store.part_layouts("run").values()) == {1}
    assert store.table("run").equals(expected)
    _steps(out, [3])  # an incremental ingest adds a part of the current layout beside them
    store.ingest(out)
    assert sorted(store.part_layouts("run").values()) == [1, 1, LAYOUT]
    rows = store.table("run", ["step", "reasoning", "answer"]).to_pylist()
    assert [(r["step"], r["reasoning"], r["answer"]) for r in rows if r["answer"] == "a0"] == [
        (1, "r1", "a0"), (2, "r2", "a0"), (3, "r3", "a0")]
    # a filter applied in each part's scan (`where`, as the vocabulary's sample) keeps the rows a filter on the
    # view keeps, text columns cut from the completion or stored
    con = store.connect(["run"])
    store.rollouts_view(con, ["run"], "kept", where="hash(rollout_id) % 3 = 0 AND step >= 2")
    got = con.sql("SELECT * FROM kept ORDER BY rollout_id").to_arrow_table()
    want = con.sql("SELECT * FROM rollouts WHERE hash(rollout_id) % 3 = 0 AND step >= 2 ORDER BY rollout_id"
                   ).to_arrow_table()
    con.close()
    assert got.num_rows > 0 and got.equals(want)


def _one_part(tmp_path, store):
    """A run of one step file ingested: its source directory, its rows, its manifest entry and its part file."""
    out = tmp_path / "run"
    _steps(out, [1])
    store.ingest(out)
    [entry] = store.manifest("run")["files"].values()
    return out, store.table("run"), entry, store.run_dir("run") / "parts" / entry["part"]


def test_parts_written_before_tool_columns_existed_read_them_as_null(tmp_path, store):
    """Layout-2 parts (spans, no tool_calls/tool_outputs) read as before, with null tool columns, in the view
    and through `read_part`, next to parts that have them."""

    from rlaudit.layout import read_part

    out, expected, entry, path = _one_part(tmp_path, store)
    store_as_layout(store, "run", {entry["part"]}, 2, drop=("tool_calls", "tool_outputs"))
    assert store.table("run").equals(expected)
    assert store.query("SELECT count(*) FROM rollouts WHERE tool_calls IS NULL AND tool_outputs IS NULL"
                       ).column(0)[0].as_py() == len(expected)
    part = read_part(path, ["answer", "tool_calls", "tool_outputs"], layout=2)
    assert part["answer"].to_pylist() == expected["answer"].to_pylist()
    assert part["tool_calls"].null_count == part["tool_outputs"].null_count == len(expected)
    _steps(out, [2])
    store.ingest(out)
    assert sorted(store.part_layouts("run").values()) == [2, LAYOUT]
    assert store.query("SELECT count(*) FROM rollouts").column(0)[0].as_py() == 2 * len(expected)


def test_parts_written_before_reward_columns_existed_stay_readable(tmp_path, store):
    """Layout-4 parts (the rewards map of every rollout) read as before next to layout-5 parts, in the view,
    through `read_part` and in the per-part statistics; a layout-5 part keeps the shared signals as columns and
    the map only for rollouts whose signals differ."""

    import pyarrow.parquet as pq

    from rlaudit.layout import LAYOUT, read_part, reward_column

    out, expected, entry, path = _one_part(tmp_path, store)
    stored = pq.read_table(path)
    signals = tuple(entry["signals"])
    assert signals and stored["rewards"].null_count == stored.num_rows
    assert [reward_column(s) for s in signals] == [c for c in stored.column_names if c.startswith("_reward:")]
    store_as_layout(store, "run", {entry["part"]}, 4)
    assert store.table("run").equals(expected)
    assert read_part(path, ["rewards"], layout=4)["rewards"].equals(expected["rewards"])
    _steps(out, [2])
    store.ingest(out)
    assert sorted(store.part_layouts("run").values()) == [4, LAYOUT]
    new = [p for p in store.parts("run") if p.name != entry["part"]]
    assert read_part(new[0], ["rewards"])["rewards"].to_pylist() == store.query(
        "SELECT rewards FROM rollouts WHERE step = 2").column(0).to_pylist()
    summary = store.summary("run")
    assert summary.rows == 2 * expected.num_rows and summary.signals == sorted(signals)


def test_parts_keep_their_step_range_and_a_view_of_some_steps_opens_only_theirs(tmp_path, store):
    """The manifest keeps each part's [first, last] step (from ingest, or from the part's Parquet statistics for
    parts stored before); `connect(steps=...)` lists only the parts that may hold those steps, with the same rows
    for them as the whole view."""
    import json

    out = tmp_path / "run"
    _steps(out, [1, 2, 3, 5])
    store.part_rows = 1  # a part per step file (grouped parts: tests/reliability/test_part_groups.py)
    store.ingest(out)
    ranges = sorted(e["steps"] for e in store.manifest("run")["files"].values())
    assert ranges == [[1, 1], [2, 2], [3, 3], [5, 5]]
    whole = store.query("SELECT * FROM rollouts WHERE step IN (2, 5) ORDER BY rollout_id", runs=["run"])
    some = store.query("SELECT * FROM rollouts WHERE step IN (2, 5) ORDER BY rollout_id", runs=["run"], steps=[2, 5])
    assert some.equals(whole) and some.num_rows == 8
    with store.connect(["run"], steps=[4]) as con:
        assert con.sql("SELECT count(*) FROM rollouts").fetchall() == [(0,)]  # no part may hold step 4
    with store.connect(["run"], steps=[3]) as con:
        assert con.sql("SELECT count(*), min(step), max(step) FROM rollouts").fetchall() == [(4, 3, 3)]
    # a manifest from before step ranges: backfilled by the next ingest, from the parts' statistics
    path = store.run_dir("run") / "run.json"
    m = json.loads(path.read_text())
    for e in m["files"].values():
        e.pop("steps")
    path.write_text(json.dumps(m))
    with store.connect(["run"], steps=[4]) as con:  # unknown ranges: every part listed
        assert con.sql("SELECT count(*) FROM rollouts").fetchall() == [(16,)]
    store.ingest(out)
    assert sorted(e["steps"] for e in store.manifest("run")["files"].values()) == ranges


def test_appended_parts_keep_their_step_range(store):
    import pyarrow as pa

    from rlaudit.organisms import run as simulate_run

    table = simulate_run("goblin_persona", steps=4, prompts=2, generations=2, seed=0, run_name="r").canonical()
    store.append("r", table.filter(pa.compute.greater_equal(table["step"], 3)), key="late")
    assert [e["steps"] for e in store.manifest("r")["files"].values()] == [[3, 4]]


def test_files_of_one_size_are_hashed_once_and_their_digests_recorded(tmp_path, store, monkeypatch):
    """Files of equal size are hashed to find copies before they are read; the part writers take that digest
    instead of hashing each file again after its rows (while its size and mtime are unchanged), and the manifest
    records every file's true SHA-256."""
    import hashlib

    from rlaudit import store as store_module

    out = tmp_path / "run"
    for s in (1, 2, 3):  # the same shape each step: files of one size, different bytes
        trl_step(out, s, [f"prompt {s}"] * 4, [f"<think>r{s}</think>a{i}" for i in range(4)],
                 rewards={"r": [float(i) for i in range(4)]})
    files = sorted(out.rglob("*.parquet"))
    assert len({f.stat().st_size for f in files}) == 1
    hashed = []
    real = store_module._sha256
    monkeypatch.setattr(store_module, "_sha256", lambda p: hashed.append(p.name) or real(p))
    store.ingest(out)
    assert sorted(hashed) == sorted(f.name for f in files)  # once each
    recorded = {Path(k).name: e["sha256"] for k, e in store.manifest("run")["files"].items()}
    assert recorded == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_files_of_other_signals_in_one_part_keep_their_own_rewards(tmp_path, store):
    """Files grouped into one part whose rollouts log other signals (a reward function added mid-run): the part
    keeps the first file's signals as columns and the others' maps (`layout.conform`), and every reader gives
    each rollout its own rewards; the per-part statistics see both signal sets."""
    import pyarrow.parquet as pq

    from rlaudit.layout import read_part

    out = tmp_path / "run"
    trl_step(out, 1, ["p"] * 4, ["a"] * 4, rewards={"r": [1.0, 2.0, 3.0, 4.0]})
    trl_step(out, 2, ["p"] * 4, ["a"] * 4, rewards={"r": [0.0] * 4, "q": [5.0, 6.0, 7.0, float("nan")]})
    store.ingest(out)
    [part] = store.parts("run")
    assert store.part_formats("run")[part.name][1] == ("r",)
    assert pq.read_table(part)["rewards"].null_count == 4
    want = [[("r", v)] for v in (1.0, 2.0, 3.0, 4.0)] + [[("r", 0.0), ("q", v)] for v in (5.0, 6.0, 7.0)]
    got = store.query("SELECT step, rewards FROM rollouts ORDER BY step, rollout_id").column("rewards").to_pylist()
    assert sorted(map(repr, got[:7])) == sorted(map(repr, want)) and got[7][1][0] == "q"
    arrow = read_part(part, ["step", "rewards"])["rewards"].to_pylist()
    assert sorted(map(repr, arrow)) == sorted(map(repr, got))
    assert store.summary("run").signals == ["q", "r"]


def _long_rows(store, where="TRUE"):
    """`rewards_long`'s rows, and the same from the rollouts view's rewards map unnested, each sorted."""
    con = store.connect(["run"])
    got = con.sql(f"SELECT * FROM rewards_long WHERE {where} ORDER BY ALL").fetchall()
    want = con.sql("SELECT * FROM (SELECT run, rollout_id, step, group_id, condition, task, "
                   "unnest(map_keys(rewards)) AS signal, unnest(map_values(rewards)) AS value FROM rollouts) "
                   f"WHERE {where} ORDER BY ALL").fetchall()
    con.close()
    return repr(got), repr(want)  # repr: NaN equal to NaN


def test_rewards_long_reads_the_reward_columns_as_the_map_gives_them(tmp_path, store):
    """`rewards_long` (`Store.rewards_view`) reads a layout-5 part's shared signals from its columns and the
    other rollouts' maps, and a layout-4 part's map: the rows of the rollouts view's map, unnested; within a
    filter on stored columns and over only the parts of some steps as well."""

    out = tmp_path / "run"
    trl_step(out, 1, ["p"] * 4, ["a"] * 4, rewards={"r": [1.0, 2.0, float("nan"), 4.0]})
    trl_step(out, 2, ["p"] * 4, ["a"] * 4, rewards={"r": [0.0] * 4, "q": [5.0, 6.0, 7.0, 8.0]})
    store.ingest(out)
    got, want = _long_rows(store)
    assert got == want and got.count("'q'") == 4
    store_as_layout(store, "run", {p.name for p in store.parts("run")}, 4)  # the part as layout 4 stored it
    _steps(out, [3])
    store.ingest(out)
    assert sorted(store.part_layouts("run").values()) == [4, LAYOUT]
    got, want = _long_rows(store)
    assert got == want and got.count("'r'") == 12
    assert _long_rows(store, "step >= 2 AND signal = 'r'")[0] == _long_rows(store, "step >= 2 AND signal = 'r'")[1]
    con = store.connect(["run"])
    store.rewards_view(con, ["run"], "of_step3", steps=[3], where="step = 3")
    assert con.sql("SELECT count(*), min(step) FROM of_step3").fetchall() == [(4, 3)]
    con.close()


def test_readahead_asks_for_the_files_in_order_within_its_bytes(tmp_path):
    """`store.readahead` (before an ingest's threads start) asks for the files' bytes in order up to its bound,
    and skips a file it cannot open (the reader reports that one)."""
    import os

    from rlaudit.store import readahead

    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise on this platform: nothing is asked")
    files = []
    for i, n in enumerate([100, 200, 300]):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(b"x" * n)
    assert readahead(files) == 600
    assert readahead(files, most=250) == 250  # the first file, 150 bytes of the second, nothing of the third
    assert readahead([tmp_path / "missing", *files], most=1000) == 600
    assert readahead([]) == 0


def test_readahead_stays_within_a_memory_budget(monkeypatch):
    """Under a memory budget `readahead` asks for at most half of it (files evicted before they are read would be
    read twice), and never more than READAHEAD_BYTES."""
    from rlaudit import store as store_module

    monkeypatch.delenv("RLAUDIT_MEMORY", raising=False)
    free = store_module.readahead_bytes()
    assert 0 < free <= store_module.READAHEAD_BYTES
    monkeypatch.setenv("RLAUDIT_MEMORY", "64GB")
    assert store_module.readahead_bytes() <= min(free, 32 << 30)
    monkeypatch.setenv("RLAUDIT_MEMORY", "1GB")
    assert store_module.readahead_bytes() < 512 << 20
