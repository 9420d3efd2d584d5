"""``client.estimate``: what a ``client.map`` with the same arguments would send and cost. Sends nothing.

- ``requests``: the rows that would be sent (rows with a missing value are not; see ``invalid_rows``),
  ``cached``: how many of them the response cache already answers (sent at $0; 0 without a cache).
- ``input_tokens``: counted with tiktoken for OpenAI models when it is installed (``pip install
  "llmkit[tokens]"``) and its encoding is available; otherwise approximated as about four characters a
  token plus four per message, the estimate llmkit's rate limits and budget use (``tokenizer`` says which).
- ``max_output_tokens``: ``max_tokens`` per row; without ``max_tokens``, 256 a row (the budget's own
  assumption; ``max_tokens_assumed`` is then True).
- ``cost_usd_low``: the input tokens alone on the first provider that serves the model;
  ``cost_usd_high``: input plus every output token allowed, on the priciest provider that may serve it
  (a fallback may). Cached rows cost nothing. ``None`` when the price is unknown (``priced`` False).
- ``budget_usd`` (or the client's budget left): ``within_budget`` is False and a warning is issued
  when ``cost_usd_high`` would pass it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._errors import InvalidRequestError
from .batch import plan
from .providers.base import content_text, estimate_tokens
from .routing.router import DEFAULT_OUTPUT_ESTIMATE

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Estimate", "count_tokens", "estimate"]

APPROX = "approx: ~4 characters a token + 4 a message"
_OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "davinci", "babbage")


class Estimate(dict[str, Any]):
    """A plain mapping, shown readably."""

    def __repr__(self) -> str:
        def usd(value: Any) -> str:
            return "unpriced" if value is None else f"${value:,.4f}"

        lines = [f"llmkit estimate for {self['rows']} rows of {self['model']!r} (nothing sent):",
                 f"  requests           {self['requests']:,} ({self['cached']:,} cached, "
                 f"{self['invalid_rows']:,} invalid rows not sent)",
                 f"  input tokens       {self['input_tokens']:,} ({self['tokenizer']})",
                 f"  max output tokens  {self['max_output_tokens']:,}"
                 + (" (256 a row: max_tokens not set)" if self["max_tokens_assumed"] else ""),
                 f"  cost               {usd(self['cost_usd_low'])} to {usd(self['cost_usd_high'])}"]
        if self.get("budget_usd") is not None:
            verdict = "within" if self["within_budget"] else "WOULD EXCEED"
            lines.append(f"  budget             {verdict} {usd(self['budget_usd'])}")
        return "\n".join(lines)


def _is_openai_model(model: str) -> bool:
    return model.startswith(_OPENAI_PREFIXES)


def count_tokens(model: str) -> tuple[Callable[[list[dict[str, Any]]], int], str]:
    """A counter of a message list's prompt tokens for ``model``, and its name (tiktoken, or the approximation)."""
    if _is_openai_model(model):
        try:
            import tiktoken

            try:
                encoding = tiktoken.encoding_for_model(model)
            except KeyError:
                encoding = tiktoken.get_encoding("o200k_base")
            encoding.encode("warm up")  # loads the encoding (a missing file fails here, not per row)
        except Exception:  # not installed, or its encoding cannot be loaded (offline): approximate
            pass
        else:
            def tiktoken_count(messages: list[dict[str, Any]]) -> int:
                # OpenAI's chat format: about 3 tokens a message around its content, 3 to prime the reply
                return 3 + sum(3 + len(encoding.encode(content_text(m.get("content")), disallowed_special=()))
                               for m in messages)

            return tiktoken_count, f"tiktoken {encoding.name}"

    def approx(messages: list[dict[str, Any]]) -> int:
        return sum(estimate_tokens(content_text(m.get("content"))) + 4 for m in messages)

    return approx, APPROX


def _cached(client: Client, model: str, messages: list[dict[str, Any]], call: dict[str, Any]) -> bool:
    """Whether the response cache answers this row already (False when the client has no cache)."""
    cache = getattr(client._service, "cache", None)
    contains = getattr(cache, "contains", None)
    if not callable(contains):
        return False
    request = client._request(model, messages, **call)
    return bool(contains(request))


def estimate(client: Client, inputs: Any, *, model: str, prompt: str | None = None, system: str | None = None,
             cache: Any = True, budget_usd: float | None = None, **call_kwargs: Any) -> Estimate:
    """See the module docstring. Raises ``InvalidRequestError`` for a malformed call, like ``map``."""
    if budget_usd is not None and (not isinstance(budget_usd, (int, float)) or isinstance(budget_usd, bool)
                                   or budget_usd < 0):
        raise InvalidRequestError(f"budget_usd: expected a non-negative amount, got {budget_usd!r}")
    call = dict(call_kwargs)
    metadata = call.pop("metadata", None)
    call.pop("response_model", None)  # the schema's tokens are not counted
    max_tokens = call.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise InvalidRequestError(f"max_tokens: expected a positive integer, got {max_tokens!r}")
    service = client._service
    candidates = service.router.candidates(model, call.get("provider"))
    rows = plan(inputs, prompt=prompt, system=system, metadata=metadata)
    counter, tokenizer = count_tokens(model)
    per_row_out = max_tokens or DEFAULT_OUTPUT_ESTIMATE
    use_cache = cache not in (False, None)
    requests = cached = input_tokens = 0
    low: Decimal | None = Decimal(0)
    high: Decimal | None = Decimal(0)
    for messages in rows.messages:
        if messages is None:
            continue
        requests += 1
        if use_cache and _cached(client, model, messages, call):
            cached += 1
            continue
        tokens = counter(messages)
        input_tokens += tokens
        low, high = _add_prices(service, candidates, tokens, per_row_out, low, high)
    if budget_usd is None:
        status = client.budget_status()
        budget_usd = None if status is None else status.get("remaining_usd")
    high_f = None if high is None else float(high)
    within = None if budget_usd is None or high_f is None else high_f <= budget_usd
    result = Estimate(
        requests=requests, cached=cached, input_tokens=input_tokens,
        max_output_tokens=(requests - cached) * per_row_out,
        cost_usd_low=None if low is None else float(low), cost_usd_high=high_f,
        rows=rows.n, invalid_rows=len(rows.invalid), model=model, provider=candidates[0][0].name,
        priced=high is not None, tokenizer=tokenizer, max_tokens_assumed=max_tokens is None,
        budget_usd=budget_usd, within_budget=within,
    )
    if within is False:
        warnings.warn(f"llmkit: this batch may cost up to ${high_f:,.4f}, more than the budget of "
                      f"${budget_usd:,.4f} (the low estimate is ${result['cost_usd_low'] or 0:,.4f})",
                      UserWarning, stacklevel=3)
    return result


def _add_prices(service: Any, candidates: list[Any], tokens: int, out: int, low: Decimal | None,
                high: Decimal | None) -> tuple[Decimal | None, Decimal | None]:
    """Add one row: input only on the first candidate (low); input and all output, priciest candidate (high)."""
    pricer = service.pricer
    first, first_model = candidates[0]
    cheapest = pricer.estimate(first.name, first.provider.price_provider_id, first_model, tokens, 0)
    priciest: Decimal | None = None
    for slot, model in candidates:
        price = pricer.estimate(slot.name, slot.provider.price_provider_id, model, tokens, out)
        if price is None:
            priciest = None
            break
        priciest = price if priciest is None else max(priciest, price)
    return (None if low is None or cheapest is None else low + cheapest,
            None if high is None or priciest is None else high + priciest)
