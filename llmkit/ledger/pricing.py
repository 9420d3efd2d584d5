"""Pricing: token usage -> cost in USD, as exact ``Decimal``s.

``Pricer`` owns one question: what did (or will) a request cost? Per-provider overrides from the
config win (a local model priced at 0 costs exactly 0); otherwise the bundled genai-prices snapshot
answers, looked up by the provider's genai-prices id (``Provider.price_provider_id``). A model that
neither knows is *unpriced*: ``None``, never a silent 0.

genai-prices is imported on first use (it takes ~150 ms) and its auto-updater is never started, so
pricing does no network I/O. Model lookups (hits and misses) are cached per (price id, model).

Token accounting follows ``llmkit.Usage``: ``input_tokens`` already includes cache reads and cache
writes, so the uncached remainder is ``input - cache_read - cache_write`` and nothing is counted twice.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from .._types import Usage

_MTOK = Decimal(1_000_000)
_PRICE_KEYS = frozenset({"input", "output", "cache_read", "cache_write"})

# A cached genai-prices lookup: (ModelInfo, Provider) when found, None when unknown.
_Found = tuple[Any, Any] | None


class _OverridePrice:
    """One model's override prices, as Decimals per million tokens."""

    __slots__ = ("cache_read", "cache_write", "input", "output")

    def __init__(self, prices: Mapping[str, float]) -> None:
        unknown = set(prices) - _PRICE_KEYS
        if unknown:
            raise ValueError(f"unknown price key(s) {sorted(unknown)}; expected some of {sorted(_PRICE_KEYS)}")
        if "input" not in prices or "output" not in prices:
            raise ValueError(f"an override needs both 'input' and 'output' prices, got {dict(prices)}")
        self.input = _dec(prices["input"])
        self.output = _dec(prices["output"])
        self.cache_read = _dec(prices["cache_read"]) if prices.get("cache_read") is not None else self.input
        self.cache_write = _dec(prices["cache_write"]) if prices.get("cache_write") is not None else self.input

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> Decimal:
        uncached = max(0, input_tokens - cache_read - cache_write)
        total = (uncached * self.input + cache_read * self.cache_read + cache_write * self.cache_write
                 + output_tokens * self.output)
        return total / _MTOK


_UNSET = object()
_FLAT_KEYS = {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"}


class _FlatPrice:
    """A genai-prices model price whose token prices are flat numbers per million tokens (no tiers, no
    time or context variants): computed here in exact Decimals, which costs microseconds instead of the
    general calculation's ~150 µs. Models with anything more take genai-prices' own path."""

    __slots__ = ("cache_read", "cache_write", "input", "output")

    def __init__(self, input: Decimal, output: Decimal, cache_read: Decimal | None,
                 cache_write: Decimal | None) -> None:
        self.input, self.output, self.cache_read, self.cache_write = input, output, cache_read, cache_write

    def covers(self, cache_read: int, cache_write: int) -> bool:
        return (cache_read == 0 or self.cache_read is not None) and (cache_write == 0 or self.cache_write is not None)

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> Decimal:
        uncached = max(0, input_tokens - cache_read - cache_write)
        total = uncached * self.input + output_tokens * self.output
        if cache_read:
            total += cache_read * (self.cache_read or 0)
        if cache_write:
            total += cache_write * (self.cache_write or 0)
        return total / _MTOK


def _flat_price(model_info: Any) -> _FlatPrice | None:
    """The flat price of a genai-prices ``ModelInfo``, or None when its pricing is more than that."""
    prices = getattr(model_info, "prices", None)
    if type(prices).__name__ != "ModelPrice":
        return None  # prices that change with time or context
    # Other keys (web searches, 1-hour cache writes, audio) price usage llmkit never reports: always 0.
    values = {k: v for k, v in prices.__dict__.items() if k in _FLAT_KEYS and v is not None}
    if not all(isinstance(v, Decimal) for v in values.values()) or not {"input_mtok", "output_mtok"} <= set(values):
        return None
    return _FlatPrice(values["input_mtok"], values["output_mtok"], values.get("cache_read_mtok"),
                      values.get("cache_write_mtok"))


def _dec(value: float | int | str | Decimal) -> Decimal:
    """An exact Decimal of a config number: 0.1 becomes Decimal('0.1'), not its binary expansion."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(f"a price must be a number, got {value!r}")
    dec = value if isinstance(value, Decimal) else Decimal(str(value))
    if not dec.is_finite() or dec < 0:
        raise ValueError(f"a price must be a finite non-negative number, got {value!r}")
    return dec


class Pricer:
    """Prices requests: overrides first, then genai-prices; ``None`` when the model is unknown.

    >>> p = Pricer({"local": {"llama3": {"input": 0, "output": 0}}})
    >>> p.cost("local", None, "llama3", Usage(input_tokens=10, output_tokens=5))
    Decimal('0')
    """

    def __init__(self, overrides: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> None:
        self._exact: dict[tuple[str, str], _OverridePrice] = {}
        self._globs: dict[str, list[tuple[str, _OverridePrice]]] = {}
        for provider, models in (overrides or {}).items():
            for model, prices in models.items():
                try:
                    price = _OverridePrice(prices)
                except ValueError as exc:
                    raise ValueError(f"pricing override {provider!r}/{model!r}: {exc}") from None
                if "*" in model or "?" in model:
                    self._globs.setdefault(provider, []).append((model, price))
                else:
                    self._exact[(provider, model)] = price
        self._lookups: dict[tuple[str, str], _Found] = {}
        self._flat: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    # -- public --------------------------------------------------------------------------------

    def cost(self, provider: str, price_provider_id: str | None, model: str, usage: Usage) -> Decimal | None:
        """What ``usage`` of ``model`` on ``provider`` cost, or None when the price is unknown."""
        return self._price(provider, price_provider_id, model, usage.input_tokens, usage.output_tokens,
                           usage.cache_read_tokens, usage.cache_write_tokens)

    def estimate(self, provider: str, price_provider_id: str | None, model: str, input_tokens: int,
                 output_tokens: int) -> Decimal | None:
        """The cost of a request before it is sent (no cache hits assumed), or None when unpriced."""
        return self._price(provider, price_provider_id, model, input_tokens, output_tokens, 0, 0)

    def is_priced(self, provider: str, price_provider_id: str | None, model: str) -> bool:
        return self._override(provider, model) is not None or self._lookup(price_provider_id, model) is not None

    # -- internals -----------------------------------------------------------------------------

    def _price(self, provider: str, price_provider_id: str | None, model: str, input_tokens: int,
               output_tokens: int, cache_read: int, cache_write: int) -> Decimal | None:
        override = self._override(provider, model)
        if override is not None:
            return override.cost(input_tokens, output_tokens, cache_read, cache_write)
        found = self._lookup(price_provider_id, model)
        if found is None:
            return None
        flat = self._flat.get((price_provider_id or "", model), _UNSET)
        if flat is _UNSET:
            flat = _flat_price(found[0])
            with self._lock:
                self._flat[(price_provider_id or "", model)] = flat
        if isinstance(flat, _FlatPrice) and flat.covers(cache_read, cache_write):
            return flat.cost(input_tokens, output_tokens, cache_read, cache_write)
        return self._genai_price(found, input_tokens, output_tokens, cache_read, cache_write)

    @staticmethod
    def _genai_price(found: tuple[Any, Any], input_tokens: int, output_tokens: int, cache_read: int,
                     cache_write: int) -> Decimal:
        import genai_prices

        model_info, price_provider = found
        usage = genai_prices.Usage(
            input_tokens=max(input_tokens, cache_read + cache_write),  # total input, cached included
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        )
        # Same as genai_prices.calc_price(usage, model, provider_id=...), minus the repeated lookup.
        total: Decimal = model_info.calc_price(usage, price_provider).total_price
        return total

    def _override(self, provider: str, model: str) -> _OverridePrice | None:
        price = self._exact.get((provider, model))
        if price is None:
            for pattern, glob_price in self._globs.get(provider, ()):
                if fnmatchcase(model, pattern):
                    return glob_price
        return price

    def _lookup(self, price_provider_id: str | None, model: str) -> _Found:
        if price_provider_id is None:
            return None
        key = (price_provider_id, model)
        try:
            return self._lookups[key]
        except KeyError:
            pass
        import genai_prices  # first use only: ~150 ms; the auto-updater is never started

        probe = genai_prices.Usage(input_tokens=0, output_tokens=0)
        found: _Found
        try:
            calc = genai_prices.calc_price(probe, model, provider_id=price_provider_id)
        except LookupError:
            found = None
        else:
            found = (calc.model, calc.provider)
        with self._lock:
            self._lookups[key] = found
        return found
