"""Validation retries are paid for however the request ends, and they respect the budget (REVIEW items 5, 6);
recursive root models work as response_model (REVIEW item 13)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Literal

import pydantic
import pytest

import llmkit
from llmkit import BudgetExceededError, OutputValidationError, RequestTimeoutError
from llmkit import structured as st
from llmkit._loop import VirtualTimeLoop
from llmkit._types import Request

MSG = [{"role": "user", "content": "hi"}]
ROW = ["status", "error_type", "input_tokens", "output_tokens", "cost_usd"]


class Sentiment(pydantic.BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float


def never_json(request: Request) -> str:
    return "not json"


def priced(reply: Callable[[Request], Any] = never_json, **options: Any) -> list[dict[str, Any]]:
    return [{"name": "m", "adapter": "mock", "models": ["*"], "reply": reply,
             "options": {"price_as": "openai", **options}}]


def paid_for(tries: int) -> dict[str, Any]:
    """The ledger row of a request whose ``tries`` answers never validated (the reference for what they cost)."""
    with llmkit.Client(priced(), ledger=":memory:", health_interval=None) as client:
        with pytest.raises(OutputValidationError):
            client.completion("gpt-4o", MSG, response_model=Sentiment, max_validation_retries=tries - 1)
        row = client.usage()[ROW].iloc[-1].to_dict()
    assert row["input_tokens"] > 0 and row["cost_usd"] > 0
    return row


def charged(row: dict[str, Any], reference: dict[str, Any]) -> None:
    assert (row["input_tokens"], row["output_tokens"]) == (reference["input_tokens"], reference["output_tokens"])
    assert row["cost_usd"] == pytest.approx(reference["cost_usd"])


@pytest.mark.timeout(30)
def test_a_timeout_during_validation_retries_charges_the_answered_tries() -> None:
    # each try takes 0.3 s (virtual time): three answers arrive, the fourth is cut by the 1 s deadline
    with llmkit.Client(priced(latency=0.3), ledger=":memory:", health_interval=None, budget_usd=10.0,
                       loop_factory=VirtualTimeLoop) as client:
        with pytest.raises(RequestTimeoutError):
            client.completion("gpt-4o", MSG, response_model=Sentiment, max_validation_retries=5, timeout=1.0)
        assert client.provider("m").calls == 4  # type: ignore[attr-defined]
        frame = client.usage()
        assert len(frame) == 1
        row = frame[ROW].iloc[0].to_dict()
        status = client.budget_status()
    assert (row["status"], row["error_type"]) == ("error", "RequestTimeoutError")
    charged(row, paid_for(3))
    assert status is not None and status["spent_usd"] == pytest.approx(row["cost_usd"])  # the budget counts it


def test_a_provider_error_after_failed_tries_charges_them() -> None:
    def reply(request: Request) -> str:
        provider = client.provider("m")
        if provider.calls == 2:  # type: ignore[attr-defined]
            provider.fail_next(1, "bad_request")  # type: ignore[attr-defined]
        return "not json"

    with llmkit.Client(priced(reply), ledger=":memory:", health_interval=None) as client:
        with pytest.raises(llmkit.BadRequestError):
            client.completion("gpt-4o", MSG, response_model=Sentiment, max_validation_retries=5)
        row = client.usage()[ROW].iloc[0].to_dict()
    assert (row["status"], row["error_type"]) == ("error", "BadRequestError")
    charged(row, paid_for(2))


@pytest.mark.timeout(30)
def test_a_cancel_during_validation_retries_charges_the_answered_tries() -> None:
    third = threading.Event()

    def reply(request: Request) -> str:
        provider = client.provider("m")
        if provider.calls == 2:  # type: ignore[attr-defined]
            provider.latency = (1000.0, 1000.0)  # type: ignore[attr-defined]  # the third try hangs
            third.set()
        return "not json"

    with llmkit.Client(priced(reply), ledger=":memory:", health_interval=None) as client:
        request_id = client.completion_async("gpt-4o", MSG, response_model=Sentiment, max_validation_retries=5)
        assert third.wait(10)
        while client.provider("m").calls < 3:  # type: ignore[attr-defined]  # the third try has started
            client._loop.run(asyncio.sleep(0))
        assert client.cancel(request_id)
        while client.in_flight():  # on the private loop, no time passing: until the record is written
            client._loop.run(asyncio.sleep(0))
        row = client.usage()[ROW].iloc[0].to_dict()
    assert row["status"] == "cancelled"
    charged(row, paid_for(2))


def test_validation_retries_stop_at_the_budget_and_the_row_carries_what_was_paid() -> None:
    # one try costs ~$0.0003 and the next try's estimate (100 output tokens) ~$0.0015: unchecked, six tries
    # would spend $0.0022 of the $0.003; checked, the re-ask whose spend so far + estimate passes it is refused
    with llmkit.Client(priced(), ledger=":memory:", health_interval=None, budget_usd=0.003) as client:
        with pytest.raises(BudgetExceededError):
            client.completion("gpt-4o", MSG, response_model=Sentiment, max_validation_retries=5, max_tokens=100)
        calls = client.provider("m").calls  # type: ignore[attr-defined]
        row = client.usage()[ROW].iloc[0].to_dict()
        status = client.budget_status()
    assert 1 < calls < 6
    assert (row["status"], row["error_type"]) == ("error", "BudgetExceededError")
    charged(row, paid_for(calls))
    assert status is not None and status["spent_usd"] == pytest.approx(row["cost_usd"])
    assert status["spent_usd"] <= 0.003 and status["reserved_usd"] == 0


def test_validation_retries_within_the_budget_go_on() -> None:
    replies = iter(["not json", '{"label": "neutral", "confidence": 0.5}'])
    with llmkit.Client(priced(lambda r: next(replies)), ledger=":memory:", health_interval=None,
                       budget_usd=1.0) as client:
        resp = client.completion("gpt-4o", MSG, response_model=Sentiment, max_tokens=100)
        assert resp.parsed == Sentiment(label="neutral", confidence=0.5)
        assert client.budget_status()["spent_usd"] == pytest.approx(resp.cost_usd)  # type: ignore[index]


# ----------------------------------------------------------------------------------------------
# recursive root models


class Node(pydantic.BaseModel):
    name: str
    children: list[Node] = []


def test_a_recursive_model_becomes_an_object_schema_that_keeps_its_defs() -> None:
    fmt = st.format_for_model(Node)
    schema = fmt["json_schema"]["schema"]
    assert schema["type"] == "object" and "$ref" not in schema and set(schema["properties"]) == {"name", "children"}
    assert schema["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"} and "Node" in schema["$defs"]
    st.check_schema(schema, "schema")
    strict = st.openai_format(fmt)["json_schema"]
    assert strict["strict"] is True and "Node" in strict["schema"]["$defs"]
    assert strict["schema"]["required"] == ["name", "children"]
    assert strict["schema"]["$defs"]["Node"]["additionalProperties"] is False


def test_a_root_ref_response_format_is_resolved_too() -> None:
    fmt = st.check_response_format({"type": "json_schema", "json_schema": {
        "name": "Node", "schema": Node.model_json_schema()}})
    assert fmt["json_schema"]["schema"]["type"] == "object"


def test_the_mock_answers_a_recursive_model_with_valid_nested_instances() -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"]}], ledger=None,
                       health_interval=None) as client:
        depths = []
        for i in range(10):
            resp = client.completion("gpt-4o", [{"role": "user", "content": f"tree {i}"}], response_model=Node)
            assert isinstance(resp.parsed, Node)
            depths.append(_depth(resp.parsed))
            with client.stream("gpt-4o", [{"role": "user", "content": f"tree {i}"}], response_model=Node) as s:
                "".join(c.text for c in s)
            assert s.response is not None and s.response.parsed == resp.parsed
    assert max(depths) >= 2  # the trees really nest


def _depth(node: Node) -> int:
    return 1 + max((_depth(c) for c in node.children), default=0)


def test_a_recursive_model_schema_works_as_tool_parameters() -> None:
    plant = {"name": "plant", "parameters": Node.model_json_schema()}
    tools = st.check_tools([{"type": "function", "function": plant}])
    params = tools[0]["function"]["parameters"]
    assert params["type"] == "object" and "Node" in params["$defs"]
    with llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"]}], ledger=None,
                       health_interval=None) as client:
        resp = client.completion("gpt-4o", MSG, tools=tools, tool_choice="required")
    [call] = resp.tool_calls
    assert call.name == "plant" and call.error is None and Node.model_validate(call.arguments)
