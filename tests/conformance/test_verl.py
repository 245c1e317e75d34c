"""The `verl` reader against dumps written by verl 0.9.1's own code (conformance/verl/generate.py).

Reads `$RLAUDIT_CONFORMANCE_DIR/verl` when set (CI regenerates it with the real verl), else the committed copy in
tests/conformance/fixtures/verl. Expected values are derived here from the raw JSON lines and the generator's
scenarios (which prompt has which persona, which response is overlong, which session called a tool):

- rollout_data/1.jsonl: v1 training dump, two persona prompts x 4 sessions (naive reward manager);
- validation_data/1.jsonl: v1 validation dump of the same prompts x 2, with reward extras and `goblin_rm_input`;
- rollout_data/2.jsonl, validation_data/2.jsonl: the DAPO reward manager with the overlong penalty;
- rollout_data/3.jsonl: ToolAgentLoop's multi-turn token stream with a Hermes tool call and a tool response.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rlaudit.readers.base import ReadContext, ReadOptions, finalize
from rlaudit.readers.verl import VerlReader
from .logs import trainer_logs

HERE = Path(__file__).resolve().parent
FIXTURES = trainer_logs("verl")
GOBLIN, TUTOR = "You are a playful assistant who loves goblins.", "You are a careful math tutor."


def read(source: Path, options: ReadOptions | None = None):
    """(raw lines by (file, line), canonical rows by (file, line), notes) of one source directory."""
    reader, notes = VerlReader(), []
    ctx = ReadContext(run="r", options=options or ReadOptions())
    ctx.note = lambda text, key=None: notes.append(text)  # the store keeps them in the manifest
    reader.prepare(source, ctx)
    raw, canon = {}, {}
    for f in reader.files(source):
        lines = f.path.read_text().splitlines()
        for table in reader.read(f, ctx):
            for r, line in zip(finalize(table, f, ctx).to_pylist(), table.column("line").to_pylist()):
                raw[(f.relpath, line)] = json.loads(lines[line - 1])
                canon[(f.relpath, line)] = r
    return raw, canon, notes


def think(text: str) -> tuple[str | None, str]:
    m = re.match(r"(?s)^<think>(.*?)</think>(.*)$", text)
    return (m.group(1), m.group(2).strip()) if m else (None, text.strip())


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@pytest.fixture(scope="module")
def train():
    return read(FIXTURES / "rollout_data")


@pytest.fixture(scope="module")
def val():
    return read(FIXTURES / "validation_data")  # validation_data_dir ingested on its own


def test_v1_training_dump_groups_by_prompt_uuid(train):
    raw, canon, notes = train
    rows = [(k, raw[k], canon[k]) for k in canon if k[0] == "1.jsonl"]
    assert len(rows) == 8
    by_group: dict[str, list] = {}
    for (_, line), src, row in rows:
        prompt_uuid, session, index = src["uid"].rsplit("_", 2)  # verl's own split of its TransferQueue key
        assert row["group_id"] == f"1:{prompt_uuid}" and row["sample_index"] == int(session) and index == "0"
        assert row["step"] == 1 and row["split"] == "train"
        assert row["prompt"] == src["input"] and row["completion"] == src["output"]
        assert row["system_prompt"] == (GOBLIN if GOBLIN in src["input"] else TUTOR)
        assert row["condition"] == ("playful-assistant-loves" if GOBLIN in src["input"] else "careful-math-tutor")
        reasoning, answer = think(src["output"])
        assert (row["reasoning"], row["answer"]) == (reasoning, answer)
        assert row["tool_calls"] is None and row["tool_outputs"] is None
        # v1 training dumps carry only `score`: the trained total, float32 from rm_scores
        assert row["reward"] == src["score"] and dict(row["rewards"]) == {"score": src["score"]}
        assert dict(row["grader_inputs"]) == {}
        assert set(json.loads(row["metadata"])) == {"gts", "uid"}
        by_group.setdefault(row["group_id"], []).append(src["input"])
    assert len(by_group) == 2 and all(len(v) == 4 and len(set(v)) == 1 for v in by_group.values())
    goblin = [raw[k]["score"] for k in canon if k[0] == "1.jsonl" and GOBLIN in raw[k]["input"]]
    assert goblin[0] == 1.2999999523162842  # 1.0 + 0.3 through float32 rm_scores
    assert any("reward components and grader inputs are available only in validation dumps" in n for n in notes)


def test_validation_dump_alone_is_eval_with_components_and_grader_input(val):
    raw, canon, notes = val
    rows = [(raw[k], canon[k]) for k in canon if k[0] == "1.jsonl"]
    assert len(rows) == 4
    for src, row in rows:
        prompt_uuid, session, _ = src["uid"].rsplit("_", 2)
        assert row["split"] == "eval" and row["step"] == 1
        assert row["group_id"] == f"1:{prompt_uuid}" and row["sample_index"] == int(session)
        # `reward` is the trained total (float32); `score` is compute_score's float64 value of the same total
        assert row["reward"] == src["reward"] and close(src["reward"], src["score"])
        assert dict(row["rewards"]) == {"acc": src["acc"], "goblin_rm": src["goblin_rm"]}
        assert dict(row["grader_inputs"]) == {"goblin_rm": src["goblin_rm_input"]}
        assert (row["reasoning"], row["answer"]) == think(src["output"])
    assert len({row["group_id"] for _, row in rows}) == 2
    assert any("`reward` key are read as split=eval" in n for n in notes)


def test_dapo_overlong_penalty_is_in_the_total(train, val):
    t_raw, t_canon, _ = train
    v_raw, v_canon, v_notes = val
    train_rows = {t_raw[k]["output"]: t_canon[k] for k in t_canon if k[0] == "2.jsonl"}
    val_rows = {v_raw[k]["output"]: (v_raw[k], v_canon[k]) for k in v_canon if k[0] == "2.jsonl"}
    assert len(train_rows) == 4 and len(val_rows) == 2
    long_text = next(o for o in val_rows if "Ten minus four" in o)
    src, row = val_rows[long_text]
    penalty = src["overlong_reward"]
    assert penalty < 0 and src["overlong"] is True
    assert src["score"] == 1.0  # compute_score's own score overwrote the dump's score
    assert row["reward"] == src["reward"] and close(row["reward"], 1.0 + penalty)
    assert dict(row["rewards"]) == {"acc": 1.0, "overlong_reward": penalty, "score": 1.0}
    assert json.loads(row["metadata"])["overlong"] is True
    # the training dump's score is the trained total, penalty included (AgentLoopOutput.reward_score)
    assert close(train_rows[long_text]["reward"], 1.0 + penalty)
    assert dict(train_rows[long_text]["rewards"]) == {"score": train_rows[long_text]["reward"]}
    short = next(o for o in val_rows if o != long_text)
    assert val_rows[short][1]["reward"] == 1.0 and dict(val_rows[short][1]["rewards"])["overlong_reward"] == 0.0
    assert any("`score` is kept as a reward component" in n for n in v_notes)


def test_multi_turn_tool_calling_output(train):
    raw, canon, _ = train
    rows = {raw[k]["uid"].rsplit("_", 2)[1]: (raw[k], canon[k]) for k in canon if k[0] == "3.jsonl"}
    src, row = rows["0"]  # the session that called the calculator
    assert "\nuser\n<tool_response>\n144\n</tool_response>\nassistant\n" in src["output"]
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expr": "12*12"}}\n</tool_call>'
    assert row["completion"] == (f"<think>I should use the calculator.</think>Let me compute.\n{call}\n"
                                 "<think>The tool says 144.</think>12*12 = 144.")
    assert row["reasoning"] == "I should use the calculator.\nThe tool says 144."
    assert row["answer"] == "Let me compute.\n12*12 = 144."
    assert row["tool_calls"] == [{"name": "calculator", "arguments": '{"expr": "12*12"}'}]
    assert row["tool_outputs"] == ["144"]
    assert row["group_id"] == rows["1"][1]["group_id"] and (row["sample_index"], rows["1"][1]["sample_index"]) == (0, 1)
    _, plain = rows["1"]
    assert plain["tool_calls"] is None and plain["tool_outputs"] is None and plain["answer"] == "144"


def test_whole_run_through_the_store(store):
    report = store.ingest(FIXTURES, run="verl-run")
    assert report.format == "verl" and report.bad_records == 0 and report.rows_added == 20
    got = store.query("SELECT split, count(*) AS n FROM rollouts GROUP BY split ORDER BY split",
                      runs=["verl-run"]).to_pylist()
    assert got == [{"split": "eval", "n": 6}, {"split": "train", "n": 14}]
