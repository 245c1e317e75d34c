"""prime-rl and vf-eval logs written by verifiers 0.4.0's own classes (`conformance/verifiers/generate.py`) read
into canonical rows, field by field.

The fixtures are the generator's output: `$RLAUDIT_CONFORMANCE_DIR/verifiers` when set (CI regenerates it with
the real verifiers), else the committed copy under `fixtures/verifiers`. Expected texts are taken from the raw
records (the reasoning words are random), so each assertion states the mapping rule, not a copy of the output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlaudit import AuditConfig, audit
from rlaudit.errors import RlauditError
from rlaudit.readers import ReadOptions, reader_names, resolve_reader
from .logs import trainer_logs

FIXTURES = trainer_logs("verifiers")
PRIME = FIXTURES / "prime-rl"
VF_EVAL = FIXTURES / "vf-eval" / "tool-math--policy--default--0001"
STEP1 = "rollouts/step_1/train/effective/traces.jsonl"


def _episodes(relpath: str, root: Path = PRIME) -> list[dict]:
    return [json.loads(line) for line in (root / relpath).read_text().splitlines() if line.strip()]


def _solver(episode: dict) -> dict:
    [trace] = [t for t in episode["traces"] if t["agent"]["trainable"]]
    return trace


def _assistant(trace: dict) -> list[dict]:
    return [n["message"] for n in trace["nodes"] if n.get("sampled")]


@pytest.fixture(scope="module")
def prime(tmp_path_factory):
    from rlaudit.store import Store

    store = Store(tmp_path_factory.mktemp("store"))
    report = store.ingest(PRIME, run="prime")
    rows = store.query("SELECT * FROM rollouts ORDER BY rollout_id", runs=["prime"]).to_pylist()
    return store, report, {r["rollout_id"]: r for r in rows}


def test_prime_rl_layout_reads_every_policy_trace_once(prime):
    store, report, rows = prime
    assert resolve_reader(PRIME).name == "prime-rl"
    assert report.format == "prime-rl" and report.bad_records == 0
    # step 1 `effective` wins over its `all` copy; step 4 is in progress (only `all`); one eval file
    files = sorted({rid.rsplit(":", 1)[0] for rid in rows})
    assert files == [STEP1, "rollouts/step_2/train/effective/traces.jsonl",
                     "rollouts/step_3/train/effective/traces.jsonl", "rollouts/step_4/eval/effective/traces.jsonl",
                     "rollouts/step_4/train/all/traces.jsonl"]
    solver_traces = sum(len(_episodes(f)) for f in files)  # one trainable trace per episode
    assert len(rows) == report.rows_added == solver_traces == 4 * 24 + 4


def test_non_trainable_agents_are_not_rollouts(prime):
    _, report, rows = prime
    assert not any(json.loads(r["metadata"])["agent"] == "user" for r in rows.values())
    assert any("non-trainable agent 'user'" in n for n in report.notes)
    first = json.loads(rows[f"{STEP1}:1.1"]["metadata"])
    assert first["agent"] == "solver" and first["other_agents"] == ["user"]
    # the user simulator is traces[0] of the episode line: the solver's row points at traces[1]
    assert f"{STEP1}:1.0" not in rows and f"{STEP1}:1.1" in rows
    # groups hold only the solver's traces: 4 per group
    sizes = {}
    for r in rows.values():
        sizes[r["group_id"]] = sizes.get(r["group_id"], 0) + 1
    assert set(sizes.values()) == {4} | ({2} if any(k.startswith("4:eval") for k in sizes) else set())


def test_multi_turn_tool_episode_field_by_field(prime):
    _, _, rows = prime
    episode = _episodes(STEP1)[0]
    trace = _solver(episode)
    first, last = _assistant(trace)
    row = rows[f"{STEP1}:1.1"]
    assert row["step"] == 1 and row["split"] == "train"
    assert row["group_id"] == "1:train-1-0" and row["sample_index"] == 0
    assert row["task"] == "tool-math"
    assert row["system_prompt"] == "You are a careful math tutor."
    assert row["condition"] == "careful-math-tutor"
    assert row["prompt"] == "system: You are a careful math tutor.\nuser: What is 45 * 49?"
    assert first["content"] == "Let me use the calculator." and first["tool_calls"][0]["name"] == "calculator"
    # every assistant turn's reasoning is reasoning; the answer is the visible content of every turn
    assert row["reasoning"] == f"{first['reasoning_content']}\n{last['reasoning_content']}"
    assert row["answer"] == f"Let me use the calculator.\n{last['content']}"
    assert row["completion"] == (f"<think>{first['reasoning_content']}</think>Let me use the calculator.\n"
                                 f"<think>{last['reasoning_content']}</think>{last['content']}")
    assert row["tool_calls"] == [{"name": "calculator", "arguments": '{"expression": "45*49"}'}]
    assert row["tool_outputs"] == ["2205"]
    assert "calculator" not in row["answer"].replace("Let me use the calculator.", "")
    assert dict(row["rewards"]) == {"exact": 0.0, "format": 1.0, "correctness": 0.0}
    assert row["reward"] == pytest.approx(0.0 * 1.0 + 1.0 * 0.2 + 0.0 * 0.5)  # Trace.reward: sum(score * weight)
    assert row["advantage"] == pytest.approx(-0.375)  # GRPO: 0.2 - mean(0.2, 0.2, 0.2, 1.7)
    meta = json.loads(row["metadata"])
    assert meta["reward_weights"] == {"exact": 1.0, "format": 0.2, "correctness": 0.5}
    assert meta["metrics"] == {"num_tool_calls": 1.0}
    assert meta["policy"] == {"start": 0, "end": 0} and meta["off_policy"] == 0
    assert meta["episode_id"] == episode["id"] and meta["trace_id"] == trace["id"]
    assert meta["verifiers"] == "0.4.0" and meta["stop_condition"] == "agent_completed"
    assert "judge_calls" not in json.dumps(meta)
    assert meta["judge_replies"] == {"correctness": "no"}  # the stub judge's verdict: 2208 is wrong


def test_judge_call_is_the_graders_input(prime):
    _, _, rows = prime
    trace = _solver(_episodes(STEP1)[0])
    [call] = trace["info"]["judge_calls"]
    assert call["name"] == "correctness" and call["request"]["model"] == "judge-model"
    row = rows[f"{STEP1}:1.1"]
    seen = dict(row["grader_inputs"])
    assert list(seen) == ["correctness"]
    assert seen["correctness"] == "user: " + call["request"]["messages"][0]["content"]
    # this judge took the fallback path: it was handed the final turn's reasoning
    assert _assistant(trace)[-1]["reasoning_content"] in seen["correctness"]
    # a judge on the normal path saw the reply only
    other = rows[f"{STEP1}:2.1"]
    assert _assistant(_solver(_episodes(STEP1)[1]))[-1]["reasoning_content"] not in dict(other["grader_inputs"])[
        "correctness"]


def test_all_branches_are_read(prime):
    _, _, rows = prime
    episode = _episodes(STEP1)[2]
    trace = _solver(episode)
    leaves = set(range(len(trace["nodes"]))) - {n.get("parent") for n in trace["nodes"]}
    assert len(leaves) == 2  # the compaction restarted from the system message: a second branch
    first, last = _assistant(trace)
    row = rows[f"{STEP1}:3.1"]
    assert json.loads(row["metadata"])["branches"] == 2
    assert row["prompt"] == "system: You are a careful math tutor.\nuser: What is 45 * 49?"
    assert row["reasoning"] == f"{first['reasoning_content']}\n{last['reasoning_content']}"
    assert row["answer"] == f"Let me use the calculator.\n{last['content']}"
    assert row["tool_calls"] == [{"name": "calculator", "arguments": '{"expression": "45*49"}'}]
    # the summary the second branch starts from is input between the policy's turns, not its text
    assert row["tool_outputs"] == ["Summary so far: the calculator returned 2205 for What is 45 * 49?"]
    assert "Summary" not in row["answer"] and "Summary" not in row["completion"]


def test_off_policy_work_is_kept(prime):
    _, _, rows = prime
    by_group = {}
    for r in rows.values():
        meta = json.loads(r["metadata"])
        by_group.setdefault(r["group_id"], set()).add((json.dumps(meta.get("policy")), meta.get("off_policy")))
    # generator: odd groups dispatched two versions back and spanning one update; prime-rl episode_staleness
    assert by_group["1:train-1-1"] == {('{"start": 0, "end": 1}', 0)}
    assert by_group["2:train-2-1"] == {('{"start": 0, "end": 1}', 1)}
    assert by_group["3:train-3-1"] == {('{"start": 0, "end": 1}', 2)}
    assert by_group["3:train-3-0"] == {('{"start": 2, "end": 2}', 0)}
    assert by_group["4:train-4-3"] == {('{"start": 1, "end": 2}', 2)}
    # eval work keeps its policy span; staleness is a train-batch notion
    assert by_group["4:eval-4-0"] == {('{"start": 3, "end": 3}', None)}


def test_reward_that_did_not_run_is_nan(prime):
    _, _, rows = prime
    row = next(r for r in rows.values() if r["group_id"] == "1:train-1-1" and r["sample_index"] == 0)
    assert list(dict(row["rewards"])) == ["exact"] and math.isnan(dict(row["rewards"])["exact"])
    assert row["reward"] is None and row["grader_inputs"] == []
    assert row["tool_calls"] is None and row["tool_outputs"] is None  # a single-turn reply


def test_a_call_stopped_at_the_length_limit_is_truncation(prime):
    """verifiers' `Trace.is_truncated`: a framework limit ended the trace, or its last model call without an error
    finished at the length limit. Its reasoning is a field of its own (no unclosed think tag) and its answer is
    there, so the call's finish_reason is the only mark: metadata `finish_reason` and `is_truncated`, which the
    truncation check of training_health reads."""
    from rlaudit.detectors.training_health import TRUNCATED_SQL

    store, _, rows = prime
    truncated = set()
    for relpath in sorted({rid.rsplit(":", 1)[0] for rid in rows}):
        for line, episode in enumerate(_episodes(relpath), start=1):
            for i, trace in enumerate(episode["traces"]):
                rid = f"{relpath}:{line}.{i}" if len(episode["traces"]) > 1 else f"{relpath}:{line}"
                if rid not in rows:
                    continue
                last = [c for c in trace["calls"] if c.get("error") is None][-1]
                cut = last["finish_reason"] == "length" or trace["stop_condition"] in (
                    "max_turns", "max_input_tokens", "max_output_tokens", "max_total_tokens", "compaction_failed")
                meta = json.loads(rows[rid]["metadata"])
                assert meta["is_truncated"] is cut and meta["finish_reason"] == last["finish_reason"], rid
                if cut:
                    truncated.add(rid)
    assert len(truncated) == 1  # the generator's one cut trace
    [rid] = truncated
    assert rows[rid]["answer"] and "<think>" in rows[rid]["completion"] and "</think>" in rows[rid]["completion"]
    found = store.query(f"""SELECT rollout_id FROM (SELECT *, NULL AS th_len, NULL AS th_max FROM rollouts)
                            WHERE {TRUNCATED_SQL}""", runs=["prime"]).column("rollout_id").to_pylist()
    assert found == [rid]


def test_eval_split(prime):
    _, _, rows = prime
    evals = [r for r in rows.values() if "/eval/" in r["rollout_id"]]
    assert len(evals) == 4 and {r["split"] for r in evals} == {"eval"} and {r["step"] for r in evals} == {4}


def test_vf_eval_run_directory(store):
    assert "verifiers" in reader_names()
    assert resolve_reader(VF_EVAL).name == "verifiers"
    assert resolve_reader(VF_EVAL / "traces.jsonl").name == "verifiers"
    report = store.ingest(VF_EVAL, run="vfeval")
    episodes = _episodes("traces.jsonl", VF_EVAL)
    assert report.format == "verifiers" and report.bad_records == 0 and report.rows_added == len(episodes) == 6
    rows = store.query("SELECT * FROM rollouts ORDER BY rollout_id", runs=["vfeval"]).to_pylist()
    assert {r["split"] for r in rows} == {"eval"} and {r["step"] for r in rows} == {0}
    row = rows[0]
    trace = _solver(episodes[0])
    assert episodes[0]["run"] == {"type": "eval", "id": "vfeval-0001", "name": "tool-math-eval"}
    assert row["rollout_id"] == "traces.jsonl:1.1" and row["group_id"] == "0:vfeval-0-0"  # the task key
    assert [r["sample_index"] for r in rows if r["group_id"] == "0:vfeval-0-0"] == [0, 1]
    assert row["reasoning"] == "\n".join(m["reasoning_content"] for m in _assistant(trace))
    assert dict(row["grader_inputs"])["correctness"].startswith("user: Grade the response to the question.")
    meta = json.loads(row["metadata"])
    assert "policy" not in meta and "off_policy" not in meta and meta["other_agents"] == ["user"]


def test_grader_input_option_reads_a_trace_field_or_fails_clearly(store, tmp_path):
    report = store.ingest(VF_EVAL, run="gi", options=ReadOptions(grader_inputs={"answer_key": "task.data.answer"}))
    assert report.rows_added == 6
    row = store.query("SELECT grader_inputs FROM rollouts LIMIT 1", runs=["gi"]).to_pylist()[0]
    assert dict(row["grader_inputs"])["answer_key"] == _episodes("traces.jsonl", VF_EVAL)[0]["task"]["data"]["answer"]
    with pytest.raises(RlauditError, match=r"traces.jsonl: --grader-input field\(s\) \['info.judge_prompt'\] not"):
        store.ingest(VF_EVAL, run="gi2", options=ReadOptions(grader_inputs={"judge": "info.judge_prompt"}))


def test_judge_that_saw_the_reasoning_is_a_high_cot_grading_finding(tmp_path):
    leaked = 0
    for f in sorted((PRIME / "rollouts").rglob("traces.jsonl")):
        if "step_1/train/all" in str(f) or "/eval/" in str(f):  # a copy of step 1; the audit reads train
            continue
        for episode in _episodes(str(f.relative_to(PRIME))):
            trace = _solver(episode)
            calls = trace.get("info", {}).get("judge_calls", [])
            leaked += any(_assistant(trace)[-1]["reasoning_content"] in c["request"]["messages"][0]["content"]
                          for c in calls)
    result = audit([PRIME], store=tmp_path / "store", run_names=["prime"],
                   config=AuditConfig(detectors=["cot_grading"]))
    [finding] = [f for f in result.findings if f.kind == "cot_grading"]
    assert finding.severity == "high" and finding.get("grader") == "correctness"
    assert leaked >= 10 and finding.get("exposed_samples") == leaked
