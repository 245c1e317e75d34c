"""A run's files parsed in worker processes (`readers.processes`) store what parsing them here stores: the same
rows, bad records, notes and errors, in the same order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from rlaudit.errors import BadInputError, RlauditError
from rlaudit.readers import processes
from rlaudit.readers.base import ReadContext, ReadOptions, SourceFile
from rlaudit.readers.primerl import PrimeRlReader
from rlaudit.store import Store

from .trainer_files import primerl_step, verifiers_episode, verifiers_trace


def _run(root: Path, steps: int = 5, bad_lines: bool = True) -> Path:
    """A prime-rl run of several step files: trainable traces, a non-trainable agent (a note), bad lines."""
    run = root / "prime"
    for step in range(1, steps + 1):
        episodes = []
        for g in range(3):
            for i in range(4):
                solver = verifiers_trace("You are a nerdy assistant.", f"q{step}-{g}", f"answer {i}", f"think {i}",
                                         rewards={"r": (float(i % 2), 1.0)}, advantage=i - 1.5,
                                         trace_id=f"t{step}{g}{i}")
                traces = [solver]
                if i == 0:
                    user = verifiers_trace(None, "play a user", "hi", None, rewards={}, trace_id=f"u{step}{g}")
                    user["agent"] = {**user["agent"], "name": "user", "trainable": False}
                    traces.append(user)
                episodes.append(verifiers_episode(traces, step, group=f"g{g}", episode_id=f"e{step}{g}{i}"))
        path = primerl_step(run, step, episodes)
        if bad_lines and step % 2:
            with open(path, "a") as fh:
                fh.write('{"id": "bad", "traces": [{"nodes": 3}]}\n{"id": "torn", "traces": [{"no\n')
    return run


def _ingest(store_dir: Path, run: Path, workers: bool, monkeypatch, **options):
    monkeypatch.setattr(processes, "MIN_BYTES", 0 if workers else 1 << 62)
    store = Store(store_dir)
    report = store.ingest(run, run="prime", **options)
    rows = store.query("SELECT * FROM rollouts ORDER BY rollout_id", runs=["prime"])
    bad = [(b.file, b.line, b.reason) for b in store.quarantined("prime")]
    return report, rows, bad


def test_workers_store_what_parsing_here_stores(tmp_path, monkeypatch):
    run = _run(tmp_path)
    here, rows_here, bad_here = _ingest(tmp_path / "a", run, False, monkeypatch)
    there, rows_there, bad_there = _ingest(tmp_path / "b", run, True, monkeypatch)
    assert rows_there.num_rows == rows_here.num_rows == 5 * 12
    assert rows_there.schema == rows_here.schema and repr(rows_there.to_pylist()) == repr(rows_here.to_pylist())
    assert bad_there == bad_here and len(bad_here) == 6
    assert there.notes == here.notes and any("non-trainable agent 'user'" in n for n in there.notes)
    assert (there.rows_added, there.bad_records, there.files_read) == (here.rows_added, here.bad_records,
                                                                         here.files_read)


def test_strict_raises_at_the_same_record(tmp_path, monkeypatch):
    run = _run(tmp_path)
    errors = []
    for i, workers in enumerate((False, True)):
        with pytest.raises(BadInputError) as info:
            _ingest(tmp_path / f"s{i}", run, workers, monkeypatch, options=ReadOptions(strict=True))
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "rollouts/step_1/train/effective/traces.jsonl:13" in errors[0]


def _files(run: Path) -> list[SourceFile]:
    return PrimeRlReader().files(run)


def test_a_file_gone_before_its_worker_reads_it_is_unreadable_and_the_others_are_read(tmp_path):
    run = _run(tmp_path, steps=3, bad_lines=False)
    files = _files(run)
    files[1].path.unlink()
    bad, unreadable = [], set()
    ctx = ReadContext(run="prime", on_bad=bad.append)
    got = list(processes.read_in_processes(PrimeRlReader(), files, ctx, 2, unreadable))
    assert [f.relpath for f, t in got if t is None] == [f.relpath for f in files]
    rows = {f.relpath: sum(t.num_rows for g, t in got if g is f and t is not None) for f in files}
    assert rows == {files[0].relpath: 12, files[1].relpath: 0, files[2].relpath: 12}
    assert unreadable == {files[1].relpath}
    assert [(b.file, b.reason.split(" (")[0]) for b in bad] == [(files[1].relpath, "unreadable file")]


class _Unpicklable(PrimeRlReader):
    """A reader defined where a worker cannot import it (a user's script): the worker stops, and the error
    names the file."""

    name = "unpicklable-test-reader"

    def read(self, file: SourceFile, ctx: ReadContext) -> Iterator[pa.Table]:
        yield from super().read(file, ctx)


def test_a_worker_that_stops_is_an_error_naming_the_file(tmp_path, monkeypatch):
    run = _run(tmp_path, steps=2, bad_lines=False)
    files = _files(run)
    monkeypatch.setenv("PYTHONPATH", "")  # (the tests' directory is not on the worker's path)
    with pytest.raises(RlauditError, match=r"step_1/train/effective/traces.jsonl: the worker process parsing it "
                                           r"stopped \(exit code 1\)"):
        list(processes.read_in_processes(_Unpicklable(), files, ReadContext(run="prime"), 2))


def test_workers_are_used_only_where_they_pay(tmp_path, monkeypatch):
    run = _run(tmp_path, steps=3, bad_lines=False)
    files = _files(run)
    monkeypatch.setattr(processes, "MIN_BYTES", 0)
    monkeypatch.setenv("RLAUDIT_THREADS", "4")
    assert processes.use_processes(PrimeRlReader(), files) == 3  # no more workers than files
    assert processes.use_processes(PrimeRlReader(), files[:1]) == 0  # one file: nothing to share
    monkeypatch.setenv("RLAUDIT_THREADS", "1")
    assert processes.use_processes(PrimeRlReader(), files) == 0  # one core's worth
    monkeypatch.setenv("RLAUDIT_THREADS", "2")
    monkeypatch.setattr(processes, "MIN_BYTES", 1 << 40)
    assert processes.use_processes(PrimeRlReader(), files) == 0  # too little to parse
    monkeypatch.setattr(processes, "MIN_BYTES", 0)
    monkeypatch.setattr(PrimeRlReader, "parse_in_processes", False)
    assert processes.use_processes(PrimeRlReader(), files) == 0  # a reader that parses on every core


def test_ctrl_c_at_a_terminal_reaches_the_ingest_not_its_workers():
    """A worker runs in a process group of its own (Ctrl-C signals the terminal's group: the ingest stops its
    workers itself), and stops when told to."""
    import os

    worker = processes._Worker()
    try:
        assert os.getpgid(worker.proc.pid) != os.getpgid(0)
    finally:
        worker.close(graceful=True)
    assert worker.proc.returncode == 0


def test_a_large_file_streams_back_in_batches_through_a_bounded_inbox(tmp_path, monkeypatch):
    """A worker sends each batch and bad record as it reads it, and at most `INBOX_BYTES` of them wait here (an
    inbox of one byte holds one frame at a time): a file of any size can go to a worker, and what the ingest
    stores is what parsing here stores, bad records among the batches in the order they were met."""
    run = tmp_path / "prime"
    for step, n in ((1, 9_000), (2, 40)):  # step 1: three batches of `primerl.BATCH_ROWS` (4,096)
        episodes = [verifiers_episode([verifiers_trace("Be brief.", f"q{step}-{i // 4}", f"a{i}", None,
                                                       rewards={"r": (float(i % 3), 1.0)}, trace_id=f"t{step}-{i}")],
                                      step, group=f"g{i // 4}", episode_id=f"e{step}-{i}") for i in range(n)]
        path = primerl_step(run, step, episodes)
        lines = path.read_text().splitlines(keepends=True)
        for at in (5_000, 20, 2):  # bad lines inside the first, second and third batch
            if at < len(lines):
                lines.insert(at, '{"id": "bad", "traces": [{"nodes": 3}]}\n')
        path.write_text("".join(lines))
    monkeypatch.setattr(processes, "inbox_bytes", lambda n_workers: 1)
    here, rows_here, bad_here = _ingest(tmp_path / "a", run, False, monkeypatch)
    there, rows_there, bad_there = _ingest(tmp_path / "b", run, True, monkeypatch)
    assert rows_there.num_rows == rows_here.num_rows == 9_040
    assert repr(rows_there.to_pylist()) == repr(rows_here.to_pylist())
    assert bad_there == bad_here and [line for _, line, _ in bad_here] == [3, 22, 5003, 3, 22]


def test_the_inbox_holds_at_most_its_limit_and_then_the_worker_waits():
    import os
    import threading
    import time

    r, w = os.pipe()
    reading, writing = os.fdopen(r, "rb"), os.fdopen(w, "wb")
    inbox = processes._Inbox(250)
    drain = threading.Thread(target=inbox.fill, args=(reading,), daemon=True)
    drain.start()
    for i in range(5):
        processes._frame(writing, bytes([i]) * 100)

    def settled(frames: int) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(inbox.frames) < frames:
            time.sleep(0.01)
        time.sleep(0.05)  # (one more frame would have come by now)
        return len(inbox.frames) == frames

    assert settled(2) and inbox.held == 200  # a third would pass the limit: the drain waits
    assert inbox.take() == bytes([0]) * 100
    assert settled(2)
    writing.close()
    assert [inbox.take() for _ in range(4)] == [bytes([i]) * 100 for i in range(1, 5)]
    assert inbox.take() is None and inbox.take() is None  # the end stays the end
    drain.join(timeout=10)
    assert not drain.is_alive()


def test_an_ingest_stopped_early_stops_its_workers(tmp_path, monkeypatch):
    made = []
    real = processes._Worker
    monkeypatch.setattr(processes, "_Worker", lambda *a: made.append(real(*a)) or made[-1])
    files = _files(_run(tmp_path, steps=4, bad_lines=False))
    read = processes.read_in_processes(PrimeRlReader(), files, ReadContext(run="prime"), 2)
    next(read)
    read.close()
    assert len(made) == 2
    assert all(w.proc.returncode is not None for w in made) and not any(w.drain.is_alive() for w in made)


def test_under_a_memory_budget_the_inboxes_shrink_to_what_it_leaves(monkeypatch):
    from rlaudit import memory

    monkeypatch.setattr(memory, "budget", lambda: None)
    assert processes.inbox_bytes(2) == processes.INBOX_BYTES
    room = 2 * (processes.WORKER_BYTES + (100 << 20))  # the share for per-part work: two processes, 100 MB each
    monkeypatch.setattr(memory, "budget", lambda: (int(room / memory.SAMPLE_SHARE) + 1, "RLAUDIT_MEMORY=test"))
    assert processes.inbox_bytes(2) == 100 << 20
    assert processes.inbox_bytes(8) == processes.MIN_INBOX_BYTES  # never below a few batches
    monkeypatch.setattr(memory, "budget", lambda: (1 << 40, "RLAUDIT_MEMORY=1T"))
    assert processes.inbox_bytes(2) == processes.INBOX_BYTES  # never above the default


def test_a_fleet_task_parses_in_its_own_process(tmp_path, monkeypatch):
    """A fleet runs a task per core: its ingests start no parse workers of their own (`in_this_process`)."""
    from rlaudit.fleet.worker import RunTask, run_task

    run = _run(tmp_path, steps=3, bad_lines=False)
    monkeypatch.setattr(processes, "MIN_BYTES", 0)
    monkeypatch.setenv("RLAUDIT_THREADS", "2")
    assert processes.use_processes(PrimeRlReader(), _files(run)) == 2
    used = []
    parse = processes.read_in_processes
    monkeypatch.setattr(processes, "read_in_processes", lambda *a, **k: used.append(a[3]) or parse(*a, **k))
    out = run_task(RunTask(store=str(tmp_path / "fleet"), name="prime", source=str(run), format="prime-rl"))
    assert out.ok, out.error
    assert Store(tmp_path / "fleet").query("SELECT count(*) AS n FROM rollouts", runs=["prime"]).to_pylist() \
        == [{"n": 36}]
    assert used == [] and processes.use_processes(PrimeRlReader(), _files(run)) == 2  # (restored after it)


def test_a_worker_killed_mid_file_is_an_error_naming_that_file(tmp_path, monkeypatch):
    """A worker that dies after streaming part of its file (killed: out of memory, an operator): the batches it
    sent are replayed, then the ingest stops with an error naming the file, not a wait for frames that never
    come."""
    run = tmp_path / "prime"
    for step in (1, 2):
        primerl_step(run, step, [verifiers_episode([verifiers_trace("Be brief.", f"q{i // 4}", f"a{i}", None,
                                                                    rewards={"r": (1.0, 1.0)}, trace_id=f"t{i}")],
                                                   step, group=f"g{i // 4}", episode_id=f"e{step}-{i}")
                                 for i in range(9_000)])
    made = []
    real = processes._Worker
    monkeypatch.setattr(processes, "_Worker", lambda *a: made.append(real(*a)) or made[-1])
    monkeypatch.setattr(processes, "inbox_bytes", lambda n_workers: 1)  # the worker stays a frame ahead
    read = processes.read_in_processes(PrimeRlReader(), _files(run), ReadContext(run="prime"), 2)
    first_file, table = next(read)
    assert table is not None and table.num_rows == 4096
    made[0].proc.kill()
    with pytest.raises(RlauditError, match=r"step_1/train/effective/traces.jsonl: the worker process parsing it "
                                           r"stopped \(exit code -9\)"):
        for file, _ in read:
            assert file is first_file
    assert all(w.proc.returncode is not None for w in made)
