"""``client.map`` / ``client.amap`` (llmkit/batch.py): inputs, index alignment, errors in place, outages,
interrupt and resume, progress, and the running batches in ``client.monitor``.

In-process providers on a ``VirtualTimeLoop`` where time matters, loopback fakes where request counts
matter (with ``FakeTime`` for breaker timeouts). Nothing here waits for real time to pass.
"""

from __future__ import annotations

import _thread
import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import pandas as pd
import pytest

import llmkit
from llmkit import Request, Response
from llmkit._loop import VirtualTimeLoop
from llmkit._types import Usage
from llmkit.batch import COLUMNS, BatchInterrupted, parsed_columns
from llmkit.providers.base import Provider, prompt_tokens
from llmkit.testing import FakeOpenAIServer

from .conftest import FakeTime

PRICED = {"gpt-4o-mini": {"input": 1.0, "output": 2.0}}


class Echo(Provider):
    """Answers ``"<prompt>!"`` after a seeded latency (so rows finish out of order); a prompt containing
    ``bad`` is a 400, one containing ``down`` a 500."""

    adapter = "echo"

    async def complete(self, request: Request) -> Response:
        text = str(request.messages[-1]["content"])
        await asyncio.sleep((hash(text) % 7) * 0.01)
        if "bad" in text:
            raise llmkit.BadRequestError("echo: bad row", provider=self.name, status=400)
        if "down" in text:
            raise llmkit.ServerError("echo: down", provider=self.name, status=500)
        return self.response(request, content=text + "!", usage=Usage(prompt_tokens(request), 3))


def echo_client(**provider: Any) -> llmkit.Client:
    return llmkit.Client([{"name": "echo", "adapter": Echo, "pricing": PRICED, "max_retries": 0, **provider}],
                         ledger=None, health_interval=None, loop_factory=VirtualTimeLoop)


@pytest.fixture
def client() -> Iterator[llmkit.Client]:
    c = echo_client()
    yield c
    c.close()


def fake_openai(server: FakeOpenAIServer, **provider: Any) -> dict[str, Any]:
    return {"name": "fake", "adapter": "openai", "api_key": "sk-test", "base_url": server.url, "models": ["*"],
            "pricing": PRICED, **provider}


def sent(server: FakeOpenAIServer) -> list[str]:
    """The user messages the server received, in order."""
    return [r.json["messages"][-1]["content"] for r in server.requests if r.path == "/v1/chat/completions"]


# -- inputs and the index -------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [
    pd.Index(["x", "y", "z", "w"]),                                     # not a RangeIndex
    pd.Index([7, 7, 3, 7]),                                             # duplicate labels
    pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1), ("a", 1)]),  # a MultiIndex (with a repeat)
], ids=["labels", "duplicates", "multiindex"])
def test_result_keeps_the_inputs_index_and_order(client: llmkit.Client, index: pd.Index) -> None:
    series = pd.Series(["r0", "r1", "r2", "r3"], index=index)
    out = client.map(series, model="gpt-4o-mini", prompt="say {}", progress=False)
    assert out.index.equals(index)
    assert list(out.columns) == list(COLUMNS)
    assert out["content"].tolist() == ["say r0!", "say r1!", "say r2!", "say r3!"]  # each answer on its own row
    assert (out["status"] == "ok").all() and out["status"].dtype == "category"
    rows = [json.loads(m)["row"] for m in client.usage()["metadata"]]
    labels = [list(v) if isinstance(v, tuple) else v for v in index.tolist()]
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, labels))  # each record points at its row


def test_each_input_kind(client: llmkit.Client) -> None:
    series = pd.Series(["a", "b"], name="review")
    assert client.map(series, model="m", progress=False)["content"].tolist() == ["a!", "b!"]  # value = message
    assert client.map(series, model="m", prompt="{review}?", progress=False)["content"].tolist() == ["a?!", "b?!"]
    frame = pd.DataFrame({"title": ["T1", "T2"], "stars": [5, 1]}, index=[10, 20])
    out = client.map(frame, model="m", prompt="{title} got {stars} stars {{literal}}", progress=False)
    assert out["content"].tolist() == ["T1 got 5 stars {literal}!", "T2 got 1 stars {literal}!"]
    assert out.index.tolist() == [10, 20]
    assert client.map(["p", "q"], model="m", progress=False)["content"].tolist() == ["p!", "q!"]
    convo = [[{"role": "user", "content": "one"}], [{"role": "assistant", "content": "x"},
                                                     {"role": "user", "content": "two"}]]
    assert client.map(convo, model="m", progress=False)["content"].tolist() == ["one!", "two!"]
    json_prompt = 'Answer as {"label": "..."}: {}'  # braces that are not a field stay as they are
    assert client.map(["hi"], model="m", prompt=json_prompt, progress=False)["content"][0] == \
        'Answer as {"label": "..."}: hi!'


def test_system_prompt_and_call_arguments_reach_the_server() -> None:
    with FakeOpenAIServer(reply="ok") as server, \
            llmkit.Client([fake_openai(server)], ledger=None, health_interval=None) as client:
        client.map(["a"], model="gpt-4o-mini", system="Be brief.", temperature=0.0, max_tokens=5, progress=False)
        body = server.requests[-1].json
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}]
    assert body["temperature"] == 0.0 and body["max_completion_tokens"] == 5
    assert "wait_for_breaker" not in body and "metadata" not in body


def test_metadata_per_row_from_a_dict_a_callable_or_a_column(client: llmkit.Client) -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "group": ["g1", "g2"]}, index=["r1", "r2"])
    out = client.map(frame, model="m", prompt="{text}", metadata="group", progress=False)
    client.map(frame, model="m", prompt="{text}", metadata=lambda row: {"len": len(row["text"]), "exp": "e1"},
               progress=False)
    client.map(frame, model="m", prompt="{text}", metadata={"exp": "e2"}, progress=False)
    metas = [json.loads(m) for m in client.usage()["metadata"]]
    assert sorted((m["row"], m["group"]) for m in metas[:2]) == [("r1", "g1"), ("r2", "g2")]
    assert {m["batch"] for m in metas[:2]} == {out.attrs["batch_id"]}
    assert sorted((m["row"], m["len"], m["exp"]) for m in metas[2:4]) == [("r1", 1, "e1"), ("r2", 1, "e1")]
    assert [m["exp"] for m in metas[4:]] == ["e2", "e2"]
    assert len({m["batch"] for m in metas}) == 3  # one id per batch


# -- errors in place and bad inputs ---------------------------------------------------------------------


def test_errors_stay_in_their_rows_and_the_rest_run(client: llmkit.Client) -> None:
    series = pd.Series(["ok1", "bad", "ok2", "down", "ok3"], index=list("abcde"))
    out = client.map(series, model="gpt-4o-mini", progress=False)
    assert out["status"].tolist() == ["ok", "error", "ok", "error", "ok"]
    assert out["error_type"].tolist()[1] == "BadRequestError" and out["error_type"].tolist()[3] == "ServerError"
    assert "bad row" in out.loc["b", "error"] and pd.isna(out.loc["b", "content"])
    assert out.loc["a", "cost_usd"] == pytest.approx((prompt_tokens(Request("m", ({"role": "user",
                                                                                    "content": "ok1"},))) * 1.0
                                                      + 3 * 2.0) / 1e6)
    assert out.loc["b", "cost_usd"] == 0.0 and out.loc["b", "provider"] == "echo"
    usage = client.usage()
    assert len(usage) == 5 and (usage["status"] == "error").sum() == 2  # one ledger record per row


def test_missing_cells_fail_their_rows_and_are_never_sent() -> None:
    frame = pd.DataFrame({"text": ["a", None, "c", float("nan")], "n": [1, 2, pd.NA, 4]})
    with FakeOpenAIServer(reply="ok") as server, \
            llmkit.Client([fake_openai(server)], ledger=None, health_interval=None) as client:
        out = client.map(frame, model="gpt-4o-mini", prompt="{text} {n}", progress=False)
        assert out["status"].tolist() == ["ok", "error", "error", "error"]
        assert set(out["error_type"].dropna()) == {"InvalidRequestError"}
        assert "column 'text'" in out.loc[1, "error"] and "column 'n'" in out.loc[2, "error"]
        assert sent(server) == ["a 1"]
        with pytest.raises(llmkit.InvalidRequestError, match="nothing was sent"):
            client.map(frame, model="gpt-4o-mini", prompt="{text} {n}", on_error="raise", progress=False)
        with pytest.raises(llmkit.InvalidRequestError, match="names no column"):
            client.map(frame, model="gpt-4o-mini", prompt="{text} {missing}", progress=False)
        with pytest.raises(llmkit.InvalidRequestError, match="needs prompt"):
            client.map(frame, model="gpt-4o-mini", progress=False)
        with pytest.raises(llmkit.InvalidRequestError, match="on_error"):
            client.map(["a"], model="gpt-4o-mini", on_error="ignore", progress=False)
        with pytest.raises(llmkit.InvalidRequestError, match="inputs"):
            client.map("just a string", model="gpt-4o-mini", progress=False)
        assert sent(server) == ["a 1"] and len(client.usage()) == 1


def test_on_error_raise_cancels_the_rest_and_raises_the_first_error() -> None:
    rows = [f"row{i}" for i in range(40)]
    rows[3] = "bad"
    with echo_client() as client:
        with pytest.raises(llmkit.BadRequestError, match="bad row"):
            client.map(rows, model="m", on_error="raise", max_concurrency=2, progress=False)
        usage = client.usage()
    assert len(usage) < 40  # the rest were never sent
    assert (usage["error_type"] == "BadRequestError").sum() == 1


# -- outages: a row waits for the breaker instead of failing --------------------------------------------


@pytest.mark.timeout(60)
def test_a_burst_of_500s_opens_the_breaker_and_every_row_still_ends_ok(fake_time: FakeTime) -> None:
    with FakeOpenAIServer(reply="fine") as server:
        for _ in range(8):
            server.enqueue_error(500)
        provider = fake_openai(server, max_retries=1, breaker={"fail_max": 3, "reset_timeout": 30.0})
        with llmkit.Client([provider], ledger=None, health_interval=None, sleep=fake_time.sleep,
                           clock=fake_time.clock) as client:
            out = client.map([f"r{i}" for i in range(30)], model="gpt-4o-mini", max_concurrency=4, progress=False)
            events = client.events()
        received = len(sent(server))
    assert (out["status"] == "ok").all(), out[out["status"] != "ok"][["error_type", "error"]]
    assert out["content"].tolist() == ["fine"] * 30
    assert set(events.loc[events["kind"] == "breaker", "new"]) >= {"open", "closed"}
    assert (events["kind"] == "outage_wait").any()
    assert received == 30 + 8  # each 500 cost one request (probes included), each row one success
    assert fake_time.now - 1000.0 >= 30.0  # the rows waited out reset_timeout (on the fake clock)


def test_without_waiting_the_same_outage_fails_rows(fake_time: FakeTime) -> None:
    """The control: plain completions meet the open breaker and fail with CircuitOpenError."""
    with FakeOpenAIServer(reply="fine") as server:
        for _ in range(3):
            server.enqueue_error(500)
        provider = fake_openai(server, max_retries=0, breaker={"fail_max": 3, "reset_timeout": 30.0})
        with llmkit.Client([provider], ledger=None, health_interval=None, sleep=fake_time.sleep,
                           clock=fake_time.clock) as client:
            errors = []
            for i in range(5):
                try:
                    client.completion("gpt-4o-mini", [{"role": "user", "content": f"r{i}"}])
                except llmkit.LLMError as exc:
                    errors.append(type(exc).__name__)
    assert errors == ["ServerError"] * 3 + ["CircuitOpenError"] * 2


def test_wait_for_breaker_never_waits_past_the_deadline_nor_for_other_errors() -> None:
    with echo_client(breaker={"fail_max": 1, "reset_timeout": 600.0}) as client:
        out = client.map(["down", "x", "bad"], model="m", timeout=60.0, max_concurrency=1, progress=False)
        assert out["error_type"].tolist() == ["ServerError", "CircuitOpenError", "CircuitOpenError"]
        with pytest.raises(llmkit.InvalidRequestError, match="wait_for_breaker"):
            client.completion("m", [{"role": "user", "content": "x"}], wait_for_breaker="yes")


# -- interrupt and resume -------------------------------------------------------------------------------


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    """Block until ``predicate()`` holds (an event from another thread), failing after ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


@pytest.mark.timeout(60)
def test_ctrl_c_stops_map_sends_nothing_more_and_keeps_what_finished(tmp_path: Any) -> None:
    with FakeOpenAIServer(reply="done", latency=0.05) as server, \
            llmkit.Client([fake_openai(server)], ledger=tmp_path / "l.db", health_interval=None) as client:
        interrupter = threading.Thread(target=lambda: (wait_for(lambda: len(sent(server)) >= 12),
                                                       _thread.interrupt_main()))
        interrupter.start()
        started = time.monotonic()
        with pytest.raises(BatchInterrupted) as info:
            client.map([f"r{i}" for i in range(200)], model="gpt-4o-mini", max_concurrency=4, progress=False)
        stopped_after = time.monotonic() - started
        interrupter.join()
        partial = info.value.partial
        assert isinstance(info.value, KeyboardInterrupt)
        wait_for(lambda: client.in_flight() == 0)
        count = len(sent(server))
        usage = client.usage()
    finished = int((partial["status"] == "ok").sum())
    assert 12 - 4 <= finished < 200 and set(partial["status"]) == {"ok", "cancelled"}
    assert count <= finished + 4  # nothing sent after the interrupt but what was in flight
    assert (usage["status"] == "ok").sum() == finished  # every finished answer is in the ledger
    assert partial.loc[partial["status"] == "ok", "content"].eq("done").all()
    assert stopped_after < 30


@pytest.mark.timeout(60)
async def test_cancelling_amap_cancels_the_rows_in_flight() -> None:
    with FakeOpenAIServer(reply="done", latency=0.05) as server:
        client = llmkit.Client([fake_openai(server)], ledger=None, health_interval=None)
        try:
            task = asyncio.ensure_future(client.amap([f"r{i}" for i in range(200)], model="gpt-4o-mini",
                                                     max_concurrency=4, progress=False))
            while len(sent(server)) < 12:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            while client.in_flight():
                await asyncio.sleep(0.005)
            count = len(sent(server))
            ok = int((client.usage()["status"] == "ok").sum())
        finally:
            await client.aclose()
    assert count <= ok + 4 and ok < 200


@pytest.mark.timeout(60)
def test_running_the_same_map_again_sends_only_the_unfinished_rows(tmp_path: Any) -> None:
    rows = [f"r{i}" for i in range(60)]
    with FakeOpenAIServer(reply="done", latency=0.02) as server, \
            llmkit.Client([fake_openai(server)], ledger=tmp_path / "l.db", health_interval=None) as client:
        interrupter = threading.Thread(target=lambda: (wait_for(lambda: len(sent(server)) >= 30),
                                                       _thread.interrupt_main()))
        interrupter.start()
        with pytest.raises(BatchInterrupted) as info:
            client.map(rows, model="gpt-4o-mini", max_concurrency=4, progress=False)
        interrupter.join()
        finished = set(info.value.partial.index[info.value.partial["status"] == "ok"])
        first = len(sent(server))
        out = client.map(rows, model="gpt-4o-mini", max_concurrency=4, progress=False)
        resent = sent(server)[first:]
    assert (out["status"] == "ok").all()
    assert set(out.index[out["cached"]]) == finished
    assert len(resent) == 60 - len(finished) and not set(resent) & {rows[i] for i in finished}


# -- progress and the monitor ---------------------------------------------------------------------------


def test_progress_bar_shows_done_failed_and_dollars(client: llmkit.Client, capsys: pytest.CaptureFixture[str]) -> None:
    buffer = io.StringIO()
    client.map(["a", "bad", "c"], model="gpt-4o-mini", progress={"file": buffer, "desc": "reviews"})
    text = buffer.getvalue()
    spent = client.usage()["cost_usd"].sum()
    assert "reviews" in text and "3/3" in text and "failed=1" in text and f"${spent:.6f}" in text
    client.map(["a", "b"], model="gpt-4o-mini", progress=False)
    assert capsys.readouterr().err == ""
    client.map(["a", "b"], model="gpt-4o-mini")  # default: a bar on stderr
    assert "2/2" in capsys.readouterr().err


@pytest.mark.timeout(60)
async def test_running_batches_are_in_the_monitor() -> None:
    with FakeOpenAIServer(reply="done", latency=0.02) as server:
        client = llmkit.Client([fake_openai(server)], ledger=None, health_interval=None)
        try:
            assert client.monitor.batches() == []
            task = asyncio.ensure_future(client.amap([f"r{i}" for i in range(40)], model="gpt-4o-mini",
                                                     max_concurrency=4, progress=False))
            while len(sent(server)) < 8:
                await asyncio.sleep(0.005)
            (running,) = client.monitor.batches()
            assert running["total"] == 40 and 0 < running["done"] < 40 and running["failed"] == 0
            assert running["cost_usd"] > 0 and running["eta_s"] is not None
            out = await task
            assert running["batch_id"] == out.attrs["batch_id"]
            assert client.monitor.batches() == []
        finally:
            await client.aclose()


# -- response_model columns -----------------------------------------------------------------------------


def test_parsed_columns_are_typed_per_field() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Sentiment(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        label: Literal["positive", "negative", "neutral"]
        confidence: float
        votes: int
        status: str  # the name of a result column: gets a prefix

    parsed = [Sentiment(label="positive", confidence=0.9, votes=3, status="x"), None,
              Sentiment(label="neutral", confidence=0.5, votes=1, status="y")]
    cols = parsed_columns(Sentiment, parsed, taken=set(COLUMNS))
    frame = pd.DataFrame(cols)
    assert list(frame.columns) == ["parsed", "label", "confidence", "votes", "parsed_status"]
    assert frame["label"].dtype == "category" and list(frame["label"].cat.categories) == ["positive", "negative",
                                                                                          "neutral"]
    assert str(frame["votes"].dtype) == "Int64" and pd.isna(frame["votes"][1])
    assert frame["confidence"].dtype.kind == "f" and frame["parsed"][0] is parsed[0]


def test_response_model_adds_parsed_and_field_columns() -> None:
    import pydantic

    class Sentiment(pydantic.BaseModel):
        label: Literal["positive", "negative", "neutral"]
        confidence: float

    with llmkit.Client([{"name": "mock", "adapter": "mock"}], ledger=None, health_interval=None) as client:
        out = client.map(pd.Series(["great", "awful"], index=["a", "b"]), model="gpt-4o-mini",
                         prompt="Classify: {}", response_model=Sentiment, progress=False)
    assert list(out.columns[:len(COLUMNS)]) == list(COLUMNS)
    assert {"parsed", "label", "confidence"} <= set(out.columns)
    assert all(isinstance(p, Sentiment) for p in out["parsed"]) and out["label"].dtype == "category"


def test_a_bad_response_model_is_refused_before_sending(client: llmkit.Client) -> None:
    with pytest.raises(llmkit.InvalidRequestError, match="response_model: expected a pydantic"):
        client.map(["a"], model="m", response_model=dict, progress=False)
    assert len(client.usage()) == 0


def test_import_llmkit_loads_neither_the_batch_modules_nor_tqdm() -> None:
    import subprocess
    import sys

    code = ("import sys, llmkit; print([m for m in ('tqdm', 'tiktoken', 'llmkit.batch', 'llmkit.estimate') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_empty_inputs_give_an_empty_frame(client: llmkit.Client) -> None:
    out = client.map([], model="m", progress=False)
    assert list(out.columns) == list(COLUMNS) and len(out) == 0
    empty = client.map(pd.Series([], dtype="string", index=pd.Index([], name="id")), model="m", progress=False)
    assert empty.index.name == "id" and len(client.usage()) == 0


async def test_amap_keeps_errors_in_place_and_can_raise() -> None:
    client = echo_client()
    try:
        out = await client.amap(pd.Series(["a", "bad"], index=[5, 6]), model="m", prompt="{}?", progress=False)
        assert out["status"].tolist() == ["ok", "error"] and out.loc[5, "content"] == "a?!"
        with pytest.raises(llmkit.BadRequestError):
            await client.amap(["bad", "b"], model="m", on_error="raise", max_concurrency=1, progress=False)
    finally:
        await client.aclose()
