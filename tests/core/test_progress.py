"""`rlaudit.progress`: the passes over the stored parts as a listener sees them, and the CLI's line of them."""

from __future__ import annotations

import threading

import pytest

from rlaudit import progress


def test_a_listener_sees_each_pass_start_advance_and_end():
    seen: list[dict[str, tuple[int, int]]] = []
    with progress.listening(seen.append):
        with progress.tracking("term sets", 3) as p:
            p.advance()
            p.advance(2)
            p.advance()  # past the total: held at it
    assert seen == [{"term sets": (0, 3)}, {"term sets": (1, 3)}, {"term sets": (3, 3)}, {"term sets": (3, 3)}, {}]


def test_passes_at_once_are_shown_together_and_those_of_one_name_summed():
    seen: list[dict[str, tuple[int, int]]] = []
    with progress.listening(seen.append):
        with progress.tracking("CoT scan", 4) as a, progress.tracking("statistics", 2) as b, \
                progress.tracking("CoT scan", 6) as c:
            a.advance(4)
            b.advance()
            c.advance(3)
            assert seen[-1] == {"CoT scan": (7, 10), "statistics": (1, 2)}
    assert seen[-1] == {}


def test_without_a_listener_nothing_is_kept():
    with progress.tracking("term sets", 5) as p:
        p.advance(5)
        assert progress._passes == {}
    seen: list[dict] = []
    with progress.listening(seen.append):  # a pass that started before the listener is not shown
        p.advance()
        with progress.tracking("empty", 0) as q:  # nor a pass over no parts
            q.advance()
    assert seen == []


def test_listening_restores_the_listener_before_it_and_a_pass_ends_on_error():
    outer: list[dict] = []
    inner: list[dict] = []
    with progress.listening(outer.append):
        with progress.listening(inner.append):
            with pytest.raises(RuntimeError), progress.tracking("term sets", 2):
                raise RuntimeError("a part failed")
        with progress.tracking("statistics", 1) as p:
            p.advance()
    assert inner == [{"term sets": (0, 2)}, {}]
    assert outer == [{"statistics": (0, 1)}, {"statistics": (1, 1)}, {}]
    assert progress._passes == {} and progress._listener is None


def test_threads_advance_one_pass_to_its_total():
    seen: list[dict[str, tuple[int, int]]] = []
    with progress.listening(seen.append), progress.tracking("CoT scan", 400) as p:
        threads = [threading.Thread(target=lambda: [p.advance() for _ in range(100)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    done = [s["CoT scan"][0] for s in seen if s]
    assert done == sorted(done) and done[-1] == 400  # every change, in the order made


def test_describe():
    assert progress.describe({}) == ""
    assert progress.describe({"term sets": (12, 1500), "CoT scan": (3, 50)}) == \
        "term sets 12/1,500, CoT scan 3/50 parts"


@pytest.mark.slow
def test_an_audit_reports_its_passes_over_every_part(tmp_path):
    """A cold audit of a simulated run shows the term sets, per-part statistics and CoT scan passes, each over
    every stored part and each ending at its total; a second audit (all cached) shows none."""
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.organisms import simulate
    from rlaudit.store import Store

    simulate("goblin_persona", tmp_path / "run", format="trl", seed=0)
    store = Store(tmp_path / "store")
    store.ingest(tmp_path / "run", run="r", part_rows=1, compact=False)  # a part per step file: several parts
    n_parts = len(store.parts("r"))
    assert n_parts > 4
    seen: list[dict[str, tuple[int, int]]] = []
    with progress.listening(seen.append):
        run_detectors(store, "r", AuditConfig())
    last: dict[str, tuple[int, int]] = {}
    for snapshot in seen:
        last.update(snapshot)
    for name in ("term sets", "statistics", "CoT scan"):
        assert last[name] == (n_parts, n_parts), (name, last.get(name))
    assert seen[-1] == {} and progress._passes == {}
    again: list[dict] = []
    with progress.listening(again.append):
        run_detectors(store, "r", AuditConfig())
    assert not any(again), again
