"""The OpenAI-compatible HTTP backend against real servers on 127.0.0.1 (in the test process): retries with
backoff, timeouts, non-retryable errors, and a tiny transformers model built here (no hub) behind the server."""

from __future__ import annotations

import threading
import time

import pytest

from rlaudit.llm import ChatRequest, ScriptedBackend, client_from_spec
from rlaudit.llm.judge import Judge

from .test_backend import _answer

# ------------------------------------------------------------------------------------------------ HTTP
pytestmark = pytest.mark.llm
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
