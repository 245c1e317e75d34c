"""Backend specs: the `openai://HOST[:PORT]/PATH:MODEL` form (scheme rule, model names with ':' and '/', the
key variable) beside the older `openai:MODEL@URL`, and one call through a real server on 127.0.0.1."""

from __future__ import annotations

import pytest

from rlaudit.errors import RlauditError
from rlaudit.llm import ChatRequest, ScriptedBackend, backend_from_spec, client_from_spec, parse_openai_url

pytest.importorskip("httpx", reason="needs the [llm] extra (httpx)")


@pytest.mark.parametrize("spec, url, model", [
    ("openai://api.openai.com/v1:gpt-4o-mini", "https://api.openai.com/v1", "gpt-4o-mini"),
    ("openai://127.0.0.1:8000/v1:tiny", "http://127.0.0.1:8000/v1", "tiny"),
    ("openai://localhost:11434/v1:qwen2.5:7b", "http://localhost:11434/v1", "qwen2.5:7b"),
    ("openai://[::1]:8000/v1:m", "http://[::1]:8000/v1", "m"),
    ("openai://vllm.internal:8000/v1:meta-llama/Llama-3.1-8B", "https://vllm.internal:8000/v1",
     "meta-llama/Llama-3.1-8B"),
    ("openai+http://gpu-box:8000/v1:m", "http://gpu-box:8000/v1", "m"),
    ("openai+https://localhost:8443/api/v1:m", "https://localhost:8443/api/v1", "m"),
])
def test_openai_url_form(spec, url, model):
    got_url, got_model, key_env = parse_openai_url(spec)
    assert (got_url, got_model, key_env) == (url, model, None)
    backend = backend_from_spec(spec)
    assert (backend.base_url, backend.model) == (url, model)


def test_key_variable_and_old_form(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default")
    monkeypatch.setenv("TOGETHER_KEY", "sk-together")
    assert backend_from_spec("openai://h.example/v1:m").api_key == "sk-default"
    assert backend_from_spec("openai://h.example/v1:m#key=TOGETHER_KEY").api_key == "sk-together"
    old = backend_from_spec("openai:gpt-4o-mini@http://127.0.0.1:9/v1")  # the older form still works
    assert (old.base_url, old.model, old.api_key) == ("http://127.0.0.1:9/v1", "gpt-4o-mini", "sk-default")
    assert backend_from_spec("openai:gpt-4o-mini").base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize("spec, says", [
    ("openai://h.example:gpt", "openai://HOST[:PORT]/PATH:MODEL"),  # no path
    ("openai://h.example/v1", "openai://HOST[:PORT]/PATH:MODEL"),  # no model
    ("openai://user:sk-123@h.example/v1:m", "no credentials in the spec"),
    ("openai://h.example/v1:m#token=X", "key=ENV_VAR"),
    ("openai://h.example/v1:m#key=RLAUDIT_TEST_UNSET_VAR", "RLAUDIT_TEST_UNSET_VAR"),
    ("ftp://h/v1:m", "openai://HOST[:PORT]/PATH:MODEL"),
    ("vllm:m", "unknown kind 'vllm'"),
])
def test_bad_specs_say_what_is_expected(spec, says, monkeypatch):
    monkeypatch.delenv("RLAUDIT_TEST_UNSET_VAR", raising=False)
    with pytest.raises(RlauditError, match=None) as err:
        backend_from_spec(spec)
    assert says in str(err.value)
    assert (spec in str(err.value)) == ("sk-123" not in spec)  # a key given in the spec is not echoed


def test_openai_url_form_reaches_a_local_server(tmp_path):
    from rlaudit.llm.serve import Server

    with Server(ScriptedBackend(lambda r: "pong " + r.messages[-1][1], model="m")) as server:
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        client = client_from_spec(f"openai://127.0.0.1:{port}/v1:m", cache=tmp_path / "c.sqlite")
        assert client.complete_one(ChatRequest.of("ping")).text == "pong ping"
        assert server.requests_seen[0]["messages"] == [{"role": "user", "content": "ping"}]
