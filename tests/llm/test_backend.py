"""The LLM client: cache, accounting, dry run, concurrency and failed calls, on the scripted backend."""

from __future__ import annotations

import io
import threading
import time

import pytest

from rlaudit.llm import Accounting, ChatRequest, LLMClient, Price, ScriptedBackend


def _answer(request: ChatRequest) -> str:
    return "yes" if "hack" in request.messages[-1][1] else "no"


def _requests() -> list[ChatRequest]:
    return [ChatRequest.of(f"did it hack the test {i}" if i % 2 else f"clean answer {i}", temperature=0)
            for i in range(3)]


def test_cache_accounting_and_dry_run(tmp_path):
    backend = ScriptedBackend(_answer)
    cache = tmp_path / "cache.sqlite"
    client = LLMClient(backend, cache=cache, accounting=Accounting(price=Price(1.0, 2.0)))
    results = client.complete(_requests())
    assert [r.text for r in results] == ["no", "yes", "no"]
    # exact token counts: words of the prompt, words of the answer
    assert client.accounting.prompt_tokens == 3 + 6 + 3 and client.accounting.completion_tokens == 3
    assert client.accounting.cost_usd == pytest.approx((12 * 1.0 + 3 * 2.0) / 1e6)
    assert (client.accounting.calls, client.accounting.sent, client.accounting.cache_hits) == (3, 3, 0)

    again = LLMClient(backend, cache=cache, accounting=Accounting(price=Price(1.0, 2.0)))
    assert [r.text for r in again.complete(_requests())] == ["no", "yes", "no"]
    assert backend.calls == 3  # nothing re-sent
    assert (again.accounting.sent, again.accounting.cache_hits, again.accounting.cost_usd) == (0, 3, 0.0)
    assert again.accounting.saved_usd == pytest.approx(client.accounting.cost_usd)
    # a different parameter is a different request
    assert not again.complete([ChatRequest.of("clean answer 0", temperature=0.5)])[0].cached

    out = io.StringIO()
    dry = LLMClient(ScriptedBackend(_answer), cache=tmp_path / "other.sqlite", dry_run=True, dry_run_out=out)
    results = dry.complete(_requests())
    assert all(r.dry_run and not r.ok for r in results) and dry.backend.calls == 0
    assert dry.accounting.dry_run == 3 and dry.accounting.dry_run_prompt_tokens == 12
    printed = out.getvalue()
    assert "did it hack the test 1" in printed and "(6 prompt tokens)" in printed
    assert "a real run would send 12 prompt tokens" in dry.accounting.format()


def test_concurrency_limit_and_budget():
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow(request: ChatRequest) -> str:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return "ok"

    client = LLMClient(ScriptedBackend(slow), concurrency=3, max_calls=20)
    results = client.complete([ChatRequest.of(f"q{i}") for i in range(12)])
    assert all(r.ok for r in results)
    assert state["max"] == 3 and client.max_in_flight == 3
    with pytest.raises(Exception, match="max_calls"):
        client.complete([ChatRequest.of(f"r{i}") for i in range(9)])


def test_a_failing_call_is_a_missing_answer_not_a_crash():
    def boom(request: ChatRequest) -> str:
        if "bad" in request.messages[-1][1]:
            raise RuntimeError("backend broke")
        return "yes"

    client = LLMClient(ScriptedBackend(boom))
    good, bad = client.complete([ChatRequest.of("good"), ChatRequest.of("bad")])
    assert good.ok and not bad.ok and "backend broke" in bad.error
    assert client.accounting.errors == 1
