"""The local engine when a worker process dies: the tasks that shared its pool run again in the same pass, and
a task that kills its worker every time fails alone after its retries (the stand-in task is
`helpers.exit_if_marked`, run in real spawned worker processes)."""

from __future__ import annotations

from rlaudit.fleet.engines import LocalEngine
from rlaudit.fleet.worker import RunTask

from .helpers import exit_if_marked


def _tasks(tmp_path, names):
    return [RunTask(store=str(tmp_path), name=n, source="", format="", attempt_log=str(tmp_path / "att" / n))
            for n in names]


def _engine():
    engine = LocalEngine(workers=2, max_retries=2)
    engine.task_fn = exit_if_marked
    return engine


def test_a_worker_that_dies_once_costs_no_run_its_pass(tmp_path):
    names = ["a", "b", "die-once", "c", "d", "e"]
    engine = _engine()
    try:
        out = {t.name: o for t, o in engine.run(_tasks(tmp_path, names))}
    finally:
        engine.close()
    assert sorted(out) == sorted(names)  # one outcome per task
    assert all(o.ok for o in out.values()), {n: o.error for n, o in out.items()}
    assert len(out["die-once"].attempts) == 1  # the dead attempt is reported, so the scanner counts it


def test_a_task_that_always_kills_its_worker_fails_alone(tmp_path):
    names = ["a", "die-always", "b", "c", "d"]
    engine = _engine()
    try:
        out = {t.name: o for t, o in engine.run(_tasks(tmp_path, names))}
    finally:
        engine.close()
    assert sorted(out) == sorted(names)
    assert not out["die-always"].ok and "died 3 times" in out["die-always"].error
    assert all(out[n].ok for n in names if n != "die-always"), {n: o.error for n, o in out.items()}
    attempts = (tmp_path / "att" / "die-always").read_text().splitlines()
    assert len(attempts) == 3  # the first try beside others, then two more alone (max_retries)
