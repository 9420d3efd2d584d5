"""``Handle``: what ``completion_async`` keeps for each request until ``get_result`` fetches it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gc
import threading
from typing import Any

import pytest

import llmkit
import llmkit._client
from llmkit._handle import Handle, pack_response, unpack_response
from llmkit._types import Attempt, RateLimitInfo, Response, ToolCall, Usage

MSG = [{"role": "user", "content": "hello"}]


def _finished(value: Any = None, exc: BaseException | None = None, cancelled: bool = False) -> asyncio.Future[Any]:
    """A finished asyncio future standing for the request's task."""
    loop = asyncio.new_event_loop()
    try:
        fut: asyncio.Future[Any] = loop.create_future()
        if cancelled:
            fut.cancel()
        elif exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
        return fut
    finally:
        loop.close()


def test_outcomes_are_handed_over_as_the_task_ended() -> None:
    ok: Handle[str] = Handle()
    ok.finish(_finished("answer"))
    assert ok.done() and not ok.cancelled() and ok.result() == "answer" and ok.outcome() == "answer"

    failed: Handle[str] = Handle()
    failed.finish(_finished(exc=ValueError("bad")))
    with pytest.raises(ValueError, match="bad"):
        failed.result()

    gone: Handle[str] = Handle()
    gone.finish(_finished(cancelled=True))
    assert gone.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        gone.result()

    pending: Handle[str] = Handle()
    with pytest.raises(concurrent.futures.InvalidStateError):
        pending.outcome()
    assert repr(pending) == "<Handle pending>" and repr(ok) == "<Handle done>"


def test_cancel_says_cancelled_at_once_and_cancels_the_request_once() -> None:
    calls: list[int] = []
    handle: Handle[str] = Handle()
    handle._cancel = lambda: calls.append(1)
    assert handle.cancel() is True
    assert handle.cancelled() and calls == [1]
    handle.finish(_finished("late answer"))  # the request ended after: the handle stays cancelled
    assert handle.cancelled() and handle._cancel is None
    assert handle.cancel() is False and calls == [1]

    finished: Handle[str] = Handle()
    finished._cancel = lambda: calls.append(2)
    finished.finish(_finished("answer"))
    assert finished.cancel() is False and calls == [1] and finished.result() == "answer"


@pytest.mark.timeout(30)
def test_a_thread_waits_until_the_request_ends_and_a_timeout_leaves_no_waiter_behind() -> None:
    handle: Handle[str] = Handle()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0)
    assert not handle._wakers  # the timed-out waiter is gone

    waiting = threading.Event()
    got: list[str] = []

    def waiter() -> None:
        waiting.set()
        got.append(handle.result())

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait()
    while not handle._wakers:  # until the thread has registered (it is about to block)
        thread.join(0.001)
    handle.finish(_finished("answer"))
    thread.join()
    assert got == ["answer"] and handle._wakers is None


@pytest.mark.timeout(30)
def test_event_loops_wait_for_it_and_a_cancelled_wait_leaves_the_request_alone() -> None:
    handle: Handle[str] = Handle()

    async def main() -> str:
        waiter = asyncio.ensure_future(handle.wait())
        given_up = asyncio.ensure_future(handle.wait())
        await asyncio.sleep(0)
        assert handle._wakers is not None and len(handle._wakers) == 2
        given_up.cancel()
        await asyncio.sleep(0)
        assert len(handle._wakers) == 1 and not handle.done()
        loop = asyncio.get_running_loop()
        # finished from another thread, as the private loop does
        await loop.run_in_executor(None, handle.finish, _finished("answer"))
        await asyncio.wait_for(waiter, 10)
        await handle.wait()  # already finished: returns at once
        return handle.result()

    assert asyncio.run(main()) == "answer"


@pytest.mark.timeout(60)
def test_a_held_result_keeps_few_objects_for_the_garbage_collector() -> None:
    """100,000 unfetched results must not make every full collection slow: each holds its handle and the
    response (with its usage and attempt), not a Future with its Condition, locks and callbacks."""
    with llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"]}], ledger=None, health_interval=None) as c:
        for _ in range(50):
            c.get_result(c.completion_async(model="x", messages=MSG))
        gc.collect()
        before = len(gc.get_objects())
        ids = [c.completion_async(model="x", messages=MSG) for _ in range(500)]
        for rid in ids:
            c._results.get(rid).result(timeout=30)
        gc.collect()
        per_result = (len(gc.get_objects()) - before) / len(ids)
        assert per_result <= 8, per_result  # (fewer than PACK_FROM held: each keeps its handle and response)
        assert [c.get_result(rid).content for rid in ids[:3]]
        with pytest.raises(KeyError):
            c.get_result(ids[0])


@pytest.mark.timeout(60)
def test_aget_result_with_a_timeout_leaves_the_request_running() -> None:
    providers: list[dict[str, Any]] = [{"name": "m", "adapter": "mock", "models": ["*"], "options": {"latency": 60}}]
    with llmkit.Client(providers, ledger=None, health_interval=None) as c:
        rid = c.completion_async(model="x", messages=MSG)

        async def main() -> None:
            with pytest.raises(TimeoutError, match="keeps running"):
                await c.aget_result(rid, timeout=0.01)

        asyncio.run(main())
        handle = c._results.get(rid)
        assert not handle.done() and not handle._wakers
        assert c.cancel(rid) is True
        with pytest.raises(concurrent.futures.CancelledError):
            c.get_result(rid)


def _full_response() -> Response:
    """A response with every field set to something other than its default."""
    values: dict[str, Any] = {
        "id": "req-1", "content": "hé", "provider": "openai", "model": "gpt-4o-mini", "finish_reason": "tool_calls",
        "usage": Usage(11, 22, 3, 4, 5, True, True), "cost_usd": 0.125, "latency_s": 0.5,
        "attempts": [Attempt("a", "m1", "error", "RateLimitError", "slow down", 0.25, 1), Attempt("b", "m2", "ok")],
        "raw": {"id": "chatcmpl-1", "choices": [{"message": {"content": "hé"}}], "n": 1.5, "t": (1, None)},
        "requested_model": "fast", "tool_calls": [ToolCall("call_1", "lookup", {"q": [1, 2]}, '{"q": [1, 2]}', "why")],
        "rate_limit": RateLimitInfo(100, 99, 1.5, 1000, 900, 2.5, 3.0), "provider_request_id": "x-req-9",
        "cached": True, "parsed": None,
    }
    names = {f.name for f in dataclasses.fields(Response)}
    assert names == set(values), "a Response field was added: set it here (and check pack_response keeps it)"
    return Response(**values)


def _fields(obj: Any) -> Any:
    """Every field, nested dataclasses included (``==`` skips ToolCall's compare=False fields)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _fields(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [_fields(x) for x in obj]
    return obj


def test_a_packed_response_comes_back_with_every_field() -> None:
    response = _full_response()
    packed = pack_response(response)
    assert type(packed) is bytes
    again = unpack_response(packed)
    assert _fields(again) == _fields(response)
    assert type(again.raw["t"]) is tuple and type(again.attempts) is list and type(again.tool_calls) is list
    assert again is not response and again.tool_calls[0].arguments is not response.tool_calls[0].arguments


def test_what_cannot_be_packed_is_kept_as_it_is() -> None:
    parsed = dataclasses.replace(_full_response(), parsed=object())
    odd_raw = dataclasses.replace(_full_response(), raw={"when": object()})
    assert pack_response(parsed) is None and pack_response(odd_raw) is None
    for response in (parsed, odd_raw):
        handle: Handle[Response] = Handle(pack=True)
        handle.finish(_finished(response))
        assert not handle.packed() and handle.result() is response
    handle = Handle(pack=True)
    handle.finish(_finished(_full_response()))
    assert handle.packed() and _fields(handle.result()) == _fields(_full_response())
    assert repr(handle) == "<Handle done>"


@pytest.mark.timeout(60)
def test_past_pack_from_held_results_are_kept_as_bytes_alone_and_fetched_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llmkit._client, "PACK_FROM", 3)
    with llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"]}], ledger=None, health_interval=None) as c:
        ids = [c.completion_async(model="x", messages=MSG) for _ in range(6)]
        for rid in ids:
            c._results.get(rid).join(timeout=30)
        kept = [type(c._results._futures[rid]) for rid in ids]
        assert kept == [Handle, Handle, Handle, bytes, bytes, bytes]
        assert c.cancel(ids[-1]) is False  # finished: nothing to cancel, the answer stays
        answers = [c.get_result(rid) for rid in ids]
        assert all(a.content and a.provider == "m" and a.usage.output_tokens > 0 for a in answers)
        assert [a.id for a in answers] == ids and len(c._results) == 0


def test_a_handle_finished_before_it_is_kept_is_kept_as_bytes() -> None:
    class Home:
        def __init__(self) -> None:
            self.told: list[tuple[str, bytes]] = []

        def settled(self, key: str, handle: Handle[Any]) -> None:
            self.told.append((key, handle.packed_value()))

    early, late, plain = Home(), Home(), Home()
    before: Handle[Response] = Handle(pack=True)
    before.finish(_finished(_full_response()))
    before.keep_in(early, "a")
    after: Handle[Response] = Handle(pack=True)
    after.keep_in(late, "b")
    assert late.told == []
    after.finish(_finished(_full_response()))
    unpacked: Handle[Response] = Handle()
    unpacked.keep_in(plain, "c")
    unpacked.finish(_finished(_full_response()))
    assert [k for k, _ in early.told] == ["a"] and [k for k, _ in late.told] == ["b"] and plain.told == []
    assert _fields(Handle.from_packed(early.told[0][1]).result()) == _fields(_full_response())
