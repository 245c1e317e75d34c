"""End to end through real OpenAI-compatible servers on 127.0.0.1 backed by tiny local transformers models:
`rlaudit resample` (a tool call the transcript did not answer, simulated by a second model; a behaviour and a
judge), then `resample compare` and `resample backtest`."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rlaudit.cli import main
from rlaudit.llm import set_default_client

from .agents import TOOLS, write_jsonl

pytestmark = pytest.mark.llm
pytest.importorskip("httpx", reason="needs the [llm] extra (httpx)")
pytest.importorskip("transformers", reason="needs transformers and torch")


def _tests_llm_tiny():
    """tests/llm/tiny.py (the yes-model), loaded by path: the test directories are not one package."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_rlaudit_tests_llm_tiny",
                                                  Path(__file__).parent.parent / "llm" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def servers():
    from rlaudit.llm.local import TransformersBackend
    from rlaudit.llm.serve import Server

    from . import tiny_agent

    tiny = _tests_llm_tiny()

    tok = tiny_agent.build_tokenizer()
    agent = Server(TransformersBackend(tiny_agent.build_model(tok), tok, name="tiny-agent"))
    ytok = tiny.build_tokenizer()
    yes = Server(TransformersBackend(tiny.build_model(ytok), ytok, name="tiny-yes"))
    yield agent, yes
    agent.close()
    yes.close()
    set_default_client(None)


def test_resample_compare_backtest_through_real_servers(tmp_path, servers, capsys):
    agent, yes = servers
    recs = [{"id": f"c{i}", "task": "fix" if i < 2 else "docs", "tools": TOOLS, "messages": [
        {"role": "system", "content": "You are a coding agent.", "name": "policy"},
        {"role": "user", "content": f"Fix issue {i}, please."},
        {"role": "assistant", "content": "Done, the tests pass."}]} for i in range(3)]
    write_jsonl(tmp_path / "t.jsonl", recs)
    out = tmp_path / "out"
    yes_port = yes.url.rsplit(":", 1)[1].split("/")[0]
    main(["resample", str(tmp_path / "t.jsonl"), "--model", f"cand=openai:tiny-agent@{agent.url}",
          # the openai://HOST:PORT/PATH:MODEL form (plain http for 127.0.0.1) beside the older form
          "--tool-simulator", f"sim=openai://127.0.0.1:{yes_port}/v1:tiny-yes",
          "--judge-model", f"openai://127.0.0.1:{yes_port}/v1:tiny-yes",
          "--behavior", "goblin", "--judge", "judge:action:does the answer say yes",
          "--judge", "judge:all:does the agent comply",
          "--judge", "judge:conversation:does the agent use a tool output", "--samples", "2",
          "--out", str(out)])
    printed = capsys.readouterr()
    assert "3 transcripts, 3 cuts, 2 samples per cut; 6 simulated tool outputs, 0 truncated, 0 failed" in printed.out
    assert "| `goblin` | all | all | cand | 3 | 6 | 100.0% (100.0%-100.0%) | inf" in printed.out

    # the candidate saw each history exactly, with the tools; then its call and the simulated output
    first = [r for r in agent.requests_seen if len(r["messages"]) == 2]
    assert sorted(json.dumps(r["messages"]) for r in first) == sorted(
        json.dumps(rec["messages"][:2]) for rec in recs for _ in range(2))
    assert all(r["params"]["tools"] == TOOLS for r in agent.requests_seen)
    second = [r for r in agent.requests_seen if len(r["messages"]) == 4]
    assert len(second) == 6 and len(agent.requests_seen) == 12
    call, answer = second[0]["messages"][2:]
    assert call["tool_calls"][0]["function"] == {"name": "read_file", "arguments": '{"path": "src/app.py"}'}
    assert answer == {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "yes"}
    sim_prompts = [r["messages"][-1]["content"] for r in yes.requests_seen if "CALL: read_file" in
                   r["messages"][-1]["content"]]
    assert len(sim_prompts) == 3  # one per cut: samples 0 and 1 send the same simulator request (cached)

    samples = pq.read_table(out / "samples.parquet").to_pylist()
    cand = [r for r in samples if r["model"] == "cand"]
    assert len(cand) == 6 and all(r["simulated_calls"] == 1 and r["text"].endswith("goblin") for r in cand)
    events = json.loads(cand[0]["tool_events"])
    assert events == [{"step": 1, "name": "read_file", "arguments": '{"path":"src/app.py"}',
                       "tool_call_id": events[0]["tool_call_id"], "simulated": True, "output": "yes"}]
    rates = {(r["model"], r["behavior"]): r for r in pq.read_table(out / "rates.parquet").to_pylist()
             if r["dimension"] == "all"}
    judge = "judge:action:does the answer say yes"
    assert rates[("original", "goblin")]["rate"] == 0.0 and rates[("cand", "goblin")]["rate"] == 1.0
    assert rates[("original", judge)]["rate"] == 1.0 and rates[("cand", judge)]["ratio"] == 1.0
    assert "Evidence" in (out / "summary.md").read_text()
    judged = [r["messages"][-1]["content"] for r in yes.requests_seen if "RUBRIC:" in r["messages"][-1]["content"]]
    assert any("PROMPT:\nFix issue 0, please.\n" in j and j.endswith("ANSWER:\nDone, the tests pass.")
               for j in judged)  # view `all`: the last user message and the turn
    assert any("ANSWER:\nread_file" not in j and j.endswith("goblin") for j in judged)
    assert rates[("cand", "judge:all:does the agent comply")]["rate"] == 1.0
    # the conversation view: the whole history, then the resampled turn with the simulated output marked
    convo = [j for j in judged if "RUBRIC:\ndoes the agent use a tool output" in j]
    assert len(convo) == 3 + 6 and len(set(convo)) == 3 + 3  # both samples of a cut wrote the same turn
    assert all("[system] You are a coding agent.\n[user] Fix issue" in j for j in convo)
    resampled = [j for j in convo if "[tool read_file, simulated] yes" in j.split("TURN JUDGED:\n")[1]]
    assert len(resampled) == 6 and all(j.endswith("goblin") for j in resampled)
    assert rates[("cand", "judge:conversation:does the agent use a tool output")]["rate"] == 1.0

    main(["resample", "compare", str(out), "--dimension", "task", "--behavior", "goblin"])
    printed = capsys.readouterr().out
    assert "| `goblin` | task | fix | cand | 2 | 4 | 100.0%" in printed

    later = [{**rec, "messages": rec["messages"][:2] + [{"role": "assistant", "content": "goblin fixed"}]}
             for rec in recs]
    write_jsonl(tmp_path / "later.jsonl", later)
    main(["resample", "backtest", str(out), "--observed", str(tmp_path / "later.jsonl"), "--json",
          str(tmp_path / "bt.json")])
    bt = json.loads((tmp_path / "bt.json").read_text())
    goblin = [r for r in bt["rows"] if r["behavior"] == "goblin" and r["dimension"] == "task"]
    assert [r["direction_right"] for r in goblin] == [True, True]
    assert "direction right in" in capsys.readouterr().out


def test_structured_tool_calls_from_the_server_and_the_cache(tmp_path):
    """A server that parses tool calls (vLLM --tool-call-parser) returns message.tool_calls: they are read,
    cached with the answer, and answered by the simulator."""
    from rlaudit.evals import run_resample
    from rlaudit.evals.transcripts import transcript_from_record
    from rlaudit.llm import ChatRequest, ChatResult, LLMClient, ScriptedBackend, client_from_spec
    from rlaudit.llm.core import Backend
    from rlaudit.llm.serve import Server

    class Parsed(Backend):
        def complete(self, request: ChatRequest) -> ChatResult:
            if request.messages[-1][0] == "user":
                return ChatResult(text="", model="parsed", tool_calls=[{
                    "id": "call_x", "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}])
            return ChatResult(text="goblin " + request.messages[-1][1], model="parsed")

    rec = {"id": "s0", "tools": TOOLS, "messages": [{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": "hello"}]}
    ts = [transcript_from_record(rec, "s0")]
    with Server(Parsed("parsed")) as server:
        for attempt in range(2):  # the second run is served from the cache, tool calls included
            client = client_from_spec(f"openai:parsed@{server.url}", cache=tmp_path / "c.sqlite")
            res = run_resample(ts, {"p": client}, ["goblin"], samples=1,
                               simulator=LLMClient(ScriptedBackend(lambda r: "print(1)")))
            s = res["samples"][0]
            assert s.new[0]["tool_calls"][0]["id"] == "call_x" and s.new[1] == {
                "role": "tool", "tool_call_id": "call_x", "content": "print(1)"}
            assert s.text.endswith("goblin print(1)") and s.simulated == 1
        assert len(server.requests_seen) == 2 and client.accounting.cache_hits == 2
