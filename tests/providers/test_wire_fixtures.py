"""Conformance: every recorded wire fixture in ../shared/fixtures/wire, replayed byte for byte (body and
headers) through a fake server, must come out of the matching adapter with the right content, the
normalised usage and the right error class. The fixtures are read in place, never copied here.

Expected values are derived from each fixture by the rules of wire-formats.md (written out below,
independently of the adapters' code), and pinned by hand for the files known today.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeProvider
from wire_helpers import collect, req

import llmkit
from llmkit import Usage
from llmkit.testing import FakeAnthropicServer, FakeOpenAIServer

pytestmark = pytest.mark.asyncio

WIRE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wire"
FILES = sorted(p.name for p in WIRE.iterdir() if p.is_file()) if WIRE.is_dir() else []

# The error class each recorded error must map to.
ERRORS: dict[str, type[llmkit.ProviderError]] = {
    "openai_error_400_context_length_exceeded.json": llmkit.ContextWindowExceededError,
    "openai_error_401_invalid_api_key.json": llmkit.AuthenticationError,
    "openai_error_404_model_not_found.json": llmkit.NotFoundError,
    "openai_error_429_insufficient_quota.json": llmkit.QuotaExceededError,
    "openai_error_429_rate_limit_exceeded.json": llmkit.RateLimitError,
    "anthropic_error_429_rate_limit.json": llmkit.RateLimitError,
    "anthropic_error_529_overloaded.json": llmkit.OverloadedError,
    "anthropic_stream_error_overloaded.sse": llmkit.OverloadedError,
}
BY_STATUS: dict[int, type[llmkit.ProviderError]] = {
    400: llmkit.BadRequestError, 401: llmkit.AuthenticationError, 403: llmkit.PermissionDeniedError,
    404: llmkit.NotFoundError, 429: llmkit.RateLimitError, 529: llmkit.OverloadedError, 500: llmkit.ServerError,
}
# Hand-pinned results for the files known today: (content, usage, tool call arguments).
PINNED: dict[str, tuple[str | None, Usage | None, list[str] | None]] = {
    "anthropic_message_cache_read_and_write.json": (None, Usage(1532, 33, 1111, 418), None),
    "anthropic_message.json": ("The weather in SF is currently **20°C** (68°F) and **Sunny**!", Usage(705, 25), None),
    "anthropic_message_tool_use.json": ("", Usage(597, 71), ['{"location": "SF", "units": "c"}']),
    "anthropic_stream.sse": ("[12345,67890]", Usage(135, 10), None),
    "anthropic_stream_sdk_fixture_basic.sse": ("Hello there!", Usage(11, 6), None),
    "anthropic_stream_tool_use.sse": ("", Usage(656, 74), ['{"location": "San Francisco, CA", "units": "f"}']),
    "openai_chat_completion_cached_tokens.json": ("OK", Usage(4020, 4, cache_read_tokens=4012), None),
    "openai_chat_completion_cache_write.json": ("OK", Usage(4020, 4, cache_write_tokens=4012), None),
    "openai_chat_completion_full_usage_details.json": ("six", Usage(33, 10), None),
    "openai_chat_stream_include_usage_obfuscation.sse": ("six", Usage(33, 10), None),
    "openai_chat_stream_tool_calls_with_usage.sse": ("", Usage(44, 16), ['{"city":"New York City"}']),
    "ollama_v1_chat_completion.json": ('{ "city": "Paris", "country": "France" }', Usage(136, 15), None),
}


def _n(value: Any) -> int:
    return value if isinstance(value, int) else 0


# -- the normalisation rules, written out independently -------------------------------------------

def openai_expected(usage: Any) -> Usage | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens_details") or {}, usage.get("completion_tokens_details") or {}
    return Usage(_n(usage.get("prompt_tokens")), _n(usage.get("completion_tokens")), _n(prompt.get("cached_tokens")),
                 _n(prompt.get("cache_write_tokens")), _n(completion.get("reasoning_tokens")))


def anthropic_expected(usage: dict[str, Any]) -> Usage:
    write, read = _n(usage.get("cache_creation_input_tokens")), _n(usage.get("cache_read_input_tokens"))
    return Usage(_n(usage.get("input_tokens")) + write + read, _n(usage.get("output_tokens")), read, write)


def sse_payloads(text: str) -> Iterator[tuple[str | None, str]]:
    """(event, data) pairs, read plainly (the adapters use their own decoder)."""
    for block in re.split(r"\r?\n\r?\n", text):
        event = next((ln[6:].strip() for ln in block.splitlines() if ln.startswith("event:")), None)
        data = [ln[5:].lstrip() for ln in block.splitlines() if ln.startswith("data:")]
        if data:
            yield event, "\n".join(data)


def expected_for(name: str, text: str) -> tuple[str, Usage | None]:
    """What the content and the (normalised) usage of a fixture are, by the wire rules."""
    if name.endswith(".json") and name.startswith("anthropic"):
        body = json.loads(text)
        content = "".join(b["text"] for b in body["content"] if b["type"] == "text")
        return content, anthropic_expected(body["usage"])
    if name.endswith(".json"):
        body = json.loads(text)
        return body["choices"][0]["message"]["content"] or "", openai_expected(body.get("usage"))
    if name.startswith("anthropic"):
        content, usage = "", {}
        for _, data in sse_payloads(text):
            event = json.loads(data)
            if event["type"] == "message_start":
                usage.update({k: v for k, v in event["message"]["usage"].items() if v is not None})
            elif event["type"] == "message_delta":
                usage.update({k: v for k, v in event["usage"].items() if v is not None})
            elif event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
                content += event["delta"]["text"]
        return content, anthropic_expected(usage)
    content, last_usage = "", None
    for _, data in sse_payloads(text):
        if data.startswith("[DONE]"):
            break
        chunk = json.loads(data)
        last_usage = chunk.get("usage") or last_usage
        for choice in chunk["choices"]:
            content += choice["delta"].get("content") or ""
    return content, openai_expected(last_usage)


# -- serving a fixture ------------------------------------------------------------------------------

def recorded(name: str) -> dict[str, Any]:
    stem = name.rsplit(".", 1)[0]
    path = WIRE / f"{stem}.headers.json"
    return json.loads(path.read_text()) if path.exists() else {}


def adapter_for(name: str) -> tuple[str, Any]:
    if name.startswith("anthropic"):
        return "anthropic", FakeAnthropicServer()
    if name.startswith("ollama"):
        return "openai_compatible", FakeOpenAIServer(flavor="ollama")
    return "openai", FakeOpenAIServer()


def request_for(meta: dict[str, Any], stream: bool) -> Any:
    body = meta.get("request_body") or {}
    if not body:
        return req(model="fixture-model")
    return req(model=body["model"], messages=body["messages"], temperature=body.get("temperature"),
               max_tokens=body.get("max_completion_tokens"), stream=stream)


def replay(server: Any, name: str, body: bytes, meta: dict[str, Any]) -> None:
    headers = dict(meta.get("headers") or {})
    if name.endswith(".sse"):
        headers.setdefault("content-type", "text/event-stream")
    match = re.search(r"_error_(\d{3})_", name)  # a stream's error event comes with a 200
    status = meta.get("status_code") or (int(match.group(1)) if match else 200)
    server.enqueue_raw(body, status=status, headers=headers)


@pytest.mark.skipif(not FILES, reason="shared wire fixtures are absent")
async def test_fixture_folder_is_present() -> None:
    assert len(FILES) >= 30
    sources = (WIRE / "SOURCES.md").read_text()
    for name in FILES:  # every fixture says where it came from
        if name != "SOURCES.md":
            assert name.rsplit(".", 1)[0].removesuffix(".headers") in sources, name


@pytest.mark.parametrize("name", FILES or [pytest.param("-", marks=pytest.mark.skip("shared fixtures are absent"))])
async def test_fixture(name: str, make_provider: MakeProvider) -> None:
    path = WIRE / name
    if name == "SOURCES.md":
        pytest.skip("documentation (checked by test_fixture_folder_is_present)")
    if name == "prices_per_mtok.json":
        assert json.loads(path.read_text())  # prices, not wire traffic: the pricing module's concern
        return
    if name.endswith(".headers.json"):
        await check_headers_only(name, make_provider)
        return
    if name.endswith("models_list.txt"):
        await check_models_list(path, make_provider)
        return
    assert name.endswith((".json", ".sse")), f"no conformance rule for {name}"
    await check_exchange(name, path.read_bytes(), make_provider)


async def check_exchange(name: str, body: bytes, make_provider: MakeProvider) -> None:
    meta = recorded(name)
    adapter, server = adapter_for(name)
    stream = name.endswith(".sse")
    with server:
        replay(server, name, body, meta)
        provider = make_provider(adapter, server.url)
        request = request_for(meta, stream)
        is_error = "_error" in name
        try:
            resp = (await collect(provider, request))[1] if stream else await provider.complete(request)
        except llmkit.ProviderError as exc:
            assert is_error, f"{name}: unexpected {exc!r}"
            check_error(name, exc, meta)
            return
        finally:
            sent = server.last_request
        assert not is_error, f"{name}: no error raised"
    if meta.get("request_body"):  # what we sent matches what the recorded client sent
        recorded_body = {k: v for k, v in meta["request_body"].items() if k != "stream_options"}
        assert {k: v for k, v in sent.json.items() if k != "stream_options"} == recorded_body
    content, usage = expected_for(name, body.decode())
    assert resp.content == content
    if usage is None:
        assert resp.usage.estimated, f"{name}: no usage on the wire, so it must be estimated"
    else:
        assert resp.usage == usage
    if name in PINNED:
        want_content, want_usage, want_args = PINNED[name]
        assert want_content is None or resp.content == want_content
        assert want_usage is None or resp.usage == want_usage
        assert want_args is None or [c.raw_arguments for c in resp.tool_calls] == want_args
    headers = {k.lower(): v for k, v in (meta.get("headers") or {}).items()}
    if "x-request-id" in headers and adapter == "openai":
        assert resp.provider_request_id == headers["x-request-id"]
    if "x-ratelimit-limit-requests" in headers:
        assert resp.rate_limit is not None
        assert resp.rate_limit.limit_requests == int(headers["x-ratelimit-limit-requests"])
        assert resp.rate_limit.remaining_tokens == int(headers["x-ratelimit-remaining-tokens"])


def check_error(name: str, exc: llmkit.ProviderError, meta: dict[str, Any]) -> None:
    match = re.search(r"_error_(\d{3})_", name)
    status = meta.get("status_code") or (int(match.group(1)) if match else 500)
    expected = ERRORS.get(name) or BY_STATUS.get(status, llmkit.ServerError)
    assert type(exc) is expected, f"{name}: {type(exc).__name__}, expected {expected.__name__}"
    headers = {k.lower(): v for k, v in (meta.get("headers") or {}).items()}
    if "x-request-id" in headers:
        assert exc.request_id == headers["x-request-id"]
    if "x-should-retry" in headers:
        assert exc.retryable is (headers["x-should-retry"] == "true")
    assert isinstance(exc.body, dict)


async def check_headers_only(name: str, make_provider: MakeProvider) -> None:
    body_name = name.replace(".headers.json", "")
    if any((WIRE / f"{body_name}{ext}").exists() for ext in (".json", ".sse")):
        return  # replayed together with its body by test_fixture(<body>)
    # a headers-only recording: replay it with a plain recorded body of the same service
    plain = "anthropic_message.json" if name.startswith("anthropic") else "openai_chat_completion.json"
    adapter, server = adapter_for(name)
    meta = json.loads((WIRE / name).read_text())
    with server:
        server.enqueue_raw((WIRE / plain).read_bytes(), status=meta["status_code"], headers=meta["headers"])
        resp = await make_provider(adapter, server.url).complete(req())
    headers = {k.lower(): v for k, v in meta["headers"].items()}
    limits = [k for k in headers if "ratelimit" in k]
    assert limits, f"{name}: no rule for a headers-only fixture without rate-limit headers"
    info = resp.rate_limit
    assert info is not None
    prefix = "anthropic-ratelimit-" if adapter == "anthropic" else "x-ratelimit-"
    limit_key = f"{prefix}requests-limit" if adapter == "anthropic" else f"{prefix}limit-requests"
    assert info.limit_requests == int(headers[limit_key])
    assert info.reset_requests_s is not None and info.reset_requests_s >= 0
    if adapter == "anthropic":  # the token fields describe the most exhausted token group
        groups = [(int(headers[f"{prefix}{g}-remaining"]) / int(headers[f"{prefix}{g}-limit"]), g)
                  for g in ("tokens", "input-tokens", "output-tokens") if f"{prefix}{g}-limit" in headers]
        group = min(groups)[1]
        assert (info.limit_tokens, info.remaining_tokens) == (int(headers[f"{prefix}{group}-limit"]),
                                                              int(headers[f"{prefix}{group}-remaining"]))


async def check_models_list(path: Path, make_provider: MakeProvider) -> None:
    with FakeOpenAIServer() as server:
        server.enqueue_raw(path.read_bytes(), path="/v1/models")  # not valid JSON: a liveness probe must not care
        await make_provider("openai", server.url).health_check()
        assert server.last_request.path == "/v1/models"
