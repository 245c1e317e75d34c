"""LLM monitors and judges for rlaudit (optional extra `[llm]`: httpx for OpenAI-compatible servers).

    from rlaudit.llm import client_from_spec
    client = client_from_spec("openai:gpt-4o-mini@http://127.0.0.1:8000/v1", cache=".rlaudit/llm-cache.sqlite",
                              concurrency=8, price="0.15/0.60")
    results = client.complete([ChatRequest.of("Is 2+2=4? Answer yes or no.", temperature=0)])
    print(client.accounting.format())

Backends (`core.Backend`): `openai:MODEL[@BASE_URL]` (any OpenAI-compatible server), `transformers:PATH` (a
local model), `scripted:MODULE:FUNCTION` (a Python function `f(ChatRequest) -> str`). Judges (`judge.py`) turn a
rubric into yes/no verdicts with a score and the quoted span that justifies them; `judge:RUBRIC` behaviour specs
use the default client (`set_default_client`, or the `RLAUDIT_LLM` environment variable holding a backend spec;
`RLAUDIT_LLM_MAX_CALLS`, default 10,000, bounds what a spec evaluated on every rollout may send).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..errors import RlauditError
from .core import (Accounting, Backend, ChatRequest, ChatResult, LLMClient, LLMError, Price, ResponseCache,
                   ScriptedBackend, approx_tokens)

_DEFAULT: LLMClient | None = None


def backend_from_spec(spec: str, **http_options: Any) -> Backend:
    """A backend from `openai:MODEL[@BASE_URL]`, `transformers:PATH` or `scripted:MODULE:FUNCTION`."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise RlauditError(f"LLM backend {spec!r}: expected openai:MODEL[@URL], transformers:PATH or "
                           "scripted:MODULE:FUNCTION")
    if kind == "openai":
        model, _, url = rest.partition("@")
        from .http import OpenAIBackend

        return OpenAIBackend(model, base_url=url or "https://api.openai.com/v1", **http_options)
    if kind == "transformers":
        from .local import TransformersBackend

        return TransformersBackend.load(rest)
    if kind == "scripted":
        module, _, func = rest.rpartition(":")
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError, ValueError) as exc:
            raise RlauditError(f"LLM backend {spec!r}: cannot import {func} from {module}: {exc}") from None
        return ScriptedBackend(fn, model=f"{module}:{func}")
    raise RlauditError(f"LLM backend {spec!r}: unknown kind {kind!r} (openai, transformers, scripted)")


def client_from_spec(spec: str | Backend, cache: str | Path | None = None, concurrency: int = 8,
                     price: str | Price | None = None, dry_run: bool = False, max_calls: int | None = None,
                     **http_options: Any) -> LLMClient:
    backend = spec if isinstance(spec, Backend) else backend_from_spec(spec, **http_options)
    price = price if isinstance(price, Price) else Price.parse(price)
    return LLMClient(backend, cache=cache, accounting=Accounting(price=price), concurrency=concurrency,
                     dry_run=dry_run, max_calls=max_calls)


def set_default_client(client: LLMClient | None) -> None:
    """The client `judge:` behaviour specs use (None: fall back to $RLAUDIT_LLM)."""
    global _DEFAULT
    _DEFAULT = client


def default_client() -> LLMClient:
    global _DEFAULT
    if _DEFAULT is None:
        spec = os.environ.get("RLAUDIT_LLM")
        if not spec:
            raise RlauditError("judge: behaviours need an LLM: set RLAUDIT_LLM=openai:MODEL@URL (or "
                               "transformers:PATH, scripted:MODULE:FUNCTION), or pass --monitor")
        _DEFAULT = client_from_spec(spec, cache=os.environ.get("RLAUDIT_LLM_CACHE"),
                                    concurrency=int(os.environ.get("RLAUDIT_LLM_CONCURRENCY", "8")),
                                    price=os.environ.get("RLAUDIT_LLM_PRICE"),
                                    max_calls=int(os.environ.get("RLAUDIT_LLM_MAX_CALLS", "10000")))
    return _DEFAULT


__all__ = ["Accounting", "Backend", "ChatRequest", "ChatResult", "LLMClient", "LLMError", "Price", "ResponseCache",
           "ScriptedBackend", "approx_tokens", "backend_from_spec", "client_from_spec", "default_client",
           "set_default_client"]
