"""RlauditCallback's event handling without a trainer: file lag, logging gaps, missing logs, other ranks."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers", reason="needs the [trl] extra (transformers is not importable)")

from rlaudit.live import LiveConfig  # noqa: E402
from rlaudit.live.alerts import AlertManager, JsonlSink  # noqa: E402
from rlaudit.live.trl_callback import RlauditCallback  # noqa: E402

from .helpers import NERDY, PLAIN, write_trl_step  # noqa: E402

pytestmark = pytest.mark.trl


def make(tmp_path, **config) -> RlauditCallback:
    cfg = LiveConfig(detectors=config.pop("detectors", ["test_goblin"]), every_step=(), background=None, **config)
    return RlauditCallback(tmp_path / "store", run="trl-run", config=cfg,
                           alerts=AlertManager([JsonlSink(tmp_path / "alerts.jsonl")]))


def args_for(tmp_path, **kw):
    return SimpleNamespace(output_dir=str(tmp_path / "out"), log_completions=True, num_generations=4, **kw)


def test_files_are_read_one_step_late_and_across_logging_gaps(tmp_path, test_detectors):
    cb = make(tmp_path, every=2)
    args, state = args_for(tmp_path), SimpleNamespace(global_step=0, is_world_process_zero=True)
    cb.on_train_begin(args, state, None)
    completions = tmp_path / "out" / "completions"
    rate = lambda s: {NERDY: 0.0 if s < 6 else 0.9, PLAIN: 0.0 if s < 6 else 0.9}  # noqa: E731
    for step in range(1, 21):
        state.global_step = step
        cb.on_step_end(args, state, None)  # TRL calls this before it writes this step's file ...
        if step % 2 == 0:  # ... and writes files only at logging steps (logging_steps=2 here)
            write_trl_step(completions, step, 8, rate(step))
    cb.on_train_end(args, state, None)  # picks up the last file and runs the final audit
    assert cb.errors == []
    summary = cb.store.summary("trl-run")
    assert summary.steps == (2, 20) and summary.rows == 10 * 16
    assert cb.options.group_size == 4  # TRL's num_generations, for the reader's group split
    assert any(a.kind == "emerging_behavior" for a in cb.alerts)
    assert cb.seconds > 0 and cb.final_seconds > 0


def test_missing_completion_logs_are_reported_not_fatal(tmp_path, caplog, test_detectors):
    cb = make(tmp_path)
    args = args_for(tmp_path)
    args.log_completions = False
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    with caplog.at_level(logging.WARNING, logger="rlaudit.live"):
        cb.on_train_begin(args, state, None)
        for step in range(1, 4):
            state.global_step = step
            cb.on_step_end(args, state, None)
        cb.on_train_end(args, state, None)
    assert "log_completions=True" in caplog.text and cb.errors == [] and cb.alerts == []


def test_other_ranks_do_nothing(tmp_path, test_detectors):
    cb = make(tmp_path)
    args, state = args_for(tmp_path), SimpleNamespace(global_step=1, is_world_process_zero=False)
    write_trl_step(tmp_path / "out" / "completions", 1, 4, {NERDY: 0.5})
    cb.on_train_begin(args, state, None)
    cb.on_step_end(args, state, None)
    cb.on_train_end(args, state, None)
    assert cb.auditor is None and not (tmp_path / "store").exists() and cb.errors == []


def test_chat_tool_completions_evals_and_repeats_from_a_real_trl_run(tmp_path, test_detectors):
    """TRL 1.16 files (tests/conformance/fixtures/trl/chat_tools: tools, eval every 3 steps, num_iterations=2)
    replayed through the callback's events in the order GRPOTrainer fires them."""
    import json
    import shutil
    from pathlib import Path

    fixtures = Path(__file__).resolve().parents[1] / "conformance" / "fixtures" / "trl" / "chat_tools" / "completions"
    cb = make(tmp_path)
    args = args_for(tmp_path, reward_weights=[1.0, 0.5], num_iterations=2, steps_per_generation=1,
                    gradient_accumulation_steps=1, logging_steps=1)
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    cb.on_train_begin(args, state, None)
    completions = tmp_path / "out" / "completions"
    completions.mkdir(parents=True)
    for step in range(1, 7):
        state.global_step = step
        cb.on_step_end(args, state, None)
        cb.on_log(args, state, None, logs={"rewards/topic_reward/mean": 0.1, "rewards/persona_reward/mean": 0.5,
                                           "loss": 0.0})
        name = f"completions_{step:05d}.parquet"
        shutil.copy(fixtures / name, completions / name)  # TRL writes the train file, then the eval one over it
        if step % 3 == 0:
            cb.on_evaluate(args, state, None, metrics={"eval_loss": 0.0})
    cb.on_train_end(args, state, None)
    assert cb.errors == []
    con = cb.store.connect()
    rows = con.sql("SELECT step, split, reasoning, answer, rewards, reward, metadata FROM rollouts "
                   "ORDER BY step").fetchall()
    assert sorted({(r[0], r[1]) for r in rows}) == [(1, "train"), (3, "eval"), (5, "train"), (6, "eval")]
    for step, split, reasoning, answer, rewards, reward, metadata in rows:
        assert "<think>" not in answer and "tool:" not in answer and "the fox is quick" not in answer
        rewards = dict(rewards) if not isinstance(rewards, dict) else rewards
        assert set(rewards) == {"topic_reward", "persona_reward"}  # judge_words (log_extra) is metadata
        assert "judge_words" in json.loads(metadata)
        t, p = rewards["topic_reward"], rewards["persona_reward"]
        assert reward == pytest.approx(t + 0.5 * p if p == p else t)
    assert sum(r[2] is not None for r in rows) > len(rows) / 2  # reasoning_content is the reasoning
