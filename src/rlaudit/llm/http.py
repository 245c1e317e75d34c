"""OpenAI-compatible chat completions over HTTP (vLLM, SGLang, Ollama, llama.cpp server, OpenAI, proxies).

POST {base_url}/chat/completions with {"model", "messages", **params}; reads choices[0].message.content and
usage.prompt_tokens / usage.completion_tokens (estimated when the server sends no usage). Needs the `[llm]`
extra (httpx).

Retries: connection errors, timeouts, 408/409/429 and 5xx are retried up to `max_retries` times with exponential
backoff (`backoff` x 2^attempt seconds, capped at `max_backoff`, with +-25% jitter), honouring a numeric
`Retry-After` header (capped likewise). Other 4xx answers (bad request, authentication) fail at once. Every
request has a `timeout` (seconds, connect and read).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from .core import Backend, ChatRequest, ChatResult, LLMError, approx_tokens

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class CallFailed(LLMError):
    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


class OpenAIBackend(Backend):
    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, max_retries: int = 4,
                 backoff: float = 0.5, max_backoff: float = 30.0, seed: int | None = None,
                 headers: dict[str, str] | None = None):
        try:
            import httpx  # noqa: F401
        except ImportError:
            raise LLMError("the OpenAI-compatible backend needs httpx: pip install 'rlaudit[llm]'") from None
        super().__init__(model)
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = dict(headers or {})
        self.description = f"openai:{model}@{self.base_url}"
        self._rng = random.Random(seed)
        self._client: Any = None
        self._loop: Any = None

    def _http(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            headers = {"Content-Type": "application/json", **self.headers}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), headers=headers,
                                             limits=httpx.Limits(max_connections=64))
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client, self._loop = None, None

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self.max_backoff, self.backoff * 2 ** attempt)
        return base * (0.75 + 0.5 * self._rng.random())

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        import httpx

        body = {"model": self.model, "messages": request.message_dicts(), **request.param_dict()}
        url = f"{self.base_url}/chat/completions"
        started = time.perf_counter()
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = await self._http().post(url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return self._parse(request, response, attempt + 1, time.perf_counter() - started)
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRY_STATUS:
                    raise CallFailed(f"{url}: {last}", attempt + 1)
                retry_after = response.headers.get("retry-after")
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise CallFailed(f"{url}: gave up after {self.max_retries + 1} attempts; last: {last}", self.max_retries + 1)

    def _parse(self, request: ChatRequest, response: Any, attempts: int, seconds: float) -> ChatResult:
        try:
            data = response.json()
            message = data["choices"][0]["message"]
            text = message.get("content") or ""
            tool_calls = message.get("tool_calls") or None
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise CallFailed(f"unexpected response ({exc}): {response.text[:300]}", attempts) from None
        usage = data.get("usage") or {}
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        return ChatResult(text=text,
                          prompt_tokens=int(prompt) if prompt is not None else self.count_tokens(request),
                          completion_tokens=int(completion) if completion is not None else approx_tokens(text),
                          model=str(data.get("model") or self.model), attempts=attempts, seconds=seconds,
                          tool_calls=tool_calls)
