"""The detector registry: dependency order, selection, and isolation of a crashing detector."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rlaudit import detectors as det
from rlaudit.errors import RlauditError
from rlaudit.findings import Finding


@pytest.fixture
def registry(monkeypatch):
    """An empty registry for the test, restored afterwards."""
    monkeypatch.setattr(det, "DETECTORS", [])
    return det.DETECTORS


def _detector(name, requires=(), fn=None):
    def detect(self, ctx):
        return fn(ctx) if fn else [Finding(kind=name, run=ctx.run, severity="info", title=name)]

    return type(name.title(), (det.Detector,), {"name": name, "kinds": (name,), "description": name,
                                                  "requires": requires, "detect": detect})


def test_dependencies_run_first_and_see_earlier_findings(registry, store):
    seen = {}
    det.register(_detector("b", requires=("a",), fn=lambda ctx: seen.setdefault("b", [f.kind for f in ctx.findings]) and []))
    det.register(_detector("a"))
    assert [d.name for d in det.ordered()] == ["a", "b"]
    assert [d.name for d in det.ordered(["b"])] == ["a", "b"]
    _append_rows(store)
    det.run_detectors(store, "r", det.AuditConfig())
    assert seen["b"] == ["a"]


def test_the_order_does_not_depend_on_which_detector_registered_first(registry):
    """All detectors run in one order whichever module imported its detector first (a profiler that imported
    every module alphabetically registered them in another order and ran them so)."""
    made = [_detector("zeta"), _detector("alpha", requires=("mid",)), _detector("mid"), _detector("beta")]
    orders = []
    for arrangement in (made, made[::-1], made[1:] + made[:1]):
        registry[:] = arrangement
        orders.append([d.name for d in det.ordered()])
    assert orders == [["mid", "alpha", "beta", "zeta"]] * 3
    assert [d.name for d in det.ordered(["zeta", "alpha"])] == ["zeta", "mid", "alpha"]  # as named


def test_unknown_detector_is_a_user_error(registry):
    det.register(_detector("a"))
    with pytest.raises(RlauditError, match="unknown detector"):
        det.ordered(["nope"])


def test_a_crashing_detector_becomes_an_audit_error_finding(registry, store):
    det.register(_detector("boom", fn=lambda ctx: 1 / 0))
    det.register(_detector("fine"))
    _append_rows(store)
    found = det.run_detectors(store, "r", det.AuditConfig())
    kinds = sorted(f.kind for f in found)
    assert kinds == ["audit_error", "fine"]
    err = next(f for f in found if f.kind == "audit_error")
    assert err["detector"] == "boom" and "ZeroDivisionError" in err["traceback"]


def test_context_view_respects_max_step_and_split(registry, store):
    counts = {}

    def count(ctx):
        with ctx.connect() as con:
            counts[ctx.config.max_step] = con.execute("SELECT count(*) FROM rollouts").fetchone()[0]
        return []

    det.register(_detector("c", fn=count))
    _append_rows(store)
    det.run_detectors(store, "r", det.AuditConfig(max_step=1))
    det.run_detectors(store, "r", det.AuditConfig(max_step=None))
    assert counts == {1: 2, None: 3}  # step 2 excluded by max_step; the eval row never counted


def _append_rows(store):
    from rlaudit.schema import ROLLOUT_SCHEMA

    rows = [dict(run="r", rollout_id=f"x:{i}", step=s, split=sp, group_id=None, sample_index=None,
                 condition="none", system_prompt=None, task=None, prompt="p", completion="c", reasoning=None,
                 answer="c", rewards=[("acc", 1.0)], reward=1.0, advantage=0.0, grader_inputs=[], metadata=None)
            for i, (s, sp) in enumerate([(0, "train"), (1, "train"), (2, "train"), (1, "eval")])]
    store.append("r", pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA), key="k")


def test_scratch_is_closed_and_freed_once_its_last_user_has_run(registry, store):
    """An item in `ctx.cache` is closed after the last of its users and then held by nothing: the detectors after
    it run without its memory (a large scope left alive by the release loop held 2.2 GB through every later
    detector)."""
    import weakref

    class Scratch:
        users = ("a",)
        closed = False

        def close(self):
            self.closed = True

    made, alive_in_b = [], []

    def a(ctx):
        item = ctx.cache["scratch"] = Scratch()
        made.append(weakref.ref(item))
        ctx.cache["other"] = type("Other", (), {"users": ("b",)})()  # still needed: kept
        return []

    def b(ctx):
        alive_in_b.append((made[0]() is not None, "scratch" in ctx.cache, "other" in ctx.cache))
        return []

    det.register(_detector("a", fn=a))
    det.register(_detector("b", requires=("a",), fn=b))
    _append_rows(store)
    det.run_detectors(store, "r", det.AuditConfig())
    assert alive_in_b == [(False, False, True)]
