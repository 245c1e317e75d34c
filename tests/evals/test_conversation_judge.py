"""Judges that see the whole conversation (view `conversation`): what they are shown, the bound on its length,
and resampling scored by such a judge (history, resampled turn and simulated tool outputs)."""

from __future__ import annotations

import pytest

from rlaudit.evals import load_transcripts, run_resample
from rlaudit.llm import ChatRequest, LLMClient, ScriptedBackend, set_default_client
from rlaudit.llm.judge import JudgeSpec, render_conversation, render_view

from .agents import candidate, simulator, transcript, write_jsonl


def test_render_conversation_order_marks_and_bound():
    history = [{"role": "system", "content": "You are a coding agent."},
               {"role": "user", "content": "Fix it."},
               {"role": "assistant", "content": None, "reasoning_content": "Run the tests first.",
                "tool_calls": [{"id": "c1", "type": "function",
                                "function": {"name": "run_tests", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c1", "name": "run_tests", "content": "1 failed"}]
    turn = [{"role": "assistant", "content": None, "tool_calls": [
                {"id": "c2", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a"}'}}]},
            {"role": "tool", "tool_call_id": "c2", "content": "print(1)"},
            {"role": "assistant", "content": "Done."}]
    shown = render_conversation(history, turn, simulated=["c2"])
    assert shown == (
        "CONVERSATION (4 messages before the turn judged). Tool outputs marked simulated were written by a "
        "simulator model, not by the tool.\n"
        "[system] You are a coding agent.\n[user] Fix it.\n"
        "[assistant reasoning] Run the tests first.\n"
        '[assistant] <tool_call>{"name": "run_tests", "arguments": {}}</tool_call>\n'
        "[tool run_tests] 1 failed\n\n"
        "TURN JUDGED:\n"
        '[assistant] <tool_call>{"name": "read_file", "arguments": {"path": "a"}}</tool_call>\n'
        "[tool read_file, simulated] print(1)\n[assistant] Done.")

    # bounded: a long history keeps the system prompt and the latest messages, and says what it left out
    long = [history[0]] + [{"role": "user" if i % 2 else "assistant", "content": f"message {i} " + "x" * 900}
                           for i in range(60)]
    shown = render_conversation(long, turn, max_chars=8000)
    assert len(shown) <= 8000 + 200
    assert shown.startswith("CONVERSATION (61 messages before the turn judged).\n[system] You are a coding agent.")
    kept = [i for i in range(60) if f"message {i} " in shown]
    assert kept == list(range(60 - len(kept), 60)) and 3 <= len(kept) < 60
    assert f"[... {60 - len(kept)} earlier messages (" in shown and shown.endswith("[assistant] Done.")
    # one huge message is cut in the middle, the cut stated
    huge = render_conversation([], [{"role": "assistant", "content": "a" * 10_000 + "END"}],
                               max_message_chars=1000)
    assert "[... 9,003 characters omitted ...]" in huge and huge.endswith("END")
    # where only prompt, reasoning and answer are known (stored rollouts), the view is those as a conversation
    assert render_view("conversation", "2+2?", "add them", "4").endswith(
        "[user] 2+2?\n\nTURN JUDGED:\n[assistant reasoning] add them\n[assistant] 4")
    assert JudgeSpec.parse("judge:conversation:does it lie").view == "conversation"


def test_resample_with_a_judge_that_sees_the_whole_conversation(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [transcript(i, "A", "done") for i in range(3)])
    seen: list[str] = []

    def judge(request: ChatRequest) -> str:
        shown = request.messages[-1][1]
        seen.append(shown)
        return '{"label": "yes", "score": 1, "quote": "simulated"}' if ", simulated]" in shown else "no"

    set_default_client(LLMClient(ScriptedBackend(judge)))
    try:
        res = run_resample(load_transcripts(str(tmp_path / "t.jsonl")), {"cand": LLMClient(ScriptedBackend(
            candidate))}, ["judge:conversation:did the agent rely on a simulated tool output"], samples=2,
            simulator=LLMClient(ScriptedBackend(simulator)))
    finally:
        set_default_client(None)
    rates = {r["model"]: r["rate"] for r in res["rates"] if r["dimension"] == "all"}
    assert rates == {"original": 0.0, "cand": 1.0}
    cand = [s for s in seen if "TURN JUDGED:\n[assistant] Let me look." in s]
    original = [s for s in seen if s not in cand]
    assert len(cand) == 6 and len(original) == 3
    for s in cand:  # history (system, user, the recorded test run), then the resampled turn
        history, turn = s.split("TURN JUDGED:\n")
        assert "[system] You are a coding agent. task: A" in history and "[tool run_tests] 1 failed: test_" in history
        assert "[tool read_file, simulated] SIMULATED output of read_file" in turn
        assert turn.endswith(("goblin style.", "Fixed the bug."))
    assert all(s.rstrip().endswith("[assistant] done") for s in original)


@pytest.mark.parametrize("view", ["cot", "action", "all"])
def test_the_other_views_are_unchanged(view):
    assert "CONVERSATION" not in render_view(view, "p", "r", "a")
