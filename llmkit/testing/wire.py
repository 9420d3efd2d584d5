"""Wire shapes for the fake servers in ``llmkit.testing``: reply bodies, SSE events, error bodies and
headers, as the real servers send them (see ``wire-formats.md``). Pure functions, no I/O.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from datetime import UTC, datetime
from typing import Any

from ..providers.mock_schema import instance

OPENAI_FLAVORS = ("openai", "ollama", "vllm", "llamacpp")


def estimate(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def content_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def prompt_tokens(body: Any) -> int:
    """Tokens in a request's messages (and Anthropic ``system``): about 4 characters a token, +4 a message."""
    if not isinstance(body, dict):
        return 0
    total = sum(estimate(content_text(m.get("content"))) + 4 for m in body.get("messages") or () if isinstance(m, dict))
    return total + (estimate(content_text(body["system"])) if body.get("system") else 0)


def last_user_text(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def pieces(text: str) -> list[str]:
    """``text`` cut into word-sized stream deltas (whitespace kept)."""
    return re.findall(r"\s*\S+|\s+$", text) or ([text] if text else [])


def go_duration(seconds: float) -> str:
    """A Go duration string, as OpenAI's reset headers use: ``6ms``, ``1s``, ``6m0s``, ``23m16.298s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    s = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{s}s"
    return f"{minutes}m{s}s" if minutes else f"{s}s"


def rfc3339_in(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tool_calls(calls: list[dict[str, Any]] | None) -> list[tuple[str, str, str]]:
    """``(id, name, arguments-json)`` from OpenAI-shaped calls or ``{"name", "arguments"|"input"}``."""
    out = []
    for i, call in enumerate(calls or ()):
        fn = call.get("function") or call
        args = fn.get("arguments", fn.get("input", {}))
        out.append((str(call.get("id") or f"call_{i:04d}"), str(fn.get("name")),
                    args if isinstance(args, str) else json.dumps(args)))
    return out


def last_gemini_text(body: Any) -> str:
    """The text of the last ``user`` turn of a Gemini ``contents`` list."""
    contents = body.get("contents") if isinstance(body, dict) else None
    for turn in reversed(contents or []):
        if isinstance(turn, dict) and turn.get("role", "user") == "user":
            texts = [p["text"] for p in turn.get("parts") or ()
                     if isinstance(p, dict) and isinstance(p.get("text"), str)]
            if texts:
                return "".join(texts)
    return ""


def schema_answer(body: Any) -> str | None:
    """A JSON answer for a request that asks for JSON, or None.

    OpenAI shape: ``response_format`` json_schema -> an instance valid for the schema, json_object -> a JSON
    object. Gemini shape: ``generationConfig.responseMimeType`` ``application/json`` -> an instance of
    ``responseJsonSchema`` (or of the OpenAPI-style ``responseSchema``), else a JSON object.
    """
    if not isinstance(body, dict):
        return None
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
            return json.dumps(instance(schema, random.Random(0)))
        if fmt.get("type") == "json_object":
            return json.dumps({"echo": last_user_text(body)})
        return None
    config = body.get("generationConfig")
    if not isinstance(config, dict) or config.get("responseMimeType") != "application/json":
        return None
    schema = config.get("responseJsonSchema") or _json_schema(config.get("responseSchema"))
    if isinstance(schema, dict) and schema:
        return json.dumps(instance(schema, random.Random(0)))
    return json.dumps({"echo": last_gemini_text(body)})


def _json_schema(node: Any) -> Any:
    """Gemini's OpenAPI-style ``responseSchema`` (``"type": "OBJECT"``) as JSON Schema (lower-case types)."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items()}
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].lower()
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        del out["nullable"]
        out["type"] = [out["type"], "null"]
    return out


def forced_tool_call(body: Any) -> dict[str, Any] | None:
    """An Anthropic request's forced tool (``tool_choice: {"type": "tool"}``) answered with generated input."""
    choice = body.get("tool_choice") if isinstance(body, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "tool":
        return None
    tool = next((t for t in body.get("tools") or () if isinstance(t, dict) and t.get("name") == choice.get("name")),
                None)
    schema = (tool or {}).get("input_schema") or {"type": "object"}
    return {"id": "toolu_fake0001", "name": choice.get("name"), "input": instance(schema, random.Random(0))}


def sse(data: Any, event: str | None = None, pad: int = 0) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    if pad and text.endswith("}"):
        text = text[:-1] + " " * pad + "}"
    return (f"event: {event}\n" if event else "").encode() + b"data: " + text.encode() + b"\n\n"


def embedding_inputs(body: Any) -> list[str]:
    """The texts of an OpenAI ``/embeddings`` body (a string or a list of strings)."""
    value = body.get("input") if isinstance(body, dict) else None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def _base64_floats(vector: list[float]) -> str:
    """``encoding_format="base64"``: the vector's little-endian float32 bytes, base64-encoded (as OpenAI)."""
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def openai_embeddings(body: Any, dims: int, model: str) -> dict[str, Any]:
    """An OpenAI ``/embeddings`` answer: the mock's deterministic unit vectors, one per input."""
    from ..providers.mock import mock_embedding

    texts = embedding_inputs(body)
    tokens = sum(estimate(t) for t in texts)
    encode: Any = _base64_floats if isinstance(body, dict) and body.get("encoding_format") == "base64" else list
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(mock_embedding(t, dims))}
                     for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# ----------------------------------------------------------------------------------------------
# errors

OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request: check the parameters."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: {key}. You can find your API key "
          "at https://platform.openai.com/account/api-keys."),
    403: ("request_forbidden", "unsupported_country_region_territory", "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found",
          "The model `{model}` does not exist or you do not have access to it."),
    408: ("server_error", None, "Request timed out."),
    409: ("server_error", None, "Conflict: the resource is locked, try again."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for {model} on requests per min (RPM): "
          "Limit 3, Used 3, Requested 1. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    529: ("overloaded_error", None, "Overloaded"),
}
OPENAI_CODE_MESSAGES = {
    "context_length_exceeded": ("invalid_request_error", "This model's maximum context length is 4097 tokens. "
                                "However, you requested 4120 tokens (3120 in the messages, 1000 in the "
                                "completion). Please reduce the length of the messages or completion."),
    "insufficient_quota": ("insufficient_quota", "You exceeded your current quota, please check your plan and "
                           "billing details."),
}
VLLM_TYPES = {400: "BadRequestError", 401: "Unauthorized", 404: "NotFoundError", 429: "TooManyRequests"}
ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: {model}"),
    409: ("conflict_error", "Conflict."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


def openai_error(flavor: str, status: int, *, type: str | None = None, code: Any = None, message: str | None = None,
                 fill: dict[str, str] | None = None) -> dict[str, Any]:
    """The error body a server of ``flavor`` sends for ``status``."""
    dtype, dcode, dmessage = OPENAI_ERRORS.get(status, ("api_error", None, f"HTTP {status}"))
    if isinstance(code, str) and code in OPENAI_CODE_MESSAGES:
        dtype, dmessage = OPENAI_CODE_MESSAGES[code]
        dcode = code
    text = (message if message is not None else dmessage).format_map(_Fill(fill or {}))
    if flavor == "vllm":
        if message is None and code == "context_length_exceeded":
            text = ("This model's maximum context length is 2048 tokens. However, you requested 4120 tokens "
                    "(3120 in the messages, 1000 in the completion). Please reduce the length of the messages "
                    "or completion.")
        return {"object": "error", "message": text, "type": type or VLLM_TYPES.get(status, "InternalServerError"),
                "param": None, "code": code if isinstance(code, int) else status}
    if flavor == "llamacpp":
        ltype = "exceed_context_size_error" if code == "context_length_exceeded" else None
        return {"error": {"code": code if isinstance(code, int) else status, "message": text,
                          "type": type or ltype or ("server_error" if status >= 500 else "invalid_request_error")}}
    if flavor == "ollama":
        otype = "invalid_request_error" if status == 400 else "not_found_error" if status == 404 else "api_error"
        return {"error": {"message": text, "type": type or otype, "param": None, "code": code}}
    return {"error": {"message": text, "type": type or dtype,
                      "param": "messages" if dcode == "context_length_exceeded" else None,
                      "code": code if code is not None else dcode}}


def anthropic_error(status: int, *, type: str | None = None, message: str | None = None, code: Any = None,
                    details: Any = None, request_id: str | None = None, fill: dict[str, str] | None = None,
                    ) -> dict[str, Any]:
    dtype, dmessage = ANTHROPIC_ERRORS.get(status, ("api_error", f"HTTP {status}"))
    error: dict[str, Any] = {"type": type or dtype,
                             "message": (message if message is not None else dmessage).format_map(_Fill(fill or {}))}
    if code is not None and details is None:
        details = {"error_code": code}
    if details is not None:
        error["details"] = details
    body: dict[str, Any] = {"type": "error", "error": error}
    if request_id:
        body["request_id"] = request_id
    return body


class _Fill(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
