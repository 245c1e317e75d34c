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
    # the detector's own thread (a light one runs beside emerging)
    assert calls == ["rlaudit-background", "rlaudit-light"]
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
    assert scanned == ["rlaudit-light"]  # the detector's thread (it runs beside emerging), not the background's
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
        name, requires, light = "a", (), False

    class B:
        name, requires, light = "b", ("a",), False

    class C:
        name, requires, light = "c", (), False

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


# ------------------------------------------------- light detectors beside the last heavy one (`Detector.light`)
def _fake(name: str, light: bool = False, requires: tuple[str, ...] = (), body=None):
    """A detector class named `name` whose detect runs `body(ctx)` (if any) and returns one finding of kind `name`
    titled with the thread it ran on and that thread's `memory.thread_limit()`."""
    from rlaudit.detectors import Detector
    from rlaudit.findings import Finding

    def detect(self, ctx):
        if body is not None:
            body(ctx)
        where = f"{threading.current_thread().name} {memory.thread_limit()}"
        return [Finding(kind=name, run=ctx.run, severity="low", title=where)]

    return type(name, (Detector,), {"name": name, "kinds": (name,), "description": name, "light": light,
                                    "requires": requires, "detect": detect})


def _finished_background():
    from rlaudit.detectors import _Background

    bg = _Background([("", lambda: None)])
    bg.thread.start()
    bg.join()
    return bg


def _run(classes, background):
    from rlaudit.detectors import DetectContext, _run_each

    ctx = DetectContext(store=None, run="r", config=AuditConfig())
    calls: list[tuple[str, str]] = []
    _run_each(ctx, classes, lambda name, done, total: calls.append((name, threading.current_thread().name)),
              background)
    return ctx.findings, calls


def test_the_light_detectors_at_the_end_run_on_one_more_thread_beside_the_heavy_one_before_them():
    """Both threads are inside a detector at once (a barrier of two), the light ones on one worker, in their order
    (the second reads the first's findings); the findings and the progress calls keep the detectors' order."""
    both = threading.Barrier(2, timeout=20)
    read: list[int] = []
    heavy = _fake("heavy", body=lambda ctx: both.wait())
    first = _fake("first", light=True, body=lambda ctx: both.wait())
    second = _fake("second", light=True, requires=("first",), body=lambda ctx: read.append(len(ctx.of_kind("first"))))
    found, calls = _run([heavy, first, second], _finished_background())
    assert [(f.kind, f.title) for f in found] == [
        ("heavy", "MainThread None"), ("first", "rlaudit-light 1"), ("second", "rlaudit-light 1")]
    assert read == [1]
    assert calls == [("heavy", "MainThread"), ("first", "rlaudit-light"), ("second", "rlaudit-light")]


def test_light_detectors_beside_a_heavy_one_start_once_the_background_thread_has_finished():
    """Started beside the heavy one while the background thread still computes, the light ones wait for it (no
    third thread computes beside the two), then run beside the heavy one, not after it."""
    from rlaudit.detectors import _Background

    order: list[str] = []
    hold, light_ran = threading.Event(), threading.Event()
    background = _Background([("", lambda: hold.wait(20) and order.append("background"))])
    background.thread.start()

    def heavy_body(ctx):
        order.append("heavy")
        hold.set()
        assert light_ran.wait(20)  # the light one ran while this one was still running

    heavy = _fake("heavy", body=heavy_body)
    light = _fake("light", light=True, body=lambda ctx: order.append("light") or light_ran.set())
    try:
        found, _ = _run([heavy, light], background)
    finally:
        hold.set()
    assert order == ["heavy", "background", "light"]
    assert [f.title for f in found] == ["MainThread None", "rlaudit-light 1"]


def test_light_detectors_after_the_heavy_one_let_one_whose_prefetch_runs_wait():
    """Where the heavy one ends while the background thread still runs the first light one's prefetch, the light
    ones start (beside the background thread) with the one whose prefetch is not running, not in their order."""
    from rlaudit.detectors import _Background

    order: list[str] = []
    hold = threading.Event()
    background = _Background([("first", lambda: hold.wait(20))])
    background.thread.start()
    while not background.running("first"):
        threading.Event().wait(0.005)
    heavy = _fake("heavy", body=lambda ctx: order.append("heavy"))
    first = _fake("first", light=True, body=lambda ctx: order.append("first"))
    second = _fake("second", light=True, body=lambda ctx: order.append("second") or hold.set())
    try:
        found, _ = _run([heavy, first, second], background)
    finally:
        hold.set()
    assert order == ["heavy", "second", "first"]
    assert [f.kind for f in found] == ["heavy", "first", "second"]
    assert [f.title for f in found][1:] == ["rlaudit-light 1"] * 2


@pytest.mark.parametrize("case", ["needs the heavy one", "a heavy one after", "no background"])
def test_light_detectors_run_after_the_others_on_the_main_thread_otherwise(case):
    """Not beside: a light detector that reads the running one's findings, or beside a heavy detector with another
    heavy one still to run after it (memory: two heavy detectors at once), or without a background thread (the
    memory budget gives one worker). With a heavy one after, the light one waits for it and runs beside it (as
    generalization beside attribution), not alone before it; the findings keep the detectors' order."""
    heavy = _fake("heavy")
    light = _fake("light", light=True, requires=("heavy",) if case == "needs the heavy one" else ())
    classes = [heavy, light, _fake("later")] if case == "a heavy one after" else [heavy, light]
    background = None if case == "no background" else _finished_background()
    found, calls = _run(classes, background)
    beside = ["MainThread None", "rlaudit-light 1", "MainThread None"]
    assert [f.title for f in found] == (beside if case == "a heavy one after" else ["MainThread None"] * len(classes))
    assert [f.kind for f in found] == [c.name for c in classes]
    if case == "a heavy one after":  # the later heavy one was chosen to run before the light one could start
        assert [name for name, _ in calls if name][:3] == ["heavy", "later", "light"]


def test_a_light_detector_that_fails_beside_another_becomes_an_audit_error():
    def boom(ctx):
        raise RuntimeError("broken check")

    found, _ = _run([_fake("heavy"), _fake("bad", light=True, body=boom), _fake("good", light=True)],
                    _finished_background())
    assert [f.kind for f in found] == ["heavy", "audit_error", "good"]
    assert "broken check" in found[1].title and found[2].title == "rlaudit-light 1"


def test_a_whole_audit_finds_the_same_with_its_light_detectors_beside_attribution(tmp_path, monkeypatch):
    """Every detector, on two workers (the light ones beside attribution, where the background thread has
    finished by then) and on one (all in a row): the same findings in the same order."""
    from rlaudit.detectors import _run_each
    from rlaudit import detectors as detectors_module

    sim = simulate.run("goblin_persona", steps=40, prompts=16, generations=8, seed=0, run_name="r")
    threads: dict[str, set[str]] = {}

    def spying(ctx, classes, progress, background):
        if background is not None:
            background.thread.join()  # its jobs done: the test does not depend on their timing
        def note(name, done, total):
            threads.setdefault(name, set()).add(threading.current_thread().name)
        return _run_each(ctx, classes, note, background)

    monkeypatch.setattr(detectors_module, "_run_each", spying)
    results = {}
    for name, n in (("beside", 2), ("in a row", 1)):
        store = Store(tmp_path / name)
        store.append("r", sim.canonical(), "p")
        monkeypatch.setattr(memory, "workers", lambda per_worker, n=n: n)
        threads.clear()
        found = run_detectors(store, "r", AuditConfig())
        assert not [f for f in found if f.kind == "audit_error"], [f.fields for f in found]
        results[name] = ([(f.kind, f.severity, f.title) for f in found], dict(threads))
    assert results["beside"][0] == results["in a row"][0]
    assert {"emerging_behavior", "reward_attribution"} <= {kind for kind, _, _ in results["in a row"][0]}
    assert results["beside"][1]["reward_health"] == {"rlaudit-light"}
    assert results["in a row"][1]["reward_health"] == {"MainThread"}


def test_the_light_thread_releases_scratch_as_soon_as_its_last_user_has_run():
    """The term-set scope's last user (generalization) runs beside attribution: the scope is closed when it has
    run, while attribution still runs, not when attribution ends (its memory is not held through attribution)."""
    from rlaudit.detectors import DetectContext, _run_each

    closed = threading.Event()

    class Scratch:
        users = ("user",)

        def close(self):
            closed.set()

    ctx = DetectContext(store=None, run="r", config=AuditConfig())
    ctx.cache["scope"] = Scratch()
    seen: list[bool] = []
    heavy = _fake("heavy", body=lambda ctx: seen.append(closed.wait(20)))  # waits for the release
    user = _fake("user", light=True)
    _run_each(ctx, [user, heavy], None, _finished_background())
    assert seen == [True] and "scope" not in ctx.cache
    assert [f.title for f in ctx.findings] == ["rlaudit-light 1", "MainThread None"]
