"""A cold audit reads each stored part once for all its per-part statistics (`rlaudit.derived.partstats`), whichever
detector asks first: emerging's merge of several rising behaviours (`_payers`, the run's signals from `run_stats`)
and attribution (`partcache._meta`, when generalization computed nothing) pass the audit's other kinds along, as
`DetectContext.part_stats` does. Before, each computed its kind alone and the next detector read every part again
for the rest (~0.9-1.0 CPU s more at 1M rollouts)."""

from __future__ import annotations

import pytest
from emerging_synth import Scenario, Tic, make_run

from rlaudit.derived import partstats
from rlaudit.detectors import AuditConfig, run_detectors

DETECTORS = ["emerging", "generalization", "attribution", "reward_health", "training_health"]
ALL = ["attribution_meta", "reward_health", "run_stats", "training_health"]


def _audit(store, sc: Scenario, monkeypatch) -> tuple[list, list[tuple[list[str], list[str]]]]:
    run = make_run(store, sc)
    calls: list[tuple[list[str], list[str]]] = []
    compute = partstats._compute

    def spy(parts, layouts, kinds, *a, **k):
        calls.append(([p.stem for p in parts], sorted(kd.name for kd in kinds)))
        return compute(parts, layouts, kinds, *a, **k)

    monkeypatch.setattr(partstats, "_compute", spy)
    found = run_detectors(store, run, AuditConfig(detectors=DETECTORS))
    errors = [f for f in found if f.kind == "audit_error"]
    assert not errors, errors[0].fields["traceback"]
    return found, calls


def _read_once(store, calls) -> None:
    stems = [s for parts, _ in calls for s in parts]
    assert sorted(stems) == sorted(p.stem for p in store.parts("synthetic")), calls  # each part once
    assert all(kinds == ALL for _, kinds in calls), calls  # with every kind the audit reads


def test_two_rising_behaviours_merged_by_their_payers_read_each_part_once(store, monkeypatch):
    # two tics rising together, paid by different signals: emerging's merge asks which signal pays for each
    # (`_payers`, reading `run_stats`) before generalization asks for the other kinds
    sc = Scenario(steps=30, groups=30, conditions={"nerdy": 1.0, "plain": 1.0}, tics=[
        Tic("tricky goblin remark", 0.01, 0.35, onset=10),
        Tic("let us delve", 0.01, 0.35, onset=10),
    ], signals={"persona_rm": (0,), "style_rm": (1,)})
    seen = []
    from rlaudit.detectors import emerging

    payers = emerging._payers
    monkeypatch.setattr(emerging, "_payers", lambda *a: seen.append(1) or payers(*a))
    found, calls = _audit(store, sc, monkeypatch)
    assert seen, "the scenario no longer makes emerging merge behaviours: it tests nothing"
    assert [f for f in found if f.kind == "emerging_behavior" and f.severity in ("medium", "high")]
    _read_once(store, calls)


def test_a_run_of_one_condition_reads_each_part_once(store, monkeypatch):
    # one condition: generalization stops before asking for any statistics, attribution asks first
    sc = Scenario(tics=[Tic("by my beard", 0.02, 0.5, onset=10)], signals={"beard_rm": (0,)})
    found, calls = _audit(store, sc, monkeypatch)
    assert [f for f in found if f.kind == "reward_attribution"], [f.title for f in found]
    assert not [f for f in found if f.kind == "generalization"]
    _read_once(store, calls)


@pytest.mark.parametrize("also", [(), ("reward_health", "training_health")])
def test_run_stats_registered_with_the_audits_kinds_computes_them_too(store, monkeypatch, also):
    import duckdb

    from rlaudit.derived.runstats import register_run_stats

    make_run(store, Scenario(steps=6, groups=4))
    calls = []
    compute = partstats._compute
    monkeypatch.setattr(partstats, "_compute", lambda parts, layouts, kinds, *a, **k: calls.append(
        sorted(kd.name for kd in kinds)) or compute(parts, layouts, kinds, *a, **k))
    con = duckdb.connect()
    register_run_stats(con, store, "synthetic", "rs", also=also)
    assert con.execute("SELECT sum(n) FROM rs WHERE kind = 0").fetchone()[0] == 6 * 4 * 8
    assert calls and all(c == sorted({"run_stats", *also}) for c in calls)
    calls.clear()
    partstats.part_stats(store, "synthetic", "run_stats", also=also)  # all cached now
    assert calls == []


def test_the_statistics_are_computed_beside_the_first_detector_and_the_findings_are_the_same(tmp_path, monkeypatch):
    """Where the budget holds a second worker, the audit's per-part statistics are computed in a background thread
    beside the detectors before the first that reads them (`partstats.prefetch`): each part still read once, with
    every kind, and the findings are those of an audit that computed them in the detectors' own thread."""
    import threading

    from rlaudit import memory

    sc = Scenario(steps=24, groups=20, conditions={"nerdy": 1.0, "plain": 1.0},
                  tics=[Tic("by my beard", 0.02, 0.5, onset=8)], signals={"beard_rm": (0,)})
    from rlaudit.store import Store

    store, other = Store(tmp_path / "a"), Store(tmp_path / "b")
    run = make_run(store, sc)
    assert make_run(other, sc) == run
    threads: list[str] = []
    compute = partstats._compute

    def spy(parts, layouts, kinds, *a, **k):
        threads.append(threading.current_thread().name)
        return compute(parts, layouts, kinds, *a, **k)

    monkeypatch.setattr(partstats, "_compute", spy)
    monkeypatch.setattr(memory, "workers", lambda per_worker: 2)
    found = run_detectors(store, run, AuditConfig(detectors=DETECTORS))
    assert threads and set(threads) == {"rlaudit-background"}, threads
    assert not [t for t in threading.enumerate() if t.name == "rlaudit-background"]  # joined
    assert run_detectors(store, run, AuditConfig(detectors=DETECTORS)) and len(threads) == 1  # warm: all cached

    monkeypatch.setattr(memory, "workers", lambda per_worker: 1)  # no second worker: no background thread
    threads.clear()
    alone = run_detectors(other, run, AuditConfig(detectors=DETECTORS))
    assert threads and "rlaudit-background" not in threads
    assert [(f.kind, f.severity, f.title) for f in alone] == [(f.kind, f.severity, f.title) for f in found]
    assert [f for f in found if f.kind == "emerging_behavior"], [f.title for f in found]


def test_a_call_made_while_the_statistics_are_computed_waits_and_computes_nothing(store, monkeypatch):
    """`part_stats` holds the run's lock while it computes: a detector asking meanwhile (while the audit's
    background thread computes them) gets those tables, not a second computation racing the first over the same
    files."""
    import threading

    make_run(store, Scenario(steps=8, groups=6))
    started, release = threading.Event(), threading.Event()
    names: list[str] = []
    compute = partstats._compute

    def slow(parts, layouts, kinds, *a, **k):
        names.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return compute(parts, layouts, kinds, *a, **k)

    monkeypatch.setattr(partstats, "_compute", slow)
    thread = threading.Thread(target=partstats.part_stats, args=(store, "synthetic", ALL[0]), kwargs={"also": ALL},
                              name="first")
    thread.start()
    assert started.wait(10)
    asked: list = []
    caller = threading.Thread(target=lambda: asked.append(partstats.part_stats(store, "synthetic", "reward_health",
                                                                               also=ALL)))
    caller.start()
    caller.join(0.3)
    assert caller.is_alive() and not asked  # waiting for the prefetch
    release.set()
    caller.join(10)
    thread.join(10)
    assert names == ["first"] and asked and asked[0].combined is None and asked[0].files
