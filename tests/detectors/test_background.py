"""An audit's work on the stored parts alone runs in a background thread beside the detectors before the one
that needs it (`detectors._Background`): the per-part statistics and the CoT scan (`CotGradingDetector.prefetch`).
The findings are those of an audit that ran it in the detectors' own thread."""

from __future__ import annotations

import threading

import pytest

from rlaudit import memory
from rlaudit.cot import detector as cot_detector
from rlaudit.detectors import AuditConfig, run_detectors
from rlaudit.store import Store

simulate = pytest.importorskip("rlaudit.organisms.simulate")

DETECTORS = ["emerging", "cot_grading", "reward_health"]


def _findings(found) -> list[tuple]:
    return sorted((f.kind, f.severity, f.title, f.fields.get("exposed_samples")) for f in found)


def _with_and_without_background(tmp_path, monkeypatch, module, function: str, fill, detectors: list[str]
                                 ) -> dict[str, tuple[list[tuple], list[str]]]:
    """Per way ("background": two workers, "alone": one), the findings of an audit of a store `fill` filled with
    run "r", and the threads that called `module.function`."""
    called: list[str] = []
    original = getattr(module, function)

    def spy(*a, **k):
        called.append(threading.current_thread().name)
        return original(*a, **k)

    monkeypatch.setattr(module, function, spy)
    results = {}
    for name, n in (("background", 2), ("alone", 1)):
        store = Store(tmp_path / name)
        fill(store)
        monkeypatch.setattr(memory, "workers", lambda per_worker, n=n: n)
        called.clear()
        found = run_detectors(store, "r", AuditConfig(detectors=detectors))
        assert not [f for f in found if f.kind == "audit_error"], [f.fields for f in found]
        results[name] = (_findings(found), list(called))
    return results


def test_the_cot_scan_runs_beside_the_detectors_before_it_with_the_same_findings(tmp_path, monkeypatch):
    sim = simulate.run("cot_template", steps=12, seed=1, run_name="r")
    results = _with_and_without_background(tmp_path, monkeypatch, cot_detector, "scan_parts",
                                           lambda store: store.append("r", sim.canonical(), "p"), DETECTORS)
    assert results["background"][1] == ["rlaudit-background"]  # scanned once, there
    assert results["alone"][1] == ["MainThread"]
    assert results["background"][0] == results["alone"][0]
    assert [f for f in results["alone"][0] if f[0] == "cot_grading" and f[1] == "high"], results["alone"][0]


def test_a_failed_prefetch_leaves_the_work_to_the_detector(store, monkeypatch):
    sim = simulate.run("cot_template", steps=6, seed=1, run_name="r")
    store.append("r", sim.canonical(), "p")
    calls: list[str] = []
    scan = cot_detector.scan_parts

    def flaky(*a, **k):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise OSError("disk gone for a moment")
        return scan(*a, **k)

    monkeypatch.setattr(cot_detector, "scan_parts", flaky)
    monkeypatch.setattr(memory, "workers", lambda per_worker: 2)
    found = run_detectors(store, "r", AuditConfig(detectors=DETECTORS))
    assert calls == ["rlaudit-background", "MainThread"]
    assert not [f for f in found if f.kind == "audit_error"]
    assert [f for f in found if f.kind == "cot_grading"]


def test_a_detector_whose_prefetch_has_not_started_does_the_work_itself(store, monkeypatch):
    """The background thread works through its jobs in order: where the cot scan's turn in it has not come when
    the detector runs (the statistics before it still computing), the detector scans with every worker rather
    than wait, and the background thread skips it."""
    from rlaudit.derived import partstats

    sim = simulate.run("cot_template", steps=6, seed=1, run_name="r")
    store.append("r", sim.canonical(), "p")
    release = threading.Event()
    compute = partstats._compute

    def slow(*a, **k):
        release.wait(20)
        return compute(*a, **k)

    scanned: list[str] = []
    scan = cot_detector.scan_parts

    def spy(*a, **k):
        scanned.append(threading.current_thread().name)
        release.set()  # the statistics may finish now
        return scan(*a, **k)

    monkeypatch.setattr(partstats, "_compute", slow)
    monkeypatch.setattr(cot_detector, "scan_parts", spy)
    monkeypatch.setattr(memory, "workers", lambda per_worker: 2)
    found = run_detectors(store, "r", AuditConfig(detectors=DETECTORS))
    assert scanned == ["MainThread"]
    assert [f for f in found if f.kind == "cot_grading"] and not [f for f in found if f.kind == "audit_error"]


def test_the_reward_rollup_is_built_beside_the_detectors_before_it(tmp_path, monkeypatch):
    import pyarrow.compute as pc
    from emerging_synth import Scenario, Tic
    from emerging_synth import build as build_run

    from rlaudit.detectors import reward_rollup

    sc = Scenario(steps=24, groups=12, conditions={"nerdy": 1.0, "plain": 1.0},
                  tics=[Tic("by my beard", 0.02, 0.5, onset=8)], signals={"beard_rm": (0,)})
    table = build_run(sc, "r")

    def fill(store):
        for step in range(1, sc.steps + 1):  # a part a step: enough for a combined file, and so a rollup
            store.append("r", table.filter(pc.equal(table.column("step"), step)), key=f"s{step}")

    results = _with_and_without_background(tmp_path, monkeypatch, reward_rollup, "_build", fill,
                                           ["emerging", "reward_health"])
    assert results["background"][1] == ["rlaudit-background"] and results["alone"][1] == ["MainThread"]
    assert results["background"][0] == results["alone"][0]


def test_duckdb_connections_set_up_within_at_most_run_that_many_threads():
    import duckdb

    from rlaudit.store import bound_memory

    def threads() -> int:
        con = duckdb.connect()
        bound_memory(con)
        return int(con.execute("SELECT current_setting('threads')").fetchone()[0])

    usual = threads()
    with memory.at_most(1):
        assert threads() == 1 and memory.workers(1) == 1
        with memory.at_most(3):  # an inner block never raises the limit
            assert memory.workers(1) == 1
    assert threads() == usual and memory.thread_limit() is None


def test_next_runs_a_later_detector_while_the_prefetch_of_the_next_one_is_running():
    from rlaudit.detectors import _next

    class A:
        name, requires = "a", ()

    class B:
        name, requires = "b", ("a",)

    class C:
        name, requires = "c", ()

    class Busy:
        def running(self, name):
            return name == "a"

    assert _next([A, B, C], {}, Busy()) is C  # a's prefetch is running, b needs a: c runs meanwhile
    assert _next([A, B], {}, Busy()) is A  # nothing else can run: wait for a's
    assert _next([A, B, C], {}, None) is A
    assert _next([B, C], {"a": []}, Busy()) is B


def test_the_cot_detector_waits_for_its_running_scan_after_the_detectors_that_can_run_meanwhile(store, monkeypatch):
    """The background thread's CoT scan is held until reward_health has run: the audit runs reward_health (and
    builds nothing twice) while the scan runs, instead of waiting for it; the findings keep the detectors' order."""
    from rlaudit.detectors import DETECTORS

    sim = simulate.run("cot_template", steps=6, seed=1, run_name="r")
    store.append("r", sim.canonical(), "p")
    ran = threading.Event()
    order: list[str] = []
    scan = cot_detector.scan_parts

    def held(*a, **k):
        assert ran.wait(20), "reward_health did not run while the scan was held"
        return scan(*a, **k)

    (reward_health,) = [d for d in DETECTORS if d.name == "reward_health"]
    (cot,) = [d for d in DETECTORS if d.name == "cot_grading"]
    detect_rh, detect_cot = reward_health.detect, cot.detect

    def rh(self, ctx):
        order.append("reward_health")
        ran.set()
        return detect_rh(self, ctx)

    def cg(self, ctx):
        order.append("cot_grading")
        return detect_cot(self, ctx)

    monkeypatch.setattr(cot_detector, "scan_parts", held)
    monkeypatch.setattr(reward_health, "detect", rh)
    monkeypatch.setattr(cot, "detect", cg)
    monkeypatch.setattr(memory, "workers", lambda per_worker: 2)
    found = run_detectors(store, "r", AuditConfig(detectors=["training_health", "cot_grading", "reward_health"]))
    assert order == ["reward_health", "cot_grading"]
    assert not [f for f in found if f.kind == "audit_error"]
    kinds = [f.kind for f in found]
    assert kinds == sorted(kinds, key=["training_health", "cot_grading", "reward_health"].index)


def test_a_finished_prefetch_is_no_longer_running():
    from rlaudit.detectors import _Background

    ran = threading.Event()
    bg = _Background([("a", ran.set)])
    bg.thread.start()
    assert bg.done["a"].wait(10) and ran.is_set()
    assert not bg.running("a")
    bg.join()
