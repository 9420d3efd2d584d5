"""``max_results`` is a hard limit: a slot is taken atomically when ``completion_async`` is called."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import llmkit
from llmkit._client import _Results
from llmkit._loop import VirtualTimeLoop

MSG = [{"role": "user", "content": "hello"}]


def test_reserved_slots_count_before_the_future_is_added() -> None:
    """Ten reservations not yet added fill a limit of ten: the eleventh caller is refused."""
    results = _Results(10)
    for _ in range(10):
        results.reserve()
    with pytest.raises(llmkit.ResultLimitError, match="max_results=10"):
        results.reserve()
    results.release()
    results.reserve()  # a released slot can be taken again


@pytest.mark.timeout(60)
def test_concurrent_submitters_never_pass_max_results() -> None:
    providers: list[dict[str, Any]] = [{"name": "m", "adapter": "mock", "models": ["*"], "options": {"latency": 5}}]
    with llmkit.Client(providers, ledger=None, health_interval=None, max_results=10,
                       loop_factory=VirtualTimeLoop) as c:
        barrier = threading.Barrier(40)
        ok: list[str] = []
        refused: list[int] = []

        def go() -> None:
            barrier.wait()
            try:
                ok.append(c.completion_async(model="x", messages=MSG))
            except llmkit.ResultLimitError:
                refused.append(1)

        threads = [threading.Thread(target=go) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (len(ok), len(refused)) == (10, 30)
        for rid in ok:
            c.cancel(rid)


@pytest.mark.timeout(60)
def test_a_failed_submission_gives_its_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"]}], ledger=None, health_interval=None,
                       max_results=1, loop_factory=VirtualTimeLoop) as c:
        def broken(coro: Any, pack: bool = False) -> Any:
            coro.close()
            raise RuntimeError("loop gone")

        with monkeypatch.context() as m:
            m.setattr(c._loop, "hold", broken)
            with pytest.raises(RuntimeError, match="loop gone"):
                c.completion_async(model="x", messages=MSG)
        rid = c.completion_async(model="x", messages=MSG)  # the one slot is free again
        assert c.get_result(rid, timeout=30).content
