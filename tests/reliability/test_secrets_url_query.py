"""A key in ``base_url``'s query string (``?api_key=``, ``?key=``, ``?token=``, ``?sig=``) never shows:
not in ``ProviderConfig``'s repr, config errors, logs (llmkit's and httpx's), errors or frames."""

from __future__ import annotations

import io
import logging
import traceback
from collections.abc import Iterator

import pytest

import llmkit
from llmkit._config import ProviderConfig
from llmkit._secrets import redact
from llmkit.testing import FakeOpenAIServer

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("llmkit", "httpx", "httpcore")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


@pytest.mark.parametrize("param", ["api_key", "key", "token", "sig", "access_token", "X-Amz-Signature"])
def test_provider_config_repr_hides_query_secrets(param: str) -> None:
    secret = f"QS-{param}-7f3a9c1e5b"
    config = ProviderConfig(name="p", adapter="openai_compatible",
                            base_url=f"https://gw.example/v1?api-version=2024-10&{param}={secret}&x=1")
    shown = repr(config)
    assert secret not in shown
    assert "api-version=2024-10" in shown and "x=1" in shown  # only the credential is hidden
    assert secret not in redact(f"calling {secret} failed")  # registered: hidden anywhere


def test_a_percent_encoded_query_secret_is_hidden_in_both_forms() -> None:
    config = ProviderConfig(name="p", adapter="openai_compatible", base_url="https://gw.example/v1?key=QS%2Fenc%2B9d8e7f")
    assert "QS%2Fenc%2B9d8e7f" not in repr(config)
    assert "QS/enc+9d8e7f" not in redact("decoded: QS/enc+9d8e7f")


def test_config_errors_hide_query_secrets() -> None:
    with pytest.raises(llmkit.ConfigError) as info:
        llmkit.Client([{"name": "p", "adapter": "openai_compatible", "base_url": "ftp://gw.example/v1?token=QS-ftp-4d5e6f7a"}],
                      ledger=None)
    assert "QS-ftp-4d5e6f7a" not in str(info.value) + repr(info.value)
    with pytest.raises(llmkit.ConfigError) as info:
        llmkit.Client([{"name": "p", "adapter": "openai_compatible", "models": ["m"], "priority": "high",
                        "base_url": "https://gw.example/v1?api_key=QS-prio-1a2b3c4d"}], ledger=None)
    assert "QS-prio-1a2b3c4d" not in "".join(traceback.format_exception(info.value))


@pytest.mark.timeout(60)
def test_real_calls_never_show_the_query_secret(debug_logs: io.StringIO) -> None:
    secret = "QS-live-0a9b8c7d6e"
    with FakeOpenAIServer() as server:
        providers = [{"name": "p", "adapter": "openai_compatible", "base_url": f"{server.url}?api_key={secret}",
                      "models": ["gpt-4o"], "max_retries": 0}]
        with llmkit.Client(providers, ledger=":memory:", health_interval=None) as client:
            client.completion("gpt-4o", MSG)
            server.enqueue_error(500, message=f"bad key {secret} at {server.url}?api_key={secret}")
            with pytest.raises(llmkit.LLMError) as info:
                client.completion("gpt-4o", MSG)
            seen = ["".join(traceback.format_exception(info.value)), repr(client.provider("p").config),
                    client.usage().to_string(), client.events().to_string(), client.health().to_string(),
                    debug_logs.getvalue()]
    assert "chat/completions" in debug_logs.getvalue()  # httpx logged the URL...
    for text in seen:
        assert secret not in text  # ...without the key
