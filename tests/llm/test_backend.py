"""The LLM client: cache, accounting, dry run and concurrency (scripted backend), and the OpenAI-compatible HTTP
backend against real servers on 127.0.0.1: retries, backoff, timeouts, and a tiny transformers model."""

from __future__ import annotations

import io
import threading
import time

import pytest

from rlaudit.llm import Accounting, ChatRequest, LLMClient, Price, ScriptedBackend, client_from_spec
from rlaudit.llm.judge import Judge


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


# ------------------------------------------------------------------------------------------------ HTTP
httpx = pytest.importorskip("httpx", reason="needs the [llm] extra (httpx): pip install -e '.[llm]'")

from rlaudit.llm.serve import Server, _Handler  # noqa: E402


class _Flaky(_Handler):
    """Fails the first POSTs: a 503, then a 429 with Retry-After, then answers."""

    failures = [503, 429]
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802
        with self.lock:
            status = type(self).failures.pop(0) if type(self).failures else None
        if status is None:
            return super().do_POST()
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"message": "busy"}}'
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Slow(_Handler):
    def do_POST(self) -> None:  # noqa: N802
        time.sleep(1.0)
        return super().do_POST()


class _Unauthorised(_Handler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(401)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def test_http_retries_with_backoff():
    _Flaky.failures = [503, 429]
    with Server(ScriptedBackend(_answer), handler=_Flaky) as server:
        client = client_from_spec(f"openai:scripted@{server.url}", backoff=0.01, max_retries=3)
        result = client.complete_one(ChatRequest.of("did it hack", temperature=0))
    assert result.ok and result.text == "yes" and result.attempts == 3
    assert client.accounting.retries == 2 and client.accounting.errors == 0
    assert result.prompt_tokens == 3 and result.completion_tokens == 1  # the server's usage block


def test_http_timeout_and_non_retryable_errors():
    with Server(ScriptedBackend(_answer), handler=_Slow) as server:
        client = client_from_spec(f"openai:scripted@{server.url}", timeout=0.2, max_retries=1, backoff=0.01)
        started = time.perf_counter()
        result = client.complete_one(ChatRequest.of("q"))
        assert time.perf_counter() - started < 0.9
    assert not result.ok and "gave up after 2 attempts" in result.error and "Timeout" in result.error
    assert client.accounting.errors == 1 and client.accounting.retries == 1
    with Server(ScriptedBackend(_answer), handler=_Unauthorised) as server:
        client = client_from_spec(f"openai:scripted@{server.url}", max_retries=3, backoff=0.01)
        result = client.complete_one(ChatRequest.of("q"))
    assert not result.ok and "HTTP 401" in result.error and result.attempts == 1


def test_real_openai_compatible_server_backed_by_a_tiny_local_model(tmp_path):
    pytest.importorskip("transformers", reason="needs transformers and torch (the [trl] extra)")
    from rlaudit.llm.local import TransformersBackend

    from .tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    local = TransformersBackend(build_model(tokenizer), tokenizer, name="tiny-yes")
    with Server(local) as server:
        client = client_from_spec(f"openai:tiny-yes@{server.url}", cache=tmp_path / "c.sqlite", concurrency=4,
                                  price="0.15/0.60")
        judge = Judge("judge:cot:does the reasoning say it hard coded the tests", client)
        verdicts = judge.judge_rollouts(["p"] * 3, ["it is hard coded", "the answer", "pass the test"],
                                        ["a"] * 3)
        assert [v.label for v in verdicts] == [True, True, True]
        assert [v.score for v in verdicts] == [1.0, 1.0, 1.0]
        assert len(server.requests_seen) == 3
        # the usage block is the model's own tokenizer count of the chat-templated prompt
        request = judge.request("REASONING:\nit is hard coded")
        assert client.accounting.prompt_tokens == sum(local.count_tokens(judge.request(f"REASONING:\n{r}"))
                                                      for r in ["it is hard coded", "the answer", "pass the test"])
        assert local.count_tokens(request) > 10 and client.accounting.completion_tokens == 3
        print("\n" + client.accounting.format())

        rerun = client_from_spec(f"openai:tiny-yes@{server.url}", cache=tmp_path / "c.sqlite", price="0.15/0.60")
        again = Judge("judge:cot:does the reasoning say it hard coded the tests", rerun).judge_rollouts(
            ["p"] * 3, ["it is hard coded", "the answer", "pass the test"], ["a"] * 3)
        assert [v.label for v in again] == [True] * 3
        assert len(server.requests_seen) == 3 and rerun.accounting.cache_hits == 3
        print(rerun.accounting.format())
