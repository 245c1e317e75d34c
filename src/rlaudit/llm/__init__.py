"""LLM monitors and judges for rlaudit (optional extra `[llm]`: httpx for OpenAI-compatible servers).

    from rlaudit.llm import client_from_spec
    client = client_from_spec("openai:gpt-4o-mini@http://127.0.0.1:8000/v1", cache=".rlaudit/llm-cache.sqlite",
                              concurrency=8, price="0.15/0.60")
    results = client.complete([ChatRequest.of("Is 2+2=4? Answer yes or no.", temperature=0)])
    print(client.accounting.format())

Backends (`core.Backend`): an OpenAI-compatible server as `openai://HOST[:PORT]/PATH:MODEL` (https, except plain
http for localhost, 127.0.0.1 and ::1; `openai+http://` or `openai+https://` say it explicitly; the API key from
`$OPENAI_API_KEY`, or from another variable with a `#key=VAR` suffix) or in the older form
`openai:MODEL[@BASE_URL]`; `transformers:PATH` (a local model); `scripted:MODULE:FUNCTION` (a Python function
`f(ChatRequest) -> str`). Judges (`judge.py`) turn a
rubric into yes/no verdicts with a score and the quoted span that justifies them; `judge:RUBRIC` behaviour specs
use the default client (`set_default_client`, or the `RLAUDIT_LLM` environment variable holding a backend spec;
`RLAUDIT_LLM_MAX_CALLS`, default 10,000, bounds what a spec evaluated on every rollout may send).
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

from ..errors import RlauditError
from .core import (Accounting, Backend, ChatRequest, ChatResult, LLMClient, LLMError, Price, ResponseCache,
                   ScriptedBackend, approx_tokens)

_DEFAULT: LLMClient | None = None


_SPEC_FORMS = "openai://HOST[:PORT]/PATH:MODEL, openai:MODEL[@URL], transformers:PATH or scripted:MODULE:FUNCTION"
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def parse_openai_url(spec: str) -> tuple[str, str, str | None]:
    """`openai://HOST[:PORT]/PATH:MODEL[#key=VAR]` -> (base URL, model, API-key variable or None).

    The scheme is https, except plain http for a loopback host (localhost, 127.0.0.1, ::1: a local vLLM or the
    test servers rarely have TLS, and nothing leaves the machine); `openai+http://` and `openai+https://` choose
    explicitly. The model follows the first `:` after the path's first `/`, so model names may hold `:` and `/`
    (`qwen2.5:7b`, `meta-llama/Llama-3.1-8B`); the base URL needs a path (`/v1`). Keys never go in the spec:
    a user name or password in it is refused; `#key=VAR` names the environment variable that holds the key
    (default `OPENAI_API_KEY`)."""
    scheme, sep, rest = spec.partition("://")
    if not sep or scheme not in ("openai", "openai+http", "openai+https"):
        raise RlauditError(f"LLM backend {spec!r}: expected {_SPEC_FORMS}")
    rest, _, fragment = rest.partition("#")
    key_env = None
    if fragment:
        name, eq, var = fragment.partition("=")
        if name != "key" or not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise RlauditError(f"LLM backend {spec!r}: the part after '#' must be key=ENV_VAR (the environment "
                               "variable holding the API key)")
        key_env = var
    host, slash, path_model = rest.partition("/")
    if "@" in host:
        raise RlauditError(f"LLM backend openai://...@{host.rsplit('@', 1)[1]}/...: no credentials in the spec (not "
                           "echoed here); put the API key in "
                           "$OPENAI_API_KEY (or name its variable with #key=VAR)")
    path, colon, model = path_model.partition(":")
    if not host or not slash or not colon or not model:
        raise RlauditError(f"LLM backend {spec!r}: expected openai://HOST[:PORT]/PATH:MODEL, e.g. "
                           "openai://127.0.0.1:8000/v1:my-model or openai://api.openai.com/v1:gpt-4o-mini")
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    if scheme == "openai":
        scheme = "openai+http" if hostname.lower() in _LOCAL_HOSTS else "openai+https"
    return f"{scheme.split('+')[1]}://{host}/{path}", model, key_env


def backend_from_spec(spec: str, **http_options: Any) -> Backend:
    """A backend from `openai://HOST[:PORT]/PATH:MODEL`, `openai:MODEL[@BASE_URL]`, `transformers:PATH` or
    `scripted:MODULE:FUNCTION`."""
    if spec.startswith(("openai://", "openai+http://", "openai+https://")):
        url, model, key_env = parse_openai_url(spec)
        from .http import OpenAIBackend

        if key_env:
            if not os.environ.get(key_env):
                raise RlauditError(f"LLM backend {spec!r}: the environment variable {key_env} (named by #key=) is "
                                   "not set")
            http_options = {**http_options, "api_key_env": key_env}
        return OpenAIBackend(model, base_url=url, **http_options)
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise RlauditError(f"LLM backend {spec!r}: expected {_SPEC_FORMS}")
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
    raise RlauditError(f"LLM backend {spec!r}: unknown kind {kind!r}; expected {_SPEC_FORMS}")


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
            raise RlauditError("judge: behaviours need an LLM: set RLAUDIT_LLM=openai://HOST/v1:MODEL (or "
                               "transformers:PATH, scripted:MODULE:FUNCTION), or pass --monitor")
        _DEFAULT = client_from_spec(spec, cache=os.environ.get("RLAUDIT_LLM_CACHE"),
                                    concurrency=int(os.environ.get("RLAUDIT_LLM_CONCURRENCY", "8")),
                                    price=os.environ.get("RLAUDIT_LLM_PRICE"),
                                    max_calls=int(os.environ.get("RLAUDIT_LLM_MAX_CALLS", "10000")))
    return _DEFAULT


__all__ = ["Accounting", "Backend", "ChatRequest", "ChatResult", "LLMClient", "LLMError", "Price", "ResponseCache",
           "ScriptedBackend", "approx_tokens", "backend_from_spec", "client_from_spec", "default_client",
           "parse_openai_url", "set_default_client"]
