"""Overhead of `rlaudit resample` per LLM call, and memory against the number of transcripts, with an async
scripted backend that answers at once (so all time measured is rlaudit's: reading, request building, the client's
concurrency limit and accounting, tool-call parsing, simulation, scoring, Parquet, statistics).

    PYTHONPATH=src python benchmarks/resample.py --transcripts 10000 --concurrency 256

Each transcript: system, user, an answered tool call, the final answer; the candidate calls one tool nobody
answered (simulated) and then answers, so each resample costs 2 candidate calls and 1 simulator call.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from rlaudit.evals import run_resample
from rlaudit.llm import ChatRequest, ChatResult, LLMClient
from rlaudit.llm.core import Backend

TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]


class Instant(Backend):
    async def acomplete(self, request: ChatRequest) -> ChatResult:
        if self.model == "sim":
            return ChatResult(text="contents", prompt_tokens=10, completion_tokens=1, model="sim")
        if request.messages[-1][0] == "tool" and request.messages[-1][1] == "contents":
            text = "goblin" if request.param_dict()["seed"] % 2 else "done"
        else:
            text = '<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}</tool_call>'
        return ChatResult(text=text, prompt_tokens=10, completion_tokens=1, model=self.model)


def records(n: int) -> list[dict]:
    return [{"id": f"t{i}", "task": f"task{i % 8}", "tools": TOOLS, "messages": [
        {"role": "system", "content": "agent"}, {"role": "user", "content": f"ticket {i}"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "read_file", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "x"}, {"role": "assistant", "content": "done"}]}
            for i in range(n)]


def run(n: int, samples: int, concurrency: int, memory: bool, chunk: int) -> dict:
    import json
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    with open(tmp / "t.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records(n))
    cand = LLMClient(Instant("cand"), concurrency=concurrency)
    sim = LLMClient(Instant("sim"), concurrency=concurrency)
    if memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    res = run_resample(str(tmp / "t.jsonl"), {"cand": cand}, ["goblin"], samples=samples, simulator=sim,
                       out=tmp / "out", chunk=chunk)
    t1 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1] if memory else float("nan")
    if memory:
        tracemalloc.stop()
    calls = cand.accounting.calls + sim.accounting.calls
    rate = next(r for r in res["rates"] if r["model"] == "cand" and r["dimension"] == "all")["rate"]
    return {"transcripts": n, "calls": calls, "seconds": t1 - t0, "ms_per_call": 1000 * (t1 - t0) / calls,
            "peak_mb": peak / 2**20, "rate": rate}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--transcripts", type=int, default=10000)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--memory", action="store_true", help="Trace peak Python memory (slows every call).")
    a = p.parse_args()
    for n in sorted({max(1, a.transcripts // 10), a.transcripts}):
        r = run(n, a.samples, a.concurrency, a.memory, a.chunk)
        print(f"{r['transcripts']:>7,} transcripts: {r['calls']:,} calls, end to end (read, resample, simulate, "
              f"score, write, statistics) {r['seconds']:.1f} s = {r['ms_per_call']:.2f} ms per call; peak Python "
              f"memory {r['peak_mb']:.0f} MB; rate {r['rate']:.2f}")


if __name__ == "__main__":
    main()
