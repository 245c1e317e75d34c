"""A minimal OpenAI-compatible server over any `Backend` (stdlib `http.server`, one thread per request).

`serve(backend, port=0)` answers POST /v1/chat/completions and GET /v1/models, which is enough for
`OpenAIBackend` and for other OpenAI clients: it serves a local `transformers` monitor to several audits, and
the tests use it on 127.0.0.1 in front of a tiny model built in the test. Not a production server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .core import Backend, ChatRequest


class _Handler(BaseHTTPRequestHandler):
    backend: Backend
    requests_seen: list[dict[str, Any]]

    def log_message(self, *args: Any) -> None:  # quiet
        return None

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout); nothing to do
            pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.backend.model, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            messages = body.pop("messages")
            body.pop("model", None)
            body.pop("stream", None)
            request = ChatRequest.of(messages, **body)
        except (ValueError, KeyError, TypeError) as exc:
            self._send(400, {"error": {"message": f"bad request: {exc}"}})
            return
        type(self).requests_seen.append({"messages": messages, "params": body})
        result = asyncio.run(self.backend.acomplete(request))
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.backend.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text,
                                                 **({"tool_calls": result.tool_calls} if result.tool_calls else {})},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens}})


class Server:
    """A running server: `url` (…/v1), `requests_seen`, `close()`; also a context manager."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0,
                 handler: type[BaseHTTPRequestHandler] | None = None):
        base = handler or _Handler
        self.handler = type("Handler", (base,), {"backend": backend, "requests_seen": []})
        self.httpd = ThreadingHTTPServer((host, port), self.handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests_seen(self) -> list[dict[str, Any]]:
        return self.handler.requests_seen

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 0) -> Server:
    return Server(backend, host, port)
