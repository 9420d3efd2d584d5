"""Credentials beyond ``api_key`` never leak (issue 11, item 20a): a password in ``base_url``
(``https://user:password@host``), keys in custom ``headers``, and keys that show up escaped in error
texts (httpx prints an illegal header value as ``b'Bearer sk-...\\x00...'``).

Real calls go to a loopback fake whose error bodies quote the secrets; everything a user can see is
checked: reprs, errors (with tracebacks), DEBUG logs of llmkit, httpx and httpcore, the frames, the
dashboard's HTML and config errors.
"""

from __future__ import annotations

import base64
import io
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

import llmkit
from llmkit._secrets import redact, register_secret
from llmkit.testing import FakeOpenAIServer

USER = "alice"
PASSWORD = "PW-SECRET-5551234567"
HEADER_KEY = "HDRKEY-SECRET-8a7b6c5d4e"         # an Azure-style api-key header
TOKEN = "gwtok-SECRET-0f1e2d3c4b5a"             # a gateway's "Bearer <token>" header
ESCAPED_KEY = "sk-ab\x00ESCKEY-SECRET-99887766"  # a key with a control character: httpx prints it escaped
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
NEEDLES = (PASSWORD, HEADER_KEY, TOKEN, "ESCKEY-SECRET-99887766", BASIC, "SECRET-5551234567",
           "SECRET-8a7b6c5d4e", "SECRET-0f1e2d3c4b5a")
MSG = [{"role": "user", "content": "hello"}]
LOGGERS = ("llmkit", "httpx", "httpcore")


def assert_clean(where: str, text: str) -> None:
    found = [n for n in NEEDLES if n in text]
    assert not found, f"{where} shows {found}: {text[max(0, text.find(found[0]) - 100):][:250]!r}"


def error_texts(exc: BaseException) -> dict[str, str]:
    texts = {"str": str(exc), "repr": repr(exc), "traceback": "".join(traceback.format_exception(exc))}
    if isinstance(exc, llmkit.ProviderError):
        texts["body"] = repr(exc.body)
    for i, inner in enumerate(getattr(exc, "errors", ())):
        texts.update({f"errors[{i}].{k}": v for k, v in error_texts(inner).items()})
    return texts


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Run:
    def __init__(self, client: llmkit.Client, server: FakeOpenAIServer) -> None:
        self.client = client
        self.server = server
        self.errors: list[BaseException] = []
        self.ok: list[Any] = []
        self.logs = _Keep()


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    keep = _Keep()
    levels = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(keep)
    with FakeOpenAIServer(reply="gateway here") as server:
        with_credentials = server.url.replace("http://", f"http://{USER}:{PASSWORD}@")
        providers = [
            {"name": "gateway", "adapter": "openai", "api_key": "sk-unused-000000", "base_url": with_credentials,
             "headers": {"api-key": HEADER_KEY, "X-Gateway-Token": f"Bearer {TOKEN}", "x-trace": "trace-visible"},
             "models": ["gpt-4o"], "max_retries": 0},
            {"name": "escaped", "adapter": "openai", "api_key": ESCAPED_KEY, "base_url": server.url,
             "models": ["gpt-4.1"], "max_retries": 0},
        ]
        client = llmkit.Client(providers, ledger=None, health_interval=None)
        r = Run(client, server)
        r.logs = keep

        def attempt(fn: Any) -> None:
            try:
                r.ok.append(fn())
            except llmkit.LLMError as exc:
                r.errors.append(exc)

        def read(stream: Any) -> Any:
            for _ in stream:
                pass
            return stream.response

        with client:
            attempt(lambda: client.completion("gpt-4o", MSG))
            attempt(lambda: read(client.stream("gpt-4o", MSG)))
            server.enqueue_error(500, message=f"bad api-key {HEADER_KEY}; token {TOKEN}; auth Basic {BASIC}")
            attempt(lambda: client.completion("gpt-4o", MSG))
            server.enqueue_error(401, message=f"user {USER} password {PASSWORD} rejected")
            attempt(lambda: read(client.stream("gpt-4o", MSG)))
            server.enqueue_raw(f"<html>proxy: http://{USER}:{PASSWORD}@upstream/ failed</html>",
                               headers={"content-type": "text/html"})
            attempt(lambda: client.completion("gpt-4o", MSG))
            attempt(lambda: client.completion("gpt-4.1", MSG))          # illegal header: the key, escaped
            attempt(lambda: read(client.stream("gpt-4.1", MSG)))
            server.enqueue_error(401, path="/v1/models", message=f"api-key {HEADER_KEY} unknown")
            client.check_health()
            try:
                yield r
            finally:
                for name in LOGGERS:
                    logging.getLogger(name).removeHandler(keep)
                    logging.getLogger(name).setLevel(levels[name])


def test_the_scenario_exercised_the_secrets(run: Run) -> None:
    assert [type(e).__name__ for e in run.errors] == [
        "ServerError", "AuthenticationError", "ProviderConnectionError", "ProviderConnectionError",
        "ProviderConnectionError"]
    assert [o.content for o in run.ok] == ["gateway here", "gateway here"]
    assert "Illegal header value" in str(run.errors[3]) and "***" in str(run.errors[3])
    sent = [req for req in run.server.requests if req.headers.get("api-key")]
    assert sent and all(req.headers["authorization"] == f"Basic {BASIC}" for req in sent)  # still sent
    assert all(req.headers["api-key"] == HEADER_KEY for req in sent)
    assert all(req.headers["x-gateway-token"] == f"Bearer {TOKEN}" for req in sent)


def test_reprs(run: Run) -> None:
    assert_clean("repr(client)", repr(run.client))
    assert_clean("repr(config)", repr(run.client.config))
    for config in run.client.config.providers:
        assert_clean("repr(ProviderConfig)", repr(config))
    assert f"http://***@127.0.0.1:{run.server.url.split(':')[2]}" in repr(run.client.config.providers[0])
    for name in run.client.providers:
        assert_clean("repr(provider)", repr(run.client.provider(name)))
    for response in run.ok:
        assert_clean("repr(response)", repr(response))


def test_errors(run: Run) -> None:
    for exc in run.errors:
        for what, text in error_texts(exc).items():
            assert_clean(f"{type(exc).__name__} {what}", text)


def test_logs(run: Run) -> None:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    names = {r.name for r in run.logs.records}
    assert {"httpx", "httpcore.http11"} <= names
    for record in run.logs.records:
        assert_clean(f"log of {record.name}", formatter.format(record))


def test_frames_and_events(run: Run) -> None:
    client = run.client
    for name, frame in {"usage": client.usage(), "events": client.events(), "health": client.health(),
                        "cost_summary": client.cost_summary(), "latency": client.latency()}.items():
        assert len(frame) > 0
        assert_clean(f"{name}()", frame.to_json(default_handler=str, date_format="iso"))
        assert_clean(f"{name}() text", frame.to_string())
    for event in client.event_list():
        assert_clean("event", repr(event))
    assert "rejected" in " ".join(client.usage()["error_message"].dropna())  # the texts are there, scrubbed


def test_dashboard_html(run: Run) -> None:
    app = pytest.importorskip("llmkit.dashboard.app")
    buffer = io.StringIO()
    app.create_app(run.client).save(buffer)
    assert_clean("dashboard HTML", buffer.getvalue())


def test_config_errors_do_not_echo_url_credentials() -> None:
    long_password = PASSWORD + "-and-it-goes-on-for-a-while-0123456789"
    for url in (f"ftp://{USER}:{long_password}@gateway.example/v1", f"git+ssh://{USER}:{PASSWORD}@host/repo"):
        with pytest.raises(llmkit.ConfigError) as info:
            llmkit.Client([{"name": "x", "adapter": "openai", "base_url": url}], ledger=None, health_interval=None)
        for what, text in error_texts(info.value).items():
            assert_clean(f"ConfigError {what}", text)
            assert "PW-SECRET" not in text


def test_redact_catches_escaped_and_encoded_forms() -> None:
    secret = "tab\tSEPARATED-secret-value-42"
    register_secret(secret)
    for shown in (repr(secret), repr(secret.encode()), f'{{"key": "{secret}"}}'.replace("\t", "\\t"),
                  "key=tab%09SEPARATED-secret-value-42", "SEPARATED-secret-value-42"):
        assert "SEPARATED-secret-value-42" not in redact(shown), shown
    assert redact("see https://bob:hunter22@example.com/x") == "see https://***@example.com/x"
    assert redact("no secrets here: x-trace trace-visible") == "no secrets here: x-trace trace-visible"
