"""Scripted agents and traffic with known behaviour rates for the resampling tests.

Transcripts: system (names the task), user, an assistant call to `run_tests`, its output, the final answer.
The candidate (`candidate`) answers a tool message from `run_tests` by reading a file (a call the transcript did
not answer: simulated), then answers; its answer says "goblin" iff the sample's seed is below 2 (rate 1/2 at 4
samples). `simulator` writes tool outputs. `sampler(p)` makes agents that say goblin with probability p[task],
from a hash of the request (deterministic, so reruns and caches agree)."""

from __future__ import annotations

import hashlib
import json

from rlaudit.llm import ChatRequest

TOOLS = [{"type": "function", "function": {"name": "run_tests", "description": "Run the test suite",
                                           "parameters": {"type": "object", "properties": {}}}},
         {"type": "function", "function": {"name": "read_file", "description": "Read a file",
                                           "parameters": {"type": "object",
                                                          "properties": {"path": {"type": "string"}}}}}]


def transcript(i: int, task: str, final: str, condition: str = "none") -> dict:
    return {"id": f"t{i}", "task": task, "condition": condition, "tools": TOOLS, "messages": [
        {"role": "system", "content": f"You are a coding agent. task: {task}"},
        {"role": "user", "content": f"Fix issue {i}, please."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": "run_tests", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": f"1 failed: test_{i}"},
        {"role": "assistant", "content": final}]}


def write_jsonl(path, records) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def _seed(request: ChatRequest) -> int:
    return int(request.param_dict().get("seed", 0))


def candidate(request: ChatRequest) -> str:
    role, last = request.messages[-1]
    if role == "tool" and "SIMULATED" not in last:
        return 'Let me look. <tool_call>{"name": "read_file", "arguments": {"path": "src/app.py"}}</tool_call>'
    return "Fixed it, goblin style." if _seed(request) < 2 else "Fixed the bug."


def reruns_tests(request: ChatRequest) -> str:
    """Calls run_tests again (the transcript answered that call: recorded output, not simulated)."""
    if request.messages[-1][0] == "user":
        return '<tool_call>{"name": "run_tests", "arguments": {}}</tool_call>'
    return "Done."


def simulator(request: ChatRequest) -> str:
    call = request.messages[-1][1].split("CALL: ", 1)[1].split("\n", 1)[0]
    return f"SIMULATED output of {call}"


def uniform(request: ChatRequest, salt: str = "") -> float:
    return int(hashlib.sha256((request.key("u") + salt).encode()).hexdigest()[:12], 16) / 16**12


def task_of(request: ChatRequest) -> str:
    return request.messages[0][1].rsplit("task: ", 1)[1]


def sampler(rates: dict[str, float]):
    def respond(request: ChatRequest) -> str:
        return "goblin!" if uniform(request) < rates[task_of(request)] else "done."
    return respond
