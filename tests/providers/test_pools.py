"""A provider's connections are spread over small httpx pools, and requests go to the least busy one."""

from __future__ import annotations

import asyncio

from llmkit._config import parse_provider
from llmkit.providers.openai import OpenAIProvider
from llmkit.testing import FakeOpenAIServer


def test_max_concurrency_is_split_over_small_pools_and_requests_spread() -> None:
    with FakeOpenAIServer(reply="hi", latency=0.05) as server:
        config = parse_provider({"name": "p", "adapter": "openai", "api_key": "sk-test-pools",
                                 "base_url": server.url, "max_concurrency": 10}, 0)
        provider = OpenAIProvider(config)

        async def run() -> tuple[list[int], int, int]:
            pools = provider._shards()
            sizes = [client._transport._pool._max_connections for client, _ in pools]
            busiest = 0

            async def one() -> None:
                await provider._post_json("/chat/completions", {"model": "m", "messages": []})

            tasks = [asyncio.ensure_future(one()) for _ in range(6)]
            await asyncio.sleep(0)  # every task has taken its lease and is waiting for the server
            busiest = max(n for _, n in pools)
            in_flight = sum(n for _, n in pools)
            await asyncio.gather(*tasks)
            await provider.aclose()
            return sizes, busiest, in_flight

        sizes, busiest, in_flight = asyncio.run(run())
    assert sizes == [4, 4, 2]
    assert in_flight == 6 and busiest == 2  # six requests over three pools: two each
