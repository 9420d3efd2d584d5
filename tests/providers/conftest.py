"""Fixtures for the adapter tests: fake servers on 127.0.0.1 and providers pointed at them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from wire_helpers import ANTHROPIC_KEY, OPENAI_KEY

from llmkit import ProviderConfig
from llmkit.providers import create_provider
from llmkit.providers.base import Provider
from llmkit.testing import FakeAnthropicServer, FakeOpenAIServer

MakeProvider = Callable[..., Provider]


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
async def make_provider() -> AsyncIterator[MakeProvider]:
    """``make_provider(adapter, url, **config fields)``: a provider, closed after the test."""
    made: list[Provider] = []

    def make(adapter: str, base_url: str, **fields: Any) -> Provider:
        default_key = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}.get(adapter)
        fields.setdefault("api_key", default_key)
        provider = create_provider(ProviderConfig(name=fields.pop("name", f"test-{adapter}"), adapter=adapter,
                                                  base_url=base_url, **fields))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()
