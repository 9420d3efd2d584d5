"""A recursive root pydantic model (pydantic writes ``{"$ref": "#/$defs/Node", "$defs": ...}``) works as
response_model on every wire format (REVIEW item 13): the root sent is an object, ``$defs`` kept."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

import llmkit
from llmkit.testing import FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer


class Node(pydantic.BaseModel):
    name: str
    children: list[Node] = []


TREE = Node(name="root", children=[Node(name="a", children=[Node(name="a1")]), Node(name="b")])
MSG = [{"role": "user", "content": "a tree please"}]


def _schema_sent(adapter: str, body: dict[str, Any]) -> dict[str, Any]:
    if adapter == "anthropic":
        [tool] = body["tools"]
        return tool["input_schema"]  # type: ignore[no-any-return]
    if adapter == "gemini":
        return body["generationConfig"]["responseJsonSchema"]  # type: ignore[no-any-return]
    return body["response_format"]["json_schema"]["schema"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("adapter", "server_cls", "model"), [
    ("openai", FakeOpenAIServer, "gpt-4o"), ("anthropic", FakeAnthropicServer, "claude-sonnet-4-5"),
    ("gemini", FakeGeminiServer, "gemini-2.5-flash"), ("openai_compatible", FakeOpenAIServer, "llama3")])
def test_a_recursive_model_is_sent_as_an_object_and_parsed(adapter: str, server_cls: Any, model: str) -> None:
    with server_cls() as server:
        if adapter == "anthropic":
            server.enqueue(tool_calls=[{"name": "Node", "arguments": TREE.model_dump_json()}])
        else:
            server.enqueue(TREE.model_dump_json())
        entry = {"name": "p", "adapter": adapter, "api_key": "sk-test", "base_url": server.url, "models": ["*"],
                 "max_retries": 0}
        with llmkit.Client([entry], ledger=None, health_interval=None) as client:
            resp = client.completion(model, MSG, response_model=Node, max_validation_retries=0)
        body = server.requests[-1].json
    assert resp.parsed == TREE
    schema = _schema_sent(adapter, body)
    assert schema["type"] == "object" and "$ref" not in schema and "Node" in schema["$defs"]
    assert json.dumps(schema).count('"#/$defs/Node"') >= 1  # the recursion stays a reference
