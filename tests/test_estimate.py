"""``client.estimate`` (llmkit/estimate.py): counts and prices a batch and sends nothing."""

from __future__ import annotations

import sys
import types
from typing import Any

import pandas as pd
import pytest

import llmkit
from llmkit.estimate import APPROX, count_tokens
from llmkit.testing import FakeOpenAIServer

HAS_CACHE = hasattr(llmkit.Client, "cache_info")
PRICES = {"gpt-4o-mini": {"input": 1.0, "output": 4.0}}


def provider(server: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {"name": "fake", "adapter": "openai", "api_key": "sk-test", "base_url": server.url, "models": ["*"],
            "pricing": PRICES, **extra}


def test_estimate_counts_and_prices_and_sends_nothing() -> None:
    reviews = pd.Series(["x" * 40, "y" * 80, None], index=["a", "b", "c"])
    with FakeOpenAIServer(reply="ok") as server, \
            llmkit.Client([provider(server)], ledger=None, health_interval=None) as client:
        est = client.estimate(reviews, model="gpt-4o-mini", prompt="Classify: {}", max_tokens=100)
        assert server.requests == [] and len(client.usage()) == 0
    # about four characters a token plus four a message: "Classify: " + 40 chars = 50 -> 13 + 4
    assert est["requests"] == 2 and est["invalid_rows"] == 1 and est["cached"] == 0
    assert est["input_tokens"] == (13 + 4) + (23 + 4) and est["tokenizer"] == APPROX
    assert est["max_output_tokens"] == 200 and est["max_tokens_assumed"] is False
    assert est["cost_usd_low"] == pytest.approx(44 * 1.0 / 1e6)
    assert est["cost_usd_high"] == pytest.approx((44 * 1.0 + 200 * 4.0) / 1e6)
    assert est["priced"] is True and est["budget_usd"] is None and est["within_budget"] is None
    assert "nothing sent" in repr(est)


def test_without_max_tokens_the_budget_assumption_is_used() -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock", "pricing": PRICES}], ledger=None,
                       health_interval=None) as client:
        est = client.estimate(["a", "b", "c"], model="gpt-4o-mini")
        assert est["max_output_tokens"] == 3 * 256 and est["max_tokens_assumed"] is True
        unpriced = client.estimate(["a"], model="some-local-model")
        assert unpriced["cost_usd_low"] is None and unpriced["cost_usd_high"] is None and not unpriced["priced"]
        with pytest.raises(llmkit.InvalidRequestError, match="names no column"):
            client.estimate(["a"], model="gpt-4o-mini", prompt="{nope}")


def test_high_estimate_prices_the_priciest_fallback() -> None:
    cheap = {"name": "cheap", "adapter": "mock", "models": ["small"], "pricing": {"small": {"input": 1, "output": 1}}}
    dear = {"name": "dear", "adapter": "mock", "models": ["big"], "pricing": {"big": {"input": 10, "output": 10}}}
    with llmkit.Client([cheap, dear], fallbacks={"small": ["big"]}, ledger=None, health_interval=None) as client:
        est = client.estimate(["abcd"], model="small", max_tokens=10)
    tokens = est["input_tokens"]
    assert est["cost_usd_low"] == pytest.approx(tokens / 1e6)
    assert est["cost_usd_high"] == pytest.approx((tokens + 10) * 10 / 1e6)


def test_a_budget_the_batch_may_pass_is_reported() -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock", "pricing": PRICES}], ledger=None, health_interval=None,
                       budget_usd=0.001) as client:
        with pytest.warns(UserWarning, match="more than the budget"):
            est = client.estimate(["x" * 400] * 10, model="gpt-4o-mini", max_tokens=100)
        assert est["budget_usd"] == pytest.approx(0.001) and est["within_budget"] is False
        assert "WOULD EXCEED" in repr(est)
        fits = client.estimate(["x"], model="gpt-4o-mini", max_tokens=1, budget_usd=1.0)
        assert fits["within_budget"] is True


def test_tiktoken_counts_openai_models_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Encoding:
        name = "o200k_base"

        def encode(self, text: str, disallowed_special: Any = ()) -> list[int]:
            return [0] * len(text.split())

    fake = types.ModuleType("tiktoken")
    fake.encoding_for_model = lambda model: Encoding()  # type: ignore[attr-defined]
    fake.get_encoding = lambda name: Encoding()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    count, name = count_tokens("gpt-4o-mini")
    assert name == "tiktoken o200k_base"
    assert count([{"role": "user", "content": "one two three"}]) == 3 + 3 + 3
    assert count_tokens("claude-3-5-haiku")[1] == APPROX  # not an OpenAI model: the approximation

    def broken(model: str) -> Any:
        raise OSError("no network to fetch the encoding")

    fake.encoding_for_model = broken  # type: ignore[attr-defined]
    assert count_tokens("gpt-4o")[1] == APPROX  # an encoding that cannot load falls back


def test_tiktoken_missing_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails
    count, name = count_tokens("gpt-4o")
    assert name == APPROX and count([{"role": "user", "content": "abcd" * 10}]) == 10 + 4


@pytest.mark.skipif(not HAS_CACHE, reason="needs the response cache (issue 13)")
def test_rows_already_in_the_cache_are_counted_and_free(tmp_path: Any) -> None:
    with FakeOpenAIServer(reply="ok") as server, \
            llmkit.Client([provider(server)], ledger=tmp_path / "l.db", health_interval=None) as client:
        client.map(["a", "b"], model="gpt-4o-mini", max_tokens=10, progress=False)
        before = len(server.requests)
        est = client.estimate(["a", "b", "c"], model="gpt-4o-mini", max_tokens=10)
        assert len(server.requests) == before
    assert est["requests"] == 3 and est["cached"] == 2 and est["max_output_tokens"] == 10
