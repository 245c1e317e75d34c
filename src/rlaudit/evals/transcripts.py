"""Transcripts to resample: OpenAI-style chat JSONL (messages with tool calls) and rollouts in the store.

Chat JSONL: one transcript per line, either `{"messages": [...], "tools": [...], "id": ..., "task": ...,
"condition": ..., "metadata": {...}}` or a bare list of messages. Messages are kept exactly as parsed (every key,
in order), so the history sent to a candidate is the transcript's own. Categories of traffic: `task` and
`condition` (top level or under `metadata`; `none` when absent) and `toolset` (the sorted names of the tools
offered, else of the tools called; `none`).

Stored rollouts (`store:RUN`): the system prompt and prompt become a system and a user message, the completion
the assistant turn (the store keeps prompts as rendered text, so the history is the text the trainer logged).

Inspect eval logs (`.eval` and `.json`, `rlaudit.evals.inspect_logs`): each sample's messages, the tools offered,
and categories from the task name, the tool set and the sample metadata.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RlauditError
from ..llm.core import message_text


@dataclass
class Transcript:
    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    task: str = "none"
    condition: str = "none"
    toolset: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cut:
    """The transcript cut before assistant message `index`: `history` is sent as it is, `original` is the turn
    the transcript had there (that message and its tool steps, up to the next user message)."""

    transcript: Transcript
    index: int

    @property
    def id(self) -> str:
        return f"{self.transcript.id}#{self.index}"

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.transcript.messages[:self.index]

    @property
    def original(self) -> list[dict[str, Any]]:
        out = []
        for m in self.transcript.messages[self.index:]:
            if m.get("role") == "user" and out:
                break
            out.append(m)
        return out

    def original_text(self) -> str:
        return turn_text(self.original)

    def prompt_text(self) -> str:
        """The last user message before the cut (what a judge with view `all` sees as the prompt)."""
        return next((message_text(m) for m in reversed(self.history) if m.get("role") == "user"), "")

    def history_sha256(self) -> str:
        return sha256_json(self.history)

    def recorded_outputs(self) -> dict[tuple[str, str], str]:
        """(tool name, canonical arguments) -> output, for the calls the transcript answered after the cut."""
        return recorded_outputs(self.transcript.messages[self.index:])


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def turn_text(messages: list[dict[str, Any]]) -> str:
    """The text of an assistant turn: each assistant message's content and tool calls, one after another."""
    return "\n".join(message_text(m) for m in messages if m.get("role") == "assistant")


def canonical_args(arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return arguments.strip()
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def recorded_outputs(messages: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    calls: dict[str, tuple[str, str]] = {}
    pending: list[tuple[str, str]] = []
    out: dict[tuple[str, str], str] = {}
    for m in messages:
        if m.get("role") == "assistant":
            for c in m.get("tool_calls") or []:
                fn = c.get("function", c)
                key = (str(fn.get("name")), canonical_args(fn.get("arguments", {})))
                if c.get("id"):
                    calls[c["id"]] = key
                pending.append(key)
        elif m.get("role") == "tool":
            key = calls.get(m.get("tool_call_id", "")) or (pending[0] if pending else None)
            if key is not None:
                if key in pending:
                    pending.remove(key)
                out.setdefault(key, message_text(m))
    return out


def cuts(transcripts: list[Transcript], mode: str = "last") -> list[Cut]:
    if mode not in ("last", "all"):
        raise RlauditError(f"--cut {mode!r}: expected last or all")
    found: list[Cut] = []
    for t in transcripts:
        idx = [i for i, m in enumerate(t.messages) if m.get("role") == "assistant"]
        if not idx:
            continue
        found.extend(Cut(t, i) for i in (idx[-1:] if mode == "last" else idx))
    return found


def _category(rec: dict[str, Any], name: str) -> str:
    meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    value = rec.get(name, meta.get(name))
    return str(value) if value not in (None, "") else "none"


def toolset_of(tools: list[dict[str, Any]] | None, messages: list[dict[str, Any]]) -> str:
    names = {str((t.get("function") or t).get("name")) for t in tools or [] if isinstance(t, dict)}
    if not names:
        names = {str((c.get("function") or c).get("name")) for m in messages for c in m.get("tool_calls") or []}
    return "+".join(sorted(names)) or "none"


#: The roles of OpenAI-style chat messages (`developer` is the newer name of `system`, `function` the older
#: form of `tool`); anything else is a malformed transcript, not a turn to skip.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def transcript_from_record(rec: Any, default_id: str) -> Transcript:
    if isinstance(rec, list):
        rec = {"messages": rec}
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
        raise RlauditError(f"{default_id}: expected an object with a 'messages' list, or a list of messages")
    messages = rec["messages"]
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise RlauditError(f"{default_id}: messages[{i}]: every message needs a 'role'")
        if m["role"] not in CHAT_ROLES:
            raise RlauditError(f"{default_id}: messages[{i}].role: expected one of {', '.join(CHAT_ROLES)}, "
                               f"got {m['role']!r}")
    tools = rec.get("tools") or None
    return Transcript(id=str(rec.get("id", default_id)), messages=messages, tools=tools,
                      task=_category(rec, "task"), condition=_category(rec, "condition"),
                      toolset=_category(rec, "toolset") if "toolset" in rec else toolset_of(tools, messages),
                      metadata=rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {})


def transcript_files(path: Path) -> list[Path]:
    """The transcript files of a path: the file itself, or a directory's `*.jsonl` (chat) and Inspect logs
    (`*.eval`, `*.json` except inspect's `logs.json` index), in name order."""
    from .inspect_logs import is_inspect_log

    if not path.is_dir():
        return [path] if path.exists() else []
    return sorted(f for f in path.iterdir() if f.is_file() and (f.suffix == ".jsonl" or is_inspect_log(f)))


def _read_chat_file(f: Path) -> Iterator[Transcript]:
    with open(f, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise RlauditError(f"{f}:{lineno}: not JSON: {exc}") from None
            yield transcript_from_record(rec, f"{f.stem}:{lineno}")


def read_transcript_files(path: str | Path, limit: int | None = None) -> Iterator[Transcript]:
    """Chat JSONL and Inspect logs (a file, or a directory of them), lazily, at most `limit` transcripts."""
    from .inspect_logs import is_inspect_log, read_inspect_log

    path = Path(path)
    files = transcript_files(path)
    if not files:
        raise RlauditError(f"transcripts {path}: no such file (or no *.jsonl, *.eval or *.json in the directory)")
    n = 0
    seen: set[str] = set()
    for f in files:
        for t in (read_inspect_log(f, seen) if is_inspect_log(f) else _read_chat_file(f)):
            yield t
            n += 1
            if limit is not None and n >= limit:
                return


def read_chat_jsonl(path: str | Path, limit: int | None = None) -> Iterator[Transcript]:
    return read_transcript_files(path, limit)


def read_store_run(store: Any, run: str, limit: int | None = None) -> Iterator[Transcript]:
    if not store.has_run(run):
        raise RlauditError(f"run {run!r} is not in the store {store.root}; known: {', '.join(store.runs())}")
    table = store.table(run, ["rollout_id", "step", "condition", "system_prompt", "task", "prompt", "completion"])
    n = 0
    for row in table.to_pylist():
        messages = ([{"role": "system", "content": row["system_prompt"]}] if row.get("system_prompt") else [])
        messages += [{"role": "user", "content": row["prompt"] or ""},
                     {"role": "assistant", "content": row["completion"] or ""}]
        yield Transcript(id=f"{run}:{row['rollout_id']}", messages=messages, task=row.get("task") or "none",
                         condition=row.get("condition") or "none", metadata={"step": row.get("step")})
        n += 1
        if limit is not None and n >= limit:
            return


def iter_transcripts(source: str, store: Any = None, limit: int | None = None) -> Iterator[Transcript]:
    """`store:RUN` (rollouts of a stored run), a chat JSONL file, an Inspect log (`.eval`/`.json`), or a
    directory of them, read lazily."""
    if source.startswith("store:"):
        if store is None:
            raise RlauditError("store:RUN transcripts need a store (--store)")
        return read_store_run(store, source[len("store:"):], limit)
    path = Path(source)
    if not transcript_files(path):
        raise RlauditError(f"transcripts {path}: no such file (or no *.jsonl, *.eval or *.json in the directory)")
    return read_transcript_files(path, limit)


def load_transcripts(source: str, store: Any = None, limit: int | None = None) -> list[Transcript]:
    return list(iter_transcripts(source, store, limit))
