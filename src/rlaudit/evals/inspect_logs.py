"""Inspect eval logs as transcripts: `.eval` (a zip of JSON members) and `.json` (one EvalLog object).

Read as plain JSON, without inspect-ai: the log is data, and importing inspect (some 80 packages) to read it
would tie rlaudit to inspect's version and dependencies. Verified against logs written by inspect-ai 0.3.285
(log format version 2; `conformance/inspect/generate.py`). inspect 0.3.x compresses `.eval` members with
Zstandard (zip method 93), which Python's `zipfile` reads only from 3.14 on: those members are decompressed
with the `zstandard` package (`pip install 'rlaudit[inspect]'`); stored or deflated members need nothing.

Mapping of one sample (`samples/{id}_epoch_{n}.json` in a `.eval`, `samples[i]` in a `.json`) to a
`Transcript`:
- `messages`: system/user/assistant/tool messages become OpenAI-style chat messages. Content given as a list of
  parts keeps its text parts (joined; other parts such as images become `[image]`); reasoning parts go to the
  assistant message's `reasoning_content` (the field the rest of rlaudit reads); `tool_calls` become
  `{"id", "type": "function", "function": {"name", "arguments": JSON text}}`; a tool message keeps
  `tool_call_id` and `name`, and a tool error becomes the content `Error: MESSAGE` (what inspect's OpenAI
  provider sends the model). `attachment://HASH` references are resolved from the sample's `attachments`.
- `tools`: the tool definitions the model was offered (`tools` of the sample's model events, first seen per
  name), as OpenAI function tools.
- categories: `task` is the sample metadata's `task`, else the eval's task name; `condition` the metadata's
  `condition` (else `none`); `toolset` the names of the tools offered, else of the tools called.
- id: `TASK/SAMPLE_ID/EPOCH` (with `@LOGFILE` appended when two logs hold the same one).

A malformed log raises `RlauditError` naming the file, the member or sample, and the field.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import RlauditError
from .transcripts import Transcript, toolset_of

ROLES = ("system", "user", "assistant", "tool")
_ZSTD = 93  # zip compression method id of Zstandard
_ATTACHMENT = "attachment://"


class _Where:
    """Where in a log a value sits, for error messages: file, member or sample, field path."""

    def __init__(self, path: Path, part: str):
        self.path, self.part = path, part

    def fail(self, field: str, expected: str, got: Any = None) -> RlauditError:
        if got is None:
            shown = "missing"
        else:
            shown = "got " + (repr(got[:80]) if isinstance(got, str) else json.dumps(got, default=str)[:80])
        return RlauditError(f"{self.path}: {self.part}: field {field!r}: expected {expected}, {shown}")


def is_inspect_log(path: Path) -> bool:
    return path.suffix == ".eval" or (path.suffix == ".json" and path.name != "logs.json")


def read_inspect_log(path: str | Path, seen: set[str] | None = None) -> Iterator[Transcript]:
    """Transcripts of one Inspect log file (lazily, sample by sample for `.eval`)."""
    path = Path(path)
    seen = set() if seen is None else seen
    if path.suffix == ".eval":
        yield from _read_eval_zip(path, seen)
    else:
        yield from _read_json_log(path, seen)


# ---------------------------------------------------------------------------------------------- containers
def _read_json_log(path: Path, seen: set[str]) -> Iterator[Transcript]:
    try:
        with open(path, encoding="utf-8") as fh:
            log = json.load(fh)
    except ValueError as exc:
        raise RlauditError(f"{path}: not JSON ({exc}); expected an Inspect eval log") from None
    where = _Where(path, "log")
    if not isinstance(log, dict):
        raise where.fail("(top level)", "an Inspect EvalLog object", type(log).__name__)
    spec = _eval_spec(log, where)
    samples = log.get("samples")
    if samples is None:
        raise RlauditError(f"{path}: field 'samples': missing (a header-only log, or written with "
                           "--no-log-samples); nothing to resample")
    if not isinstance(samples, list):
        raise where.fail("samples", "a list of samples", samples)
    for i, sample in enumerate(samples):
        part = f"samples[{i}]"
        if isinstance(sample, dict):
            part += f" (id {sample.get('id')!r}, epoch {sample.get('epoch')!r})"
        yield _transcript(sample, spec, _Where(path, part), seen)


def _read_eval_zip(path: Path, seen: set[str]) -> Iterator[Transcript]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise RlauditError(f"{path}: not a readable .eval zip ({exc})") from None
    with zf:
        names = set(zf.namelist())
        head = "header.json" if "header.json" in names else "_journal/start.json"
        if head not in names:
            raise RlauditError(f"{path}: no header.json or _journal/start.json: not an Inspect .eval log")
        spec = _eval_spec(_member_json(zf, path, head), _Where(path, head))
        members = sorted((n for n in names if n.startswith("samples/") and n.endswith(".json")), key=_sample_order)
        for name in members:
            yield _transcript(_member_json(zf, path, name), spec, _Where(path, name), seen)


def _sample_order(name: str) -> tuple[int, str]:
    stem = name[len("samples/"):-len(".json")]
    sid, _, epoch = stem.rpartition("_epoch_")
    return (int(epoch) if epoch.isdigit() else 0, sid)


def _member_json(zf: zipfile.ZipFile, path: Path, name: str) -> Any:
    info = zf.getinfo(name)
    try:
        data = _zstd_member(zf, path, info) if info.compress_type == _ZSTD else zf.read(name)
        return json.loads(data)
    except (ValueError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise RlauditError(f"{path}: {name}: cannot read the member ({type(exc).__name__}: {exc})") from None


def _zstd_member(zf: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo) -> bytes:
    """A Zstandard-compressed member: the raw bytes after its local header, decompressed across frames."""
    try:
        import zstandard
    except ImportError:
        raise RlauditError(f"{path}: its members are Zstandard-compressed (inspect-ai 0.3 writes them so); "
                           "reading them needs the zstandard package: pip install 'rlaudit[inspect]'") from None
    fp = zf.fp
    assert fp is not None
    fp.seek(info.header_offset)
    header = fp.read(30)
    if header[:4] != b"PK\x03\x04":
        raise RlauditError(f"{path}: {info.filename}: bad local file header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    fp.seek(info.header_offset + 30 + name_len + extra_len)
    raw = fp.read(info.compress_size)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
    return reader.read()


def _eval_spec(log: Any, where: _Where) -> dict[str, Any]:
    if not isinstance(log, dict):
        raise where.fail("(top level)", "an object", type(log).__name__)
    spec = log.get("eval")
    if not isinstance(spec, dict):
        raise where.fail("eval", "the eval spec object", spec)
    if not isinstance(spec.get("task"), str) or not spec["task"]:
        raise where.fail("eval.task", "the task name (a string)", spec.get("task"))
    return spec


# ---------------------------------------------------------------------------------------------- samples
def _transcript(sample: Any, spec: dict[str, Any], where: _Where, seen: set[str]) -> Transcript:
    if not isinstance(sample, dict):
        raise where.fail("(sample)", "a sample object", type(sample).__name__)
    raw = sample.get("messages")
    if not isinstance(raw, list):
        raise where.fail("messages", "a list of chat messages", raw)
    attachments = sample.get("attachments") if isinstance(sample.get("attachments"), dict) else {}
    messages = [_message(m, f"messages[{i}]", where, attachments) for i, m in enumerate(raw)]
    tools = _tools(sample.get("events"), where)
    metadata = sample.get("metadata") if isinstance(sample.get("metadata"), dict) else {}
    task = str(metadata.get("task") or spec["task"])
    tid = f"{spec['task']}/{sample.get('id')}/{sample.get('epoch', 1)}"
    if tid in seen:
        tid += f"@{where.path.name}"
    seen.add(tid)
    scores = sample.get("scores") if isinstance(sample.get("scores"), dict) else {}
    meta = {**metadata, "inspect_log": str(where.path), "inspect_task": spec["task"],
            "inspect_model": spec.get("model"), "sample_id": sample.get("id"), "epoch": sample.get("epoch"),
            "scores": {k: v.get("value") for k, v in scores.items() if isinstance(v, dict)}}
    condition = metadata.get("condition")
    return Transcript(id=tid, messages=messages, tools=tools, task=task,
                      condition=str(condition) if condition not in (None, "") else "none",
                      toolset=toolset_of(tools, messages), metadata=meta)


def _resolve(text: Any, attachments: dict[str, Any]) -> Any:
    if isinstance(text, str):
        if text.startswith("tc://"):  # an older flavour of the attachment reference
            text = _ATTACHMENT + text[len("tc://"):]
        if text.startswith(_ATTACHMENT):
            return attachments.get(text[len(_ATTACHMENT):], text)
    return text


def _content(content: Any, field: str, where: _Where, attachments: dict[str, Any]) -> tuple[str, str | None]:
    """(text, reasoning or None) of an Inspect message content: a string or a list of content parts."""
    if isinstance(content, str):
        return _resolve(content, attachments), None
    if not isinstance(content, list):
        raise where.fail(field, "a string or a list of content parts", content)
    texts, reasoning = [], []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise where.fail(f"{field}[{j}].type", "a content part with a 'type'", part)
        kind = part["type"]
        if kind == "text":
            texts.append(str(_resolve(part.get("text", ""), attachments)))
        elif kind == "reasoning":
            if part.get("redacted"):
                reasoning.append("[redacted reasoning]")
            else:
                reasoning.append(str(_resolve(part.get("reasoning", ""), attachments)))
        else:
            texts.append(f"[{kind}]")
    return "\n".join(texts), ("\n".join(reasoning) if reasoning else None)


def _message(m: Any, field: str, where: _Where, attachments: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise where.fail(field, "a chat message object", type(m).__name__)
    role = m.get("role")
    if role not in ROLES:
        raise where.fail(f"{field}.role", f"one of {', '.join(ROLES)}", role)
    if "content" not in m:
        raise where.fail(f"{field}.content", "a string or a list of content parts")
    text, reasoning = _content(m["content"], f"{field}.content", where, attachments)
    out: dict[str, Any] = {"role": role, "content": text}
    if role == "assistant":
        if reasoning is not None:
            out["reasoning_content"] = reasoning
        calls = m.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise where.fail(f"{field}.tool_calls", "a list of tool calls", calls)
            out["tool_calls"] = [_tool_call(c, f"{field}.tool_calls[{k}]", where) for k, c in enumerate(calls)]
            if not text:
                out["content"] = None
    elif role == "tool":
        if m.get("tool_call_id") is not None:
            out["tool_call_id"] = str(m["tool_call_id"])
        if m.get("function"):
            out["name"] = str(m["function"])
        error = m.get("error")
        if isinstance(error, dict) and error.get("message") is not None:
            out["content"] = f"Error: {error['message']}"
    return out


def _tool_call(c: Any, field: str, where: _Where) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise where.fail(field, "a tool call object", type(c).__name__)
    if not isinstance(c.get("function"), str) or not c["function"]:
        raise where.fail(f"{field}.function", "the tool's name (a string)", c.get("function"))
    args = c.get("arguments", {})
    if not isinstance(args, (dict, str)):
        raise where.fail(f"{field}.arguments", "an object of arguments", args)
    return {"id": str(c.get("id") or ""), "type": "function",
            "function": {"name": c["function"],
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}}


def _tools(events: Any, where: _Where) -> list[dict[str, Any]] | None:
    """The tools offered to the model (the `tools` of the sample's model events, first seen per name)."""
    if not isinstance(events, list):
        return None
    found: dict[str, dict[str, Any]] = {}
    for i, e in enumerate(events):
        if not isinstance(e, dict) or e.get("event") != "model" or not isinstance(e.get("tools"), list):
            continue
        for k, t in enumerate(e["tools"]):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise where.fail(f"events[{i}].tools[{k}].name", "the tool's name (a string)",
                                 t.get("name") if isinstance(t, dict) else t)
            fn = {"name": t["name"], "description": t.get("description") or "",
                  "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
            found.setdefault(t["name"], {"type": "function", "function": fn})
    return list(found.values()) or None
