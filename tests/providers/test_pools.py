"""A provider's connections are spread over small httpx pools, made lazily, and requests go to the least busy one."""

from __future__ import annotations

import asyncio

import pytest

from llmkit._config import parse_provider
from llmkit.providers.openai import OpenAIProvider
from llmkit.testing import FakeOpenAIServer


def _provider(url: str, cap: int | None) -> OpenAIProvider:
    raw = {"name": "p", "adapter": "openai", "api_key": "sk-test-pools", "base_url": url}
    if cap is not None:
        raw["max_concurrency"] = cap
    return OpenAIProvider(parse_provider(raw, 0))


def _sizes(provider: OpenAIProvider) -> list[int]:
    return [client._transport._pool._max_connections for client, *_ in provider._shards()]


async def _in_flight(provider: OpenAIProvider, requests: int) -> tuple[list[int], list[int]]:
    """Start ``requests`` calls at once; the pools' sizes and requests in flight while all wait for the server."""

    async def one() -> None:
        await provider._post_json("/chat/completions", {"model": "m", "messages": []})

    tasks = [asyncio.ensure_future(one()) for _ in range(requests)]
    await asyncio.sleep(0)  # every task has taken its lease and is waiting for the server
    flights = [shard[1] for shard in provider._shards()]
    sizes = _sizes(provider)
    await asyncio.gather(*tasks)
    return sizes, flights


@pytest.mark.timeout(30)
def test_pools_are_made_only_when_every_pool_is_full_and_never_past_the_cap() -> None:
    with FakeOpenAIServer(reply="hi", latency=0.05) as server:
        provider = _provider(server.url, 10)

        async def run() -> tuple[list[int], tuple[list[int], list[int]], tuple[list[int], list[int]]]:
            provider.prepare()
            first = _sizes(provider)
            six = await _in_flight(provider, 6)
            twelve = await _in_flight(provider, 12)
            await provider.aclose()
            return first, six, twelve

        first, (sizes6, flights6), (sizes12, flights12) = asyncio.run(run())
    assert first == [4]  # prepare() makes one pool, not max_concurrency / 4
    assert sizes6 == [4, 4] and flights6 == [4, 2]  # a second pool only once the first is full
    assert sizes12 == [4, 4, 2]  # 10 connections at most, in pools of at most 4
    assert sum(flights12) == 12 and max(flights12) == 4  # past the cap: queued on the least busy pool


@pytest.mark.timeout(30)
def test_a_large_cap_costs_one_pool_until_requests_need_more() -> None:
    with FakeOpenAIServer(reply="hi") as server:
        provider = _provider(server.url, 4096)

        async def run() -> tuple[int, int]:
            provider.prepare()
            made = len(provider._shards())
            await _in_flight(provider, 3)
            after = len(provider._shards())
            await provider.aclose()
            return made, after

        assert asyncio.run(run()) == (1, 1)


@pytest.mark.timeout(30)
def test_a_new_loop_gets_fresh_pools() -> None:
    with FakeOpenAIServer(reply="hi") as server:
        provider = _provider(server.url, 8)

        async def run() -> tuple[object, int]:
            await _in_flight(provider, 6)
            return provider._shards()[0][0], len(provider._shards())

        first, made = asyncio.run(run())
        second, made_again = asyncio.run(run())
    assert first is not second and made == made_again == 2
    assert len(provider._loop_pools) == 1  # the first (closed) loop's pools were let go when the second made its own


@pytest.mark.timeout(30)
def test_loops_running_at_once_each_keep_their_own_pools() -> None:
    """A request on one loop never closes or borrows the connections another running loop is using."""
    import threading

    with FakeOpenAIServer(reply="hi", latency=0.05) as server:
        provider = _provider(server.url, 8)
        other = asyncio.new_event_loop()
        thread = threading.Thread(target=other.run_forever, daemon=True)
        thread.start()
        try:
            async def run() -> tuple[object, object, bool]:
                mine = asyncio.ensure_future(_in_flight(provider, 2))
                await asyncio.sleep(0)
                theirs = asyncio.run_coroutine_threadsafe(_in_flight(provider, 2), other)
                await asyncio.wrap_future(theirs)
                await mine
                mine_client = provider._shards()[0][0]
                theirs_client = asyncio.run_coroutine_threadsafe(_first(provider), other).result(10)
                return mine_client, theirs_client, mine_client.is_closed
            mine_client, theirs_client, closed = asyncio.run(run())
            assert mine_client is not theirs_client and not closed
            asyncio.run_coroutine_threadsafe(provider.aclose(), other).result(10)
        finally:
            other.call_soon_threadsafe(other.stop)
            thread.join(5)
            other.close()


async def _first(provider: OpenAIProvider) -> object:
    return provider._shards()[0][0]
