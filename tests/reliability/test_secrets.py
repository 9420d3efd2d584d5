"""API keys never leak: not in reprs, logs (DEBUG, llmkit + httpx + httpcore), errors, frames or the dashboard.

One key is set in the config, another comes from an environment variable (``api_key_env``) and is not
shaped like a provider key, so only llmkit's registration of it can keep it out. Real calls go to the
loopback fakes: successes, a 401 whose body echoes the whole key (the fake does that for a wrong key), a
401 echoing a partial key the way OpenAI does, a 500 and a non-JSON 200 whose bodies quote the key, streams,
fallbacks, an ``AllProvidersFailedError`` and health checks.
"""

from __future__ import annotations

import io
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import llmkit
from llmkit import Request, Response
from llmkit.providers.base import Provider
from llmkit.testing import FakeAnthropicServer, FakeOpenAIServer

KEY = "sk-live-SECRET-0123456789abcdef"
ENV_KEY = "envkey-SECRET-fedcba9876543210"     # not shaped like sk-...: only registration can redact it
ENV_VAR = "LLMKIT_RELIABILITY_SECRET_KEY"
PARTIAL = "sk-live-**************cdef"          # how OpenAI echoes a wrong key in a 401
NEEDLES = (KEY, ENV_KEY, PARTIAL, "SECRET-0123456789abcdef", "SECRET-fedcba9876543210")
MSG = [{"role": "user", "content": "hello"}]
GPT, MINI, CLAUDE = "gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022"
LOGGERS = ("llmkit", "httpx", "httpcore")


def leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


def assert_clean(where: str, text: str) -> None:
    found = leaks(text)
    assert not found, f"{where} shows {found}: ...{_around(text, found[0])}..."


def _around(text: str, needle: str) -> str:
    i = text.find(needle)
    return text[max(0, i - 120): i + len(needle) + 40]


def error_texts(exc: BaseException) -> dict[str, str]:
    """Everything an error shows: str, repr, the full traceback with its chain, and for provider errors
    their body; for ``AllProvidersFailedError`` the same for each error inside."""
    texts = {"str": str(exc), "repr": repr(exc), "traceback": "".join(traceback.format_exception(exc))}
    if isinstance(exc, llmkit.ProviderError):
        texts["body"] = repr(exc.body)
    for i, inner in enumerate(getattr(exc, "errors", ())):
        texts.update({f"errors[{i}].{k}": v for k, v in error_texts(inner).items()})
    return texts


@dataclass
class Scenario:
    client: llmkit.Client
    errors: list[BaseException] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    logs: list[logging.LogRecord] = field(default_factory=list)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def frames(client: llmkit.Client) -> dict[str, Any]:
    return {"usage": client.usage(), "events": client.events(), "health": client.health(),
            "cost_summary": client.cost_summary(), "cost_summary_by_provider": client.cost_summary(by="provider"),
            "latency": client.latency()}


@pytest.fixture
def scenario(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[Scenario]:
    monkeypatch.setenv(ENV_VAR, ENV_KEY)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    with FakeOpenAIServer(api_key="sk-the-right-key-000000000") as strict, \
            FakeOpenAIServer(reply="openai here") as lenient, \
            FakeAnthropicServer(reply="anthropic here") as anthropic:
        providers = [
            # a wrong key: the fake's 401 echoes the key it was sent, whole
            {"name": "openai-main", "adapter": "openai", "api_key": KEY, "base_url": strict.url,
             "models": [GPT, MINI], "priority": 0, "max_retries": 0},
            {"name": "openai-env", "adapter": "openai", "api_key_env": ENV_VAR, "base_url": strict.url,
             "models": [GPT, MINI], "priority": 1, "max_retries": 0},
            {"name": "openai-ok", "adapter": "openai", "api_key": KEY, "base_url": lenient.url,
             "models": ["gpt-4.1"], "priority": 2, "max_retries": 0},
            {"name": "anthropic-env", "adapter": "anthropic", "api_key_env": ENV_VAR, "base_url": anthropic.url,
             "models": [CLAUDE], "priority": 3, "max_retries": 0},
        ]
        client = llmkit.Client(providers, fallbacks={MINI: [CLAUDE]}, ledger=None, health_interval=None)
        run = Scenario(client)
        keep = _Keep(run.logs)
        for name in LOGGERS:
            logging.getLogger(name).addHandler(keep)

        def attempt(fn: Any) -> None:
            try:
                out = fn()
            except llmkit.LLMError as exc:
                run.errors.append(exc)
            else:
                run.responses.append(out)

        def read(stream: Any) -> Response:
            for _ in stream:
                pass
            return stream.response

        with client:
            attempt(lambda: client.completion(GPT, MSG))                # AllProvidersFailedError: two 401s
            attempt(lambda: read(client.stream(GPT, MSG)))              # the same, streamed
            attempt(lambda: client.completion(MINI, MSG))               # two 401s, then the fallback answers
            attempt(lambda: read(client.stream(MINI, MSG)))
            lenient.enqueue_error(401, code="invalid_api_key", type="invalid_request_error",
                                  message=f"Incorrect API key provided: {PARTIAL}. You can find your API key at "
                                          "https://platform.openai.com/account/api-keys.")
            attempt(lambda: client.completion("gpt-4.1", MSG))          # a partial key echoed
            lenient.enqueue_error(500, message=f"upstream said: bad Authorization 'Bearer {KEY}'")
            attempt(lambda: client.completion("gpt-4.1", MSG))
            lenient.enqueue_raw(f"<html>proxy error for key {KEY}</html>", headers={"content-type": "text/html"})
            attempt(lambda: client.completion("gpt-4.1", MSG))          # not JSON: a connection error
            anthropic.enqueue_error(500, message=f"x-api-key {ENV_KEY} was rejected upstream")
            attempt(lambda: read(client.stream(CLAUDE, MSG)))
            attempt(lambda: read(client.stream(CLAUDE, MSG)))           # ok
            attempt(lambda: client.completion(CLAUDE, MSG))             # ok
            for key in (KEY, ENV_KEY):                                  # health checks: 401s echoing the keys
                strict.enqueue_error(401, code="invalid_api_key", path="/v1/models",
                                     message=f"Incorrect API key provided: {key}.")
            anthropic.enqueue_error(401, path="/v1/models", message=f"invalid x-api-key {ENV_KEY}")
            client.check_health()
            try:
                yield run
            finally:
                for name in LOGGERS:
                    logging.getLogger(name).removeHandler(keep)


def test_the_scenario_really_exercised_the_keys(scenario: Scenario) -> None:
    """Guards the other tests against passing vacuously."""
    kinds = [type(e).__name__ for e in scenario.errors]
    assert kinds == ["AllProvidersFailedError", "AllProvidersFailedError", "AuthenticationError", "ServerError",
                     "ProviderConnectionError", "ServerError"]
    assert [r.provider for r in scenario.responses] == ["anthropic-env"] * 4
    assert {r.name for r in scenario.logs} >= {"httpx", "httpcore.http11", "httpcore.connection"}
    sent = scenario.errors[0].errors  # type: ignore[attr-defined]
    assert [e.status for e in sent] == [401, 401] and "***" in str(sent[0]) and "***" in str(sent[1])
    assert "***" in str(scenario.errors[2])
    health = scenario.client.health().set_index("provider")
    assert health["last_check_ok"].tolist() == [False, False, True, False]


def test_keys_stay_out_of_reprs(scenario: Scenario) -> None:
    client = scenario.client
    assert_clean("repr(client)", repr(client))
    assert_clean("str(client)", str(client))
    assert_clean("repr(client.config)", repr(client.config))
    assert_clean("str(client.config)", str(client.config))
    for config in client.config.providers:
        assert_clean(f"repr(ProviderConfig {config.name})", repr(config))
    for name in client.providers:
        assert_clean(f"repr(provider {name})", repr(client.provider(name)))
    direct = llmkit.ProviderConfig(name="direct", adapter="openai", api_key=KEY, headers={"x-api-key": KEY})
    assert_clean("repr(ProviderConfig(...))", repr(direct))
    assert_clean("str(ProviderConfig(...))", str(direct))
    for response in scenario.responses:
        assert_clean("repr(response)", repr(response))
        for a in response.attempts:
            assert_clean("repr(attempt)", repr(a))


def test_keys_stay_out_of_errors(scenario: Scenario) -> None:
    assert scenario.errors
    for exc in scenario.errors:
        for what, text in error_texts(exc).items():
            assert_clean(f"{type(exc).__name__} {what}", text)


def test_keys_stay_out_of_debug_logs(scenario: Scenario) -> None:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    assert len(scenario.logs) > 50
    for record in scenario.logs:
        assert_clean(f"log record of {record.name}", formatter.format(record))


@pytest.mark.parametrize("name", ["usage", "events", "health", "cost_summary", "cost_summary_by_provider",
                                  "latency"])
def test_keys_stay_out_of_frames(scenario: Scenario, name: str) -> None:
    frame = frames(scenario.client)[name]
    assert len(frame) > 0
    assert_clean(f"{name}().to_string()", frame.to_string())
    assert_clean(f"{name}().to_json()", frame.to_json(default_handler=str, date_format="iso"))
    assert_clean(f"{name}() cells", repr(frame.to_dict("records")))


def test_usage_and_events_keep_redacted_error_text(scenario: Scenario) -> None:
    """The frames do carry the error messages (so the check above looks at real text), scrubbed."""
    usage = scenario.client.usage()
    messages = " ".join(usage["error_message"].dropna())
    assert "Incorrect API key provided: ***" in messages and "upstream said" in messages
    health = scenario.client.health()
    assert "401" in " ".join(health["last_error"].dropna())


def test_keys_stay_out_of_the_dashboard_html(scenario: Scenario) -> None:
    app = pytest.importorskip("llmkit.dashboard.app", reason="llmkit.dashboard is not there yet")
    dashboard = app.create_app(scenario.client)
    buffer = io.StringIO()
    dashboard.save(buffer)
    html = buffer.getvalue()
    assert "Incorrect API key provided: ***" in html  # the recent-requests table shows the errors
    assert_clean("dashboard HTML", html)


def test_config_errors_do_not_echo_keys() -> None:
    bad = [
        {"name": "x", "adapter": "openai", "api_key": KEY, "timeout": "soon"},
        {"name": "x", "adapter": "openai", "apikey": KEY},
        {"name": "x", "adapter": "openai", "api_key": KEY, "base_url": "ftp://nowhere"},
        {"name": "x", "adapter": "openai", "api_key": KEY, "headers": {"authorization": 12345}},
    ]
    for entry in bad:
        with pytest.raises(llmkit.ConfigError) as info:
            llmkit.Client([entry], ledger=None, health_interval=None)
        for what, text in error_texts(info.value).items():
            assert_clean(f"ConfigError {what}", text)


# -- a custom adapter whose own exceptions carry the key (an API that takes it in the URL) ---------------


class KeyInURL(Provider):
    """Like an API that takes its key as ``?key=`` (Gemini does): httpx names the URL in its errors."""

    adapter = "key_in_url"

    def _fail(self) -> None:
        request = httpx.Request("GET", f"https://llm.example/v1/models?key={self.config.api_key}")
        httpx.Response(401, request=request).raise_for_status()

    async def complete(self, request: Request) -> Response:
        self._fail()
        raise AssertionError("unreachable")

    async def health_check(self) -> None:
        self._fail()


@pytest.fixture
def keyed() -> Iterator[llmkit.Client]:
    with llmkit.Client([{"name": "keyed", "adapter": KeyInURL, "api_key": KEY, "max_retries": 0}],
                       ledger=None, health_interval=None) as client:
        yield client


def test_custom_adapter_errors_are_scrubbed_in_message_ledger_and_logs(
        keyed: llmkit.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="llmkit")
    with pytest.raises(llmkit.ProviderError) as info:
        keyed.completion("m", MSG)
    assert "HTTPStatusError" in str(info.value) and "key=***" in str(info.value)
    assert_clean("str(error)", str(info.value))
    assert_clean("repr(error)", repr(info.value))
    assert_clean("usage()", keyed.usage().to_json(date_format="iso"))
    assert any(r.name == "llmkit" for r in caplog.records)
    assert_clean("llmkit log", caplog.text)


def test_custom_adapter_error_traceback_is_scrubbed(keyed: llmkit.Client) -> None:
    with pytest.raises(llmkit.ProviderError) as info:
        keyed.completion("m", MSG)
    assert_clean("traceback", "".join(traceback.format_exception(info.value)))


def test_custom_adapter_health_check_errors_are_scrubbed(keyed: llmkit.Client) -> None:
    health = keyed.check_health()
    assert health.loc[0, "last_check_ok"] == False  # noqa: E712
    assert "HTTPStatusError" in str(health.loc[0, "last_error"])
    assert_clean("health()", health.to_json(default_handler=str, date_format="iso"))
    assert_clean("events()", keyed.events().to_json(default_handler=str, date_format="iso"))
