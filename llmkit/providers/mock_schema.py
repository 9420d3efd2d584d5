"""Values that fit a JSON Schema, drawn from a seeded generator: what the mock answers a structured
request (``response_model``, a json_schema ``response_format``) or a tool call with.

``instance(schema, rng)`` covers what pydantic models and hand-written schemas use: ``type`` (one or a
list), ``enum``/``const`` (Literals), ``anyOf``/``oneOf``/``allOf``, local ``$ref``s (nested models, also
recursive ones), ``properties``/``required``/``additionalProperties``, ``items``/``prefixItems``/
``minItems``/``maxItems``/``uniqueItems``, ``minimum``/``maximum`` (exclusive too)/``multipleOf``,
``minLength``/``maxLength``, ``pattern`` (a string is generated from the regular expression) and the
common ``format``s (date, date-time, time, email, uri, uuid, ipv4).
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Mapping
from typing import Any

from ..structured import resolve_ref

_WORDS = ("alpha", "bravo", "delta", "echo", "golf", "hotel", "kilo", "lima", "nova", "oscar", "papa", "romeo",
          "sierra", "tango", "victor", "zulu")
_MAX_DEPTH = 6


def instance(schema: Any, rng: random.Random, root: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A value valid for ``schema`` (deterministic for a given ``rng`` state)."""
    if schema is True or schema is None or schema == {}:
        return rng.choice(_WORDS)
    if not isinstance(schema, Mapping):
        return None
    root = schema if root is None else root
    if "$ref" in schema:
        target = dict(resolve_ref(root, schema["$ref"]))
        return instance({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, rng, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    if isinstance(schema.get("allOf"), list):
        merged = _merge([schema, *schema["allOf"]], root)
        merged.pop("allOf", None)
        return instance(merged, rng, root, depth)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            rest = {k: v for k, v in schema.items() if k != key}
            return instance({**rest, **_pick(schema[key], rng, root, depth)}, rng, root, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or ["null"]
        kind = "null" if depth > _MAX_DEPTH and "null" in kind else rng.choice(kinds)
    if kind is None:
        kind = ("object" if "properties" in schema else "array" if "items" in schema or "prefixItems" in schema
                else "string")
    make = _MAKERS.get(kind, _string)
    return make(schema, rng, root, depth)


def _pick(options: list[Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """One branch of an anyOf/oneOf: not the null one unless nesting runs deep (a recursive model)."""
    def is_null(s: Any) -> bool:
        return isinstance(s, Mapping) and s.get("type") == "null"

    usable = [o for o in options if isinstance(o, Mapping)]
    if depth > _MAX_DEPTH and any(is_null(o) for o in usable):
        return {"type": "null"}
    choice = rng.choice([o for o in usable if not is_null(o)] or usable or [{}])
    return dict(choice)


def _merge(parts: list[Any], root: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if "$ref" in part:
            part = {**resolve_ref(root, part["$ref"]), **{k: v for k, v in part.items() if k != "$ref"}}
        for key, value in part.items():
            if key == "properties" and isinstance(value, Mapping):
                out["properties"] = {**out.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                out["required"] = list(dict.fromkeys([*out.get("required", []), *value]))
            elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems"):
                out[key] = max(out.get(key, value), value)
            elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems"):
                out[key] = min(out.get(key, value), value)
            else:
                out[key] = value
    return out


def _null(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> Any:
    return None


def _boolean(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> Any:
    return rng.random() < 0.5


def _bounds(schema: Mapping[str, Any]) -> tuple[float, float, bool, bool]:
    lo: Any = schema.get("minimum")
    hi: Any = schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    low_open = high_open = False
    if isinstance(xlo, (int, float)) and not isinstance(xlo, bool) and (lo is None or xlo >= lo):
        lo, low_open = xlo, True
    if isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and (hi is None or xhi <= hi):
        hi, high_open = xhi, True
    if lo is None and hi is None:
        lo, hi = 0, 100
    elif lo is None:
        lo = hi - 100
    elif hi is None:
        hi = lo + 100
    return float(lo), float(hi), low_open, high_open


def _integer(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> Any:
    lo, hi, low_open, high_open = _bounds(schema)
    low = math.floor(lo) + 1 if low_open else math.ceil(lo)
    high = math.ceil(hi) - 1 if high_open else math.floor(hi)
    step = schema.get("multipleOf")
    if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
        first, last = math.ceil(low / step), math.floor(high / step)
        if first <= last:
            value = rng.randint(first, last) * step
            return int(value) if float(value).is_integer() else value
    return rng.randint(low, high) if low <= high else low


def _number(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> Any:
    lo, hi, low_open, high_open = _bounds(schema)
    step = schema.get("multipleOf")
    if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
        first = math.floor(lo / step) + 1 if low_open else math.ceil(lo / step)
        last = math.ceil(hi / step) - 1 if high_open else math.floor(hi / step)
        if first <= last:
            k = rng.randint(first, last)
            return k * step if not float(k * step).is_integer() else float(k * step)
    for _ in range(20):
        value = round(rng.uniform(lo, hi), 2)
        if (lo < value or (value == lo and not low_open)) and (value < hi or (value == hi and not high_open)):
            return value
    return (lo + hi) / 2


def _string(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> Any:
    low = max(0, int(schema.get("minLength", 0)))
    high = schema.get("maxLength")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        made = _from_pattern(pattern, rng, low, high)
        if made is not None:
            return made
    fmt = schema.get("format")
    text = _FORMATS[fmt](rng) if fmt in _FORMATS else " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    if len(text) < low:
        text += "x" * (low - len(text))
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def _array(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> Any:
    low = max(0, int(schema.get("minItems", 0)))
    high = schema.get("maxItems")
    high = int(high) if isinstance(high, int) else low + 3
    prefix: list[Any] = schema["prefixItems"] if isinstance(schema.get("prefixItems"), list) else []
    upper = max(low, min(high, low + 3))
    count = rng.randint(low if depth > _MAX_DEPTH else max(low, min(1, upper)), upper)
    items = schema.get("items", {})
    if items is False:
        count = min(count, len(prefix))
    out: list[Any] = []
    tries = 0
    while len(out) < count and tries < count * 10 + 10:
        tries += 1
        sub = prefix[len(out)] if len(out) < len(prefix) else items
        if sub is False:
            break
        value = instance(sub, rng, root, depth + 1)
        if schema.get("uniqueItems") and value in out:
            continue
        out.append(value)
    return out


def _object(schema: Mapping[str, Any], rng: random.Random, root: Mapping[str, Any], depth: int) -> Any:
    props: Mapping[str, Any] = schema["properties"] if isinstance(schema.get("properties"), Mapping) else {}
    required = set(schema.get("required") or ())
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if name in required or (depth <= _MAX_DEPTH and rng.random() < 0.7):
            out[name] = instance(sub, rng, root, depth + 1)
    extra = schema.get("additionalProperties")
    if not props and isinstance(extra, Mapping) and depth <= _MAX_DEPTH:
        for i in range(rng.randint(1, 2)):
            out[f"{rng.choice(_WORDS)}_{i}"] = instance(extra, rng, root, depth + 1)
    low = schema.get("minProperties")
    if isinstance(low, int):
        for name, sub in props.items():
            if len(out) >= low:
                break
            out.setdefault(name, instance(sub, rng, root, depth + 1))
    return out


_MAKERS = {"null": _null, "boolean": _boolean, "integer": _integer, "number": _number, "string": _string,
           "array": _array, "object": _object}

_FORMATS = {
    "date": lambda r: f"{r.randint(2000, 2030):04d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "date-time": lambda r: (f"{r.randint(2000, 2030):04d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
                            f"T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z"),
    "time": lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
    "email": lambda r: f"{r.choice(_WORDS)}.{r.choice(_WORDS)}@example.com",
    "uri": lambda r: f"https://example.com/{r.choice(_WORDS)}",
    "url": lambda r: f"https://example.com/{r.choice(_WORDS)}",
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
    "ipv4": lambda r: ".".join(str(r.randint(1, 254)) for _ in range(4)),
}


# ----------------------------------------------------------------------------------------------
# strings from a regular expression (Python's own parser; unsupported constructs give up politely)


def _from_pattern(pattern: str, rng: random.Random, low: int, high: Any) -> str | None:
    from re import _parser  # type: ignore[attr-defined]

    try:
        parsed = _parser.parse(pattern)
    except re.error:
        return None
    for _ in range(10):
        try:
            text = _emit(parsed, rng, {})
        except _Unsupported:
            return None
        if low <= len(text) and (not isinstance(high, int) or len(text) <= high) and re.search(pattern, text):
            return text
    return None


class _Unsupported(Exception):
    pass


_CATEGORY_CHARS = {"CATEGORY_DIGIT": "0123456789", "CATEGORY_WORD": "abcdefghijklmnopqrstuvwxyz_0123456789",
                   "CATEGORY_SPACE": " ", "CATEGORY_NOT_DIGIT": "abcxyz", "CATEGORY_NOT_WORD": "-. ",
                   "CATEGORY_NOT_SPACE": "abcxyz0"}
_PRINTABLE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _emit(parsed: Any, rng: random.Random, groups: dict[int, str]) -> str:
    out = []
    for op, arg in parsed:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append(rng.choice([c for c in _PRINTABLE if ord(c) != arg]))
        elif name == "ANY":
            out.append(rng.choice(_PRINTABLE))
        elif name == "IN":
            out.append(_in(arg, rng))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, sub = arg
            hi = lo + 3 if hi is None or hi > lo + 3 else hi  # MAXREPEAT is huge: keep strings short
            out.extend(_emit(sub, rng, groups) for _ in range(rng.randint(lo, hi)))
        elif name == "SUBPATTERN":
            group, _, _, sub = arg
            text = _emit(sub, rng, groups)
            if group is not None:
                groups[group] = text
            out.append(text)
        elif name == "BRANCH":
            out.append(_emit(rng.choice(arg[1]), rng, groups))
        elif name == "GROUPREF":
            out.append(groups.get(arg, ""))
        elif name == "AT":
            continue
        elif name == "CATEGORY":
            out.append(rng.choice(_CATEGORY_CHARS.get(str(arg), "a")))
        else:
            raise _Unsupported(name)
    return "".join(out)


def _in(items: Any, rng: random.Random) -> str:
    chars: list[str] = []
    negate = False
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            chars.append(chr(arg))
        elif name == "RANGE":
            lo, hi = arg
            chars.extend(chr(c) for c in range(lo, min(hi, lo + 200) + 1))
        elif name == "CATEGORY":
            chars.extend(_CATEGORY_CHARS.get(str(arg), "a"))
        else:
            raise _Unsupported(name)
    if negate:
        chars = [c for c in _PRINTABLE if c not in chars]
    if not chars:
        raise _Unsupported("empty class")
    return rng.choice(chars)
