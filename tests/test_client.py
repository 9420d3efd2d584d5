"""The facade: sync in scripts, inside a running loop and from threads; async from any loop; streams."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import llmkit

MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def client() -> llmkit.Client:
    c = llmkit.Client([{"name": "mock", "adapter": "mock"}], ledger=None, health_interval=None)
    yield c
    c.close()


def test_zero_config_runs_offline_on_the_mock() -> None:
    with llmkit.Client(ledger=None, health_interval=None) as c:
        assert c.providers == ["mock"]
        resp = c.completion(model="gpt-4", messages=MSG)
    assert resp.content == "Mock reply to: hello there"
    assert resp.provider == "mock" and resp.model == "gpt-4"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens


def test_zero_config_uses_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-env-key-123456")
    with llmkit.Client(ledger=None, health_interval=None) as c:
        assert c.providers == ["openai"]
        assert "sk-test-env-key-123456" not in repr(c) and "sk-test-env-key-123456" not in repr(c.config)


def test_sync_api_inside_a_running_event_loop(client: llmkit.Client) -> None:
    async def notebook_cell() -> str:
        # a Jupyter cell: a loop is running in this thread, and the user calls the sync API
        return client.completion("gpt-4", MSG).content

    assert asyncio.run(notebook_cell()) == "Mock reply to: hello there"


def test_sync_api_from_eight_threads_at_once(client: llmkit.Client) -> None:
    barrier = threading.Barrier(8)

    def worker(i: int) -> str:
        barrier.wait()
        return client.completion("gpt-4", [{"role": "user", "content": f"t{i}"}]).content

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [f"Mock reply to: t{i}" for i in range(8)]


def test_async_api_from_a_new_loop_each_time(client: llmkit.Client) -> None:
    for i in range(3):  # asyncio.run per notebook cell
        resp = asyncio.run(client.acompletion("gpt-4", [{"role": "user", "content": str(i)}]))
        assert resp.content == f"Mock reply to: {i}"


def test_async_gather(client: llmkit.Client) -> None:
    async def many() -> list[llmkit.Response]:
        return await asyncio.gather(*(client.acompletion("m", [{"role": "user", "content": str(i)}])
                                      for i in range(50)))

    assert [r.content for r in asyncio.run(many())] == [f"Mock reply to: {i}" for i in range(50)]


def test_cancelling_the_caller_cancels_the_request() -> None:
    slow = [{"name": "slow", "adapter": "mock", "options": {"latency": 3600}}]
    with llmkit.Client(slow, ledger=None, health_interval=None) as c:
        async def cell() -> None:
            task = asyncio.ensure_future(c.acompletion("m", MSG))
            while c.in_flight() == 0:
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cell())
        # the cancelled request still ends in exactly one record
        for _ in range(1000):
            if len(c._service.ledger):
                break
            threading.Event().wait(0.005)
        cols = c._service.ledger.columns()
        assert list(cols["status"]) == ["cancelled"] and list(cols["error_type"]) == ["CancelledError"]


def test_sync_timeout_cancels_the_underlying_task() -> None:
    slow = [{"name": "slow", "adapter": "mock", "options": {"latency": 3600}}]
    with llmkit.Client(slow, ledger=None, health_interval=None) as c:
        with pytest.raises(llmkit.RequestTimeoutError):
            c.completion("m", MSG, timeout=0.05)
        assert c.in_flight() == 0


def test_stream_sync_and_final_response(client: llmkit.Client) -> None:
    stream = client.stream("gpt-4", MSG)
    pieces = [chunk.text for chunk in stream]
    assert "".join(pieces) == "Mock reply to: hello there"
    assert stream.response is not None and stream.response.usage.output_tokens > 0
    assert len(client._service.ledger) == 1
    assert list(client._service.ledger.columns()["stream"]) == [True]


def test_astream(client: llmkit.Client) -> None:
    async def cell() -> tuple[str, llmkit.Response | None]:
        stream = client.astream("gpt-4", MSG)
        text = "".join([c.text async for c in stream])
        return text, stream.response

    text, response = asyncio.run(cell())
    assert text == "Mock reply to: hello there" and response is not None and response.content == text


def test_stream_closed_early_is_recorded_once(client: llmkit.Client) -> None:
    client.provider("mock").config  # noqa: B018
    stream = client.stream("gpt-4", [{"role": "user", "content": "one two three four five six"}])
    first = next(stream)
    assert first.text
    stream.close()
    for _ in range(1000):
        if len(client._service.ledger):
            break
        threading.Event().wait(0.005)
    assert len(client._service.ledger) == 1


def test_closed_client_refuses_calls() -> None:
    c = llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, health_interval=None)
    c.close()
    c.close()  # idempotent
    with pytest.raises(llmkit.LLMError, match="closed"):
        c.completion("m", MSG)


def test_import_is_light() -> None:
    code = ("import sys, llmkit; heavy = [m for m in ('pandas', 'panel', 'genai_prices', 'bokeh') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_client_without_shared_state_never_imports_redis() -> None:
    """pybreaker imports redis when it is installed (~95 ms); llmkit keeps it out until shared_state asks."""
    pytest.importorskip("redis")
    code = ("import sys, llmkit; c = llmkit.Client(ledger=None, health_interval=None); "
            "c.completion('mock-1', [{'role': 'user', 'content': 'hi'}]); c.close(); "
            "before = 'redis' in sys.modules; import redis, pybreaker; print(before, pybreaker.HAS_REDIS_SUPPORT)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"  # not imported by the client, and still importable afterwards


def test_public_names_are_pinned() -> None:
    for name in ("Client", "ProviderConfig", "Response", "Usage", "LLMError", "ConfigError", "ProviderError",
                 "RateLimitError", "AuthenticationError", "BadRequestError", "ContextWindowExceededError",
                 "NotFoundError", "ServerError", "OverloadedError", "ProviderTimeoutError",
                 "ProviderConnectionError", "CircuitOpenError", "NoProviderError", "AllProvidersFailedError",
                 "BudgetExceededError", "ToolCall", "OutputValidationError"):
        assert name in llmkit.__all__ and hasattr(llmkit, name)
    assert issubclass(llmkit.OverloadedError, llmkit.ProviderError)
    err = llmkit.RateLimitError("slow down", provider="p", status=429, code="rate_limit_exceeded", retry_after=2)
    assert (err.provider, err.status, err.code, err.retryable) == ("p", 429, "rate_limit_exceeded", True)


def test_async_callers_on_several_loops_at_once_get_their_own_results(client: llmkit.Client) -> None:
    """Results cross back to each caller's loop in batches; none may go to the wrong caller."""

    def caller(tag: str) -> list[str]:
        async def many() -> list[str]:
            replies = await asyncio.gather(*(client.acompletion("m", [{"role": "user", "content": f"{tag}{i}"}])
                                             for i in range(200)))
            return [r.content for r in replies]

        return asyncio.run(many())

    with ThreadPoolExecutor(3) as pool:
        results = dict(zip("abc", pool.map(caller, "abc"), strict=True))
    for tag, contents in results.items():
        assert contents == [f"Mock reply to: {tag}{i}" for i in range(200)]
