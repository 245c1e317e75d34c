"""Trainers' own logs parsed in worker processes (`rlaudit.readers.processes`, used for large runs) store the rows
the in-process ingest stores, for every reader that parses in workers."""

from __future__ import annotations

import pytest

from rlaudit.readers import READERS, processes
from rlaudit.store import Store

from .logs import trainer_logs

#: reader -> its logs of more than one file, written by the trainer's own code
LOGS = {"prime-rl": ("verifiers", "prime-rl"), "tinker": ("tinker",), "nemo-rl": ("nemo-rl",)}


def test_every_reader_that_parses_in_workers_is_checked_here():
    assert {r.name for r in READERS if r.parse_in_processes} - {"verifiers"} == set(LOGS)  # vf-eval: one file


@pytest.mark.parametrize("reader", sorted(LOGS))
def test_workers_store_what_the_ingest_stores(reader, tmp_path, monkeypatch):
    trainer, *rest = LOGS[reader]
    source = trainer_logs(trainer).joinpath(*rest)
    monkeypatch.setenv("RLAUDIT_THREADS", "2")
    used = []
    parse = processes.read_in_processes
    monkeypatch.setattr(processes, "read_in_processes", lambda *a, **k: used.append(a[3]) or parse(*a, **k))
    stored = []
    for i, least in enumerate((1 << 62, 0)):
        monkeypatch.setattr(processes, "MIN_BYTES", least)
        store = Store(tmp_path / f"s{i}")
        report = store.ingest(source, run="r", format=reader)
        stored.append((store.query("SELECT * FROM rollouts ORDER BY rollout_id", runs=["r"]), report.notes,
                       [(b.file, b.line, b.reason) for b in store.quarantined("r")]))
    (here, notes_here, bad_here), (there, notes_there, bad_there) = stored
    assert here.num_rows > 0 and there.schema == here.schema
    assert repr(there.to_pylist()) == repr(here.to_pylist())  # (NaN rewards: equal as text, not as floats)
    assert notes_there == notes_here and bad_there == bad_here
    assert used == [2]  # parsed here first, then by two workers
