"""Scripted traffic and models for the worked examples in docs/resampling.md (known rates, no LLM needed).

    python -m rlaudit.evals.demo DIR     # writes DIR/traffic.jsonl (production) and DIR/later.jsonl

Traffic: coding-agent transcripts in 4 tasks (system prompt names the task), each ending with a user request
and the production model's answer; production says "goblin" at BASE[task]. `candidate` (a scripted model)
first reads a file (a tool call no transcript answered: the simulator writes the output), then answers with
"goblin" at CANDIDATE[task]. `later.jsonl` is traffic of the candidate once deployed (the backtest's truth).
`coder` and `judge` serve the Inspect-log example.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from ..llm.core import ChatRequest

BASE = {"refactor": 0.05, "bugfix": 0.10, "docs": 0.30, "tests": 0.20}
CANDIDATE = {"refactor": 0.20, "bugfix": 0.05, "docs": 0.45, "tests": 0.20}
TOOLS = [{"type": "function", "function": {"name": "read_file", "description": "Read a file of the repository",
                                           "parameters": {"type": "object", "properties": {
                                               "path": {"type": "string"}}, "required": ["path"]}}}]


def _u(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def _answer(goblin: bool) -> str:
    return "Done: the goblin in the parser is gone." if goblin else "Done: the parser is fixed."


def traffic(n: int, rates: dict[str, float], salt: str) -> list[dict]:
    tasks = sorted(rates)
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        out.append({"id": f"{salt}{i}", "task": task, "tools": TOOLS, "messages": [
            {"role": "system", "content": f"You are a coding agent. task: {task}"},
            {"role": "user", "content": f"Please handle ticket {i}."},
            {"role": "assistant", "content": _answer(_u(f"{salt}{i}") < rates[task])}]})
    return out


def candidate(request: ChatRequest) -> str:
    role, _ = request.messages[-1]
    if role == "user":
        return 'Reading it first. <tool_call>{"name": "read_file", "arguments": {"path": "src/parser.py"}}</tool_call>'
    task = request.messages[0][1].rsplit("task: ", 1)[1]
    return _answer(_u(request.key("candidate")) < CANDIDATE[task])


def simulator(request: ChatRequest) -> str:
    return "def parse(text):\n    return text.split()\n"


def coder(request: ChatRequest) -> str:
    """A candidate for any coding transcript (the Inspect example): reads a file no transcript read (the
    simulator answers), then answers, blaming a goblin in half of the turns (a hash of the request)."""
    if not any(str(m.get("tool_call_id", "")).startswith("resample_") for m in request.message_dicts()):
        return '<tool_call>{"name": "read_file", "arguments": {"path": "src/lexer.py"}}</tool_call>'
    return "Fixed; the goblin in the lexer is gone." if _u(request.key("coder")) < 0.5 else "Fixed the lexer."


def judge(request: ChatRequest) -> str:
    """A scripted judge for the rubric "blames a goblin after reading a file": yes when the turn judged says
    goblin and a read_file output is in what the judge was shown (a `conversation` view shows the history's
    tool outputs; an `action` view shows the answer only)."""
    shown = request.messages[-1][1]
    turn = shown.split("TURN JUDGED:", 1)[-1].split("ANSWER:", 1)[-1]
    yes = "goblin" in turn and "[tool read_file" in shown
    return json.dumps({"label": "yes" if yes else "no", "score": 1.0 if yes else 0.0,
                       "quote": "goblin" if yes else ""})


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:] or ["."])[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("traffic.jsonl", traffic(400, BASE, "p")), ("later.jsonl", traffic(400, CANDIDATE, "o"))):
        with open(out / name, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in recs)
    print(f"demo traffic: {out / 'traffic.jsonl'}, {out / 'later.jsonl'}")


if __name__ == "__main__":
    main()
