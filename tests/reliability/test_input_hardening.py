"""Bad input never reaches the wire nor a breaker; odd numbers from servers never break the books (issue 11).

Items 7 (metadata that cannot be encoded), 8 (integers), 14 (pre-send errors are not provider failures),
19 (a ``base_url`` query string) and 20 (an ``api_key`` with whitespace). Real HTTP goes to the loopback fakes.
"""

from __future__ import annotations

from typing import Any

import pytest

import llmkit
from llmkit import BudgetExceededError, InvalidRequestError
from llmkit.testing import FakeOpenAIServer

KEY = "sk-test-input-0123456789"
MSG = [{"role": "user", "content": "hello"}]
MOCK = [{"name": "p", "adapter": "mock"}]
INT64 = 2**63


def _openai(server: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {"name": "primary", "adapter": "openai", "api_key": KEY, "base_url": server.url, "models": ["gpt-4o"],
            "max_retries": 0, "breaker": {"fail_max": 3, "reset_timeout": 30.0}, **extra}


def _chat_requests(server: FakeOpenAIServer) -> list[Any]:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


# -- item 7: metadata that cannot be encoded ------------------------------------------------------

BAD_METADATA = [
    ("lone surrogate value", {"note": "\ud800"}),
    ("lone surrogate key", {"\udfff": 1}),
    ("surrogate nested", {"tags": ["ok", {"x": "a\ud83d"}]}),
    ("object value", {"when": object()}),
    ("set value", {"ids": {1, 2}}),
    ("nan value", {"score": float("nan")}),
    ("non-string key", {(1, 2): "tuple key"}),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("label,metadata", BAD_METADATA, ids=[b[0] for b in BAD_METADATA])
def test_metadata_that_cannot_be_encoded_is_rejected_before_sending(label: str, metadata: dict[Any, Any]) -> None:
    with FakeOpenAIServer() as server, llmkit.Client(providers=[_openai(server)], ledger=":memory:") as client:
        with pytest.raises(InvalidRequestError, match="metadata"):
            client.completion(model="gpt-4o", messages=MSG, metadata=metadata)
        assert _chat_requests(server) == []
        client.completion(model="gpt-4o", messages=MSG, metadata={"note": "fine ✓"})  # the client still works
        assert len(client.usage()) == 1


# -- item 8: integers ----------------------------------------------------------------------------

BAD_INTS = [
    ("priority", INT64), ("priority", -INT64 - 1), ("priority", True), ("priority", 1.0), ("priority", "1"),
    ("max_tokens", INT64), ("max_tokens", True), ("max_tokens", 10.0), ("max_tokens", "10"), ("max_tokens", 0),
    ("seed", INT64), ("seed", -INT64 - 1),  # an extra argument sent to the provider as is
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("field,value", BAD_INTS, ids=[f"{f}={v!r}" for f, v in BAD_INTS])
def test_integer_arguments_outside_int64_or_of_the_wrong_type_are_rejected(field: str, value: Any) -> None:
    with FakeOpenAIServer() as server, llmkit.Client(providers=[_openai(server)], ledger=":memory:") as client:
        with pytest.raises(InvalidRequestError, match=field):
            client.completion(model="gpt-4o", messages=MSG, **{field: value})
        assert _chat_requests(server) == []


def test_int64_edges_are_accepted() -> None:
    with llmkit.Client(providers=MOCK, ledger=":memory:") as client:
        client.completion(model="m", messages=MSG, priority=INT64 - 1)
        client.completion(model="m", messages=MSG, priority=-INT64)
        assert len(client.usage()) == 2


# -- item 14: errors before sending are not provider failures --------------------------------------

PRE_SEND: list[tuple[str, dict[str, Any]]] = [
    ("unserialisable extra", {"user": object()}),
    ("nan extra", {"top_p": float("nan")}),
    ("surrogate content", {"messages": [{"role": "user", "content": "bad \ud800"}]}),
    ("bad priority", {"priority": "high"}),
    ("bad metadata", {"metadata": {"x": object()}}),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("label,kwargs", PRE_SEND, ids=[p[0] for p in PRE_SEND])
def test_ten_pre_send_errors_leave_the_breaker_closed(label: str, kwargs: dict[str, Any]) -> None:
    with FakeOpenAIServer() as server, llmkit.Client(providers=[_openai(server)], ledger=":memory:") as client:
        call = {"model": "gpt-4o", "messages": MSG, **kwargs}
        for _ in range(10):
            with pytest.raises(InvalidRequestError):
                client.completion(**call)
        breaker = client._service.router.by_name["primary"].breaker
        assert (breaker.state, breaker.fail_count) == ("closed", 0)
        assert client.health().set_index("provider").loc["primary", "breaker_state"] == "closed"
        assert _chat_requests(server) == []
        assert client.completion(model="gpt-4o", messages=MSG).content


@pytest.mark.timeout(60)
def test_budget_refusals_leave_the_breaker_closed() -> None:
    pricing = {"gpt-4o": {"input": 1e6, "output": 1e6}}  # USD per million tokens: any call costs > budget
    with FakeOpenAIServer() as server, llmkit.Client(providers=[_openai(server, pricing=pricing)], ledger=":memory:",
                                                     budget_usd=0.01) as client:
        for _ in range(10):
            with pytest.raises(BudgetExceededError):
                client.completion(model="gpt-4o", messages=MSG, max_tokens=10)
        breaker = client._service.router.by_name["primary"].breaker
        assert (breaker.state, breaker.fail_count) == ("closed", 0)
        assert _chat_requests(server) == []


# -- item 8: token counts from a server ------------------------------------------------------------

ODD_USAGE = [
    ("negative", {"prompt_tokens": -500, "completion_tokens": -7, "total_tokens": -507}),
    ("absurd", {"prompt_tokens": 10**30, "completion_tokens": 2**60, "total_tokens": 10**30 + 2**60}),
    ("mixed", {"prompt_tokens": 12, "completion_tokens": -3, "total_tokens": 9}),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("label,usage", ODD_USAGE, ids=[u[0] for u in ODD_USAGE])
def test_odd_token_counts_from_a_server_are_clamped_and_flagged(label: str, usage: dict[str, Any]) -> None:
    pricing = {"gpt-4o": {"input": 2.5, "output": 10.0}}
    with FakeOpenAIServer() as server, llmkit.Client(providers=[_openai(server, pricing=pricing)],
                                                     ledger=":memory:") as client:
        server.enqueue("odd", usage=usage)
        reply = client.completion(model="gpt-4o", messages=MSG)
        u = reply.usage
        assert u.suspect is True
        for count in (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens):
            assert 0 <= count <= 2**53
        assert reply.cost_usd is not None and reply.cost_usd >= 0
        client.completion(model="gpt-4o", messages=MSG)  # a normal one next to it
        frame = client.usage()
        assert len(frame) == 2 and (frame["cost_usd"] >= 0).all()
        assert (frame["input_tokens"] >= 0).all() and (frame["output_tokens"] >= 0).all()
        summary = client.cost_summary()
        assert (summary["cost_usd"] >= 0).all()


def test_plausible_token_counts_are_not_flagged() -> None:
    with FakeOpenAIServer() as server, llmkit.Client(providers=[_openai(server)], ledger=":memory:") as client:
        server.enqueue("fine", usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
        u = client.completion(model="gpt-4o", messages=MSG).usage
        assert (u.input_tokens, u.output_tokens, u.suspect) == (3, 2, False)


# -- item 20: an api_key with surrounding whitespace ------------------------------------------------

PADDED = [f"  {KEY}", f"{KEY}\n", f"\t{KEY}\r\n", f" {KEY} "]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("padded", PADDED, ids=["leading", "newline", "tab-crlf", "both"])
def test_api_key_with_whitespace_is_stripped_before_sending(padded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = "LLMKIT_TEST_PADDED_KEY"
    monkeypatch.setenv(env, padded)
    with FakeOpenAIServer(api_key=KEY) as server:
        direct = {**_openai(server), "api_key": padded}
        from_env = {**_openai(server), "name": "env", "api_key": None, "api_key_env": env, "priority": 1}
        with llmkit.Client(providers=[direct, from_env], ledger=":memory:") as client:
            for name in ("primary", "env"):
                reply = client.completion(model="gpt-4o", messages=MSG, provider=name)
                assert [a.outcome for a in reply.attempts] == ["ok"]  # sent once, not retried as a connection error
            assert padded not in repr(client.provider("primary").config)
        sent = [r.headers.get("authorization") for r in _chat_requests(server)]
        assert sent == [f"Bearer {KEY}", f"Bearer {KEY}"]


# -- item 19: a base_url with a query string ----------------------------------------------------------

@pytest.mark.timeout(30)
def test_base_url_query_string_is_kept_on_every_request() -> None:
    with FakeOpenAIServer() as server:
        provider = {**_openai(server), "base_url": f"{server.url}?api-version=2024-06-01&tenant=a%20b"}
        with llmkit.Client(providers=[provider], ledger=":memory:") as client:
            client.completion(model="gpt-4o", messages=MSG)
            assert "".join(c.text for c in client.stream(model="gpt-4o", messages=MSG))
            client.check_health("primary")
        assert len(server.requests) >= 3
        for recorded in server.requests:
            assert recorded.path.startswith("/v1/"), recorded.path
            assert "api-version=2024-06-01" in recorded.query and "tenant=a%20b" in recorded.query, recorded
