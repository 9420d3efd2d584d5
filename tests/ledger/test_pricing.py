"""Pricer: genai-prices lookups (dated ids too), cache accounting, overrides, unpriced models."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from llmkit import Usage
from llmkit.ledger.pricing import Pricer

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "wire" / "prices_per_mtok.json"

# (price id, model as sent, fixture key, expected USD for 1,000 input + 500 output tokens)
PLAIN = [
    ("openai", "gpt-4", "gpt-4", "0.06"),                                    # 1000*30 + 500*60
    ("openai", "gpt-4o", "gpt-4o", "0.0075"),                                # 1000*2.5 + 500*10
    ("openai", "gpt-4o-2024-08-06", "gpt-4o", "0.0075"),
    ("openai", "gpt-3.5-turbo", "gpt-3.5-turbo", "0.00125"),                 # 1000*0.5 + 500*1.5
    ("anthropic", "claude-3-opus-20240229", "claude-3-opus", "0.0525"),      # 1000*15 + 500*75
    ("anthropic", "claude-3-sonnet-20240229", "claude-3-sonnet", "0.0105"),  # 1000*3 + 500*15
    ("anthropic", "claude-3-haiku-20240307", "claude-3-haiku", "0.000875"),  # 1000*0.25 + 500*1.25
    ("anthropic", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet", "0.0105"),
    ("anthropic", "claude-3-5-sonnet-20240620", "claude-3-5-sonnet", "0.0105"),
    ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4", "0.0105"),
    ("anthropic", "claude-sonnet-4-0", "claude-sonnet-4", "0.0105"),
]


def fixture_prices() -> dict[str, dict[str, float]] | None:
    if not FIXTURE.exists():
        return None
    return json.loads(FIXTURE.read_text())["models"]


@pytest.mark.parametrize(("pid", "model", "key", "expected"), PLAIN)
def test_plain_prices(pid: str, model: str, key: str, expected: str) -> None:
    cost = Pricer().cost(pid, pid, model, Usage(input_tokens=1000, output_tokens=500))
    assert cost == Decimal(expected)
    assert isinstance(cost, Decimal)
    fx = fixture_prices()
    if fx is not None:  # the literal above agrees with the shared price table
        p = fx[key]
        assert cost == (Decimal(1000) * Decimal(str(p["input"])) + 500 * Decimal(str(p["output"]))) / 1_000_000


def test_openai_cached_tokens_are_not_double_counted() -> None:
    # gpt-4o: 1,000 prompt tokens of which 400 cached: 600*2.50 + 400*1.25 + 500*10.00 = 7,000 per M
    usage = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=400)
    assert Pricer().cost("openai", "openai", "gpt-4o", usage) == Decimal("0.007")
    fx = fixture_prices()
    if fx is not None:
        p = fx["gpt-4o"]
        want = (600 * Decimal(str(p["input"])) + 400 * Decimal(str(p["cached_input"]))
                + 500 * Decimal(str(p["output"]))) / 1_000_000
        assert want == Decimal("0.007")


def test_anthropic_cache_reads_and_writes() -> None:
    # claude-3-5-sonnet: 1,000 input (200 read, 100 written): 700*3 + 200*0.30 + 100*3.75 + 500*15 = 10,035 per M
    usage = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=200, cache_write_tokens=100)
    assert Pricer().cost("anthropic", "anthropic", "claude-3-5-sonnet-20241022", usage) == Decimal("0.010035")
    # claude-3-opus: 10,000 input (6,000 read, 2,000 written) + 1,000 out:
    # 2,000*15 + 6,000*1.50 + 2,000*18.75 + 1,000*75 = 151,500 per M
    usage = Usage(input_tokens=10_000, output_tokens=1000, cache_read_tokens=6000, cache_write_tokens=2000)
    assert Pricer().cost("anthropic", "anthropic", "claude-3-opus-20240229", usage) == Decimal("0.1515")
    fx = fixture_prices()
    if fx is not None:
        p = fx["claude-3-opus"]
        want = (2000 * Decimal(str(p["input"])) + 6000 * Decimal(str(p["cache_read"]))
                + 2000 * Decimal(str(p["cache_write_5m"])) + 1000 * Decimal(str(p["output"]))) / 1_000_000
        assert want == Decimal("0.1515")


def test_estimate_assumes_no_cache() -> None:
    assert Pricer().estimate("openai", "openai", "gpt-4", 2000, 1000) == Decimal("0.12")  # 2000*30 + 1000*60
    assert Pricer().estimate("mock", None, "gpt-4", 2000, 1000) is None


def test_overrides_win_and_are_exact() -> None:
    pricer = Pricer({"openai": {"gpt-4o": {"input": 1.0, "output": 2.0}},
                     "local": {"llama3": {"input": 0, "output": 0},
                               "tiny": {"input": 0.1, "output": 0.3, "cache_read": 0.01, "cache_write": 0.2}}})
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert pricer.cost("openai", "openai", "gpt-4o", usage) == Decimal("0.002")  # 1000*1 + 500*2
    # another provider serving gpt-4o is not overridden: genai-prices answers
    assert pricer.cost("openai-backup", "openai", "gpt-4o", usage) == Decimal("0.0075")
    free = pricer.cost("local", None, "llama3", usage)
    assert free == Decimal(0) and free is not None
    # 3 tokens at $0.1/M is exactly 3e-7 (no binary float residue)
    assert pricer.cost("local", None, "tiny", Usage(input_tokens=3)) == Decimal("0.0000003")
    # 100 input (10 read, 20 written) + 50 out: 70*0.1 + 10*0.01 + 20*0.2 + 50*0.3 = 26.1 per M
    cached = Usage(input_tokens=100, output_tokens=50, cache_read_tokens=10, cache_write_tokens=20)
    assert pricer.cost("local", None, "tiny", cached) == Decimal("0.0000261")


def test_override_cache_prices_default_to_input_price() -> None:
    pricer = Pricer({"p": {"m": {"input": 2, "output": 4}}})
    cached = Usage(input_tokens=1000, output_tokens=0, cache_read_tokens=300, cache_write_tokens=200)
    assert pricer.cost("p", None, "m", cached) == Decimal("0.002")  # every input token at $2/M


def test_glob_override() -> None:
    pricer = Pricer({"local": {"*": {"input": 0, "output": 0}}})
    assert pricer.cost("local", None, "anything-7b", Usage(input_tokens=5, output_tokens=5)) == 0
    assert pricer.is_priced("local", None, "anything-7b")
    assert not pricer.is_priced("other", None, "anything-7b")


def test_unpriced_is_none_never_zero() -> None:
    pricer = Pricer()
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert pricer.cost("mock", None, "gpt-4", usage) is None             # no price id, no override
    assert pricer.cost("openai", "openai", "no-such-model-xyz", usage) is None
    assert pricer.cost("x", "no-such-provider", "gpt-4", usage) is None
    assert not pricer.is_priced("openai", "openai", "no-such-model-xyz")
    assert pricer.is_priced("anthropic", "anthropic", "claude-3-haiku-20240307")


def test_lookups_are_cached_per_price_id_and_model() -> None:
    pricer = Pricer()
    usage = Usage(input_tokens=10, output_tokens=10)
    for _ in range(3):
        pricer.cost("openai", "openai", "gpt-4", usage)
        pricer.cost("openai", "openai", "nope-model", usage)
    assert pricer._lookups.keys() == {("openai", "gpt-4"), ("openai", "nope-model")}
    assert pricer._lookups[("openai", "nope-model")] is None


def test_bad_override_is_rejected() -> None:
    with pytest.raises(ValueError, match="'output'"):
        Pricer({"p": {"m": {"input": 1}}})
    with pytest.raises(ValueError, match="non-negative"):
        Pricer({"p": {"m": {"input": -1, "output": 1}}})


@pytest.mark.parametrize(("provider_id", "model"), [
    ("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4"), ("openai", "gpt-3.5-turbo"),
    ("anthropic", "claude-3-5-sonnet-20241022"), ("anthropic", "claude-3-haiku-20240307"),
    ("anthropic", "claude-3-opus-20240229"), ("anthropic", "claude-sonnet-4-20250514"),
    ("anthropic", "claude-3-5-haiku-20241022"), ("openai", "o1"), ("openai", "gpt-4.1"), ("openai", "o3-mini"),
    ("anthropic", "claude-opus-4-1"), ("openai", "gpt-5"),
])
def test_fast_flat_path_matches_genai_prices_exactly(provider_id: str, model: str) -> None:
    """Flat-priced models are computed locally (microseconds); the result must equal genai-prices' own."""
    import genai_prices

    pricer = Pricer()
    for inp, out, read, write in [(1000, 200, 0, 0), (5000, 10, 4000, 0), (12000, 300, 1000, 2000), (7, 1, 0, 7)]:
        ours = pricer.cost("p", provider_id, model, Usage(input_tokens=inp, output_tokens=out,
                                                           cache_read_tokens=read, cache_write_tokens=write))
        try:
            theirs = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read,
                                   cache_write_tokens=write), model, provider_id=provider_id).total_price
        except Exception:  # a model genai-prices cannot price with these cache kinds: so must we not
            assert ours is None or read or write
            continue
        assert ours == theirs, (model, inp, out, read, write)
