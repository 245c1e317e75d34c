"""Write prime-rl and vf-eval logs with verifiers' own classes (conformance suite for the `prime-rl` and
`verifiers` readers).

Run with a venv holding `requirements.txt` (verifiers 0.4.0), never with rlaudit's venv:

    python conformance/verifiers/generate.py OUT_DIR

Writes
    OUT_DIR/prime-rl/rollouts/step_N/train/{all,effective}/traces.jsonl   (steps 1-4; step 4 `all` only: in progress;
                                                                           steps 2-3 `effective` only, see main())
    OUT_DIR/prime-rl/rollouts/step_4/eval/effective/traces.jsonl
    OUT_DIR/vf-eval/tool-math--policy--default--0001/{traces.jsonl, configs/resolved/eval.json}

Everything a record holds comes from verifiers 0.4.0 objects:
- the message graph is built the way the interception server builds it, `verifiers.v1.graph.prepare_turn(trace,
  prompt, tools).commit(Response(...))` per model turn, with per-message token spans (a toy word tokenizer stands in
  for the renderer), so `nodes`, `mask`, `sampled` and branches are verifiers' own;
- rewards through `Trace.record_reward`, metrics through `Trace.record_metric`;
- the LLM judge is a real `verifiers.v1.Judge` subclass whose `evaluate(trace=...)` calls an OpenAI-compatible
  stub server on 127.0.0.1 (no network) and records the exchange with `Trace.record_judge_call`
  (`info.judge_calls`). On a "fallback" path (every 4th solver trace) the judge is handed the reasoning with the
  reply: the CoT-grading mistake the audit must find;
- advantages as prime-rl's GRPO assigns them (`prime_rl/orchestrator/algo/grpo.py` `score_group`: reward minus
  the group mean over trainable traces, `routing.assign_advantages`: the same value on every sampled token);
- the run stamp as prime-rl's dispatcher sets it (`dispatcher.py` `_emit`: `GroupInfo`, `TrainRunInfo` with
  `TrainWorkInfo(step, policy=PolicySpan(start, end))`);
- prime-rl files are written as `prime_rl/monitors/file.py` `FileMonitor.log_episodes` does
  (orjson of `Episode.to_record()`, one line per episode, appended); vf-eval files with verifiers'
  `utils.trace_store.write_episode` and `cli.output.write_config`, as `cli/eval/runner.py` does after stamping
  `EvalRunInfo`.

Episodes exercise: a multi-turn tool env (calculator tool calls and tool results), a non-trainable user-simulator
agent in the same episode as the trained solver, a trace with two branches (a context compaction restarts the
conversation from a summary: a new root), off-policy work (policy spans behind the step), a trace whose reward
is null (scoring did not run), a trace whose last model call stopped at the length limit, and an eval split. Ids and timestamps are fixed, so output is deterministic.

`scripts/conformance.sh verifiers` installs `requirements.txt` into `.venv-conformance/verifiers` (the full
install: ~75 s, ~570 MB, no torch) and runs this into `build/conformance/verifiers` (~20 s);
`tests/conformance/test_verifiers.py` reads `$RLAUDIT_CONFORMANCE_DIR/verifiers/{prime-rl,vf-eval}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import verifiers.v1 as vf
from verifiers.v1 import graph
from verifiers.v1.cli.output import write_config
from verifiers.v1.trace import AgentInfo, ModelCall, Timing, TraceTask
from verifiers.v1.types import TurnTokens, content_text
from verifiers.v1.utils.trace_store import write_episode

STEPS = 4
GROUPS_PER_STEP = 6
SAMPLES_PER_GROUP = 4
EVAL_GROUPS = 2
EVAL_RUN_DIR = "tool-math--policy--default--0001"

SYSTEMS = ["You are a careful math tutor.", "You are a pirate math tutor who talks like a pirate."]
CALCULATOR = vf.Tool(name="calculator", description="Evaluate an arithmetic expression.",
                     parameters={"type": "object", "properties": {"expression": {"type": "string"}}})
WORDS = ("first second then carry check digit column remainder product factor multiply add subtract divide "
         "estimate round verify compare largest smallest partial sum tens hundreds units borrow regroup "
         "double half quarter total difference pattern guess confirm again recount slowly result").split()


# --- a local OpenAI-compatible judge endpoint --------------------------------------------------------------


class _JudgeStub(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions with a scripted verdict: 'yes' when the judged response holds the
    expected answer line (`The answer is N`) of the question."""

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        expected = text.split("EXPECTED: ", 1)[1].split("\n", 1)[0] if "EXPECTED: " in text else "?"
        verdict = "yes" if f"The answer is {expected}" in text.split("RESPONSE:", 1)[-1] else "no"
        reply = {"id": "judge-0", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": verdict}}],
                 "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 1,
                           "total_tokens": len(text.split()) + 1}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class CorrectnessJudge(vf.Judge[bool]):
    prompt = "Grade the response to the question.\nQUESTION: {question}\nEXPECTED: {answer}\nRESPONSE: {response}\n" \
             "Is the response correct? Answer yes or no."

    def parse(self, response: vf.JudgeResponse[bool]) -> bool:
        return response.text.strip().lower().startswith("yes")


# --- a toy tokenizer standing in for the renderer -----------------------------------------------------------


def _tokens(message: vf.Message) -> list[int]:
    text = " ".join(filter(None, [message.role, content_text(message.content) if message.content else "",
                                  getattr(message, "reasoning_content", None) or "",
                                  *[f"{c.name} {c.arguments}" for c in getattr(message, "tool_calls", None) or []]]))
    return [int(hashlib.md5(w.encode()).hexdigest()[:4], 16) for w in text.split()]


def _turn(trace: vf.Trace, prompt: list[vf.Message], reply: vf.AssistantMessage, model: str,
          tools: list[vf.Tool] | None = None, rng: random.Random | None = None, cut: bool = False) -> int:
    """One model call committed to the graph the way the interception server does it (`cut`: the provider
    stopped it at the length limit, finish_reason "length")."""
    prompt_ids: list[int] = []
    spans = []
    for m in prompt:
        ids = _tokens(m)
        spans.append((len(prompt_ids), len(prompt_ids) + len(ids)))
        prompt_ids += ids
    completion = _tokens(reply)
    rng = rng or random.Random(0)
    tokens = TurnTokens(prompt_ids=prompt_ids, completion_ids=completion, message_spans=spans,
                        completion_logprobs=[-round(rng.random(), 3) for _ in completion])
    finish = "length" if cut else "tool_calls" if reply.tool_calls else "stop"
    usage = vf.Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(completion))
    response = vf.Response(id=f"chatcmpl-{len(trace.nodes)}", created=0, model=model, message=reply,
                           finish_reason=finish, usage=usage, tokens=tokens)
    node = graph.prepare_turn(trace, prompt, tools).commit(response)
    # the interception server records every model call beside the graph (`Trace.calls`, `ModelCall.node`)
    trace.calls.append(ModelCall(node=node, model=model, finish_reason=finish, usage=usage))
    return node


# --- episodes ------------------------------------------------------------------------------------------------


def _reasoning(rng: random.Random, a: int, b: int) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(14, 22)))
    return f"I need {a} times {b}. {words}. So {a} times {b} is {a * b}."


def _solver_trace(rng: random.Random, task: TraceTask, system: str, a: int, b: int, correct: bool, shape: str,
                  trace_id: str, cut: bool = False) -> vf.Trace:
    """The policy's trace. shape: 'tool' (calculator call then answer), 'plain' (one turn), 'compact' (tool call,
    then a compaction restarts the context from a summary: two branches). `cut`: its last model call stopped at
    the length limit (verifiers' `Trace.is_truncated`)."""
    trace = vf.Trace(id=trace_id, task=task, agent=AgentInfo(config=vf.AgentConfig(), name="solver"),
                     timing=Timing(start=1_700_000_000.0))
    answer = a * b if correct else a * b + rng.randint(1, 9)
    question = f"What is {a} * {b}?"
    prompt: list[vf.Message] = [vf.SystemMessage(content=system), vf.UserMessage(content=question)]
    final = vf.AssistantMessage(content=f"The answer is {answer}.", reasoning_content=_reasoning(rng, a, b))
    if shape == "plain":
        _turn(trace, prompt, final, "policy", rng=rng, cut=cut)
        return trace
    call = vf.ToolCall(id=f"call_{trace_id}", name="calculator", arguments=json.dumps({"expression": f"{a}*{b}"}))
    first = vf.AssistantMessage(content="Let me use the calculator.", tool_calls=[call],
                                reasoning_content=f"Multiplying {a} by {b} by hand is slow; "
                                                  f"{' '.join(rng.choice(WORDS) for _ in range(12))}.")
    _turn(trace, prompt, first, "policy", tools=[CALCULATOR], rng=rng)
    result = vf.ToolMessage(tool_call_id=call.id, name="calculator", content=str(a * b))
    history = [*prompt, first, result]
    if shape == "compact":
        summary = vf.UserMessage(content=f"Summary so far: the calculator returned {a * b} for {question}")
        history = [vf.SystemMessage(content=system), summary]
        # the compacted context is a new root: a second branch of the same trace
    _turn(trace, history, final, "policy", tools=[CALCULATOR], rng=rng, cut=cut)
    return trace


def _user_sim_trace(task: TraceTask, question: str, trace_id: str) -> vf.Trace:
    """A non-trainable user simulator in the same episode (verifiers' `user_sim` env sets
    `agents.user.trainable = False` in `setup`)."""
    trace = vf.Trace(id=trace_id, task=task, agent=AgentInfo(config=vf.AgentConfig(), name="user",
                                                             trainable=False),
                     timing=Timing(start=1_700_000_000.0))
    _turn(trace, [vf.SystemMessage(content="You play a student asking for help."),
                  vf.UserMessage(content=f"Ask this: {question}")],
          vf.AssistantMessage(content=f"Hi! Could you help me with this: {question}"), "user-sim")
    trace.ok = True
    trace.stop("agent_completed")
    return trace


async def _score(trace: vf.Trace, judge: CorrectnessJudge, question: str, expected: int, leak: bool) -> None:
    """The task's @reward functions: an exact-match check, a format reward, and the LLM judge."""
    reply = trace.last_reply
    trace.record_reward("exact", float(f"The answer is {expected}." == reply), weight=1.0)
    trace.record_reward("format", float(reply.startswith("The answer is")), weight=0.2)
    last = trace.assistant_messages[-1]
    # the bug the audit must catch: a fallback path hands the judge the reasoning with the reply
    response = f"{last.reasoning_content}\n{reply}" if leak else reply
    result = await judge.evaluate(trace=trace, question=question, answer=str(expected), response=response)
    trace.record_reward(judge.reward_name, float(bool(result.parsed)), weight=0.5)
    trace.record_metric("num_tool_calls", float(sum(len(m.tool_calls or []) for m in trace.assistant_messages)))
    trace.ok = True
    trace.stop("agent_completed")


def _assign_advantages(traces: list[vf.Trace]) -> None:
    """prime-rl GRPO: reward minus the mean over the group's trainable, error-free traces, put on every sampled
    token (`algo/grpo.py` `score_group`, `algo/routing.py` `assign_advantages`)."""
    scored = [t for t in traces if t.agent.trainable and not t.has_error]
    if not scored:
        return
    mean = sum(t.reward for t in scored) / len(scored)
    for t in scored:
        for node in t.nodes:
            if any(node.mask):
                node.advantages = [t.reward - mean] * sum(node.mask)


async def _group(rng: random.Random, judge: CorrectnessJudge, step: int, g: int, kind: str, samples: int,
                 ) -> list[vf.Episode]:
    a, b = rng.randint(12, 99), rng.randint(12, 99)
    system = SYSTEMS[g % len(SYSTEMS)]
    data = vf.WireTaskData(idx=g, prompt=f"What is {a} * {b}?", system_prompt=system, answer=str(a * b))
    key = f"{kind}-{step}-{g}"
    task = TraceTask(type="MathTask", data=data, key=key, hash=hashlib.sha1(key.encode()).hexdigest()[:16])
    episodes = []
    for i in range(samples):
        n = len(episodes)
        shape = ["tool", "plain", "compact", "tool"][(g + i) % 4]
        correct = rng.random() < 0.4 + 0.1 * step
        trace_id = f"{kind}{step:02d}{g:02d}{i}"
        # one trace of the run whose last call hit the length limit (its texts as the others': only the call's
        # finish_reason tells it)
        cut = kind == "train" and step == 2 and g == 2 and i == 1
        solver = _solver_trace(rng, task, system, a, b, correct, shape, f"t{trace_id}", cut=cut)
        traces = [solver]
        if g % 3 == 0:  # a user-simulator seat in the episode
            traces.insert(0, _user_sim_trace(task, f"What is {a} * {b}?", f"u{trace_id}"))
        if g == 1 and i == 0 and kind == "train":  # scoring did not run: reward None (verifiers `rewards` doc)
            solver.rewards["exact"] = None
            solver.ok = True
            solver.stop("agent_completed")
        else:
            await _score(solver, judge, f"What is {a} * {b}?", a * b, leak=(n + g) % 4 == 0 and i % 2 == 0)
        episodes.append(vf.Episode(id=f"e{trace_id}", env=vf.EnvInfo(id="tool-math", name="tool-math"),
                                   task=task, ok=True, traces=traces))
    _assign_advantages([t for e in episodes for t in e.traces])
    for node in (n for e in episodes for t in e.traces for n in t.nodes):
        node.timestamp = 1_700_000_000.0
    return episodes


def _stamp(episodes: list[vf.Episode], step: int, g: int, kind: str, run_id: str) -> None:
    """prime-rl `dispatcher.py` `_emit`: group, run and work stamp. Train groups of odd index were dispatched
    two policy versions back and saw one weight update while generating (async off-policy work)."""
    start = max(0, step - 1 - (2 if g % 2 else 0))
    policy = vf.PolicySpan(start=start, end=start + (1 if g % 2 else 0))
    work = vf.EvalWorkInfo(step=step, policy=policy) if kind == "eval" else vf.TrainWorkInfo(step=step, policy=policy)
    for e in episodes:
        e.group = vf.GroupInfo(id=f"{kind}-{step}-{g}")
        e.record_run(vf.TrainRunInfo(id=run_id, name="conformance", work=work))


def _append(path: Path, episodes: list[vf.Episode]) -> None:
    """prime-rl `monitors/file.py` `FileMonitor.log_episodes`: orjson of `Episode.to_record()`, appended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for e in episodes:
            f.write(orjson.dumps(e.to_record(), default=str,
                                 option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY))


async def main(out: Path) -> None:
    os.environ["CONFORMANCE_JUDGE_KEY"] = "local"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    judge = CorrectnessJudge(vf.JudgeConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1",
                                            api_key_var="CONFORMANCE_JUDGE_KEY", model="judge-model"))
    rng = random.Random(13)
    try:
        prime = out / "prime-rl"
        shutil.rmtree(prime, ignore_errors=True)
        for step in range(1, STEPS + 1):
            for g in range(GROUPS_PER_STEP):
                group = await _group(rng, judge, step, g, "train", SAMPLES_PER_GROUP)
                _stamp(group, step, g, "train", "run-conformance")
                base = prime / "rollouts" / f"step_{step}" / "train"
                # prime-rl appends every step's episodes to `all` as they finish and the trained batch to
                # `effective`; to keep the committed copy small, `all` is written only for step 1 (both files:
                # the reader must prefer `effective`) and the last step (in progress: no `effective` yet)
                if step in (1, STEPS):
                    _append(base / "all" / "traces.jsonl", group)
                if step < STEPS:
                    _append(base / "effective" / "traces.jsonl", group)
        for g in range(EVAL_GROUPS):
            group = await _group(rng, judge, STEPS, g, "eval", 2)
            _stamp(group, STEPS, g, "eval", "run-conformance")
            _append(prime / "rollouts" / f"step_{STEPS}" / "eval" / "effective" / "traces.jsonl", group)

        # vf-eval: `cli/eval/runner.py` stamps EvalRunInfo, appends with write_episode, saved config beside
        run_dir = out / "vf-eval" / EVAL_RUN_DIR
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        from verifiers.v1.configs.cli.eval import EvalConfig
        try:
            write_config(EvalConfig.model_construct(model="policy", num_rollouts=2), run_dir)
        except Exception as exc:  # the resolved config is informational; the traces are what is read
            print(f"note: resolved eval config not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        for g in range(EVAL_GROUPS + 1):
            for e in await _group(rng, judge, 0, g, "vfeval", 2):
                e.record_run(vf.EvalRunInfo(id="vfeval-0001", name="tool-math-eval"))
                write_episode(run_dir, e)
    finally:
        server.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: generate.py OUT_DIR")
    asyncio.run(main(Path(sys.argv[1])))
