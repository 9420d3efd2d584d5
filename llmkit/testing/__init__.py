"""Loopback fake LLM servers for tests: real HTTP on 127.0.0.1, real wire formats, scripted faults.

Each server runs its own event loop in a daemon thread, so it works under sync and async tests alike,
and is scripted thread-safely from the test. Replies, errors and streams have the shapes the real
services send (OpenAI, Anthropic, Gemini, Azure OpenAI, and the OpenAI-compatible quirks of Ollama,
vLLM and llama.cpp), embeddings included.

    >>> import llmkit
    >>> from llmkit.testing import FakeOpenAIServer
    >>> with FakeOpenAIServer(reply="Hi there") as server:
    ...     server.enqueue_error(429, retry_after=0)        # the first call is rate limited
    ...     providers = [{"name": "fake", "adapter": "openai", "api_key": "sk-test", "base_url": server.url}]
    ...     with llmkit.Client(providers=providers, ledger=":memory:") as client:
    ...         reply = client.completion(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    ...     sent = [r.json for r in server.requests if r.path == "/v1/chat/completions"]
    >>> reply.content, [a.outcome for a in reply.attempts], sent[-1]["messages"]
    ('Hi there', ['error', 'ok'], [{'role': 'user', 'content': 'Hi'}])

Faults: ``enqueue_drop`` (close without answering), ``enqueue_reset`` (TCP RST), ``enqueue_malformed``
(invalid JSON), ``enqueue_truncated`` (a stream cut short), ``enqueue_stream_error`` (an error event
after HTTP 200), ``latency=`` (slow first byte), ``set_rate_limit`` (headers on every answer) and
``set_down(True)`` (the port refuses connections until ``set_down(False)``).

For a server in another process: ``python -m llmkit.testing serve --flavor openai --port 0`` prints
its base URL and serves until interrupted.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from typing import Any

from . import wire as w
from .azure import FakeAzureOpenAIServer
from .base import FakeLLMServer
from .gemini import FakeGeminiServer
from .http import RecordedRequest
from .servers import FakeAnthropicServer, FakeOpenAIServer

__all__ = ["FakeAnthropicServer", "FakeAzureOpenAIServer", "FakeGeminiServer", "FakeLLMServer", "FakeOpenAIServer",
           "RecordedRequest", "main", "make_server"]


def make_server(flavor: str = "openai", **kwargs: Any) -> FakeLLMServer:
    """A fake server for ``flavor``: ``anthropic``, ``gemini``, ``azure`` or one of ``openai``, ``ollama``,
    ``vllm``, ``llamacpp``."""
    if flavor == "anthropic":
        return FakeAnthropicServer(**kwargs)
    if flavor == "gemini":
        return FakeGeminiServer(**kwargs)
    if flavor == "azure":
        return FakeAzureOpenAIServer(**kwargs)
    return FakeOpenAIServer(flavor=flavor, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmkit.testing serve --flavor openai --port 0 --latency 0``: print the URL and serve."""
    parser = argparse.ArgumentParser(prog="python -m llmkit.testing", description="llmkit's fake LLM servers")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a fake until interrupted; prints its base URL")
    serve.add_argument("--flavor", choices=[*w.OPENAI_FLAVORS, "anthropic", "gemini", "azure"], default="openai")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    serve.add_argument("--reply", default="Hello from the llmkit fake server.")
    serve.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    server = make_server(args.flavor, host=args.host, port=args.port, latency=args.latency, reply=args.reply,
                         model=args.model, fast=True, max_recorded=0)
    server.start()
    print(server.url, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0
