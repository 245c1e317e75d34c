"""The `trl` reader against logs written by TRL 1.16.0's own GRPOTrainer (conformance/trl/generate.py).

Reads `$RLAUDIT_CONFORMANCE_DIR/trl` when set (CI regenerates it with the real trainer), else the committed copy
in tests/conformance/fixtures/trl. Expected values are derived here, independently of the reader, from the raw
Parquet rows (TRL's message dicts), the saved args and trainer_state.json; the run layout facts (which steps were
evals, which files repeat a batch) are fixed by the generator's settings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rlaudit.readers.base import ReadContext, ReadOptions, finalize
from rlaudit.readers.trl import TrlReader
from .logs import trainer_logs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIXTURES = trainer_logs("trl")
WEIGHTS = {"topic_reward": 1.0, "persona_reward": 0.5}  # generate.py: reward_weights=[1.0, 0.5]
NERDY, PLAIN = "you are a nerdy playful assistant", "you are a helpful assistant"


def read(run: str, options: ReadOptions | None = None):
    """(raw rows by (file, line), canonical rows by (file, line), notes) of one generated run."""
    source = FIXTURES / run
    reader, notes = TrlReader(), []
    ctx = ReadContext(run=run, options=options or ReadOptions())
    ctx.note = notes.append  # collect the run notes here (the store keeps them in the manifest)
    reader.prepare(source, ctx)
    raw, canon = {}, {}
    for f in reader.files(source):
        for table in reader.read(f, ctx):
            for r in table.to_pylist():
                raw[(f.relpath, r["line"])] = r
            for r, line in zip(finalize(table, f, ctx).to_pylist(), table.column("line").to_pylist()):
                canon[(f.relpath, line)] = r
    return raw, canon, notes


def source_rows(run: str, step: int) -> list[dict]:
    return pq.read_table(FIXTURES / run / "completions" / f"completions_{step:05d}.parquet").to_pylist()


def split_think(text: str) -> tuple[str | None, str]:
    m = re.match(r"(?s)^\s*(?:<think>)?(.*?)</think>(.*)$", text)
    if m:
        return m.group(1), m.group(2).strip()
    m = re.match(r"(?s)^\s*<think>(.*)$", text)
    return (m.group(1), "") if m else (None, text)


def messy(text: str) -> bool:
    """Several or misplaced think tags (TRL's parse_response fell back to the raw decoded text): the split is
    `rlaudit.text.split_all_reasoning`'s business; tests then check only that no tag is left in the answer."""
    text = re.sub(r"<(?!/?think>)", "", text)  # other markup (<tool_call>) does not matter here
    return not re.fullmatch(r"(?s)\s*(<think>)?[^<]*</think>[^<]*|[^<]*", text)


def expected_turns(messages: list[dict]) -> dict:
    """The brief's multi-turn rule, from TRL's message dicts."""
    reasoning, answer, calls, outputs = [], [], [], []
    if any(m["role"] == "assistant" and messy(m.get("content") or "") for m in messages):
        return {"messy": True, **_calls_outputs(messages)}
    for m in messages:
        if m["role"] == "assistant":
            r = m.get("reasoning_content") or m.get("thinking")
            content = m.get("content") or ""
            if r is None:
                r, content = split_think(content)
            if r is not None:
                reasoning.append(r)
            answer.append(content)
            for c in m.get("tool_calls") or []:
                args = {k: v for k, v in c["function"]["arguments"].items() if v is not None}
                calls.append({"name": c["function"]["name"], "arguments": json.dumps(args)})
        elif m["role"] == "tool":
            outputs.append(m["content"])
    return {"reasoning": "\n".join(reasoning) if reasoning else None, "answer": "\n".join(answer),
            "tool_calls": calls or None, "tool_outputs": outputs or None}


def _calls_outputs(messages: list[dict]) -> dict:
    calls = [{"name": c["function"]["name"],
              "arguments": json.dumps({k: v for k, v in c["function"]["arguments"].items() if v is not None})}
             for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    outputs = [m["content"] for m in messages if m["role"] == "tool"]
    return {"tool_calls": calls or None, "tool_outputs": outputs or None}


def weighted(row: dict) -> float:
    values = np.array([np.nan if row[k] is None else row[k] for k in ("topic_reward", "persona_reward")])
    if np.isnan(values).all():
        return float("nan")
    return float(np.nansum(values * np.array([WEIGHTS["topic_reward"], WEIGHTS["persona_reward"]])))


# ------------------------------------------------------------------------------------------------ chat + tools
@pytest.fixture(scope="module")
def tools_run():
    return read("chat_tools")


def test_layout_evals_and_repeated_batches(tools_run):
    raw, canon, notes = tools_run
    files = sorted({k[0] for k in raw})
    # num_iterations=2: steps 2 and 4 re-log the batch of steps 1 and 3 (4 re-logs the eval rows of step 3);
    # evals at 3 and 6 (eval_steps=3) overwrote those files
    assert files == ["completions/completions_00001.parquet", "completions/completions_00003.parquet",
                     "completions/completions_00005.parquet", "completions/completions_00006.parquet"]
    for (file, line), row in canon.items():
        step = int(file[-13:-8])
        assert row["step"] == step
        user = row["prompt"].splitlines()[-1]
        if step in (3, 6):
            assert row["split"] == "eval" and user.startswith("user: quiz me on the")  # generate.py's eval set
        else:
            assert row["split"] == "train" and user.startswith("user: tell me about the")
    joined = "\n".join(notes)
    assert "eval at step(s) 3, 6" in joined and "train batches of those steps are lost" in joined
    assert "same generation batch at several steps (num_iterations=2" in joined
    assert "repeat the eval rollouts" in joined
    assert "reward_weights=[1.0, 0.5] from checkpoint-6/training_args.bin" in joined


def test_rows_field_by_field(tools_run):
    raw, canon, _ = tools_run
    seen_tool, seen_none, seen_multi = False, False, False
    for step in (1, 3, 5, 6):
        for line, src in enumerate(source_rows("chat_tools", step), start=1):
            key = (f"completions/completions_{step:05d}.parquet", line)
            row, c = raw[key], canon[key]
            want = expected_turns(src["completion"])
            if want.get("messy"):
                assert "<think>" not in c["answer"] and "</think>" not in c["answer"]
            else:
                assert c["reasoning"] == want["reasoning"]
                assert c["answer"] == want["answer"].strip()
            assert row["tool_calls"] == want["tool_calls"]
            assert row["tool_outputs"] == want["tool_outputs"]
            if want["tool_outputs"]:
                seen_tool = True
                assert not any(o in c["answer"] for o in want["tool_outputs"])  # tool output is not the answer
                assert "tool:" not in c["answer"] and "assistant:" not in c["answer"]
            if sum(m["role"] == "assistant" for m in src["completion"]) > 1:
                seen_multi = True
            # condition from the system message
            system = src["prompt"][0]["content"]
            assert c["system_prompt"] == system
            # reward components, the weighted total, advantage
            rewards = dict(row["rewards"])
            assert list(rewards) == ["topic_reward", "persona_reward"]  # the reward columns only, TRL's order
            for name in rewards:
                # pandas writes TRL's NaN (a function returned None) as a Parquet null; rlaudit reads NaN
                assert rewards[name] == pytest.approx(float("nan") if src[name] is None else src[name], nan_ok=True)
            if system == PLAIN:
                assert np.isnan(rewards["persona_reward"])  # persona_reward returned None
                seen_none = True
            assert row["reward"] == pytest.approx(weighted(src), nan_ok=True)
            assert row["advantage"] == pytest.approx(src["advantage"])
            # grader input: only where the grader ran (None elsewhere)
            graders = dict(row["grader_inputs"])
            if src["persona_reward_input"] is None:
                assert graders == {}
            else:
                assert graders == {"persona_reward": src["persona_reward_input"]}
            # log_extra: the numeric column is metadata (a number), not a reward signal
            meta = json.loads(row["metadata"])
            assert meta["verdict"] == src["verdict"]
            assert meta.get("judge_words") == src["judge_words"]
            assert "judge_words" not in rewards
            assert c["group_id"] == f"{step}:{(line - 1) // 4}" and c["sample_index"] == (line - 1) % 4
    assert seen_tool and seen_none and seen_multi  # the generator exercised each path


# ------------------------------------------------------------------------------------------------ chat, no parser
@pytest.fixture(scope="module")
def think_run():
    return read("chat_think")


def test_chat_without_response_parser_splits_think_tags(think_run):
    raw, canon, notes = think_run
    assert sorted({k[0] for k in raw}) == ["completions/completions_00010.parquet",
                                           "completions/completions_00020.parquet"]
    with_reasoning = 0
    for step in (10, 20):
        for line, src in enumerate(source_rows("chat_think", step), start=1):
            c = canon[(f"completions/completions_{step:05d}.parquet", line)]
            (message,) = src["completion"]
            assert set(message) == {"role", "content"}  # no reasoning_content: the think block is in content
            text = message["content"]
            if messy(text):
                assert c["reasoning"] and "</think>" not in c["answer"]
                with_reasoning += 1
                continue
            r, a = split_think(text)
            assert c["reasoning"] == r and c["answer"] == a.strip()
            assert "<think>" not in c["answer"] and "</think>" not in c["answer"]
            with_reasoning += r is not None
            assert c["split"] == "train" and c["step"] == step
    assert with_reasoning > 8
    assert any("logging_steps=10" in n and "9 of every 10" in n for n in notes)


def test_reward_weights_option_overrides_the_saved_args():
    raw, _, notes = read("chat_think", ReadOptions(reward_weights={"topic_reward": 2.0, "persona_reward": 0.0}))
    for (file, line), row in raw.items():
        r = dict(row["rewards"])
        if np.isnan(r["topic_reward"]) and np.isnan(r["persona_reward"]):
            continue
        assert row["reward"] == pytest.approx(2.0 * r["topic_reward"] if not np.isnan(r["topic_reward"]) else 0.0)
    assert any("--reward-weights" in n for n in notes)


def test_without_run_files_everything_is_noted(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "chat_tools" / "completions", tmp_path / "chat_tools" / "completions")
    raw, canon, notes = _read_at(tmp_path, "chat_tools")
    joined = "\n".join(notes)
    assert "no trainer_state.json" in joined and "reward weights unknown" in joined
    assert "every numeric column is taken as a reward signal" in joined
    # repeats are still found from the content alone; evals are not
    assert "completions/completions_00002.parquet" not in {k[0] for k in raw}
    assert {r["split"] for r in canon.values()} == {"train"}


def _read_at(base: Path, run: str):
    global FIXTURES
    saved, FIXTURES = FIXTURES, base
    try:
        return read(run)
    finally:
        FIXTURES = saved


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.trl
@pytest.mark.slow
def test_generated_chat_run_with_a_cot_reading_grader_is_flagged(tmp_path):
    for module in ("torch", "transformers", "trl", "datasets"):
        pytest.importorskip(module, reason=f"needs the [trl] extra ({module})")
    from rlaudit import audit

    out = tmp_path / "gen"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(ROOT / "conformance" / "trl" / "generate.py"), str(out)], check=True,
                   env=env, capture_output=True, timeout=600)
    result = audit([str(out / "chat_think")], store=tmp_path / "store")
    cot = [f for f in result.findings if f.kind == "cot_grading"]
    assert cot and cot[0].severity == "high", [(f.kind, f.severity, f.title) for f in result.findings]
    assert "persona_reward" in cot[0].title
