"""Tool calls in resampled turns, and the simulator that answers the ones the transcript did not.

A candidate's tool calls come from the server's parsed `tool_calls` or, for servers without a tool parser and
for local/scripted backends, from `<tool_call>{"name": ..., "arguments": ...}</tool_call>` in the text (the
Hermes/Qwen convention). A call the transcript answered after the cut (same tool, same arguments) gets the
recorded output; any other call is answered by the simulator model from the tool's schema and the conversation.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..llm.core import ChatRequest, ChatResult, LLMClient, call_parts, message_text

_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)

SIMULATOR_SYSTEM = ("You simulate a tool for an AI agent. Given the tool's schema, the conversation so far and "
                    "the call, write only what the tool would return: realistic, consistent with the "
                    "conversation, no explanation, no markdown fences.")


def parse_tool_calls(result: ChatResult) -> tuple[str, list[dict[str, Any]]]:
    """(content without tool-call tags, calls as {"name", "arguments" (dict or str)})."""
    calls: list[dict[str, Any]] = []
    for c in result.tool_calls or []:
        name, args = call_parts(c)
        calls.append({"name": str(name), "arguments": args, "id": c.get("id")})
    text = result.text or ""
    if not calls:
        for m in _TOOL_CALL.finditer(text):
            try:
                data = json.loads(m.group(1))
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("name"):
                calls.append({"name": str(data["name"]), "arguments": data.get("arguments", {}), "id": None})
        if calls:
            text = _TOOL_CALL.sub("", text).strip()
    return text, calls


def assistant_message(text: str, calls: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        msg["tool_calls"] = [{"id": c.get("id") or f"{prefix}_{i}", "type": "function",
                              "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(
                                  c["arguments"], str) else json.dumps(c["arguments"], ensure_ascii=False)}}
                             for i, c in enumerate(calls)]
    return msg


def tool_schema(tools: list[dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    for t in tools or []:
        fn = t.get("function", t) if isinstance(t, dict) else {}
        if fn.get("name") == name:
            return fn
    return None


def simulator_request(tools: list[dict[str, Any]] | None, messages: list[dict[str, Any]], call: dict[str, Any],
                      max_chars: int = 12000, max_tokens: int = 512) -> ChatRequest:
    schema = tool_schema(tools, call["name"])
    convo = "\n".join(f"[{m.get('role')}] {message_text(m)}" for m in messages)
    if len(convo) > max_chars:
        convo = "...\n" + convo[-max_chars:]
    args = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"],
                                                                                   ensure_ascii=False)
    user = (f"TOOL SCHEMA:\n{json.dumps(schema, ensure_ascii=False) if schema else '(not given)'}\n\n"
            f"CONVERSATION:\n{convo}\n\nCALL: {call['name']}({args})\n\nOUTPUT:")
    return ChatRequest.of([{"role": "system", "content": SIMULATOR_SYSTEM}, {"role": "user", "content": user}],
                          temperature=0, max_tokens=max_tokens)


class ToolSimulator:
    def __init__(self, client: LLMClient, max_tokens: int = 512):
        self.client = client
        self.max_tokens = max_tokens

    def simulate(self, jobs: list[tuple[list[dict[str, Any]] | None, list[dict[str, Any]], dict[str, Any]]]
                 ) -> list[ChatResult]:
        """One output per job; identical requests in a batch (samples that made the same call after the same
        conversation) are sent once and share the output."""
        requests = [simulator_request(t, m, c, max_tokens=self.max_tokens) for t, m, c in jobs]
        keys = [r.key(self.client.model) for r in requests]
        unique: dict[str, int] = {}
        sent: list[ChatRequest] = []
        for k, r in zip(keys, requests):
            if k not in unique:
                unique[k] = len(sent)
                sent.append(r)
        results = self.client.complete(sent)
        return [results[unique[k]] for k in keys]
