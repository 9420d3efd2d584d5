"""Costs, budgets and health through the client, as a user sees them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmkit
from llmkit.testing import FakeAnthropicServer, FakeOpenAIServer

from .conftest import FakeTime

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply="ok") as s:
        yield s


def test_costs_from_the_wire_match_published_prices(server: FakeOpenAIServer) -> None:
    """gpt-4o: $2.50 in / $10 out / $1.25 cached per million tokens."""
    usage = {"prompt_tokens": 2000, "completion_tokens": 500, "total_tokens": 2500,
             "prompt_tokens_details": {"cached_tokens": 1000}}
    server.enqueue("priced", usage=usage, model="gpt-4o-2024-08-06")
    providers = [{"name": "oai", "adapter": "openai", "api_key": "sk-test-0000", "base_url": server.url}]
    with llmkit.Client(providers, ledger=None, health_interval=None) as client:
        resp = client.completion("gpt-4o", MSG)
        summary = client.cost_summary()
    expected = (1000 * 2.5 + 1000 * 1.25 + 500 * 10.0) / 1e6
    assert resp.usage.cache_read_tokens == 1000 and resp.usage.input_tokens == 2000
    assert resp.cost_usd == pytest.approx(expected, rel=1e-12)
    assert summary.loc[0, "cost_usd"] == pytest.approx(expected, rel=1e-12)


def test_anthropic_cache_reads_and_writes_are_counted_once() -> None:
    """claude-3-5-sonnet: $3 in, $15 out, cache write $3.75, cache read $0.30 per million."""
    with FakeAnthropicServer(reply="ok") as server:
        server.enqueue("cached", model="claude-3-5-sonnet-20241022",
                       usage={"input_tokens": 100, "cache_creation_input_tokens": 1000,
                              "cache_read_input_tokens": 10000, "output_tokens": 200})
        providers = [{"name": "ant", "adapter": "anthropic", "api_key": "sk-ant-test-0000", "base_url": server.url}]
        with llmkit.Client(providers, ledger=None, health_interval=None) as client:
            resp = client.completion("claude-3-5-sonnet-20241022", MSG)
    assert resp.usage.input_tokens == 11100
    assert (resp.usage.cache_read_tokens, resp.usage.cache_write_tokens) == (10000, 1000)
    expected = (100 * 3.0 + 1000 * 3.75 + 10000 * 0.30 + 200 * 15.0) / 1e6
    assert resp.cost_usd == pytest.approx(expected, rel=1e-12)


def test_unpriced_model_is_flagged_not_zero() -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, health_interval=None) as client:
        resp = client.completion("my-finetune", MSG)
        frame = client.usage()
        summary = client.cost_summary()
    assert resp.cost_usd is None
    assert math.isnan(frame.loc[0, "cost_usd"]) and not bool(frame.loc[0, "priced"])
    assert summary.loc[0, "unpriced_requests"] == 1


def test_local_model_priced_at_zero_costs_zero() -> None:
    provider = {"name": "local", "adapter": "mock", "pricing": {"llama3": {"input": 0, "output": 0}}}
    with llmkit.Client([provider], ledger=None, health_interval=None) as client:
        assert client.completion("llama3", MSG).cost_usd == 0.0


def test_budget_refuses_before_sending() -> None:
    provider = {"name": "m", "adapter": "mock", "pricing": {"pricey": {"input": 1000.0, "output": 1000.0}}}
    with llmkit.Client([provider], ledger=None, health_interval=None, budget_usd=1.0) as client:
        client.completion("pricey", MSG, max_tokens=50)  # about $0.06
        calls = client.provider("m").calls  # type: ignore[attr-defined]
        with pytest.raises(llmkit.BudgetExceededError) as info:
            client.completion("pricey", [{"role": "user", "content": "x" * 4000}], max_tokens=1000)
        assert client.provider("m").calls == calls  # type: ignore[attr-defined]
        status = client.budget_status()
        summary = client.cost_summary()
    assert info.value.budget_usd == 1.0 and info.value.estimate_usd > 1.0
    assert status is not None and 0 < status["spent_usd"] < 1.0
    assert summary.attrs["budget"]["limit_usd"] == 1.0


def test_costs_survive_a_restart(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    provider = {"name": "m", "adapter": "mock", "pricing": {"m1": {"input": 1.0, "output": 2.0}}}
    with llmkit.Client([provider], ledger=str(ledger), health_interval=None) as client:
        ids = [client.completion("m1", MSG).id for _ in range(3)]
        total = client.usage()["cost_usd"].sum()
    with llmkit.Client([provider], ledger=str(ledger), health_interval=None) as client:
        assert client.usage().empty  # a new session starts empty; the history is a query away
        frame = client.usage(scope="all")
    assert sorted(frame["request_id"]) == sorted(ids)
    assert frame["cost_usd"].sum() == pytest.approx(total)


def test_health_shows_an_outage_and_the_recovery(server: FakeOpenAIServer, fake_time: FakeTime) -> None:
    provider = {"name": "oai", "adapter": "openai", "api_key": "sk-test-0000", "base_url": server.url,
                "max_retries": 0, "breaker": {"fail_max": 2, "reset_timeout": 5.0}}
    with llmkit.Client([provider], ledger=None, health_interval=None, clock=fake_time.clock,
                       sleep=fake_time.sleep) as client:
        client.completion("gpt-4o", MSG)
        row = client.check_health().iloc[0]
        assert row["healthy"] and row["breaker_state"] == "closed" and row["uptime_pct"] == 100.0

        server.set_down(True)
        for _ in range(2):
            with pytest.raises(llmkit.ProviderConnectionError):
                client.completion("gpt-4o", MSG)
        row = client.check_health().iloc[0]
        assert row["breaker_state"] == "open" and not row["healthy"]
        assert row["error_rate"] > 0.5 and row["uptime_pct"] < 100.0

        server.set_down(False)
        row = client.check_health().iloc[0]  # a passing check half-opens the breaker: the next call probes
        assert row["breaker_state"] == "half_open" and row["healthy"]
        assert client.completion("gpt-4o", MSG).content == "ok"
        assert client.health().iloc[0]["breaker_state"] == "closed"
        checks = client.events("health_check")
    assert checks["ok"].tolist() == [True, False, True]
