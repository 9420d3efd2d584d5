"""Fault injection over real HTTP on 127.0.0.1 (the loopback fakes), for plain calls and streams, on both
wire flavors (OpenAI and Anthropic).

For every fault: a single provider ends in the right typed error once its retries are spent; with a
backup provider the request falls back and succeeds; a fault after the first streamed text is not
retried (that text is already with the caller) and ends the stream with a typed error. Always: within
the request's deadline (``timeout=``), exactly one ledger record per request with the right status and
error type, and never a hang: every call runs under a guard that fails the test instead of waiting.

Retry waits use the ``fake_time`` sleep and clock; the only real-time waits are the small per-attempt
timeouts (0.3 s) of the timeout faults and the deadline tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import llmkit
from llmkit._loop import VirtualTimeLoop
from llmkit.ledger.store import LedgerRecord
from llmkit.testing import FakeAnthropicServer, FakeLLMServer, FakeOpenAIServer

from ..conftest import FakeTime

MSG = [{"role": "user", "content": "hello"}]
KEY = "sk-test-faults-0123456789"
REPLY = "one two three four"
BACKUP_REPLY = "from the backup"
DEADLINE = 8.0          # every request's overall timeout= unless a test says otherwise
GUARD = 20.0            # a call without an outcome by then fails the test as a hang
ATTEMPT_TIMEOUT = 4.0   # the providers' per-attempt timeout: roomy, so a busy CI machine never trips it...
SHORT_TIMEOUT = 0.3     # ...except in the timeout fault, where the primary gets this one
SLOW = 2.0              # a first byte this late is past SHORT_TIMEOUT
HOW = ("call", "stream")  # call: completion_async + get_result; stream: client.stream read to the end

FLAVORS = ("openai", "anthropic")
MODELS = {"openai": "gpt-4o", "anthropic": "claude-3-5-sonnet-20241022"}
SERVERS: dict[str, type[FakeLLMServer]] = {"openai": FakeOpenAIServer, "anthropic": FakeAnthropicServer}
OTHER = {"openai": "anthropic", "anthropic": "openai"}
FALLBACKS = {MODELS["openai"]: [MODELS["anthropic"]], MODELS["anthropic"]: [MODELS["openai"]]}
# Stream events the fakes send before the first text (OpenAI: the role chunk; Anthropic: message_start,
# content_block_start, ping), and how many make the first two words ("one two") go out.
BEFORE_TEXT = {"openai": 1, "anthropic": 3}
TWO_WORDS = {"openai": 3, "anthropic": 5}


# -- faults ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One kind of failed attempt. ``inject(server, flavor)`` scripts it once (or, when not
    ``per_attempt``, for the rest of the test)."""

    name: str
    inject: Callable[[FakeLLMServer, str], None]
    error: type[llmkit.ProviderError] | dict[str, type[llmkit.ProviderError]]
    status: int | None = None
    retry_after: float | None = None
    per_attempt: bool = True
    attempt_timeout: float = ATTEMPT_TIMEOUT  # the faulty provider's per-attempt timeout

    def error_for(self, flavor: str) -> type[llmkit.ProviderError]:
        return self.error[flavor] if isinstance(self.error, dict) else self.error

    def script(self, server: FakeLLMServer, flavor: str, attempts: int) -> None:
        for _ in range(attempts if self.per_attempt else 1):
            self.inject(server, flavor)


def _down(server: FakeLLMServer, flavor: str) -> None:
    server.set_down(True)


ERROR_EVENT = {"openai": llmkit.ServerError, "anthropic": llmkit.OverloadedError}

FAULTS = [
    Fault("http_500", lambda s, f: s.enqueue_error(500), llmkit.ServerError, 500),
    Fault("http_502", lambda s, f: s.enqueue_error(502), llmkit.ServerError, 502),
    Fault("http_503", lambda s, f: s.enqueue_error(503), llmkit.ServerError, 503),
    Fault("http_529", lambda s, f: s.enqueue_error(529), llmkit.OverloadedError, 529),
    Fault("http_429", lambda s, f: s.enqueue_error(429), llmkit.RateLimitError, 429),
    Fault("http_429_retry_after", lambda s, f: s.enqueue_error(429, retry_after=1), llmkit.RateLimitError, 429,
          retry_after=1.0),
    Fault("http_429_retry_after_ms", lambda s, f: s.enqueue_error(429, retry_after_ms=250), llmkit.RateLimitError,
          429, retry_after=0.25),
    Fault("attempt_timeout_slow_first_byte", lambda s, f: s.enqueue(latency=SLOW), llmkit.ProviderTimeoutError,
          attempt_timeout=SHORT_TIMEOUT),
    Fault("connection_refused", _down, llmkit.ProviderConnectionError, per_attempt=False),
    Fault("connection_reset", lambda s, f: s.enqueue_reset(), llmkit.ProviderConnectionError),
    Fault("dropped_connection", lambda s, f: s.enqueue_drop(), llmkit.ProviderConnectionError),
    Fault("malformed_json", lambda s, f: s.enqueue_malformed(), llmkit.ProviderConnectionError),
    # plain calls: half a body, then the connection closes; streams: cut before the first text
    Fault("truncated", lambda s, f: s.enqueue_truncated(BEFORE_TEXT[f]), llmkit.ProviderConnectionError),
    Fault("truncated_abrupt", lambda s, f: s.enqueue_truncated(BEFORE_TEXT[f], clean=False),
          llmkit.ProviderConnectionError),
    # plain calls: a 200 whose body is an error; streams: an error event before the first text
    Fault("error_event", lambda s, f: s.enqueue_stream_error(after=BEFORE_TEXT[f]), ERROR_EVENT),
]

# Faults after the first two words of a stream went out.
MID_STREAM = [
    Fault("truncated_mid_stream", lambda s, f: s.enqueue_truncated(TWO_WORDS[f]), llmkit.ProviderConnectionError),
    Fault("truncated_abrupt_mid_stream", lambda s, f: s.enqueue_truncated(TWO_WORDS[f], clean=False),
          llmkit.ProviderConnectionError),
    Fault("error_event_mid_stream", lambda s, f: s.enqueue_stream_error(after=TWO_WORDS[f]), ERROR_EVENT),
]


# -- running one request under a guard ---------------------------------------------------------------


@dataclass
class Outcome:
    response: llmkit.Response | None = None
    error: BaseException | None = None
    chunks: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    request_id: str | None = None


def call(client: llmkit.Client, model: str, how: str, timeout: float = DEADLINE) -> Outcome:
    """One request: ``call`` queues it (``completion_async``) and waits with ``get_result(timeout=GUARD)``;
    ``sync`` (``completion``) and ``stream`` (read to the end) run on a guard thread. A request with no
    outcome within ``GUARD`` seconds fails the test as a hang."""
    out = Outcome()
    start = time.monotonic()
    if how == "call":
        out.request_id = client.completion_async(model, MSG, timeout=timeout)
        try:
            out.response = client.get_result(out.request_id, timeout=GUARD)
        except BaseException as exc:
            out.error = exc
        out.elapsed = time.monotonic() - start
        if out.elapsed >= GUARD:
            pytest.fail(f"hang: request {out.request_id} had no outcome within {GUARD}s")
        return out

    def run() -> None:
        try:
            if how == "sync":
                out.response = client.completion(model, MSG, timeout=timeout)
                return
            s = client.stream(model, MSG, timeout=timeout)
            for chunk in s:
                if chunk.text:
                    out.chunks.append(chunk.text)
            out.response = s.response
        except BaseException as exc:
            out.error = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(GUARD)
    if worker.is_alive():
        pytest.fail(f"hang: the {how} request had no outcome within {GUARD}s")
    out.elapsed = time.monotonic() - start
    return out


def provider(name: str, flavor: str, server: FakeLLMServer, priority: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "adapter": flavor, "api_key": KEY, "base_url": server.url, "priority": priority,
            "models": [MODELS[flavor]], "timeout": ATTEMPT_TIMEOUT, "max_retries": 1, **extra}


def make(providers: list[dict[str, Any]], fake_time: FakeTime, **kw: Any) -> llmkit.Client:
    return llmkit.Client(providers, fallbacks=FALLBACKS, ledger=None, health_interval=None,
                         sleep=fake_time.sleep, clock=fake_time.clock, **kw)


def completions(server: FakeLLMServer) -> int:
    return sum(1 for r in server.requests if r.path.endswith(("/chat/completions", "/messages")))


def only_record(client: llmkit.Client, out: Outcome) -> LedgerRecord:
    """The request's one ledger record, checked against ``usage()`` and the request events."""
    ledger = client._service.ledger
    assert len(ledger) == 1, f"expected exactly one ledger record, found {len(ledger)}"
    record = ledger[0]
    if out.request_id is not None:
        assert record.request_id == out.request_id
    if out.response is not None:
        assert record.request_id == out.response.id
    usage = client.usage()
    assert len(usage) == 1
    row = usage.iloc[0]
    assert row["request_id"] == record.request_id and row["status"] == record.status
    if record.error_type is None:
        assert usage["error_type"].isna().all()
    else:
        assert row["error_type"] == record.error_type
    finished = client.events("request")
    assert finished["request_id"].tolist() == [record.request_id]
    return record


def check_within_deadline(out: Outcome, fake_time: FakeTime, deadline: float = DEADLINE) -> None:
    assert out.elapsed < deadline, f"took {out.elapsed:.2f}s, past the {deadline}s deadline"
    assert sum(fake_time.sleeps) < deadline, f"retry waits {fake_time.sleeps} pass the {deadline}s deadline"


def check_server_saw_both_tries(fault: Fault, server: FakeLLMServer) -> None:
    if fault.name == "connection_refused":
        assert completions(server) == 0
    elif fault.attempt_timeout < ATTEMPT_TIMEOUT:
        # a short attempt may give up before the server has even read the request (a busy machine):
        # the client-side count (attempts) is the exact one here
        assert completions(server) <= 2
    else:
        assert completions(server) == 2 and server.pending == 0


def check_retry_wait(fault: Fault, fake_time: FakeTime) -> None:
    """One retry on the faulty provider: it waited what the server asked, else an exponential backoff."""
    assert len(fake_time.sleeps) == 1, fake_time.sleeps
    if fault.retry_after is not None:
        assert fake_time.sleeps == [fault.retry_after]
    else:
        assert 0.5 <= fake_time.sleeps[0] <= 0.75


@pytest.fixture
def servers(request: pytest.FixtureRequest) -> Iterator[dict[str, FakeLLMServer]]:
    """``primary``: a fake of the test's flavor replying REPLY; ``backup``: the other flavor, BACKUP_REPLY."""
    flavor = request.node.callspec.params["flavor"]
    with SERVERS[flavor](reply=REPLY) as primary, SERVERS[OTHER[flavor]](reply=BACKUP_REPLY) as backup:
        yield {"primary": primary, "backup": backup}


# -- the fault table: one provider -------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_single_provider_fault_raises_its_typed_error(fault: Fault, how: str, flavor: str,
                                                      servers: dict[str, FakeLLMServer],
                                                      fake_time: FakeTime) -> None:
    server = servers["primary"]
    with make([provider("primary", flavor, server, 0, timeout=fault.attempt_timeout)], fake_time) as client:
        fault.script(server, flavor, attempts=2)
        out = call(client, MODELS[flavor], how)
        record = only_record(client, out)
        attempt_errors = client.events("attempt")["error"].tolist()
    expected = fault.error_for(flavor)
    assert out.response is None and type(out.error) is expected, repr(out.error)
    assert out.error.provider == "primary" and out.error.retryable is True
    if fault.status is not None:
        assert out.error.status == fault.status
    if fault.retry_after is not None:
        assert out.error.retry_after == fault.retry_after
    assert out.chunks == []  # nothing reached the caller before the error
    assert attempt_errors == [expected.__name__] * 2  # the first try and one retry, same fault
    check_server_saw_both_tries(fault, server)
    check_retry_wait(fault, fake_time)
    check_within_deadline(out, fake_time)
    assert (record.status, record.error_type, record.provider) == ("error", expected.__name__, "primary")
    assert record.attempts == 2 and record.stream is (how == "stream") and record.cost_usd == 0.0
    assert record.error_message == str(out.error)[:500]


# -- the fault table: with a backup ------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_fault_on_primary_falls_back_to_backup(fault: Fault, how: str, flavor: str,
                                               servers: dict[str, FakeLLMServer], fake_time: FakeTime) -> None:
    primary, backup = servers["primary"], servers["backup"]
    providers = [provider("primary", flavor, primary, 0, timeout=fault.attempt_timeout),
                 provider("backup", OTHER[flavor], backup, 1)]
    with make(providers, fake_time) as client:
        fault.script(primary, flavor, attempts=2)
        out = call(client, MODELS[flavor], how)
        record = only_record(client, out)
        fallbacks = client.events("fallback")
    expected = fault.error_for(flavor).__name__
    assert out.error is None, repr(out.error)
    resp = out.response
    assert resp is not None and resp.provider == "backup" and resp.content == BACKUP_REPLY
    assert resp.model.startswith(MODELS[OTHER[flavor]]) and resp.fallback
    if how == "stream":
        assert "".join(out.chunks) == BACKUP_REPLY
    assert [(a.provider, a.outcome, a.error) for a in resp.attempts] == [
        ("primary", "error", expected)] * 2 + [("backup", "ok", None)]
    assert fallbacks[["provider", "to_provider", "error"]].values.tolist() == [["primary", "backup", expected]]
    assert completions(backup) == 1 and backup.pending == 0
    check_server_saw_both_tries(fault, primary)
    check_retry_wait(fault, fake_time)
    check_within_deadline(out, fake_time)
    assert (record.status, record.error_type, record.provider) == ("ok", None, "backup")
    assert record.fallback and record.attempts == 3 and record.stream is (how == "stream")
    assert resp.cost_usd is not None and resp.cost_usd > 0 and record.cost_usd == resp.cost_usd


# -- faults after the first streamed text ------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("with_backup", [False, True], ids=["alone", "with_backup"])
@pytest.mark.parametrize("fault", MID_STREAM, ids=lambda f: f.name)
def test_fault_after_first_text_ends_the_stream_with_a_typed_error(
        fault: Fault, with_backup: bool, flavor: str, servers: dict[str, FakeLLMServer],
        fake_time: FakeTime) -> None:
    primary, backup = servers["primary"], servers["backup"]
    providers = [provider("primary", flavor, primary, 0)]
    if with_backup:
        providers.append(provider("backup", OTHER[flavor], backup, 1))
    with make(providers, fake_time) as client:
        fault.inject(primary, flavor)
        out = call(client, MODELS[flavor], "stream")
        record = only_record(client, out)
        breaker = client._service.router.by_name["primary"].breaker
        fail_count = breaker.fail_count
    expected = fault.error_for(flavor)
    assert "".join(out.chunks) == "one two"  # what was sent before the fault reached the caller
    assert out.response is None and type(out.error) is expected, repr(out.error)
    assert out.error.provider == "primary"
    # the text is out: no retry, no fallback (a second answer would be spliced onto the first)
    assert completions(primary) == 1 and completions(backup) == 0
    assert fake_time.sleeps == []
    assert fail_count == 1  # the broken stream still counts against the provider's breaker
    check_within_deadline(out, fake_time)
    assert (record.status, record.error_type, record.provider) == ("error", expected.__name__, "primary")
    assert record.attempts == 1 and record.stream and not record.fallback


# -- slow but in time --------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", HOW)
def test_slow_first_byte_within_the_attempt_timeout_succeeds(how: str, flavor: str,
                                                             servers: dict[str, FakeLLMServer],
                                                             fake_time: FakeTime) -> None:
    server = servers["primary"]
    with make([provider("primary", flavor, server, 0, timeout=2.0)], fake_time) as client:
        server.enqueue(latency=0.3)  # a first byte 0.3 s late, well within the 2 s per-attempt timeout
        out = call(client, MODELS[flavor], how)
        record = only_record(client, out)
    assert out.error is None, repr(out.error)
    assert out.response is not None and out.response.content == REPLY
    assert [a.outcome for a in out.response.attempts] == ["ok"]
    assert out.elapsed >= 0.3  # the server really held its answer back
    check_within_deadline(out, fake_time)
    assert (record.status, record.attempts, record.stream) == ("ok", 1, how == "stream")


# -- deadlines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", ["call", "sync", "stream"])
def test_request_deadline_cuts_an_attempt_short(how: str, flavor: str, servers: dict[str, FakeLLMServer],
                                                fake_time: FakeTime) -> None:
    """The per-attempt timeout (5 s) is longer than the request's deadline (0.3 s): the deadline wins."""
    server = servers["primary"]
    with make([provider("primary", flavor, server, 0, timeout=5.0, max_retries=0)], fake_time) as client:
        server.enqueue(latency=3.0)
        out = call(client, MODELS[flavor], how, timeout=0.3)
        record = only_record(client, out)
    assert type(out.error) is llmkit.RequestTimeoutError, repr(out.error)
    assert "0.3s deadline" in str(out.error)
    assert out.elapsed < 0.3 + 1.0
    assert (record.status, record.error_type, record.stream) == ("error", "RequestTimeoutError", how == "stream")


def _slow_mock_client() -> llmkit.Client:
    slow = {"name": "slow", "adapter": "mock", "timeout": 60, "options": {"latency": 10.0}}
    return llmkit.Client([slow], ledger=None, health_interval=None, loop_factory=VirtualTimeLoop)


def test_get_result_raises_the_requests_own_deadline_error() -> None:
    """Regression (fixed in 8083147, found by this suite): the request ends at once (virtually 1 s) in
    RequestTimeoutError, a TimeoutError; get_result(timeout=20) must hand that error over, not report
    its own wait as timed out ('not finished within 20s; it keeps running')."""
    with _slow_mock_client() as client:
        rid = client.completion_async("m", MSG, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(llmkit.RequestTimeoutError):
            client.get_result(rid, timeout=GUARD)
        assert time.monotonic() - started < GUARD
        assert client._service.ledger[0].error_type == "RequestTimeoutError"
        with pytest.raises(KeyError):
            client.get_result(rid)  # fetched: the error was that request's one outcome


async def test_aget_result_raises_the_requests_own_deadline_error() -> None:
    with _slow_mock_client() as client:
        rid = client.completion_async("m", MSG, timeout=1.0)
        with pytest.raises(llmkit.RequestTimeoutError):
            await client.aget_result(rid, timeout=GUARD)


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", HOW)
def test_retries_stop_before_the_deadline(how: str, flavor: str, servers: dict[str, FakeLLMServer],
                                          fake_time: FakeTime) -> None:
    """20 retries allowed, but their backoff would pass the 3 s deadline: stop early with the last error."""
    server = servers["primary"]
    for _ in range(21):
        server.enqueue_error(503)
    with make([provider("primary", flavor, server, 0, max_retries=20)], fake_time) as client:
        out = call(client, MODELS[flavor], how, timeout=3.0)
        record = only_record(client, out)
    assert type(out.error) is llmkit.ServerError and out.error.status == 503
    tries = completions(server)
    assert 2 <= tries < 21 and record.attempts == tries
    assert sum(fake_time.sleeps) < 3.0 and len(fake_time.sleeps) == tries - 1
    assert (record.status, record.error_type) == ("error", "ServerError")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_stream_deadline_bounds_the_whole_stream(flavor: str, fake_time: FakeTime) -> None:
    """Chunks every 50 ms (never a stall by the 1 s per-attempt timeout) for about 1.5 s, with a 0.5 s deadline.

    Reproduction: ``FakeOpenAIServer(reply=<30 words>, chunk_delay=0.05)``, provider ``timeout=1.0``,
    ``client.stream(..., timeout=0.5)`` reads all 30 words and succeeds after ~1.5 s; ``Service.stream``
    applies the deadline to ``open_stream`` only, and each later chunk only to the per-attempt timeout.
    """
    words = " ".join(f"w{i}" for i in range(30))
    with SERVERS[flavor](reply=words, chunk_delay=0.05) as server, \
            make([provider("primary", flavor, server, 0, timeout=1.0, max_retries=0)], fake_time) as client:
        out = call(client, MODELS[flavor], "stream", timeout=0.5)
        record = only_record(client, out)
    assert out.elapsed < 0.5 + 0.5, f"the stream took {out.elapsed:.2f}s with a 0.5s deadline"
    assert isinstance(out.error, llmkit.LLMError) and record.status == "error"


# -- every candidate down ----------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", HOW)
def test_every_provider_down_raises_all_providers_failed(how: str, flavor: str,
                                                         servers: dict[str, FakeLLMServer],
                                                         fake_time: FakeTime) -> None:
    primary, backup = servers["primary"], servers["backup"]
    providers = [provider("primary", flavor, primary, 0), provider("backup", OTHER[flavor], backup, 1)]
    with make(providers, fake_time) as client:
        primary.set_down(True)
        for _ in range(2):
            backup.enqueue_error(529)
        out = call(client, MODELS[flavor], how)
        record = only_record(client, out)
    assert type(out.error) is llmkit.AllProvidersFailedError, repr(out.error)
    assert [type(e) for e in out.error.errors] == [llmkit.ProviderConnectionError, llmkit.OverloadedError]
    assert [e.provider for e in out.error.errors] == ["primary", "backup"]
    check_within_deadline(out, fake_time)
    assert (record.status, record.error_type, record.attempts) == ("error", "AllProvidersFailedError", 4)
    assert record.fallback and record.provider == "backup"


# -- an open breaker -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("how", HOW)
def test_open_breaker_skips_the_dead_provider_without_contacting_it(how: str, flavor: str,
                                                                    servers: dict[str, FakeLLMServer],
                                                                    fake_time: FakeTime) -> None:
    primary, backup = servers["primary"], servers["backup"]
    providers = [provider("primary", flavor, primary, 0, max_retries=0, breaker={"fail_max": 2, "reset_timeout": 30}),
                 provider("backup", OTHER[flavor], backup, 1)]
    with make(providers, fake_time) as client:
        for _ in range(2):
            primary.enqueue_reset()
        outs = [call(client, MODELS[flavor], how) for _ in range(3)]
        records = [client._service.ledger[i] for i in range(len(client._service.ledger))]
        transitions = client.events("breaker")[["provider", "old", "new"]].values.tolist()
    assert all(o.error is None and o.response is not None and o.response.provider == "backup" for o in outs)
    assert [(a.provider, a.outcome, a.error) for a in outs[2].response.attempts] == [
        ("primary", "skipped", "CircuitOpenError"), ("backup", "ok", None)]
    assert completions(primary) == 2 and completions(backup) == 3
    assert transitions == [["primary", "closed", "open"]]
    assert len(records) == 3 and len({r.request_id for r in records}) == 3
    assert all(r.status == "ok" and r.fallback and r.provider == "backup" for r in records)
