"""Resample the cut turns of transcripts with candidate models, simulating the tools they call.

For every cut and candidate, `samples` continuations are generated from the history as it is (sample k sends
`seed=k`, so samples differ and each is cached apart: a killed run re-run with the same cache repeats no call).
A continuation that calls tools gets the transcript's recorded output for a call it made too, else the
simulator's; it stops when the candidate answers without a tool call or after `max_steps` answered rounds
(then `truncated`). All continuations advance one step at a time in one concurrent batch per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..llm.core import ChatRequest, LLMClient
from .tools import ToolSimulator, assistant_message, parse_tool_calls
from .transcripts import Cut, canonical_args, turn_text


@dataclass
class Sample:
    cut: Cut
    model: str
    sample: int
    new: list[dict[str, Any]] = field(default_factory=list)
    tool_events: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    done: bool = False
    truncated: bool = False
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def text(self) -> str:
        return turn_text(self.new)

    @property
    def simulated(self) -> int:
        return sum(1 for e in self.tool_events if e["simulated"])


def resample(cuts: list[Cut], candidates: dict[str, LLMClient], samples: int = 4,
             simulator: LLMClient | None = None, max_steps: int = 3, temperature: float = 1.0,
             max_tokens: int = 1024, progress: Any = None) -> list[Sample]:
    sim = ToolSimulator(simulator) if simulator is not None else None
    out: list[Sample] = []
    for name, client in candidates.items():
        states = [Sample(c, name, k) for c in cuts for k in range(samples)]
        recorded = {c.id: c.recorded_outputs() for c in cuts}
        step = 0
        while True:
            active = [s for s in states if not s.done]
            if not active:
                break
            requests = []
            for s in active:
                params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "seed": s.sample}
                if s.cut.transcript.tools:
                    params["tools"] = s.cut.transcript.tools
                requests.append(ChatRequest.of(s.cut.history + s.new, **params))
            results = client.complete(requests)
            jobs, waiting = [], []
            for s, r in zip(active, results):
                if not r.ok:
                    s.error, s.done = r.error or "dry run", True
                    continue
                s.prompt_tokens += r.prompt_tokens
                s.completion_tokens += r.completion_tokens
                text, calls = parse_tool_calls(r)
                msg = assistant_message(text, calls, f"resample_{s.sample}_{step}")
                s.new.append(msg)
                if not calls:
                    s.done = True
                    continue
                if s.steps >= max_steps:
                    s.done, s.truncated = True, True
                    continue
                s.steps += 1
                for call, tc in zip(calls, msg["tool_calls"]):
                    key = (call["name"], canonical_args(call["arguments"]))
                    known = recorded[s.cut.id].get(key)
                    event = {"step": s.steps, "name": call["name"], "arguments": canonical_args(call["arguments"]),
                             "tool_call_id": tc["id"], "simulated": known is None, "output": known}
                    s.tool_events.append(event)
                    if known is None:
                        if sim is None:
                            event["output"] = None
                            s.done, s.truncated = True, True
                            continue
                        jobs.append((s.cut.transcript.tools, s.cut.history + s.new, call))
                        waiting.append((s, event))
            if jobs:
                assert sim is not None
                for (s, event), r in zip(waiting, sim.simulate(jobs)):
                    event["output"] = r.text if r.ok else None
                    if not r.ok:
                        event["error"] = r.error
                        s.done, s.truncated = True, True
            for s in active:
                if s.done or not s.new or not s.new[-1].get("tool_calls"):
                    continue
                for event in s.tool_events:
                    if event["step"] == s.steps:
                        s.new.append({"role": "tool", "tool_call_id": event["tool_call_id"],
                                      "content": event["output"] or ""})
            step += 1
            if progress is not None:
                progress(name, step, len(active), client)
        out.extend(states)
    return out


def sample_row(s: Sample) -> dict[str, Any]:
    """One row of samples.parquet; `history` (the messages before the cut, for judges that see the whole
    conversation) is kept in memory only: the file has its SHA-256, the transcripts have the messages."""
    t = s.cut.transcript
    return {"transcript_id": t.id, "cut_id": s.cut.id, "cut_index": s.cut.index, "model": s.model,
            "sample": s.sample, "task": t.task, "toolset": t.toolset, "condition": t.condition,
            "prompt": s.cut.prompt_text(), "text": s.text,
            "steps": s.steps, "simulated_calls": s.simulated, "truncated": s.truncated, "error": s.error,
            "messages": json.dumps(s.new, ensure_ascii=False), "tool_events": json.dumps(s.tool_events,
                                                                                         ensure_ascii=False),
            "history_sha256": s.cut.history_sha256(), "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens, "history": s.cut.history}


def original_row(cut: Cut, name: str = "original") -> dict[str, Any]:
    t = cut.transcript
    return {"transcript_id": t.id, "cut_id": cut.id, "cut_index": cut.index, "model": name, "sample": 0,
            "task": t.task, "toolset": t.toolset, "condition": t.condition, "prompt": cut.prompt_text(),
            "text": cut.original_text(),
            "steps": sum(1 for m in cut.original if m.get("role") == "tool"), "simulated_calls": 0,
            "truncated": False, "error": None, "messages": json.dumps(cut.original, ensure_ascii=False),
            "tool_events": "[]", "history_sha256": cut.history_sha256(), "prompt_tokens": 0,
            "completion_tokens": 0, "history": cut.history}
