"""llmkit.testing: the fake servers themselves, driven with a plain httpx client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from llmkit.providers._http import parse_sse
from llmkit.testing import FakeAnthropicServer, FakeOpenAIServer, make_server

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}
MESSAGES = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "Hello"}]}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "k"}


@pytest.fixture
def oai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def chat(http: httpx.Client, server: FakeOpenAIServer, body: dict | None = None, **kw: object) -> httpx.Response:
    return http.post(f"{server.url}/chat/completions", json=body or CHAT, **kw)  # type: ignore[arg-type]


def test_lifecycle_and_urls() -> None:
    server = FakeOpenAIServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    assert server.start() is server
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        assert server.port > 0
    finally:
        server.stop()
    server.stop()  # idempotent
    with FakeAnthropicServer() as anthropic:
        assert anthropic.url == f"http://127.0.0.1:{anthropic.port}"


def test_given_port_is_used() -> None:
    with FakeOpenAIServer() as first:
        port = first.port
    with FakeOpenAIServer(port=port) as second:
        assert second.port == port


def test_requests_are_recorded(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    chat(http, oai, headers={"Authorization": "Bearer k"})
    http.get(f"{oai.url}/models?x=1")
    first, second = oai.requests
    assert (first.method, first.path, first.json) == ("POST", "/v1/chat/completions", CHAT)
    assert first.headers["authorization"] == "Bearer k"
    assert (second.method, second.path, second.query, second.json) == ("GET", "/v1/models", "x=1", None)
    oai.clear()
    assert oai.requests == [] and oai.last_request is None


def test_default_echo_fixed_and_callable_replies(http: httpx.Client) -> None:
    with FakeOpenAIServer() as echo, FakeOpenAIServer(reply="fixed") as fixed, \
            FakeOpenAIServer(reply=lambda body: body["model"].upper()) as func:
        assert chat(http, echo).json()["choices"][0]["message"]["content"] == "Echo: Hello"
        assert chat(http, fixed).json()["choices"][0]["message"]["content"] == "fixed"
        assert chat(http, func).json()["choices"][0]["message"]["content"] == "GPT-4O"


def test_openai_reply_shape_and_usage(http: httpx.Client) -> None:
    with FakeOpenAIServer(reply="abcdefgh", cached_tokens=3, cache_write_tokens=2, model="gpt-4o-2024") as server:
        body = chat(http, server).json()
    assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-2024"
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 2 and usage["total_tokens"] == usage["prompt_tokens"] + 2
    assert usage["prompt_tokens_details"] == {"cached_tokens": 3, "audio_tokens": 0, "cache_write_tokens": 2}


def test_script_is_fifo_then_default(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    oai.enqueue("first")
    oai.enqueue_error(500)
    oai.enqueue("third", finish_reason="length", usage={"prompt_tokens": 1, "completion_tokens": 2})
    assert oai.pending == 3
    assert chat(http, oai).json()["choices"][0]["message"]["content"] == "first"
    assert chat(http, oai).status_code == 500
    third = chat(http, oai).json()
    assert (third["choices"][0]["finish_reason"], third["usage"]) == ("length", {"prompt_tokens": 1,
                                                                                  "completion_tokens": 2})
    assert chat(http, oai).json()["choices"][0]["message"]["content"] == "Echo: Hello"
    assert oai.pending == 0


def test_scripted_answers_wait_for_their_path(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    oai.enqueue_error(503, path="/v1/models")
    assert chat(http, oai).status_code == 200  # not consumed by the completion call
    assert http.get(f"{oai.url}/models").status_code == 503
    oai.enqueue_error(418, path="*")
    assert http.get(f"{oai.url}/models").status_code == 418


@pytest.mark.parametrize(("flavor", "expected"), [
    ("openai", {"error": {"message": "Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3, "
                                     "Requested 1. Please try again in 1s.",
                          "type": "requests", "param": None, "code": "rate_limit_exceeded"}}),
    ("ollama", {"error": {"message": "Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3, "
                                     "Requested 1. Please try again in 1s.",
                          "type": "api_error", "param": None, "code": None}}),
    ("vllm", {"object": "error", "message": "Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, "
                                            "Used 3, Requested 1. Please try again in 1s.",
              "type": "TooManyRequests", "param": None, "code": 429}),
    ("llamacpp", {"error": {"code": 429, "message": "Rate limit reached for gpt-4o on requests per min (RPM): "
                                                   "Limit 3, Used 3, Requested 1. Please try again in 1s.",
                            "type": "invalid_request_error"}}),
])
def test_error_body_shapes(http: httpx.Client, flavor: str, expected: dict) -> None:
    with FakeOpenAIServer(flavor=flavor) as server:
        server.enqueue_error(429, retry_after=2, retry_after_ms=1500, should_retry=True)
        resp = chat(http, server)
    assert resp.status_code == 429
    assert resp.json() == expected
    assert (resp.headers["retry-after"], resp.headers["retry-after-ms"], resp.headers["x-should-retry"]) == (
        "2", "1500", "true")
    if flavor == "openai":
        assert resp.text.startswith('{\n  "error"')  # pretty-printed, as OpenAI sends errors
        assert resp.headers["x-request-id"].startswith("req_")


def test_openai_error_defaults_by_code(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    oai.enqueue_error(400, code="context_length_exceeded")
    oai.enqueue_error(429, code="insufficient_quota")
    oai.enqueue_error(404)
    context, quota, missing = (chat(http, oai).json()["error"] for _ in range(3))
    assert (context["type"], context["param"]) == ("invalid_request_error", "messages")
    assert "maximum context length" in context["message"]
    assert (quota["type"], quota["code"]) == ("insufficient_quota", "insufficient_quota")
    assert missing["code"] == "model_not_found" and "`gpt-4o`" in missing["message"]


def test_anthropic_error_body(http: httpx.Client) -> None:
    with FakeAnthropicServer() as server:
        server.enqueue_error(429, code="enforced_spend_limit_reached", message="spend cap")
        resp = http.post(f"{server.url}/v1/messages", json=MESSAGES, headers=ANTHROPIC_HEADERS)
    body = resp.json()
    assert resp.status_code == 429 and resp.headers["request-id"].startswith("req_")
    assert body["type"] == "error" and body["request_id"].startswith("req_")
    assert body["error"] == {"type": "rate_limit_error", "message": "spend cap",
                             "details": {"error_code": "enforced_spend_limit_reached"}}


@pytest.mark.parametrize(("body", "headers", "message"), [
    ({**MESSAGES, "max_tokens": None}, ANTHROPIC_HEADERS, None),
    ({k: v for k, v in MESSAGES.items() if k != "max_tokens"}, ANTHROPIC_HEADERS, "max_tokens: Field required"),
    ({**MESSAGES, "messages": [{"role": "system", "content": "x"}]}, ANTHROPIC_HEADERS, 'Unexpected role "system"'),
    ({**MESSAGES, "temperature": 1.5}, ANTHROPIC_HEADERS, "temperature"),
    (MESSAGES, {"x-api-key": "k"}, "anthropic-version"),
])
def test_anthropic_strict_validation(http: httpx.Client, body: dict, headers: dict, message: str | None) -> None:
    with FakeAnthropicServer() as server:
        resp = http.post(f"{server.url}/v1/messages", json=body, headers=headers)
    if message is None:
        assert resp.status_code == 200
    else:
        assert resp.status_code == 400 and message in resp.json()["error"]["message"]


def test_api_key_check(http: httpx.Client) -> None:
    with FakeOpenAIServer(api_key="right") as server:
        assert chat(http, server, headers={"Authorization": "Bearer right"}).status_code == 200
        wrong = chat(http, server, headers={"Authorization": "Bearer wrong"})
        missing = chat(http, server)
    assert wrong.status_code == 401 and "Incorrect API key provided: wrong." in wrong.json()["error"]["message"]
    assert missing.status_code == 401 and "didn't provide an API key" in missing.json()["error"]["message"]


def test_openai_stream_with_and_without_include_usage(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    with_usage = parse_sse(chat(http, oai, {**CHAT, "stream": True,
                                            "stream_options": {"include_usage": True}}).content)
    without = parse_sse(chat(http, oai, {**CHAT, "stream": True}).content)
    assert with_usage[-1].data == without[-1].data == "[DONE]"
    chunks = [e.json() for e in with_usage[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])  # the 2026 shape: "usage": null until the last
    assert all("usage" not in e.json() for e in without[:-1])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == "Echo: Hello"


def test_anthropic_stream_shape(http: httpx.Client) -> None:
    with FakeAnthropicServer(reply="Hi you") as server:
        resp = http.post(f"{server.url}/v1/messages", json={**MESSAGES, "stream": True}, headers=ANTHROPIC_HEADERS)
    events = parse_sse(resp.content)
    assert [e.event for e in events] == ["message_start", "content_block_start", "ping", "content_block_delta",
                                         "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[-1].data.endswith(" }")  # padded like the real stream
    assert events[-2].json()["usage"]["output_tokens"] == 2


def test_rate_limit_headers(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    oai.set_rate_limit(limit_requests=60, remaining_requests=0, reset_requests=1396.298, reset_tokens=0.006)
    headers = chat(http, oai).headers
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("60", "0")
    assert (headers["x-ratelimit-reset-requests"], headers["x-ratelimit-reset-tokens"]) == ("23m16.298s", "6ms")
    oai.enqueue_error(429)
    assert "x-ratelimit-remaining-requests" in chat(http, oai).headers  # on errors too
    oai.clear_rate_limit()
    assert "x-ratelimit-limit-requests" not in chat(http, oai).headers


def test_anthropic_rate_limit_headers_are_timestamps(http: httpx.Client) -> None:
    with FakeAnthropicServer(rate_limit={"remaining_requests": 3}) as server:
        headers = http.post(f"{server.url}/v1/messages", json=MESSAGES, headers=ANTHROPIC_HEADERS).headers
    assert headers["anthropic-ratelimit-requests-remaining"] == "3"
    assert headers["anthropic-ratelimit-tokens-reset"].endswith("Z")


def test_set_down_refuses_then_listens_on_the_same_port(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    port = oai.port
    assert chat(http, oai).status_code == 200
    oai.set_down(True)
    assert oai.down
    with pytest.raises(httpx.ConnectError):
        chat(http, oai)
    oai.set_down(False)
    assert oai.port == port and chat(http, oai).status_code == 200


@pytest.mark.parametrize("fault", ["enqueue_drop", "enqueue_reset"])
def test_connection_faults(oai: FakeOpenAIServer, http: httpx.Client, fault: str) -> None:
    getattr(oai, fault)()
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        chat(http, oai)
    assert chat(http, oai).status_code == 200


def test_malformed_and_truncated(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    oai.enqueue_malformed()
    with pytest.raises(json.JSONDecodeError):
        chat(http, oai).json()
    oai.enqueue_truncated(after=2)
    events = parse_sse(chat(http, oai, {**CHAT, "stream": True}).content)
    assert len(events) == 2 and events[-1].data != "[DONE]"
    oai.enqueue_truncated(after=2, clean=False)
    with pytest.raises(httpx.RemoteProtocolError):
        chat(http, oai, {**CHAT, "stream": True})


def test_stream_error_event(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    oai.enqueue_stream_error(message="boom", code="rate_limit_exceeded", after=1)
    events = parse_sse(chat(http, oai, {**CHAT, "stream": True}).content)
    assert len(events) == 2
    assert events[1].json()["error"]["code"] == "rate_limit_exceeded"


def test_raw_replay_strips_recorded_framing_headers(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    oai.enqueue_raw(b'{"ok": true}', status=201, headers={"Content-Length": "999", "Transfer-Encoding": "chunked",
                                                          "x-extra": "1"})
    resp = chat(http, oai)
    assert (resp.status_code, resp.json(), resp.headers["x-extra"]) == (201, {"ok": True}, "1")


def test_latency_delays_the_answer(http: httpx.Client) -> None:
    with FakeOpenAIServer(latency=30.0) as server:
        with pytest.raises(httpx.ReadTimeout):
            chat(http, server, timeout=0.1)
        server.latency = 0.0
        server.enqueue(latency=0.0)
        assert chat(http, server).status_code == 200


@pytest.mark.parametrize(("flavor", "path", "status", "body"), [
    ("vllm", "/health", 200, b""), ("llamacpp", "/health", 200, b'{"status": "ok"}'),
    ("ollama", "/", 200, b"Ollama is running"), ("openai", "/health", 404, None),
])
def test_flavor_routes(http: httpx.Client, flavor: str, path: str, status: int, body: bytes | None) -> None:
    with FakeOpenAIServer(flavor=flavor) as server:
        resp = http.get(f"http://127.0.0.1:{server.port}{path}")
        models = http.get(f"{server.url}/models").json()
    assert resp.status_code == status
    if body is not None:
        assert resp.content == body
    assert models["object"] == "list" and models["data"][0]["object"] == "model"


def test_unknown_flavor() -> None:
    with pytest.raises(ValueError, match="flavor"):
        FakeOpenAIServer(flavor="tgi")


def test_scripting_from_many_threads(oai: FakeOpenAIServer, http: httpx.Client) -> None:
    def script(n: int) -> None:
        for i in range(25):
            oai.enqueue(f"t{n}-{i}")

    threads = [threading.Thread(target=script, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert oai.pending == 100
    replies = {chat(http, oai).json()["choices"][0]["message"]["content"] for _ in range(100)}
    assert len(replies) == 100 and oai.pending == 0


def test_fast_path_replays_the_same_answer(http: httpx.Client) -> None:
    with make_server("openai", reply="fast", fast=True) as server:
        first, second = chat(http, server).json(), chat(http, server).json()
        other = chat(http, server, {**CHAT, "model": "other"}).json()
    assert first == second and first["choices"][0]["message"]["content"] == "fast"
    assert other["model"] == "other"


def test_cli_serves_until_terminated() -> None:
    command = [sys.executable, "-m", "llmkit.testing", "serve", "--flavor", "openai", "--port", "0", "--latency", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            resp = httpx.post(f"{url}/chat/completions", json=CHAT, timeout=5.0)
            assert resp.json()["choices"][0]["message"]["content"] == "Hello from the llmkit fake server."
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
