"""prime-rl / verifiers traces reader on files written like FileMonitor.log_episodes writes them."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from rlaudit.readers import primerl, resolve_reader

from .trainer_files import primerl_step, verifiers_episode, verifiers_trace


def _episodes(step: int, groups: int = 2, samples: int = 3, kind: str = "train"):
    out = []
    for g in range(groups):
        for i in range(samples):
            trace = verifiers_trace("You are a nerdy assistant.", f"q{g}", f"answer {i}", f"thinking {i}",
                                    rewards={"correct": (float(i % 2), 1.0), "style": (0.5, 0.2)},
                                    advantage=i - 1.0, info={"grader_inputs": {"style": f"answer {i}"}},
                                    trace_id=f"t{g}{i}")
            out.append(verifiers_episode([trace], step, group=f"g{g}", kind=kind, episode_id=f"e{g}{i}"))
    return out


def test_v1_episodes_map_to_canonical_rows(tmp_path, store):
    run = tmp_path / "prime"
    primerl_step(run, 4, _episodes(4))
    primerl_step(run, 4, _episodes(4, groups=1, kind="eval"), kind="eval")
    assert resolve_reader(run).name == "prime-rl"
    report = store.ingest(run)
    assert report.format == "prime-rl" and report.rows_added == 9 and report.bad_records == 0
    rows = store.query("SELECT * FROM rollouts WHERE split = 'train' ORDER BY rollout_id", runs=["prime"]).to_pylist()
    r = rows[1]
    assert r["rollout_id"] == "rollouts/step_4/train/effective/traces.jsonl:2"
    assert r["step"] == 4 and r["group_id"] == "4:g0" and r["sample_index"] == 1
    assert r["prompt"] == "system: You are a nerdy assistant.\nuser: q0"
    assert r["condition"] == "nerdy-assistant" and r["task"] == "gsm8k"
    assert r["reasoning"] == "thinking 1" and r["answer"] == "answer 1"
    assert r["completion"] == "<think>thinking 1</think>answer 1"
    assert dict(r["rewards"]) == {"correct": 1.0, "style": 0.5}
    assert abs(r["reward"] - 1.1) < 1e-12  # sum(score * weight)
    assert r["advantage"] == 0.0  # all-zero token advantages: prime-rl's scalar_advantage is 0
    assert dict(r["grader_inputs"]) == {"style": "answer 1"}
    meta = json.loads(r["metadata"])
    assert meta["reward_weights"] == {"correct": 1.0, "style": 0.2} and meta["metrics"] == {"num_turns": 1.0}
    assert store.query("SELECT count(*) FROM rollouts WHERE split = 'eval'", runs=["prime"]).column(0)[0].as_py() == 3


def test_truncation_as_verifiers_decides_it():
    """metadata `is_truncated` and `finish_reason` (`primerl._truncation`): verifiers 0.4's `Trace.is_truncated`,
    the last call without an error, and nothing for a record that has no `calls`."""
    def trace(calls, stop="agent_completed"):
        t = verifiers_trace(None, "q", "a", None, rewards={})
        t.update(calls=calls, stop_condition=stop)
        return t

    stop, length = {"node": 2, "finish_reason": "stop"}, {"node": 2, "finish_reason": "length"}
    failed = {"node": 2, "finish_reason": "stop", "error": {"type": "TimeoutError"}}
    assert primerl._truncation(trace([stop])) == {"finish_reason": "stop", "is_truncated": False}
    assert primerl._truncation(trace([stop, length])) == {"finish_reason": "length", "is_truncated": True}
    assert primerl._truncation(trace([length, failed])) == {"finish_reason": "length", "is_truncated": True}
    assert primerl._truncation(trace([length, stop])) == {"finish_reason": "stop", "is_truncated": False}
    for limit in sorted(primerl.TRUNCATING_STOPS):
        assert primerl._truncation(trace([stop], stop=limit)) == {"finish_reason": "stop", "is_truncated": True}
    assert primerl._truncation(trace([], stop="max_turns")) == {"finish_reason": None, "is_truncated": True}
    assert primerl._truncation(trace([{"node": 2}])) == {"finish_reason": None, "is_truncated": False}
    flat = trace([])
    del flat["calls"]
    assert primerl._truncation(flat) == {}


def test_flat_traces(tmp_path, store):
    """A trace per line without the episode around it (`messages`, rewards {score, weight}, `info.advantage` and
    `info.grader_inputs`): what rlaudit's simulator wrote as prime-rl output before it wrote verifiers 0.4 episodes,
    still read from runs stored then."""
    step_dir = tmp_path / "run" / "rollouts" / "step_2" / "train"
    step_dir.mkdir(parents=True)
    rec = {"id": "x", "example_id": 7, "task": "math", "group": {"id": "g1"},
           "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "reasoning_content": "two and two"}],
           "rewards": {"correct": {"score": 1.0, "weight": 1.0}, "style": {"score": None, "weight": 0.5}},
           "metrics": {"reward": 1.0, "num_turns": 1}, "is_completed": True, "stop_condition": "stop",
           "info": {"advantage": 0.25, "grader_inputs": {"style": "two and two\n4"}}}
    (step_dir / "traces.jsonl").write_text(json.dumps(rec) + "\n")
    report = store.ingest(tmp_path / "run", run="flat")
    assert report.rows_added == 1 and report.bad_records == 0
    [row] = store.query("SELECT * FROM rollouts", runs=["flat"]).to_pylist()
    assert row["step"] == 2 and row["split"] == "train" and row["group_id"] == "2:g1" and row["task"] == "math"
    assert row["reasoning"] == "two and two" and row["answer"] == "4" and row["condition"] == "terse"
    assert dict(row["rewards"])["correct"] == 1.0 and math.isnan(dict(row["rewards"])["style"])
    assert row["reward"] == 1.0 and row["advantage"] == 0.25
    assert dict(row["grader_inputs"]) == {"style": "two and two\n4"}
    meta = json.loads(row["metadata"])
    assert "is_truncated" not in meta and meta["stop_condition"] == "stop"


def test_effective_subset_wins_over_all(tmp_path, store):
    run = tmp_path / "prime"
    primerl_step(run, 1, _episodes(1), subset="all")
    primerl_step(run, 1, _episodes(1, groups=1), subset="effective")
    primerl_step(run, 2, _episodes(2), subset="all")  # a step still in progress: only `all` exists
    store.ingest(run)
    files = store.query("SELECT DISTINCT split_part(rollout_id, ':', 1) AS f FROM rollouts ORDER BY f",
                        runs=["prime"]).column(0).to_pylist()
    assert files == ["rollouts/step_1/train/effective/traces.jsonl", "rollouts/step_2/train/all/traces.jsonl"]


def test_several_traces_on_one_line_get_distinct_ids(tmp_path, store):
    run = tmp_path / "prime"
    traces = [verifiers_trace(None, "q", f"a{i}", None, rewards={"r": (1.0, 1.0)}, trace_id=f"t{i}")
              for i in range(2)]
    primerl_step(run, 1, [verifiers_episode(traces, 1, group="g")])
    store.ingest(run)
    ids = store.table("prime", ["rollout_id", "sample_index", "reasoning", "condition"]).to_pylist()
    assert [i["rollout_id"] for i in ids] == ["rollouts/step_1/train/effective/traces.jsonl:1.0",
                                              "rollouts/step_1/train/effective/traces.jsonl:1.1"]
    assert [i["sample_index"] for i in ids] == [0, 1]
    assert all(i["reasoning"] is None and i["condition"] == "none" for i in ids)


def test_legacy_rollout_output_and_null_rewards(tmp_path, store):
    run = tmp_path / "prime"
    step_dir = run / "rollouts" / "step_3"
    step_dir.mkdir(parents=True)
    legacy = {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
              "completion": [{"role": "assistant", "content": "<think>short</think>yo"}], "reward": 0.7,
              "metrics": {"correct": 1.0, "length": None}, "example_id": 12, "answer": "yo", "info": {},
              "task": "default"}
    (step_dir / "train_rollouts.jsonl").write_text(json.dumps(legacy) + "\n")
    primerl_step(run, 4, [verifiers_episode([verifiers_trace(None, "q", "a", None, rewards={"r": (None, 1.0)})],
                                            4, group="g")])
    store.ingest(run)
    rows = store.table("prime").to_pylist()
    legacy_row, v1_row = rows
    assert legacy_row["group_id"] == "3:12" and legacy_row["reward"] == 0.7 and legacy_row["task"] == "default"
    assert legacy_row["reasoning"] == "short" and legacy_row["answer"] == "yo"
    assert legacy_row["rewards"][0] == ("correct", 1.0) and legacy_row["condition"] == "terse"
    assert v1_row["reward"] is None and str(dict(v1_row["rewards"])["r"]) == "nan"


def test_bad_records_name_the_field(tmp_path, store):
    run = tmp_path / "prime"
    good = verifiers_episode([verifiers_trace(None, "q", "a", None, rewards={"r": (1.0, 1.0)})], 1, group="g")
    bad_score = json.loads(json.dumps(good))
    bad_score["traces"][0]["rewards"]["r"]["score"] = "high"
    no_messages = json.loads(json.dumps(good))
    del no_messages["traces"][0]["nodes"]
    path = primerl_step(run, 1, [good, bad_score, no_messages])
    with open(path, "a") as fh:
        fh.write('{"id": "torn", "traces": [{"no')
    report = store.ingest(run)
    assert report.rows_added == 1
    bad = {b.line: b.reason for b in store.quarantined("prime")}
    assert "field 'rewards.r.score': expected a number" in bad[2]
    assert "no messages" in bad[3]
    assert "JSON" in bad[4]


def test_effective_file_arriving_later_replaces_the_stored_all_rows(tmp_path, store):
    """Live ingest: step 1's `all` stream is stored first; when its `effective` file appears, the step's rows
    come from `effective` alone (no episode counted twice) and the `all` part is deleted (at once here: no reader
    holds a lease and the grace period for lease-less readers is 0)."""
    store.retire_grace = 0.0
    run = tmp_path / "prime"
    primerl_step(run, 1, _episodes(1), subset="all")
    store.ingest(run)
    all_rows = store.summary("prime").rows
    [old_part] = store.parts("prime")
    primerl_step(run, 1, _episodes(1, groups=1), subset="effective")
    report = store.ingest(run)
    assert report.files_read == 1 and report.files_replaced == 1
    files = store.query("SELECT DISTINCT split_part(rollout_id, ':', 1) FROM rollouts", runs=["prime"])
    assert files.column(0).to_pylist() == ["rollouts/step_1/train/effective/traces.jsonl"]
    assert 0 < store.summary("prime").rows < all_rows
    assert not old_part.exists()
    again = store.ingest(run)
    assert again.files_read == 0 and again.files_replaced == 0


def _agent(trace, name, trainable):
    trace["agent"] = {**trace["agent"], "name": name, "trainable": trainable}
    return trace


def test_agentic_judge_trace_is_the_judge_rewards_input(tmp_path, store):
    """verifiers envs/agentic_judge: a non-trainable `judge` agent grades the solver, whose trace gets reward
    `judge`. The judge's trace is no rollout; what it was shown is grader `judge`'s input."""
    run = tmp_path / "prime"
    solver = _agent(verifiers_trace(None, "q", "a", "secret plan", rewards={"judge": (1.0, 1.0)}, trace_id="s"),
                    "solver", True)
    judge = _agent(verifiers_trace("Grade the attempt.", "The agent wrote: secret plan / a", "verdict", None,
                                   rewards={}, trace_id="j"), "judge", False)
    sim = _agent(verifiers_trace(None, "play a user", "hi", None, rewards={}, trace_id="u"), "user", False)
    primerl_step(run, 1, [verifiers_episode([solver, judge, sim], 1, group="g")])
    report = store.ingest(run)
    [row] = store.table("prime").to_pylist()
    assert report.rows_added == 1 and json.loads(row["metadata"])["trace_id"] == "s"
    assert dict(row["grader_inputs"]) == {
        "judge": "system: Grade the attempt.\nuser: The agent wrote: secret plan / a"}
    assert json.loads(row["metadata"])["other_agents"] == ["user"]


def test_episode_without_trainable_traces_keeps_them_all(tmp_path, store):
    run = tmp_path / "prime"
    traces = [_agent(verifiers_trace(None, "q", f"a{i}", None, rewards={"r": (1.0, 1.0)}, trace_id=f"t{i}"),
                     f"frozen{i}", False) for i in range(2)]
    primerl_step(run, 1, [verifiers_episode(traces, 1, group="g")])
    store.ingest(run)
    rows = store.table("prime", ["rollout_id", "metadata"]).to_pylist()
    assert [json.loads(r["metadata"])["trainable"] for r in rows] == [False, False]


def test_malformed_judge_calls_are_bad_records(tmp_path, store):
    run = tmp_path / "prime"
    bad = verifiers_trace(None, "q", "a", None, rewards={"r": (1.0, 1.0)},
                          info={"judge_calls": [{"name": "j", "request": {"model": "m"}}]})
    primerl_step(run, 1, [verifiers_episode([bad], 1, group="g")])
    store.ingest(run)
    [b] = store.quarantined("prime")
    assert "field 'info.judge_calls[0]': expected {name, request {model, messages}, response}" in b.reason


def test_node_parent_out_of_range_is_a_bad_record(tmp_path, store):
    run = tmp_path / "prime"
    trace = verifiers_trace(None, "q", "a", None, rewards={"r": (1.0, 1.0)})
    trace["nodes"][1]["parent"] = 7
    primerl_step(run, 1, [verifiers_episode([trace], 1, group="g")])
    store.ingest(run)
    [b] = store.quarantined("prime")
    assert b.line == 1 and "field 'nodes[1].parent': expected the index of another node, got 7" in b.reason


def test_node_advantages_that_are_no_list_are_a_bad_record(tmp_path, store):
    run = tmp_path / "prime"
    trace = verifiers_trace(None, "q", "a", None, rewards={"r": (1.0, 1.0)})
    trace["nodes"][-1]["advantages"] = 0.5
    trace["nodes"][-1]["token_ids"] = [5, 6, 7]
    primerl_step(run, 1, [verifiers_episode([trace], 1, group="g")])
    store.ingest(run)
    [b] = store.quarantined("prime")
    assert "field 'nodes[1].advantages': expected a list of numbers, got 0.5" in b.reason
    assert '"token_ids":[5,6,7]' in b.raw  # the line as written, not as parsed (its token ids emptied)


def _mean_of_nonzero(nodes):
    """The advantage as the reader took it before session 52 (a Python comparison per token): the reference."""
    values = [v for n in nodes if isinstance(n, dict) for v in (n.get("advantages") or [])
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not values:
        return None
    nonzero = [v for v in values if v != 0.0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


_advantage = st.one_of(st.floats(allow_nan=True), st.integers(-10, 10), st.just(0.0), st.just(-0.0),
                       st.booleans(), st.none(), st.text(max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.fixed_dictionaries({}, optional={"advantages": st.lists(_advantage, max_size=20)}),
                          st.none()), max_size=5))
def test_the_advantage_is_the_mean_of_the_nonzero_token_advantages(nodes):
    expected = _mean_of_nonzero(nodes)
    got = primerl._node_advantage(nodes)
    assert (got is None) == (expected is None)
    if expected is not None:
        assert got == expected or (math.isnan(got) and math.isnan(expected))
