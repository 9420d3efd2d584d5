"""Bad input fails before any network call, with a precise error: a table of configs and calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit import ConfigError, InvalidRequestError, NoProviderError
from llmkit._config import load_config

OK = {"name": "p", "adapter": "mock"}


def _with(**fields: Any) -> dict[str, Any]:
    return {"providers": [{**OK, **fields}]}


CONFIGS: list[tuple[str, Any, type[Exception], str]] = [
    ("providers not a list", {"providers": "openai"}, ConfigError, "field 'providers'"),
    ("provider not a table", {"providers": ["openai"]}, ConfigError, "providers[0]"),
    ("missing name", {"providers": [{"adapter": "mock"}]}, ConfigError, "field 'name'"),
    ("empty name", _with(name="  "), ConfigError, "field 'name'"),
    ("duplicate names", {"providers": [OK, OK]}, ConfigError, "unique provider name"),
    ("unknown adapter", _with(adapter="cohere"), ConfigError, "field 'adapter'"),
    ("adapter path malformed", _with(adapter="my.module.Class"), ConfigError, "field 'adapter'"),
    ("adapter path not importable", _with(adapter="no_such_pkg.mod:Cls"), ConfigError, "cannot import"),
    ("adapter not a Provider", _with(adapter="json:JSONDecoder"), ConfigError, "not a subclass"),
    ("base_url not http", _with(base_url="ftp://example"), ConfigError, "field 'base_url'"),
    ("base_url no scheme", _with(base_url="localhost:11434"), ConfigError, "http:// or https://"),
    ("priority not int", _with(priority="high"), ConfigError, "field 'priority'"),
    ("priority float", _with(priority=1.5), ConfigError, "an integer"),
    ("priority bool", _with(priority=True), ConfigError, "field 'priority'"),
    ("models empty", _with(models=[]), ConfigError, "field 'models'"),
    ("models not strings", _with(models=[1, 2]), ConfigError, "field 'models'"),
    ("rate limit unit", _with(rate_limit="100/fortnight"), ConfigError, "field 'rate_limit'"),
    ("rate limit shape", _with(rate_limit="lots"), ConfigError, "'100/minute'"),
    ("rate limit zero", _with(rate_limit="0/minute"), ConfigError, "field 'rate_limit'"),
    ("rate limit tuple", _with(rate_limit=("100", "minute")), ConfigError, "field 'rate_limit'"),
    ("tokens_per_minute negative", _with(tokens_per_minute=-5), ConfigError, "field 'tokens_per_minute'"),
    ("max_retries negative", _with(max_retries=-1), ConfigError, "field 'max_retries'"),
    ("timeout zero", _with(timeout=0), ConfigError, "field 'timeout'"),
    ("breaker unknown key", _with(breaker={"fail_max": 3, "cooldown": 2}), ConfigError, "breaker.cooldown"),
    ("breaker fail_max zero", _with(breaker={"fail_max": 0}), ConfigError, "breaker.fail_max"),
    ("pricing missing output", _with(pricing={"m": {"input": 1.0}}), ConfigError, "pricing.m"),
    ("pricing negative", _with(pricing={"m": {"input": -1, "output": 1}}), ConfigError, "pricing.m.input"),
    ("pricing unknown kind", _with(pricing={"m": {"input": 1, "output": 1, "vat": 2}}), ConfigError,
     "pricing.m.vat"),
    ("unknown provider field", _with(temprature=0.5), ConfigError, "field 'temprature'"),
    ("unknown top-level key", {"providers": [OK], "fallback": {}}, ConfigError, "field 'fallback'"),
    ("fallbacks not lists", {"providers": [OK], "fallbacks": {"gpt-4": [1]}}, ConfigError, "fallbacks.gpt-4"),
    ("budget negative", {"providers": [OK], "budget_usd": -1}, ConfigError, "field 'budget_usd'"),
    ("budget period", {"providers": [OK], "budget_usd": 5, "budget_period": "week"}, ConfigError,
     "field 'budget_period'"),
    ("api_key not a string", _with(api_key=12345678), ConfigError, "field 'api_key'"),
    ("mock option unknown", _with(options={"latncy": 1}), ConfigError, "unknown mock option 'latncy'"),
    ("mock failure kind", _with(options={"failure_rate": 0.5, "failure_kinds": ["boom"]}), ConfigError,
     "unknown kind 'boom'"),
]


@pytest.mark.parametrize(("case", "config", "error", "fragment"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_bad_config_is_rejected_at_construction(case: str, config: Any, error: type[Exception],
                                                fragment: str) -> None:
    with pytest.raises(error) as info:
        llmkit.Client.from_config(config, ledger=None, health_interval=None).close()
    assert fragment in str(info.value)


def test_toml_errors_name_the_file_entry_and_field(tmp_path: Path) -> None:
    path = tmp_path / "llmkit.toml"
    path.write_text('[[providers]]\nname = "ok"\nadapter = "mock"\n\n[[providers]]\nname = "local"\n'
                    'adapter = "openai_compatible"\npriority = "first"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "providers[1] ('local')" in message and "field 'priority'" in message
    assert "an integer" in message and "'first'" in message


def test_toml_syntax_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[providers]\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


MSG = [{"role": "user", "content": "hi"}]
CALLS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("messages a string", {"messages": "hello"}, InvalidRequestError, "list of {'role'"),
    ("messages empty", {"messages": []}, InvalidRequestError, "at least one message"),
    ("message not a dict", {"messages": ["hi"]}, InvalidRequestError, "messages[0]"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, InvalidRequestError,
     "messages[0].role"),
    ("missing content", {"messages": [{"role": "user"}]}, InvalidRequestError, "missing 'content'"),
    ("content a number", {"messages": [{"role": "user", "content": 3}]}, InvalidRequestError,
     "messages[0].content"),
    ("temperature too high", {"temperature": 2.5}, InvalidRequestError, "temperature"),
    ("temperature negative", {"temperature": -0.1}, InvalidRequestError, "from 0 to 2"),
    ("temperature a string", {"temperature": "hot"}, InvalidRequestError, "temperature"),
    ("temperature nan", {"temperature": float("nan")}, InvalidRequestError, "temperature"),
    ("empty model", {"model": ""}, InvalidRequestError, "model"),
    ("model not a string", {"model": None}, InvalidRequestError, "non-empty model name"),
    ("max_tokens zero", {"max_tokens": 0}, InvalidRequestError, "max_tokens"),
    ("max_tokens float", {"max_tokens": 10.5}, InvalidRequestError, "positive integer"),
    ("priority float", {"priority": 0.5}, InvalidRequestError, "priority"),
    ("priority string", {"priority": "high"}, InvalidRequestError, "integer"),
    ("timeout negative", {"timeout": -3}, InvalidRequestError, "timeout"),
    ("metadata not a dict", {"metadata": ["a"]}, InvalidRequestError, "metadata"),
    ("metadata not JSON", {"metadata": {"f": object()}}, InvalidRequestError, "JSON-serialisable"),
    ("unknown provider pin", {"provider": "nope"}, NoProviderError, "no provider named 'nope'"),
    ("extra stream flag", {"stream": True}, InvalidRequestError, "stream"),
]


@pytest.mark.parametrize(("case", "kwargs", "error", "fragment"), CALLS, ids=[c[0] for c in CALLS])
def test_bad_call_is_rejected_before_any_network_call(case: str, kwargs: dict[str, Any],
                                                      error: type[Exception], fragment: str) -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, health_interval=None) as client:
        args = {"model": "gpt-4", "messages": MSG, **kwargs}
        with pytest.raises(error) as info:
            client.completion(**args)
        assert fragment in str(info.value)
        assert client.provider("m").calls == 0  # type: ignore[attr-defined]
        assert len(client._service.ledger) == 0
        assert isinstance(info.value, ValueError)  # every bad-input error is also a ValueError


def test_no_provider_serves_the_model() -> None:
    client = llmkit.Client([{"name": "c", "adapter": "mock", "models": ["claude-*"]}], ledger=None,
                           health_interval=None)
    with client, pytest.raises(NoProviderError, match="no configured provider serves model 'gpt-4'"):
        client.completion("gpt-4", MSG)
