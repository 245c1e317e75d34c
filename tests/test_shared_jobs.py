"""`memory.shared_jobs`: jobs the owning thread works through while other threads may take some of them
(`SharedJobs.help`), as an audit's light detectors do with the background thread's CoT scan."""

from __future__ import annotations

import threading

import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlaudit import memory


def test_without_a_sharing_block_the_jobs_run_in_order_on_this_thread():
    seen: list[tuple[int, str]] = []

    def compute(i):
        seen.append((i, threading.current_thread().name))
        return i * i

    assert memory.shared_jobs(compute, 5) == [0, 1, 4, 9, 16]
    assert seen == [(i, threading.current_thread().name) for i in range(5)]
    assert memory.shared_jobs(compute, 0) == []


def test_a_helper_takes_jobs_the_owner_has_not_taken_and_the_results_keep_their_order():
    """The owner is held in its first job until the helper has computed the others: each job ran once, the
    helper ran all but the first, and the owner returns every result in the jobs' order."""
    slot: list[memory.SharedJobs] = []
    helped = threading.Event()
    ran: list[tuple[int, str]] = []

    def compute(i):
        ran.append((i, threading.current_thread().name))
        if i == 0:
            assert helped.wait(10), "the helper did not finish"
        return f"r{i}"

    out: list = []

    def owner():
        with memory.sharing(slot):
            out.extend(memory.shared_jobs(compute, 6))

    t = threading.Thread(target=owner, name="owner")
    t.start()
    while not slot:  # the owner has published its jobs
        threading.Event().wait(0.01)
    slot[0].help()
    helped.set()
    t.join(10)
    assert out == [f"r{i}" for i in range(6)]
    assert sorted(i for i, _ in ran) == list(range(6))
    assert [i for i, who in ran if who == "owner"] == [0]
    assert not slot  # withdrawn once done


def test_an_error_on_a_helper_is_raised_by_the_owner_and_stops_the_others():
    slot: list[memory.SharedJobs] = []
    release = threading.Event()
    ran: list[int] = []

    def compute(i):
        ran.append(i)
        if i == 0:
            assert release.wait(10)
        if i == 1:
            raise ValueError("part 1 is torn")
        return i

    errors: list[BaseException] = []

    def owner():
        with memory.sharing(slot):
            try:
                memory.shared_jobs(compute, 50)
            except ValueError as exc:
                errors.append(exc)

    t = threading.Thread(target=owner)
    t.start()
    while not slot:
        threading.Event().wait(0.01)
    slot[0].help()  # takes job 1, which fails: no job after it is taken
    release.set()
    t.join(10)
    assert [str(e) for e in errors] == ["part 1 is torn"]
    assert sorted(ran) == [0, 1]


@given(st.integers(0, 40), st.integers(0, 3))
def test_every_job_runs_once_whatever_the_helpers(count, helpers):
    slot: list[memory.SharedJobs] = []
    counts = [0] * count
    lock = threading.Lock()

    def compute(i):
        with lock:
            counts[i] += 1
        return -i

    out: list = []
    started = threading.Event()

    def owner():
        with memory.sharing(slot):
            started.set()
            out.extend(memory.shared_jobs(compute, count))

    t = threading.Thread(target=owner)
    t.start()
    started.wait(10)
    threads = [threading.Thread(target=lambda: [j.help() for j in list(slot)]) for _ in range(helpers)]
    for h in threads:
        h.start()
    for h in threads:
        h.join(10)
    t.join(10)
    assert out == [-i for i in range(count)]
    assert counts == [1] * count


def test_an_audit_thread_waiting_for_the_cot_scan_scans_parts_of_it(tmp_path, monkeypatch):
    """The background thread's CoT scan (one worker) is held in its first part until another thread has scanned
    one: the audit's thread, which comes to wait for the scan (the light detectors run on it here, none being
    heavy), scans parts instead, and the findings are those of an audit without a background thread."""
    from rlaudit.cot import detector as cot_detector
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.store import Store

    simulate = pytest.importorskip("rlaudit.organisms.simulate")
    sim = simulate.run("cot_template", steps=12, seed=1, run_name="r")
    table = sim.canonical()
    results, scanned = {}, []
    original = cot_detector.read_scan_columns
    audit = {}  # the audit under way: its name, and whether its background scan has been held

    def read(path, layout):
        who = threading.current_thread().name
        scanned.append((audit["name"], who))
        if who == "rlaudit-background" and not audit["held"]:
            audit["held"] = True  # held until another thread has scanned a part
            for _ in range(1000):
                if any(w != "rlaudit-background" for k, w in scanned if k == "background"):
                    break
                threading.Event().wait(0.01)
        return original(path, layout)

    monkeypatch.setattr(cot_detector, "read_scan_columns", read)
    for name, n in (("background", 2), ("alone", 1)):
        audit.update(name=name, held=False)
        store = Store(tmp_path / name)
        steps = table.column("step").to_pylist()
        for step in sorted(set(steps)):  # a part per step: the scan's jobs
            store.append("r", table.filter(pc.equal(table.column("step"), step)), f"step-{step:03d}")
        monkeypatch.setattr(memory, "workers", lambda per_worker, n=n: n)
        found = run_detectors(store, "r", AuditConfig(detectors=["training_health", "cot_grading"]))
        assert not [f for f in found if f.kind == "audit_error"], [f.fields for f in found]
        results[name] = sorted((f.kind, f.severity, f.title) for f in found)
    helpers = {w for k, w in scanned if k == "background"} - {"rlaudit-background"}
    assert helpers == {"MainThread"}, scanned
    assert results["background"] == results["alone"]
    assert [r for r in results["alone"] if r[0] == "cot_grading"]
