"""The mock's values from a schema: valid for every schema hypothesis draws (checked by jsonschema), valid
for a set of pydantic models (checked by pydantic), and deterministic for a seed."""

from __future__ import annotations

import datetime as dt
import enum
import random
import re
from typing import Any, Literal

import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s
from jsonschema import Draft202012Validator, FormatChecker

from llmkit.providers.mock_schema import instance

PATTERNS = [r"^[A-Z]{2}-\d{3}$", r"^\w+@\w+\.com$", r"^(cat|dog)s?$", r"^[a-f0-9]{8}$", r"^\d{3}-\d{4}$",
            r"^[^\s]{3,5}$", r"^(ab)+\1?$", r"colou?r"]
FORMATS = ["date", "date-time", "email", "uuid", "ipv4", "uri"]


@s.composite
def integers(draw: s.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer"}
    lo = draw(s.one_of(s.none(), s.integers(-1000, 1000)))
    span = draw(s.integers(12, 500))
    if lo is not None:
        out["exclusiveMinimum" if draw(s.booleans()) else "minimum"] = lo
    if draw(s.booleans()):
        out["exclusiveMaximum" if draw(s.booleans()) else "maximum"] = (lo if lo is not None else 0) + span
    if draw(s.booleans()):
        out["multipleOf"] = draw(s.sampled_from([2, 3, 5]))
    return out


@s.composite
def numbers(draw: s.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "number"}
    lo = draw(s.one_of(s.none(), s.floats(-1e4, 1e4, allow_nan=False)))
    if lo is not None:
        out["exclusiveMinimum" if draw(s.booleans()) else "minimum"] = lo
    if draw(s.booleans()):
        out["maximum"] = (lo if lo is not None else 0.0) + draw(s.floats(1.0, 1e3))
    if draw(s.booleans()):
        out["multipleOf"] = draw(s.sampled_from([0.5, 0.25, 2]))
        out.pop("exclusiveMinimum", None)
        if "maximum" in out:
            out["maximum"] = out.get("minimum", 0.0) + 10
    return out


@s.composite
def strings(draw: s.DrawFn) -> dict[str, Any]:
    kind = draw(s.sampled_from(["plain", "pattern", "format"]))
    if kind == "pattern":
        return {"type": "string", "pattern": draw(s.sampled_from(PATTERNS))}
    if kind == "format":
        return {"type": "string", "format": draw(s.sampled_from(FORMATS))}
    out: dict[str, Any] = {"type": "string"}
    low = draw(s.one_of(s.none(), s.integers(0, 30)))
    if low is not None:
        out["minLength"] = low
    if draw(s.booleans()):
        out["maxLength"] = (low or 0) + draw(s.integers(0, 20))
    return out


scalars = s.one_of(
    integers(), numbers(), strings(), s.just({"type": "boolean"}), s.just({"type": "null"}),
    s.lists(s.one_of(s.text(max_size=8), s.integers(), s.booleans()), min_size=1, max_size=5, unique=True)
    .map(lambda values: {"enum": values}),
    s.one_of(s.text(max_size=5), s.integers()).map(lambda v: {"const": v}),
    s.just({"type": ["string", "null"]}), s.just({}),
)


def compound(children: s.SearchStrategy[dict[str, Any]]) -> s.SearchStrategy[dict[str, Any]]:
    names = s.text(alphabet="abcdefgh_", min_size=1, max_size=6)

    @s.composite
    def objects(draw: s.DrawFn) -> dict[str, Any]:
        props = draw(s.dictionaries(names, children, max_size=5))
        required = [k for k in props if draw(s.booleans())]
        out: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        if draw(s.booleans()):
            out["additionalProperties"] = False
        return out

    @s.composite
    def arrays(draw: s.DrawFn) -> dict[str, Any]:
        low = draw(s.integers(0, 4))
        out: dict[str, Any] = {"type": "array", "items": draw(children), "minItems": low}
        if draw(s.booleans()):
            out["maxItems"] = low + draw(s.integers(0, 4))
        return out

    unique = s.builds(lambda low: {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 10**6},
                                   "uniqueItems": True, "minItems": low}, s.integers(0, 5))
    dicts = children.map(lambda c: {"type": "object", "additionalProperties": c})
    any_of = s.lists(children, min_size=1, max_size=3).map(lambda options: {"anyOf": options})
    return s.one_of(objects(), arrays(), unique, dicts, any_of)


schemas = s.recursive(scalars, compound, max_leaves=12)


@s.composite
def roots(draw: s.DrawFn) -> dict[str, Any]:
    """An object schema, sometimes reaching a definition through a ``$ref`` as pydantic writes them."""
    inner = draw(schemas)
    if draw(s.booleans()):
        return {"type": "object", "$defs": {"Part": inner},
                "properties": {"part": {"$ref": "#/$defs/Part"}, "more": {"type": "array",
                                                                          "items": {"$ref": "#/$defs/Part"}}},
                "required": ["part", "more"]}
    return {"type": "object", "properties": {"value": inner}, "required": ["value"]}


def assert_valid(schema: dict[str, Any], value: Any) -> None:
    errors = list(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(value))
    assert not errors, f"{value!r} does not fit {schema!r}: {[e.message for e in errors]}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(roots(), s.integers(0, 2**32))
def test_generated_values_fit_any_schema(schema: dict[str, Any], seed: int) -> None:
    Draft202012Validator.check_schema(schema)
    value = instance(schema, random.Random(seed))
    assert_valid(schema, value)
    assert instance(schema, random.Random(seed)) == value  # deterministic for a seed


def test_patterns_and_formats_are_honoured() -> None:
    for pattern in PATTERNS:
        for seed in range(20):
            text = instance({"type": "string", "pattern": pattern}, random.Random(seed))
            assert re.search(pattern, text), (pattern, text)
    for fmt in FORMATS:
        assert_valid({"type": "string", "format": fmt}, instance({"type": "string", "format": fmt},
                                                                 random.Random(1)))


def test_all_of_and_one_of_and_prefix_items() -> None:
    schema = {"type": "object", "properties": {
        "merged": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                             {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}]},
        "either": {"oneOf": [{"type": "string", "maxLength": 3}, {"type": "integer", "minimum": 10}]},
        "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False,
                 "minItems": 2},
    }, "required": ["merged", "either", "pair"]}
    for seed in range(30):
        assert_valid(schema, instance(schema, random.Random(seed)))


# ----------------------------------------------------------------------------------------------
# pydantic models


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(pydantic.BaseModel):
    street: str = pydantic.Field(min_length=3, max_length=40)
    postcode: str = pydantic.Field(pattern=r"^\d{4}[A-Z]{2}$")
    country: Literal["NL", "BE", "DE"] = "NL"


class Tree(pydantic.BaseModel):
    name: str
    children: list[Tree] = []


class Order(pydantic.BaseModel):
    id: int = pydantic.Field(gt=0, lt=10_000)
    total: float = pydantic.Field(ge=0, le=999.99)
    discount: float | None = pydantic.Field(default=None, ge=0, lt=1)
    when: dt.date
    created: dt.datetime
    color: Color
    tags: list[str] = pydantic.Field(min_length=1, max_length=4)
    ship_to: Address
    bill_to: Address | None = None
    lines: dict[str, int] = {}
    pair: tuple[str, int]
    status: Literal["open"] | Literal["closed"]
    tree: Tree
    flag: bool


MODELS: list[type[pydantic.BaseModel]] = [Address, Tree, Order]


def test_generated_values_validate_as_pydantic_models() -> None:
    for model in MODELS:
        schema = model.model_json_schema()
        values = [instance(schema, random.Random(seed)) for seed in range(40)]
        for value in values:
            model.model_validate(value)  # raises if the value does not fit
        assert len({repr(v) for v in values}) > 10, f"{model.__name__}: values should vary with the seed"
