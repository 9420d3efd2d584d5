"""Structured output and tool calls, the same on every provider.

What this module owns:

- **checking a call's arguments** (``take_arguments``, called by ``_validate.build_request`` before anything
  is sent): ``response_model`` (a pydantic v2 class) becomes an OpenAI-shaped ``response_format`` in
  ``Request.extra`` (what a cache key hashes) and the class itself rides in ``Request.response_model``;
  ``response_format``, ``tools`` and ``tool_choice`` are checked (a schema must be valid JSON Schema);
- **the schema transforms adapters need**: ``strict_schema`` (OpenAI's strict mode), ``output_schema``
  (the schema an adapter must make the model follow) and ``schema_instruction`` (the prompt of the
  ``json_object`` fallback);
- **reading an answer**: ``check`` (text or tool calls -> the validated value, or the errors);
- **the validation-retry loop** ``complete``, which the service wraps around its routing call: an answer
  that does not validate is asked again with the errors added to the conversation (as instructor does),
  up to ``max_validation_retries`` more times, then ``OutputValidationError``. Every try's tokens and cost
  are summed into the one response (and so the one ledger record).

pydantic and jsonschema are imported on first use only, so ``import llmkit`` stays fast; a class can only
be a pydantic model if pydantic is already imported, so checking one never imports it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from ._errors import InvalidRequestError, OutputValidationError
from ._types import Request, Response, ToolCall, Usage

DEFAULT_MAX_VALIDATION_RETRIES = 2
MAX_VALIDATION_RETRIES_LIMIT = 20
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_CHOICES = ("none", "auto", "required")
_FORMAT_TYPES = ("text", "json_object", "json_schema")
_SHAPE = "{'type': 'function', 'function': {'name': ..., 'description': ..., 'parameters': {JSON Schema}}}"


# ----------------------------------------------------------------------------------------------
# checking the arguments


def is_model_class(obj: Any) -> bool:
    """Whether ``obj`` is a pydantic v2 model class (never imports pydantic: a model needs it imported)."""
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None)
    return base is not None and isinstance(obj, type) and issubclass(obj, base)


def take_arguments(extra: dict[str, Any]) -> tuple[Any, int | None]:
    """Check and normalise the structured-output and tool arguments in ``extra`` (in place).

    Pops ``response_model`` and ``max_validation_retries`` and returns them; a model's schema goes into
    ``extra["response_format"]``. Raises ``InvalidRequestError`` for anything malformed.
    """
    model = extra.pop("response_model", None)
    retries = extra.pop("max_validation_retries", None)
    if is_model_class(extra.get("response_format")):  # openai-python's ``parse(response_format=Model)``
        if model is not None:
            raise InvalidRequestError("response_format: pass a pydantic class as response_model or as "
                                      "response_format, not both")
        model = extra.pop("response_format")
    if model is not None:
        if "response_format" in extra:
            raise InvalidRequestError("response_model and response_format: pass one of them, not both")
        extra["response_format"] = format_for_model(model)
    elif "response_format" in extra:
        extra["response_format"] = check_response_format(extra["response_format"])
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)
                                or not 0 <= retries <= MAX_VALIDATION_RETRIES_LIMIT):
        raise InvalidRequestError(f"max_validation_retries: expected an integer from 0 to "
                                  f"{MAX_VALIDATION_RETRIES_LIMIT}, got {retries!r}")
    if "tools" in extra:
        extra["tools"] = check_tools(extra["tools"])
    if "tool_choice" in extra:
        check_tool_choice(extra["tool_choice"], extra.get("tools"))
    if output_schema(extra.get("response_format")) is not None and extra.get("tools"):
        raise InvalidRequestError("response_model/response_format json_schema together with tools: not "
                                  "supported; ask for the tool calls first, then for the structured answer")
    return model, retries


def check_model(model: Any) -> None:
    if is_model_class(model):
        return
    if isinstance(model, type):
        what = f"the class {model.__name__}, which is not a pydantic BaseModel subclass"
        if any(getattr(b, "__module__", "").startswith("pydantic.v1") for b in model.__mro__):
            what = f"the pydantic v1 model {model.__name__} (pydantic v2 models only)"
    elif is_model_class(type(model)):
        what = f"an instance of {type(model).__name__} (pass the class itself)"
    else:
        what = f"{type(model).__name__} {_short(model)}"
    raise InvalidRequestError(f"response_model: expected a pydantic v2 BaseModel subclass, got {what}")


def format_for_model(model: Any) -> dict[str, Any]:
    """The OpenAI-shaped ``response_format`` for a pydantic class (its JSON schema, strict)."""
    check_model(model)
    name, schema = _model_schema(model)
    schema = json.loads(schema)  # a fresh copy per request (cheaper than copy.deepcopy)
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@lru_cache(maxsize=256)
def _model_schema(model: Any) -> tuple[str, str]:
    """The model's name for the wire and its JSON schema (as JSON text: each request gets its own copy)."""
    try:
        schema = model.model_json_schema()
    except Exception as exc:  # PydanticInvalidForJsonSchema, a broken custom type, ...
        raise InvalidRequestError(f"response_model: {model.__name__} has no JSON schema: {exc}") from None
    schema = root_object(schema)  # a recursive model: {"$ref": "#/$defs/Node", "$defs": {...}}
    if schema.get("type") != "object":
        raise InvalidRequestError(f"response_model: {model.__name__}'s schema is not an object")
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "output"
    return name, json.dumps(schema)


def check_response_format(fmt: Any) -> dict[str, Any]:
    """Check an OpenAI-shaped ``response_format``; return a plain-dict copy."""
    if not isinstance(fmt, Mapping):
        raise InvalidRequestError(
            "response_format: expected {'type': 'json_schema', 'json_schema': {'name', 'schema', 'strict'}}, "
            f"{{'type': 'json_object'}} or a pydantic class, got {type(fmt).__name__} {_short(fmt)}")
    kind = fmt.get("type")
    if kind not in _FORMAT_TYPES:
        raise InvalidRequestError(f"response_format.type: expected one of {list(_FORMAT_TYPES)}, got {kind!r}")
    out = dict(fmt)
    if kind != "json_schema":
        return out
    spec = fmt.get("json_schema")
    if not isinstance(spec, Mapping):
        raise InvalidRequestError("response_format.json_schema: expected {'name': ..., 'schema': {...}, "
                                  f"'strict': True}}, got {_short(spec)}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError("response_format.json_schema.name: expected 1-64 letters, digits, '_' or '-', "
                                  f"got {name!r}")
    if "strict" in spec and not isinstance(spec["strict"], bool | None):
        raise InvalidRequestError(f"response_format.json_schema.strict: expected a bool, got {spec['strict']!r}")
    schema = root_object(spec.get("schema"))
    check_schema(schema, "response_format.json_schema.schema")
    out["json_schema"] = {**spec, "schema": schema}
    return out


def root_object(schema: Any) -> Any:
    """``schema`` with a root ``$ref`` (how pydantic writes a recursive model: ``{"$ref": "#/$defs/Node",
    "$defs": {...}}``) replaced by what it points to, merged with the root's other keys; ``$defs`` stay, as
    the inner ``$ref``s (and OpenAI's strict mode) need them. Anything else is returned unchanged."""
    seen: set[str] = set()
    while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str) and schema["$ref"] not in seen:
        seen.add(schema["$ref"])
        try:
            target = resolve_ref(schema, schema["$ref"])
        except LookupError:
            return schema  # check_schema says what is wrong
        if not isinstance(target, Mapping):
            return schema
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def check_schema(schema: Any, where: str) -> None:
    """``schema`` must be a valid JSON Schema for an object, with local ``$ref``s that resolve."""
    if not isinstance(schema, Mapping):
        raise InvalidRequestError(f"{where}: expected a JSON Schema (a dict), got {type(schema).__name__}")
    if schema.get("type") != "object":
        raise InvalidRequestError(f"{where}: the schema's root must be {{'type': 'object', ...}} (every provider "
                                  f"asks for an object), got type {schema.get('type')!r}")
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema, default=validators.Draft202012Validator).check_schema(schema)
    except exceptions.SchemaError as err:
        at = "/".join(str(p) for p in err.absolute_path)
        raise InvalidRequestError(f"{where}: not a valid JSON Schema: {err.message}"
                                  + (f" (at {at})" if at else "")) from None
    for ref in _refs(schema):
        if not ref.startswith("#"):
            raise InvalidRequestError(f"{where}: only local $refs ('#/$defs/...') are supported, got {ref!r}")
        try:
            resolve_ref(schema, ref)
        except LookupError:
            raise InvalidRequestError(f"{where}: $ref {ref!r} points to nothing in the schema") from None


def check_tools(tools: Any) -> list[Any]:
    """``tools`` in OpenAI's shape; provider-native entries (a dict with another ``type``) pass through."""
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise InvalidRequestError(f"tools: expected a list of {_SHAPE}, got {type(tools).__name__}")
    out, names = [], set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("type"), str):
            raise InvalidRequestError(f"tools[{i}]: expected {_SHAPE}, got {_short(tool)}")
        if tool["type"] != "function":
            out.append(dict(tool))
            continue
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise InvalidRequestError(f"tools[{i}].function: expected {{'name': ..., 'parameters': {{...}}}}, "
                                      f"got {_short(fn)}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequestError(f"tools[{i}].function.name: expected 1-64 letters, digits, '_' or '-', "
                                      f"got {name!r}")
        if name in names:
            raise InvalidRequestError(f"tools[{i}].function.name: {name!r} is listed twice")
        names.add(name)
        if "description" in fn and not isinstance(fn["description"], str | None):
            raise InvalidRequestError(f"tools[{i}].function.description: expected a string")
        fn = dict(fn)
        if fn.get("parameters") is not None:
            fn["parameters"] = root_object(fn["parameters"])  # e.g. a recursive model's schema
            check_schema(fn["parameters"], f"tools[{i}].function.parameters")
        out.append({**tool, "function": fn})
    if not out:
        raise InvalidRequestError("tools: expected at least one tool, got an empty list (leave tools out instead)")
    return out


def check_tool_choice(choice: Any, tools: Any) -> None:
    if not tools:
        raise InvalidRequestError("tool_choice: only allowed together with tools")
    if choice in _TOOL_CHOICES:
        return
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), Mapping) else None
        if name in tool_names(tools):
            return
        raise InvalidRequestError(f"tool_choice: names the tool {name!r}, which is not in tools "
                                  f"({sorted(tool_names(tools))})")
    raise InvalidRequestError(f"tool_choice: expected one of {list(_TOOL_CHOICES)} or "
                              f"{{'type': 'function', 'function': {{'name': ...}}}}, got {_short(choice)}")


def tool_names(tools: Any) -> set[str]:
    return {t["function"]["name"] for t in tools or () if isinstance(t, Mapping) and t.get("type") == "function"
            and isinstance(t.get("function"), Mapping)}


def tool_call_dicts(messages: Any) -> Any:
    """``messages`` with any ``ToolCall`` objects in an assistant's ``tool_calls`` made OpenAI-shaped dicts
    (so ``resp.tool_calls`` can be replayed as is). Anything else is returned unchanged."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        return messages
    if not any(isinstance(c, ToolCall) for m in messages if isinstance(m, Mapping) and m.get("tool_calls")
               for c in m["tool_calls"]):
        return messages
    return [{**m, "tool_calls": [c.to_openai() if isinstance(c, ToolCall) else c for c in m["tool_calls"]]}
            if isinstance(m, Mapping) and m.get("tool_calls") else m for m in messages]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------------------------
# schemas for the adapters


def output_schema(fmt: Any) -> tuple[str, dict[str, Any]] | None:
    """``(name, schema)`` of a json_schema ``response_format``; None for text, json_object or none."""
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        return str(spec.get("name") or "output"), spec.get("schema") or {"type": "object"}
    return None


def openai_format(fmt: Any) -> Any:
    """The ``response_format`` to send OpenAI: a strict json_schema made strict-compatible (every property
    required, ``additionalProperties: false``, ``$ref`` siblings inlined); if the schema cannot be strict
    (a free-form ``dict`` field), it is sent with ``strict: false`` instead of being refused."""
    named = output_schema(fmt)
    if named is None or not fmt["json_schema"].get("strict"):
        return fmt
    strict = strict_schema(named[1])
    if _has_open_object(strict):
        return {**fmt, "json_schema": {**fmt["json_schema"], "strict": False}}
    return {**fmt, "json_schema": {**fmt["json_schema"], "schema": strict}}


def openai_tool(tool: Any) -> Any:
    """A function tool with ``strict: true`` gets its parameters made strict-compatible, like a response_format."""
    fn = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(fn, Mapping) or not fn.get("strict") or not isinstance(fn.get("parameters"), Mapping):
        return tool
    strict = strict_schema(fn["parameters"])
    if _has_open_object(strict):
        return {**tool, "function": {**fn, "strict": False}}
    return {**tool, "function": {**fn, "parameters": strict}}


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` in the subset OpenAI's strict mode accepts (like openai-python's
    ``to_strict_json_schema``): objects list every property as required and forbid extra ones, ``oneOf``
    becomes ``anyOf``, a one-element ``allOf`` is merged, a ``$ref`` with siblings is inlined, and
    ``default: null`` is dropped."""
    root = copy.deepcopy(dict(schema))
    return _strict(root, root)


def _strict(node: Any, root: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    if "$ref" in node and len(node) > 1:
        target = copy.deepcopy(resolve_ref(root, node["$ref"]))
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    for key in ("$defs", "definitions"):
        if isinstance(node.get(key), dict):
            node[key] = {k: _strict(v, root) for k, v in node[key].items()}
    if isinstance(node.get("properties"), dict) or node.get("type") == "object":
        props = node.get("properties") or {}
        node["properties"] = {k: _strict(v, root) for k, v in props.items()}
        node["required"] = list(props)
        node.setdefault("additionalProperties", False)
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"], root)
    if isinstance(node.get("prefixItems"), list):
        node["prefixItems"] = [_strict(s, root) for s in node["prefixItems"]]
    if isinstance(node.get("oneOf"), list):
        node["anyOf"] = node.pop("oneOf") + node.get("anyOf", [])
    if isinstance(node.get("anyOf"), list):
        node["anyOf"] = [_strict(s, root) for s in node["anyOf"]]
    if isinstance(node.get("allOf"), list):
        if len(node["allOf"]) == 1:
            node.update(_strict(node.pop("allOf")[0], root))
        else:
            node["allOf"] = [_strict(s, root) for s in node["allOf"]]
    if "default" in node and node["default"] is None:
        del node["default"]
    return node


def _has_open_object(node: Any) -> bool:
    if isinstance(node, dict):
        extra = node.get("additionalProperties")
        if (node.get("type") == "object" or "properties" in node) and extra not in (False, None):
            return True
        return any(_has_open_object(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_open_object(v) for v in node)
    return False


def resolve_ref(root: Mapping[str, Any], ref: str) -> Any:
    """The part of ``root`` a local ``$ref`` (``#/$defs/Name``) points to; ``LookupError`` if none."""
    if not ref.startswith("#"):
        raise LookupError(ref)
    node: Any = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupError(ref)
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, Mapping):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for k, v in node.items() if k not in ("enum", "const") for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def schema_instruction(schema: Mapping[str, Any] | None) -> str:
    """The system prompt of the ``json_object``/prompt fallback: answer with JSON that fits ``schema``."""
    if schema is None:
        return "Respond with a single JSON object and nothing else."
    return ("Respond with a single JSON object and nothing else. It must match this JSON schema:\n"
            + json.dumps(schema, separators=(",", ":"), ensure_ascii=False))


# ----------------------------------------------------------------------------------------------
# reading an answer


def wants_check(request: Request) -> bool:
    """Whether ``request``'s answer is parsed and validated (structured output, or tool calls)."""
    fmt = request.extra.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    return request.response_model is not None or kind in ("json_object", "json_schema") or bool(
        request.extra.get("tools"))


def check(request: Request, response: Response) -> tuple[Any, list[Any] | None, str]:
    """``(value, None, raw)`` when ``response`` holds what ``request`` asked for, else ``(None, errors, raw)``.

    The value is the pydantic instance (``response_model``), a dict (a JSON-schema or json_object
    ``response_format``), or None (tool calls only, checked for well-formed arguments).
    """
    bad = [c for c in response.tool_calls if c.error or (request.extra.get("tools") and c.name not in
                                                          tool_names(request.extra["tools"]) | _other_tools(request))]
    if bad:
        call = bad[0]
        msg = call.error or f"there is no tool named {call.name!r}"
        return None, [{"loc": ["tool_calls", call.name], "msg": msg}], call.raw_arguments
    fmt = request.extra.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    raw = response.content
    if request.response_model is None and kind not in ("json_object", "json_schema"):
        return None, None, raw
    if response.tool_calls and not raw:  # tools answered instead (json_object + tools): nothing to parse
        return None, None, raw
    text = json_text(raw)
    if request.response_model is not None:
        return _validate_model(request.response_model, text, raw)
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, [{"loc": [], "msg": f"not valid JSON: {exc}"}], raw
    if not isinstance(value, dict):
        return None, [{"loc": [], "msg": f"expected a JSON object, got {type(value).__name__}"}], raw
    named = output_schema(fmt)
    if named is not None:
        errors = schema_errors(named[1], value)
        if errors:
            return None, errors, raw
    return value, None, raw


def _other_tools(request: Request) -> set[str]:
    """Names of provider-native (non-function) tools, which answer under their own names."""
    return {str(t.get("name")) for t in request.extra.get("tools") or () if t.get("type") != "function"}


def _validate_model(model: Any, text: str, raw: str) -> tuple[Any, list[Any] | None, str]:
    from pydantic import ValidationError

    try:
        return model.model_validate_json(text), None, raw
    except ValidationError as exc:
        return None, [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type"),
                       "input": _short(e.get("input"))} for e in exc.errors(include_url=False)], raw


def schema_errors(schema: Mapping[str, Any], value: Any) -> list[dict[str, Any]]:
    """What is wrong with ``value`` against ``schema`` (jsonschema), as ``{"loc", "msg"}`` dicts."""
    from jsonschema import validators

    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    return [{"loc": list(err.absolute_path), "msg": err.message}
            for err in sorted(cls(schema).iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))]


_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def json_text(raw: str) -> str:
    """The JSON in a model's answer: the text itself, inside a Markdown code fence, or from the first
    ``{`` to the last ``}`` when a model (a prompt-mode server) wrapped it in prose."""
    text = (raw or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        return fenced.group(1).strip()
    if text.startswith("{"):
        return text
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for err in errors[:20]:
        loc = ".".join(str(p) for p in err.get("loc") or ()) or "(root)"
        got = f" (got {err['input']})" if err.get("input") is not None else ""
        lines.append(f"- {loc}: {err.get('msg')}{got}")
    if len(errors) > 20:
        lines.append(f"- ... and {len(errors) - 20} more")
    return "\n".join(lines)


def reask(response: Response, raw: str, errors: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The messages that ask again: the failed answer, then what was wrong with it."""
    if errors and errors[0].get("loc", [None])[:1] == ["tool_calls"]:
        name = errors[0]["loc"][1]
        return ({"role": "user", "content": f"Your call of the tool {name!r} was not usable: {errors[0]['msg']}. "
                                            f"The arguments you sent were: {raw[:2000]}\n"
                                            "Call the tool again with arguments that are a JSON object fitting "
                                            "its parameters."},)
    text = ("Your answer did not match the required JSON schema:\n" + describe_errors(errors)
            + "\nAnswer again with only the corrected JSON object.")
    asked: tuple[dict[str, Any], ...] = ({"role": "assistant", "content": raw},) if raw.strip() else ()
    return (*asked, {"role": "user", "content": text})


# ----------------------------------------------------------------------------------------------
# the validation-retry loop


Call = Callable[[Request], Awaitable[Response]]


async def complete(request: Request, call: Call, finish: Callable[[Response], None], default_retries: int,
                   on_retry: Callable[[int, list[Any]], None] | None = None,
                   paid: list[Response] | None = None) -> Response:
    """``call`` (the routing of one try), then check the answer; ask again on a failed check.

    ``finish`` stamps and prices each try's response (usage, cost, attempts). The returned response is
    the last try's, with ``parsed`` set and the usage and cost of every try summed. After
    ``max_validation_retries`` failed retries: ``OutputValidationError`` carrying the same summed response.
    ``paid`` (the caller's list) receives each answered try as it comes, so a request that ends otherwise
    (its deadline, a cancel, a later provider error, the budget refusing a re-ask) can still be charged
    for them (``paid_response``), and the budget can count them before a re-ask.
    """
    tries: list[Response] = [] if paid is None else paid
    if not wants_check(request):
        response = await call(request)
        finish(response)
        tries.append(response)
        return response
    retries = request.max_validation_retries
    retries = default_retries if retries is None else retries
    current = request
    while True:
        response = await call(current)
        finish(response)
        tries.append(response)
        value, errors, raw = check(current, response)
        if errors is None:
            response.parsed = value
            return merge(tries)
        if response.attempts and response.attempts[-1].outcome == "ok":
            last = response.attempts[-1]
            last.outcome, last.error = "error", "OutputValidationError"
            last.error_message = describe_errors(errors)[:500]
        if len(tries) > retries:
            merged = merge(tries)
            raise OutputValidationError(
                f"the answer did not validate after {len(tries)} tries:\n{describe_errors(errors)}",
                raw=raw, errors=errors, response=merged)
        if on_retry is not None:
            on_retry(len(tries), errors)
        current = dataclasses.replace(current, messages=current.messages + reask(response, raw, errors))


def finish_stream(request: Request, response: Response) -> Response:
    """A finished stream's answer checked once (a stream's chunks are already out: no retries)."""
    if not wants_check(request):
        return response
    value, errors, raw = check(request, response)
    if errors is not None:
        if response.attempts and response.attempts[-1].outcome == "ok":
            response.attempts[-1].outcome, response.attempts[-1].error = "error", "OutputValidationError"
        raise OutputValidationError(f"the streamed answer did not validate:\n{describe_errors(errors)}",
                                    raw=raw, errors=errors, response=response)
    response.parsed = value
    return response


def apply(request: Request, response: Response) -> Response:
    """Set ``response.parsed`` if the answer validates (e.g. one replayed from a cache); never raises."""
    if wants_check(request) and response.parsed is None:
        value, errors, _ = check(request, response)
        if errors is None:
            response.parsed = value
    return response


def merge(tries: Sequence[Response]) -> Response:
    """The last try (itself, or a copy when there were several) carrying the tokens and cost of all of them."""
    if len(tries) == 1:
        return tries[-1]
    usage, cost = _summed(tries)
    return dataclasses.replace(tries[-1], usage=usage, cost_usd=cost)


def paid_response(tries: Sequence[Response]) -> Response | None:
    """What the tries so far were charged, as one response (``merge``); None when nothing answered yet."""
    return merge(tries) if tries else None


def paid_usd(tries: Sequence[Response]) -> float:
    """What the tries so far cost (an unpriced try counts 0)."""
    return sum(r.cost_usd for r in tries if r.cost_usd is not None)


def _summed(tries: Sequence[Response]) -> tuple[Usage, float | None]:
    total = Usage()
    for r in tries:
        u = r.usage
        total.input_tokens += u.input_tokens
        total.output_tokens += u.output_tokens
        total.cache_read_tokens += u.cache_read_tokens
        total.cache_write_tokens += u.cache_write_tokens
        total.reasoning_tokens += u.reasoning_tokens
        total.estimated |= u.estimated
        total.suspect |= u.suspect
    costs = [r.cost_usd for r in tries]
    return total, None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


__all__ = ["DEFAULT_MAX_VALIDATION_RETRIES", "apply", "check", "complete", "finish_stream", "openai_format",
           "output_schema", "schema_instruction", "strict_schema", "take_arguments"]
