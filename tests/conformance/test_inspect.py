"""Inspect eval logs (`.eval` zip and `.json`) written by inspect-ai 0.3.285's own eval loop
(`conformance/inspect/generate.py`) read as resampling transcripts, field by field, then resampled.

The fixtures are the generator's output: `$RLAUDIT_CONFORMANCE_DIR/inspect` when set, else the committed copy.
Expected values are taken from the raw `.json` log (parsed here with plain `json`), so each assertion states the
mapping rule; the `.eval` logs of the same tasks must give the same transcripts (tool-call ids aside: inspect
draws them per run).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from rlaudit.errors import RlauditError
from rlaudit.evals import cuts, load_transcripts, run_resample
from rlaudit.llm import ChatRequest, LLMClient, ScriptedBackend

from .logs import trainer_logs

LOGS = trainer_logs("inspect")
EVAL, JSON = LOGS / "eval", LOGS / "json"
pytest.importorskip("zstandard", reason="inspect-ai 0.3 writes Zstandard .eval members: the [inspect] extra")


def _raw_samples() -> list[tuple[dict, dict]]:
    out = []
    for f in sorted(JSON.glob("*.json")):
        log = json.loads(f.read_text())
        out += [(log["eval"], s) for s in log["samples"]]
    return out


def _without_call_ids(messages: list[dict]) -> list[dict]:
    text = json.dumps(messages)
    for m in messages:
        for c in m.get("tool_calls") or []:
            text = text.replace(c["id"], "CALL")
    return json.loads(text)


def test_json_log_samples_map_to_chat_transcripts_field_by_field():
    transcripts = {t.id: t for t in load_transcripts(str(JSON))}
    raw = _raw_samples()
    assert len(transcripts) == len(raw) == 3 * 2 + 2  # bugfix: 3 samples x 2 epochs; docs: 2 samples
    for spec, s in raw:
        t = transcripts[f"{spec['task']}/{s['id']}/{s['epoch']}"]
        assert t.task == spec["task"] and t.condition == s["metadata"]["condition"]
        assert t.metadata["ticket" if spec["task"] == "bugfix" else "condition"] is not None
        assert t.metadata["inspect_task"] == spec["task"] and t.metadata["epoch"] == s["epoch"]
        assert [m["role"] for m in t.messages] == [m["role"] for m in s["messages"]]
        for got, m in zip(t.messages, s["messages"]):
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            text = "\n".join(p["text"] for p in parts if p["type"] == "text")
            reasoning = [p["reasoning"] for p in parts if p["type"] == "reasoning"]
            if m.get("error"):  # what inspect's OpenAI provider sends for a tool error
                assert got["content"] == f"Error: {m['error']['message']}"
            elif m.get("tool_calls") and not text:
                assert got["content"] is None
            else:
                assert got["content"] == text
            assert got.get("reasoning_content") == ("\n".join(reasoning) if reasoning else None)
            calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]), c["id"])
                     for c in got.get("tool_calls") or []]
            assert calls == [(c["function"], c["arguments"], c["id"]) for c in m.get("tool_calls") or []]
            if m["role"] == "tool":
                assert (got["tool_call_id"], got["name"]) == (m["tool_call_id"], m["function"])
        offered = {t["name"] for e in s["events"] if e["event"] == "model" for t in e["tools"]}
        assert {f["function"]["name"] for f in t.tools} == offered
        assert t.toolset == "+".join(sorted(offered))
        schema = next(f["function"] for f in t.tools if f["function"]["name"] == "read_file")
        assert schema["parameters"]["properties"]["path"]["type"] == "string"
    docs = [t for t in transcripts.values() if t.task == "docs"]
    assert docs and all(t.messages[3]["content"] == "Error: no such file: docs/parser.md" for t in docs)
    assert transcripts["bugfix/bug-1/1"].messages[2]["reasoning_content"].startswith("Ticket 1: reproduce")


def test_eval_zip_gives_the_same_transcripts_as_the_json_log():
    from_json = {t.id: t for t in load_transcripts(str(JSON))}
    from_eval = {t.id: t for t in load_transcripts(str(EVAL))}
    assert sorted(from_eval) == sorted(from_json)
    for tid, t in from_eval.items():
        other = from_json[tid]
        assert _without_call_ids(t.messages) == _without_call_ids(other.messages)
        assert (t.tools, t.task, t.condition, t.toolset) == (other.tools, other.task, other.condition, other.toolset)
    # the members are Zstandard-compressed, as inspect-ai 0.3 writes them
    with zipfile.ZipFile(next(EVAL.glob("*bugfix*.eval"))) as zf:
        assert {i.compress_type for i in zf.infolist() if i.filename.startswith("samples/")} == {93}


def _agent(request: ChatRequest) -> str:
    """Reads a file nobody read (the simulator answers), then answers with a goblin remark in bugfix only."""
    coding = "coding agent" in request.messages[0][1]
    in_history = 2 if coding else 1  # tool messages before the cut: bugfix runs tests and reads; docs reads
    if sum(1 for r, _ in request.messages if r == "tool") == in_history:
        return '<tool_call>{"name": "read_file", "arguments": {"path": "src/lexer.py"}}</tool_call>'
    return "Done, goblin." if coding else "Done."


def test_resampling_an_inspect_log_end_to_end(tmp_path):
    transcripts = load_transcripts(str(EVAL))
    found = cuts(transcripts)
    # cut before the last assistant message: the history (system, user, two tool rounds) is kept as read
    bug = next(c for c in found if c.transcript.id == "bugfix/bug-1/1")
    assert [m["role"] for m in bug.history] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    sent = []

    def agent(request: ChatRequest) -> str:
        sent.append(request)
        return _agent(request)

    res = run_resample(transcripts, {"cand": LLMClient(ScriptedBackend(agent))}, ["goblin"], samples=2,
                       simulator=LLMClient(ScriptedBackend(lambda r: "def lex(s): return s")), out=tmp_path)
    first = next(r for r in sent if len(r.message_dicts()) == len(bug.history) and "#1 in" in r.messages[1][1])
    assert first.message_dicts() == bug.history and first.param_dict()["tools"] == bug.transcript.tools
    rows = {(r["model"], r["transcript_id"], r["sample"]): r for r in res["rows"]}
    assert len(rows) == 8 + 8 * 2
    rates = {(r["model"], r["dimension"], r["category"]): r["rate"] for r in res["rates"]}
    # originals: odd tickets (1 and 3 of 3) say goblin in bugfix, docs never; the candidate: all of bugfix
    assert rates[("original", "task", "bugfix")] == pytest.approx(4 / 6)
    assert rates[("original", "task", "docs")] == 0.0
    assert rates[("cand", "task", "bugfix")] == 1.0 and rates[("cand", "task", "docs")] == 0.0
    assert rates[("original", "condition", "nerdy")] == 1.0 and rates[("original", "condition", "default")] == 0.0
    assert {c for (_, d, c) in rates if d == "toolset"} == {"read_file", "read_file+run_tests"}
    import pyarrow.parquet as pq

    samples = [r for r in pq.read_table(tmp_path / "samples.parquet").to_pylist() if r["model"] == "cand"]
    assert len(samples) == 16
    for r in samples:
        [event] = json.loads(r["tool_events"])
        assert event["simulated"] and event["output"] == "def lex(s): return s"
        assert json.loads(event["arguments"]) == {"path": "src/lexer.py"}


def _copy(tmp_path: Path, src: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    return dst


def _rewrite_json(tmp_path: Path, edit) -> Path:
    src = next(JSON.glob("*bugfix*.json"))
    log = json.loads(src.read_text())
    edit(log)
    dst = tmp_path / src.name
    dst.write_text(json.dumps(log))
    return dst


def _rewrite_eval(tmp_path: Path, member: str, edit) -> Path:
    """A copy of the bugfix .eval with one member edited (re-written deflated: the reader takes both)."""
    src = next(EVAL.glob("*bugfix*.eval"))
    from rlaudit.evals.inspect_logs import _member_json

    dst = tmp_path / src.name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            data = _member_json(zin, src, name)
            if name == member:
                data = edit(data)
            zout.writestr(name, json.dumps(data))
    return dst


def test_malformed_logs_name_the_file_the_sample_and_the_field(tmp_path):
    def bad_role(log):
        log["samples"][1]["messages"][1]["role"] = "robot"

    path = _rewrite_json(tmp_path, bad_role)
    with pytest.raises(RlauditError) as err:
        load_transcripts(str(path))
    assert str(err.value) == (f"{path}: samples[1] (id 'bug-2', epoch 1): field 'messages[1].role': expected one "
                              "of system, user, assistant, tool, got 'robot'")

    def no_call_name(sample):
        sample["messages"][2]["tool_calls"][0]["function"] = None
        return sample

    path = _rewrite_eval(tmp_path, "samples/bug-3_epoch_2.json", no_call_name)
    with pytest.raises(RlauditError) as err:
        load_transcripts(str(path))
    assert str(err.value) == (f"{path}: samples/bug-3_epoch_2.json: field 'messages[2].tool_calls[0].function': "
                              "expected the tool's name (a string), missing")
    path = _rewrite_eval(tmp_path, "header.json", lambda h: {**h, "eval": {**h["eval"], "task": 7}})
    with pytest.raises(RlauditError, match=r"header.json: field 'eval.task': expected the task name"):
        load_transcripts(str(path))

    path = _rewrite_json(tmp_path, lambda log: log.pop("samples"))
    with pytest.raises(RlauditError, match=r"field 'samples': missing \(a header-only log"):
        load_transcripts(str(path))
    (tmp_path / "broken.eval").write_bytes(b"not a zip")
    with pytest.raises(RlauditError, match=r"broken.eval: not a readable .eval zip"):
        load_transcripts(str(tmp_path / "broken.eval"))


def test_zstandard_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(RlauditError, match=r"Zstandard-compressed .* pip install 'rlaudit\[inspect\]'"):
        load_transcripts(str(EVAL))


def test_a_running_eval_and_attachments(tmp_path):
    """An .eval still being written has no header.json (the spec is in _journal/start.json); condensed samples
    keep long content as `attachment://HASH` with the text under `attachments`."""
    def condensed(sample):
        sample["attachments"] = {"0123abcd": "Please fix ticket #3 in the parser (the long version)."}
        sample["messages"][1]["content"] = "attachment://0123abcd"
        return sample

    path = _rewrite_eval(tmp_path, "samples/bug-3_epoch_1.json", condensed)
    running = tmp_path / "running.eval"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(running, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            if name != "header.json":
                zout.writestr(name, zin.read(name))
    transcripts = {t.id: t for t in load_transcripts(str(running))}
    assert len(transcripts) == 6 and all(t.task == "bugfix" for t in transcripts.values())
    assert transcripts["bugfix/bug-3/1"].messages[1]["content"] == ("Please fix ticket #3 in the parser (the long "
                                                                     "version).")
