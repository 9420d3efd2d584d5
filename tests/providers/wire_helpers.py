"""Helpers shared by the adapter tests (importable: the test folder is on sys.path)."""

from __future__ import annotations

from typing import Any

from llmkit._types import Request
from llmkit.providers.base import Provider

OPENAI_KEY = "sk-test-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789"

def req(content: str = "Hello there", **kwargs: Any) -> Request:
    messages = kwargs.pop("messages", None) or ({"role": "user", "content": content},)
    return Request(model=kwargs.pop("model", "gpt-4o"), messages=tuple(messages), **kwargs)


async def collect(provider: Provider, request: Request) -> tuple[list[str], Any]:
    """The texts of a stream and its final response."""
    texts, final = [], None
    async for chunk in provider.stream(request):
        texts.append(chunk.text)
        if chunk.response is not None:
            final = chunk.response
    return texts, final
