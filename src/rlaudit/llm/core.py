"""LLM calls for monitors and judges: one backend interface, a client that adds what every audit needs.

- `Backend`: one chat completion per `ChatRequest` (`acomplete`, async). Implementations: `OpenAIBackend`
  (any OpenAI-compatible HTTP server: vLLM, SGLang, Ollama, llama.cpp, OpenAI, proxies; `rlaudit.llm.http`),
  `TransformersBackend` (a local `transformers` model; `rlaudit.llm.local`) and `ScriptedBackend` (a Python
  function; exact, free, for tests and rule-like monitors).
- `LLMClient` wraps a backend with a concurrency limit (at most `concurrency` calls in flight), an on-disk
  `ResponseCache` keyed by (model, messages, params) so that re-running an audit costs nothing, `Accounting`
  (calls, cache hits, tokens, retries, errors, cost at the configured price) and a dry run that prints what
  would be sent with its token count and sends nothing.

Retries with exponential backoff and per-request timeouts belong to the transport (`OpenAIBackend`), which
reports the attempts it needed in `ChatResult.attempts`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import sqlite3
import sys
import threading
import time
from abc import ABC
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import RlauditError


class LLMError(RlauditError):
    """A call failed for good (after retries, or a non-retryable answer such as 401/400)."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion: the messages ({"role", "content"}) and sampling parameters (temperature,
    max_tokens, seed, ...; passed through to the backend). The model is the backend's."""

    messages: tuple[tuple[str, str], ...]
    params: tuple[tuple[str, Any], ...] = ()
    #: canonical JSON of the full messages when they carry more than a role and text content (tool calls,
    #: tool_call_id, name, content parts): sent as they are; `messages` then holds a text rendering of each
    #: (tool calls as `<tool_call>{json}</tool_call>`) for backends that take text (scripted, local).
    raw: str = ""

    @classmethod
    def of(cls, messages: Sequence[dict[str, Any]] | str, **params: Any) -> ChatRequest:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        rich = any(set(m) - {"role", "content"} or not isinstance(m.get("content"), str) for m in messages)
        raw = json.dumps(list(messages), ensure_ascii=False, separators=(",", ":")) if rich else ""
        return cls(tuple((m["role"], message_text(m)) for m in messages), tuple(sorted(params.items())), raw)

    def message_dicts(self) -> list[dict[str, Any]]:
        if self.raw:
            return json.loads(self.raw)
        return [{"role": r, "content": c} for r, c in self.messages]

    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def key(self, model: str) -> str:
        """Cache key: SHA-256 of (model, messages, params) in canonical JSON."""
        blob = json.dumps({"model": model, "messages": self.message_dicts(), "params": self.param_dict()},
                          sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def message_text(message: dict[str, Any]) -> str:
    """A chat message as text: its content (text parts joined) and its tool calls as
    `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (the Hermes/Qwen convention)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    text = content if isinstance(content, str) else ""
    for call in message.get("tool_calls") or []:
        name, args = call_parts(call)
        text += ("\n" if text else "") + "<tool_call>" + json.dumps({"name": name, "arguments": args},
                                                                    ensure_ascii=False) + "</tool_call>"
    return text


def call_parts(call: Any) -> tuple[Any, Any]:
    """(name, arguments) of an OpenAI-style tool call ({function: {name, arguments}} or flat); arguments given
    as JSON text are parsed, and kept as text when they are not JSON (models write broken arguments too)."""
    fn = call.get("function", call) if isinstance(call, dict) else {}
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            pass
    return fn.get("name"), args


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cached: bool = False
    dry_run: bool = False
    attempts: int = 1
    seconds: float = 0.0
    error: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI `message.tool_calls`, when the server parsed any

    @property
    def ok(self) -> bool:
        return self.error is None and not self.dry_run


_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def approx_tokens(text: str) -> int:
    """A tokenizer-free token estimate: words and punctuation marks, and at least chars/4 (BPE vocabularies
    split long words). Used when a backend has no tokenizer of its own (dry runs against HTTP servers)."""
    return max(len(_TOKEN_RE.findall(text)), math.ceil(len(text) / 4))


class Backend(ABC):
    """One chat completion per request. Subclasses implement `acomplete` (async) or `complete` (sync, run in a
    worker thread)."""

    #: a short description of the backend, e.g. "openai:gpt-4o-mini@http://127.0.0.1:8000/v1"
    description: str = ""

    def __init__(self, model: str):
        self.model = model

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        return await asyncio.to_thread(self.complete, request)

    def complete(self, request: ChatRequest) -> ChatResult:
        raise NotImplementedError(f"{type(self).__name__} implements neither complete nor acomplete")

    def count_tokens(self, request: ChatRequest) -> int:
        """Prompt tokens of a request (exact where the backend has a tokenizer, else `approx_tokens`)."""
        return sum(approx_tokens(c) + 4 for _, c in request.messages)

    async def aclose(self) -> None:
        return None


class ScriptedBackend(Backend):
    """Answers from a Python function `f(request) -> str` (or a dict from the last user message to an answer).
    Tokens are counted as words; deterministic, so statistics over it can be asserted exactly."""

    def __init__(self, respond: Callable[[ChatRequest], str] | dict[str, str], model: str = "scripted"):
        super().__init__(model)
        self.respond = respond
        self.description = f"scripted:{model}"
        self.calls = 0
        self._lock = threading.Lock()

    def complete(self, request: ChatRequest) -> ChatResult:
        with self._lock:
            self.calls += 1
        if isinstance(self.respond, dict):
            text = self.respond[request.messages[-1][1]]
        else:
            text = self.respond(request)
        return ChatResult(text=text, prompt_tokens=self.count_tokens(request),
                          completion_tokens=len(text.split()), model=self.model)

    def count_tokens(self, request: ChatRequest) -> int:
        return sum(len(c.split()) for _, c in request.messages)


# ---------------------------------------------------------------------------------------------- cache
class ResponseCache:
    """On-disk cache of successful completions, keyed by `ChatRequest.key(model)` (SQLite, safe across threads
    and processes). Errors and dry runs are never cached."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, result TEXT, "
                        "created REAL)")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def get(self, key: str) -> ChatResult | None:
        with self._lock, self._connect() as con:
            row = con.execute("SELECT result FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return ChatResult(**{**data, "cached": True, "attempts": 0, "seconds": 0.0})

    def put(self, key: str, result: ChatResult) -> None:
        data = {k: v for k, v in asdict(result).items() if k in ("text", "prompt_tokens", "completion_tokens",
                                                                   "model", "tool_calls")}
        with self._lock, self._connect() as con:
            con.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                        (key, result.model, json.dumps(data, ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        with self._lock, self._connect() as con:
            return int(con.execute("SELECT count(*) FROM responses").fetchone()[0])


# ---------------------------------------------------------------------------------------------- accounting
@dataclass
class Price:
    """USD per 1M tokens."""

    input: float = 0.0
    output: float = 0.0

    @classmethod
    def parse(cls, text: str | None) -> Price:
        """'0.15/0.60' (input/output USD per 1M tokens), or one number for both."""
        if not text:
            return cls()
        try:
            parts = [float(x) for x in str(text).split("/")]
        except ValueError:
            raise RlauditError(f"price {text!r}: expected INPUT/OUTPUT USD per 1M tokens, e.g. 0.15/0.60") from None
        return cls(parts[0], parts[-1])


@dataclass
class Accounting:
    """Calls, tokens and cost of one audit (thread-safe). Cached answers cost nothing and count apart."""

    price: Price = field(default_factory=Price)
    calls: int = 0  # requests asked of the client
    sent: int = 0  # requests that reached the backend (successful or not)
    cache_hits: int = 0
    dry_run: int = 0
    errors: int = 0
    retries: int = 0
    prompt_tokens: int = 0  # of sent, successful calls
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # what the cache saved
    cached_completion_tokens: int = 0
    dry_run_prompt_tokens: int = 0  # what a real run would send
    seconds: float = 0.0  # summed latency of sent calls
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, result: ChatResult) -> None:
        with self._lock:
            self.calls += 1
            if result.cached:
                self.cache_hits += 1
                self.cached_prompt_tokens += result.prompt_tokens
                self.cached_completion_tokens += result.completion_tokens
                return
            if result.dry_run:
                self.dry_run += 1
                self.dry_run_prompt_tokens += result.prompt_tokens
                return
            self.sent += 1
            self.retries += max(0, result.attempts - 1)
            self.seconds += result.seconds
            if result.error:
                self.errors += 1
                return
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += result.completion_tokens

    @property
    def cost_usd(self) -> float:
        return (self.prompt_tokens * self.price.input + self.completion_tokens * self.price.output) / 1e6

    @property
    def saved_usd(self) -> float:
        return (self.cached_prompt_tokens * self.price.input
                + self.cached_completion_tokens * self.price.output) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "sent": self.sent, "cache_hits": self.cache_hits, "dry_run": self.dry_run,
                "errors": self.errors, "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cached_prompt_tokens": self.cached_prompt_tokens,
                "cached_completion_tokens": self.cached_completion_tokens,
                "dry_run_prompt_tokens": self.dry_run_prompt_tokens, "seconds": round(self.seconds, 3),
                "price_per_1m": {"input": self.price.input, "output": self.price.output},
                "cost_usd": round(self.cost_usd, 6), "saved_by_cache_usd": round(self.saved_usd, 6)}

    def format(self) -> str:
        line = (f"llm: {self.calls:,} calls ({self.sent:,} sent, {self.cache_hits:,} from cache"
                + (f", {self.dry_run:,} dry-run" if self.dry_run else "") + f"); "
                f"{self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion tokens; "
                f"${self.cost_usd:.4f} at ${self.price.input:g}/${self.price.output:g} per 1M in/out")
        if self.cache_hits:
            line += f" (cache saved ${self.saved_usd:.4f})"
        if self.dry_run:
            line += f"; a real run would send {self.dry_run_prompt_tokens:,} prompt tokens"
        return line + f"; {self.retries} retries, {self.errors} errors"


# ---------------------------------------------------------------------------------------------- client
class LLMClient:
    """A backend plus concurrency limit, cache, accounting and dry run (see module doc).

    `complete(requests)` returns one `ChatResult` per request, in order. A failed call (after the backend's
    retries) gives a result with `error` set instead of raising, so one bad call does not lose a batch; callers
    count those as missing. In a dry run nothing is sent: each uncached request is printed (to `dry_run_out`,
    default stderr) with its token count and gets an empty result with `dry_run=True`.
    """

    def __init__(self, backend: Backend, cache: ResponseCache | str | Path | None = None,
                 accounting: Accounting | None = None, concurrency: int = 8, dry_run: bool = False,
                 dry_run_out: TextIO | None = None, max_calls: int | None = None):
        if concurrency < 1:
            raise RlauditError(f"LLM concurrency must be >= 1, got {concurrency}")
        self.backend = backend
        self.cache = ResponseCache(cache) if isinstance(cache, (str, Path)) else cache
        self.accounting = accounting or Accounting()
        self.concurrency = concurrency
        self.dry_run = dry_run
        self.dry_run_out = dry_run_out
        self.max_calls = max_calls
        self.max_in_flight = 0  # observed, for tests and diagnostics
        self._in_flight = 0

    @property
    def model(self) -> str:
        return self.backend.model

    @property
    def description(self) -> str:
        return self.backend.description or f"{type(self.backend).__name__}:{self.backend.model}"

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        if self.max_calls is not None and self.accounting.calls + len(requests) > self.max_calls:
            raise LLMError(f"LLM budget: {self.accounting.calls + len(requests):,} calls would exceed max_calls="
                           f"{self.max_calls:,}; lower the sample size or raise the budget")
        return _run_async(self._complete_all(list(requests)))

    def complete_one(self, request: ChatRequest) -> ChatResult:
        return self.complete([request])[0]

    async def _complete_all(self, requests: list[ChatRequest]) -> list[ChatResult]:
        semaphore = asyncio.Semaphore(self.concurrency)
        try:
            return list(await asyncio.gather(*(self._one(r, semaphore) for r in requests)))
        finally:
            await self.backend.aclose()

    async def _one(self, request: ChatRequest, semaphore: asyncio.Semaphore) -> ChatResult:
        key = request.key(self.model)
        if self.cache is not None:
            hit = await asyncio.to_thread(self.cache.get, key)
            if hit is not None:
                self.accounting.record(hit)
                return hit
        if self.dry_run:
            tokens = self.backend.count_tokens(request)
            out = self.dry_run_out or sys.stderr
            print(f"dry-run {self.description} {key[:12]} ({tokens} prompt tokens) params={request.param_dict()}",
                  file=out)
            for role, content in request.messages:
                print(f"  [{role}] {content}", file=out)
            result = ChatResult(text="", prompt_tokens=tokens, model=self.model, dry_run=True)
            self.accounting.record(result)
            return result
        async with semaphore:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            started = time.perf_counter()
            try:
                result = await self.backend.acomplete(request)
            except Exception as exc:  # noqa: BLE001 - one failed call becomes a missing answer, counted
                result = ChatResult(text="", model=self.model, error=f"{type(exc).__name__}: {exc}",
                                    attempts=getattr(exc, "attempts", 1))
            finally:
                self._in_flight -= 1
            result.seconds = result.seconds or time.perf_counter() - started
        self.accounting.record(result)
        if result.ok and self.cache is not None:
            await asyncio.to_thread(self.cache.put, key, result)
        return result


def _run_async(coro: Any) -> Any:
    """Run a coroutine to completion, also when called from inside a running event loop (then in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
