"""The Python hook API and the live auditor: storage, schedule, bounded views, failure isolation."""

from __future__ import annotations

import logging

import pytest

from rlaudit.live import LiveConfig, LiveHook, StepSample
from rlaudit.live.alerts import AlertManager, JsonlSink

from .helpers import NERDY, PLAIN, GoblinCounter, feed, step_batch


def make_hook(store, tmp_path, **config) -> LiveHook:
    cfg = LiveConfig(detectors=config.pop("detectors", ["test_goblin"]), every_step=(), background=False, **config)
    return LiveHook(store, "run1", config=cfg, alerts=AlertManager([JsonlSink(tmp_path / "alerts.jsonl")]))


def test_rows_are_stored_with_conditions_rewards_and_reasoning(store, tmp_path, test_detectors):
    hook = make_hook(store, tmp_path)
    b = step_batch(3, 4, {NERDY: 0.0, PLAIN: 0.0})
    b["completions"][0] = [{"role": "assistant", "content": "fine", "reasoning_content": "let me think"}]
    hook.log_rollouts(3, b["prompts"], b["completions"], b["rewards"], group_ids=[0] * 4 + [1] * 4,
                      grader_inputs={"persona": b["completions"]})
    assert hook.errors == []
    t = store.table("run1").to_pylist()
    assert len(t) == 8 and {r["step"] for r in t} == {3}
    assert {r["condition"] for r in t} == {"nerdy-playful-assistant", "helpful-assistant"}
    first = t[0]
    assert first["reasoning"] == "let me think" and first["answer"] == "fine"
    assert dict(first["rewards"])["persona"] == 0.0
    plain = [r for r in t if r["condition"] == "helpful-assistant"][0]
    plain_rewards = dict(plain["rewards"])
    assert plain_rewards["persona"] != plain_rewards["persona"]  # None -> NaN: the signal did not apply
    assert plain["reward"] == plain_rewards["task"]
    assert [r["sample_index"] for r in t[:4]] == [0, 1, 2, 3] and t[0]["group_id"] == "3:0"
    assert "persona" in dict(first["grader_inputs"])


def test_alert_fires_once_when_threshold_first_crossed(store, tmp_path, test_detectors):
    hook = make_hook(store, tmp_path, every=1)
    rate = lambda s: {NERDY: 0.0 if s < 10 else 0.9, PLAIN: 0.0 if s < 10 else 0.9}  # noqa: E731
    alerts = feed(hook, range(1, 31), rate)
    assert hook.errors == []
    emerging = [a for a in alerts if a.kind == "emerging_behavior"]
    assert len(emerging) == 2  # medium when first crossed, then once more when it became high
    assert emerging[0].severity == "medium" and 10 <= emerging[0].step <= 15
    assert emerging[1].escalation and emerging[1].severity == "high"
    # it rose under both system prompts at once: nothing spread afterwards
    assert not [a for a in alerts if a.kind == "behavior_spread"]


def test_tracking_alerts_when_a_flagged_behaviour_spreads_to_another_condition(store, tmp_path, test_detectors):
    hook = make_hook(store, tmp_path, every=5, options={"test_goblin": {"threshold": 0.15}})
    rate = lambda s: {NERDY: 0.0 if s < 10 else 0.8, PLAIN: 0.02 if s < 30 else 0.5}  # noqa: E731
    alerts = feed(hook, range(1, 46), rate)
    assert hook.errors == []
    flagged = [a for a in alerts if a.kind == "emerging_behavior"]
    spread = [a for a in alerts if a.kind == "behavior_spread"]
    assert flagged and flagged[0].step < 30
    assert [a.finding["target_condition"] for a in spread] == ["helpful-assistant"]
    assert 30 <= spread[0].step <= 40 and spread[0].finding["source_conditions"] == ["nerdy-playful-assistant"]
    assert hook.auditor.tracked_prevalence()["goblin"]["helpful-assistant"] > 0.2
    assert {f.kind for f in hook.findings} == {"emerging_behavior", "behavior_spread"}


def test_heavy_detectors_run_on_schedule_and_bounded_sample(store, tmp_path, test_detectors):
    sample = StepSample(baseline=3, recent=4, middle=3)
    hook = make_hook(store, tmp_path, every=5, sample=sample)
    feed(hook, range(1, 41), lambda s: {NERDY: 0.0, PLAIN: 0.0}, n=3)
    hook.close()
    max_steps = [c[0] for c in GoblinCounter.calls]
    assert max_steps == [1, 6, 11, 16, 21, 26, 31, 36, 40]  # first step, every 5 steps, final
    assert max(c[1] for c in GoblinCounter.calls) == sample.size  # never more steps than the sample


def test_broken_detector_never_raises_and_is_logged(store, tmp_path, test_detectors, caplog):
    hook = make_hook(store, tmp_path, detectors=["test_broken", "test_goblin"], every=1)
    with caplog.at_level(logging.WARNING, logger="rlaudit.live"):
        alerts = feed(hook, range(1, 6), lambda s: {NERDY: 0.9, PLAIN: 0.9})
    assert caplog.text.count("deliberately broken detector") == 1  # logged once, not every step
    assert any(a.kind == "emerging_behavior" for a in alerts)  # the other detector still works
    assert len(store.table("run1")) == 5 * 40


def test_broken_store_never_raises(tmp_path, caplog):
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store directory should be")
    hook = LiveHook(blocker, "run1", alerts=AlertManager([JsonlSink(tmp_path / "a.jsonl")]))
    b = step_batch(1, 2, {NERDY: 0.5})
    with caplog.at_level(logging.ERROR, logger="rlaudit.live"):
        # the only alert: the steps the store could not take (kept in memory, retried, spilled at close)
        for step in (1, 2):
            alerts = hook.log_rollouts(step, b["prompts"], b["completions"], b["rewards"])
            assert all(a.finding.get("problem") == "steps_not_stored" for a in alerts)
        hook.close()
    assert "training continues" in caplog.text
    assert [f["missing_steps"] for f in hook.findings if f.get("problem") == "steps_not_stored"] == [[1, 2]]


def test_bad_arguments_are_logged_not_raised(store, tmp_path):
    hook = make_hook(store, tmp_path)
    assert hook.log_rollouts(1, ["p1", "p2"], ["c1"]) == []
    assert "2 prompts but 1 completions" in hook.errors[-1]
    assert hook.log_rollouts(1, ["p"], ["c"], {"r": ["x"]}) == []
    assert "not a number" in hook.errors[-1]


def test_wrap_rewards_logs_each_batch_once_and_passes_through(store, tmp_path, test_detectors):
    hook = make_hook(store, tmp_path)

    def correct(prompts, completions, **kw):
        return [1.0] * len(completions)

    def persona(prompts, completions, **kw):
        return [None if "helpful" in str(p) else 0.5 for p in prompts]

    class State:
        global_step = 6

    wrapped = hook.wrap_rewards([correct, persona])
    assert [f.__name__ for f in wrapped] == ["correct", "persona"]
    b = step_batch(0, 3, {NERDY: 0.0, PLAIN: 0.0})
    out = [f(prompts=b["prompts"], completions=b["completions"], trainer_state=State()) for f in wrapped]
    assert out[0] == [1.0] * 6 and out[1][:3] == [0.5] * 3 and out[1][3] is None
    rows = store.table("run1").to_pylist()
    assert len(rows) == 6 and {r["step"] for r in rows} == {7}  # TRL logs global_step + 1
    assert set(dict(rows[0]["rewards"])) == {"correct", "persona"}
    assert dict(rows[0]["grader_inputs"])["persona"] == rows[0]["completion"]


def test_wrapped_reward_errors_stay_the_users(store, tmp_path):
    hook = make_hook(store, tmp_path)

    def bad(prompts, completions, **kw):
        raise ZeroDivisionError("user bug")

    with pytest.raises(ZeroDivisionError):
        hook.wrap_rewards([bad])[0](["p"], ["c"])


def test_part_index_and_store_view(store, tmp_path):
    from rlaudit.errors import RlauditError
    from rlaudit.live.sampling import PartIndex, StoreView

    hook = make_hook(store, tmp_path, detectors=[])
    feed(hook, range(1, 13), lambda s: {NERDY: 0.0}, n=2)
    index = PartIndex(store, "run1")
    assert len(index.refresh()) == 12 and index.refresh() == []  # only new parts, once
    assert index.steps() == list(range(1, 13)) and index.max_step() == 12
    view = StoreView(store, "run1", index.covering([1, 2, 12]))
    assert sorted(set(view.table("run1", ["step"]).column("step").to_pylist())) == [1, 2, 12]
    assert len(store.table("run1")) == 24  # the store itself is untouched
    with pytest.raises(RlauditError, match="read-only"):
        view.append("run1", store.table("run1"), "x")


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_background_heavy_audits_do_not_hold_up_training(store, tmp_path, test_detectors, mode):
    import time

    hook = LiveHook(store, "bg", config=LiveConfig(detectors=["test_slow"], every_step=(), every=4, background=mode),
                    alerts=AlertManager([JsonlSink(tmp_path / "alerts.jsonl")]))
    rate = lambda s: {NERDY: 0.0 if s < 4 else 0.9, PLAIN: 0.0 if s < 4 else 0.9}  # noqa: E731
    per_step = []
    for s in range(1, 16):
        b = step_batch(s, 10, rate(s))
        t0 = time.perf_counter()
        hook.log_rollouts(s, b["prompts"], b["completions"], b["rewards"])
        per_step.append(time.perf_counter() - t0)
        time.sleep(0.05)  # the trainer's own work
    assert max(per_step[1:]) < 0.9  # a one-second detector never blocked a step (step 1: warm-up)
    hook.close()  # waits for the running audit, then a final one
    assert hook.errors == []
    assert len(hook.auditor.heavy_runs) >= 2 and hook.auditor.heavy_runs[-1][0] == 15
    goblin = [a for a in hook.alerts if a.kind == "emerging_behavior"]
    assert goblin and goblin[0].step <= 15


def test_cot_exposure_is_alerted_in_the_step_it_appears(store, tmp_path):
    """The real cot_grading scan runs on each new step alone (heavy detectors off here)."""
    cfg = LiveConfig(detectors=[], background=False)
    hook = LiveHook(store, "cot", config=cfg, alerts=AlertManager([JsonlSink(tmp_path / "alerts.jsonl")]))
    import numpy as np

    words = np.array("compare subtract larger smaller sign result check carry digit write first then next "
                     "number total answer because so add multiply divide remainder round half".split())
    rng = np.random.default_rng(0)

    def batch(step: int, leak: bool) -> list:
        thoughts = [" ".join(rng.choice(words, 30)) for _ in range(8)]  # each rollout reasons its own way
        completions = [f"<think>{t}</think>the answer is {i}" for i, t in enumerate(thoughts)]
        judge = [c if leak else c.split("</think>")[1] for c in completions]  # the bug: the judge sees it all
        return hook.log_rollouts(step, [f"user: question {i}" for i in range(8)], completions,
                                 {"judge": [1.0] * 8}, group_ids=[0] * 8, grader_inputs={"judge": judge})

    quiet = [a for s in range(1, 4) for a in batch(s, leak=False)]
    leaked = batch(4, leak=True)
    assert hook.errors == []
    assert not [a for a in quiet if a.kind == "cot_grading"]
    cot = [a for a in leaked if a.kind == "cot_grading"]
    assert cot and cot[0].step == 4 and cot[0].finding["grader"] == "judge"


def test_a_view_of_a_compacted_run_holds_only_the_chosen_steps(store, tmp_path):
    """Once a run's per-step parts are compacted (or were ingested grouped), a view of some steps cuts each part
    to those steps' rows: a heavy audit reads the chosen steps, not every step sharing a part with one of them."""
    import gc

    import pyarrow.parquet as pq

    from rlaudit.detectors import run_detectors
    from rlaudit.live.sampling import PartIndex, StoreView

    hook = make_hook(store, tmp_path, detectors=[])
    feed(hook, range(1, 13), lambda s: {NERDY: 0.5, PLAIN: 0.1}, n=3)
    assert store.compact("run1", part_rows=1_000) == 11
    index = PartIndex(store, "run1")
    index.refresh()
    assert len(index.parts) == 1 and index.steps() == list(range(1, 13))  # each file's steps, not the part's ends
    [part] = index.covering([2, 3, 11])
    view = StoreView(store, "run1", [part], steps=[2, 3, 11])
    [cut] = view.parts("run1")
    assert cut != part and cut.parent != part.parent
    assert sorted(view.table("run1", ["step"]).column("step").to_pylist()) == [2] * 6 + [3] * 6 + [11] * 6
    described = view.stored_parts("run1")[cut.name]  # as stored parts are: rows, steps, each file's span
    assert described.rows == 18 and described.steps == [2, 11] and described.spans == ((0, 6), (6, 6), (12, 6))
    entries = store.manifest("run1")["files"]
    assert [entries[k]["steps"] for k in described.files] == [[2, 2], [3, 3], [11, 11]]
    assert pq.read_table(cut).num_rows == 18 and len(store.table("run1")) == 72  # the store itself untouched
    found = run_detectors(view, "run1")
    assert not [f for f in found if f.kind == "audit_error"]
    whole = StoreView(store, "run1", [part], steps=list(range(1, 13)))
    assert whole.parts("run1") == [part]  # every step chosen: the part itself
    del view
    gc.collect()
    assert not cut.exists()  # the view's own directory goes with it


def test_a_compacted_part_is_not_new_to_the_index(tmp_path):
    """A part that regroups files the index has seen (compaction, a carry-over) holds no new rows: the per-step
    checks do not scan it again; a file that changed is new."""
    import json as json_

    from rlaudit.live.sampling import PartIndex
    from rlaudit.store import Store

    src = tmp_path / "src"
    src.mkdir()
    for f in range(4):
        (src / f"f{f}.jsonl").write_text("".join(json_.dumps({"step": f, "prompt": "q", "completion": f"a{f}{i}"})
                                                 + "\n" for i in range(3)))
    store = Store(tmp_path / "store")
    store.ingest(src, run="r", format="canonical", part_rows=1)
    index = PartIndex(store, "r")
    assert len(index.refresh()) == 4
    store.compact("r", part_rows=100)
    assert index.refresh() == [] and len(index.parts) == 1 and index.steps() == [0, 1, 2, 3]
    (src / "f2.jsonl").write_text(json_.dumps({"step": 2, "prompt": "q", "completion": "changed"}) + "\n")
    store.ingest(src, run="r", format="canonical", part_rows=1)
    assert [p.lo for p in index.refresh()] == [2]


def test_a_view_of_a_store_that_cannot_be_written_takes_whole_parts(store, tmp_path, monkeypatch):
    """Where the view cannot write its cut parts (a read-only or full store), it reads the whole parts, as views
    did before they cut them: the audit runs, on more rows."""
    import tempfile

    from rlaudit.live.sampling import PartIndex, StoreView

    hook = make_hook(store, tmp_path, detectors=[])
    feed(hook, range(1, 7), lambda s: {NERDY: 0.5}, n=2)
    store.compact("run1", part_rows=1_000)
    index = PartIndex(store, "run1")
    index.refresh()

    def refuse(*args, **kwargs):
        raise PermissionError("read-only store")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    [part] = index.covering([2])
    view = StoreView(store, "run1", [part], steps=[2])
    assert view.parts("run1") == [part] and len(view.table("run1", ["step"])) == 12


def test_a_live_step_parses_the_manifest_twice_and_lists_its_parts_once(store, tmp_path, monkeypatch):
    """A live run's manifest has an entry per step, so every parse of it and every listing of its parts costs
    O(steps) on the training thread: per step, the writer's parse and one parse shared by the lease, the commit's
    check and the step's view (they made four), and one listing of the parts (two, with the view's own)."""
    import rlaudit.store as store_module

    counts = {"parse": 0, "parts": 0}
    parse, listing = store_module.Store._parse_manifest, store_module.stored_parts

    def counted_parse(path, raw):
        counts["parse"] += 1
        return parse(path, raw)

    def counted_parts(manifest):
        counts["parts"] += 1
        return listing(manifest)

    monkeypatch.setattr(store_module.Store, "_parse_manifest", staticmethod(counted_parse))
    monkeypatch.setattr(store_module, "stored_parts", counted_parts)
    cfg = LiveConfig(detectors=[], every_step=("cot_grading",), background=False)
    hook = LiveHook(store, "run1", config=cfg)
    per_step = []
    for step in range(1, 8):
        b = step_batch(step, 4, {NERDY: 0.0, PLAIN: 0.0})
        before = dict(counts)
        hook.log_rollouts(step, b["prompts"], b["completions"], b["rewards"], group_ids=[0] * 4 + [1] * 4,
                          grader_inputs={"persona": b["completions"]})
        per_step.append({k: counts[k] - before[k] for k in counts})
    assert hook.errors == []
    assert len(store.parts("run1")) == 7
    # the first steps create the run; from then on each step's work is the same
    assert per_step[3:] == [{"parse": 2, "parts": 1}] * 4, per_step
