"""Ledger records, health rows and events as pandas DataFrames: the only module that imports pandas.

Import it on first use (``client.usage()`` does), never from ``llmkit/__init__``. Every builder returns
the same column names and dtypes whether there are no rows or a million:

- times are ``datetime64[ns, UTC]``;
- low-cardinality strings (provider, model, status, error type) are ``category`` with sorted categories;
- other text is pandas' string dtype, missing as NaN; ``metadata`` holds the compact JSON the ledger
  stores (``df.metadata.map(json.loads, na_action="ignore")`` gives dicts);
- ``cost_usd`` is NaN for an unpriced request, never 0, and ``priced`` says which is which.

``usage_frame`` builds straight from the ledger's columns (no per-record Python objects), so a
million records take well under the 2 s target.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ._events import Event
    from .ledger.store import Ledger

__all__ = ["cost_summary_frame", "events_frame", "health_frame", "latency_frame", "usage_frame"]

STR: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object  # pandas 3's default string dtype
UTC_NS = pd.DatetimeTZDtype("ns", "UTC")

USAGE_COLUMNS: dict[str, Any] = {
    "request_id": STR,
    "time": UTC_NS,
    "provider": "category",
    "model": "category",
    "requested_model": "category",
    "status": "category",
    "error_type": "category",
    "error_message": STR,
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cache_read_tokens": "int64",
    "cache_write_tokens": "int64",
    "reasoning_tokens": "int64",
    "usage_estimated": "bool",
    "cost_usd": "float64",
    "priced": "bool",
    "latency_s": "float64",
    "attempts": "int64",
    "fallback": "bool",
    "stream": "bool",
    "priority": "int64",
    "started": UTC_NS,
    "metadata": STR,
    "prompt": STR,
    "session_id": "category",
    "kind": "category",
    "cached": "bool",
    "cost_saved_usd": "float64",
    "usage_suspect": "bool",
}

SUMMARY_COLUMNS: dict[str, Any] = {
    "requests": "int64",
    "errors": "int64",
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cache_read_tokens": "int64",
    "cache_write_tokens": "int64",
    "cost_usd": "float64",
    "unpriced_requests": "int64",
    "cached_requests": "int64",  # answered from the response cache (at $0)
    "cost_saved_usd": "float64",  # what those answers cost when they were first asked
}

HEALTH_COLUMNS: dict[str, Any] = {
    "provider": STR,
    "adapter": STR,
    "breaker_state": STR,
    "healthy": "bool",
    "uptime_pct": "float64",
    "last_check": UTC_NS,
    "last_check_ok": "boolean",  # nullable: NA before the first check
    "last_error": STR,
    "requests": "int64",
    "errors": "int64",
    "error_rate": "float64",
    "latency_p50_s": "float64",
    "latency_p95_s": "float64",
    "fail_count": "int64",
    "retry_in_s": "float64",
}

EVENT_COLUMNS: dict[str, Any] = {"seq": "int64", "time": UTC_NS, "kind": STR, "provider": STR, "request_id": STR}

LATENCY_COLUMNS: dict[str, Any] = {
    "time": UTC_NS,
    "provider": "category",
    "requests": "int64",
    "errors": "int64",
    "latency_p50_s": "float64",
    "latency_p95_s": "float64",
}

_TIME_KEYS = {"minute": "min", "hour": "h", "day": "D"}  # cost_summary_frame(by=...) buckets; also "month"


# -- helpers -----------------------------------------------------------------------------------


def _utc(seconds: Any) -> pd.DatetimeIndex:
    """Epoch seconds (float array, NaN for missing) as tz-aware UTC nanosecond timestamps."""
    values = np.asarray(seconds, dtype=np.float64)
    nanos = np.round(values * 1e9)
    stamps = np.where(np.isnan(nanos), np.iinfo(np.int64).min, nanos).astype(np.int64)  # int64 min is NaT
    return pd.DatetimeIndex(stamps.view("M8[ns]")).tz_localize("UTC")


def _numbers(values: array[Any], dtype: Any) -> np.ndarray[Any, Any]:
    return np.frombuffer(values, dtype=dtype) if len(values) else np.empty(0, dtype=dtype)


def _category(codes: array[int], table: list[str]) -> pd.Categorical[Any]:
    """Codes into ``table`` (-1 for None) as a Categorical whose categories are sorted."""
    order = sorted(range(len(table)), key=table.__getitem__)
    remap = np.empty(len(table) + 1, dtype=np.int32)
    remap[np.asarray(order, dtype=np.intp)] = np.arange(len(table), dtype=np.int32)
    remap[-1] = -1
    raw = _numbers(codes, np.int32)
    categories = pd.Index([table[i] for i in order], dtype=STR)
    return pd.Categorical.from_codes(remap[raw], dtype=pd.CategoricalDtype(categories))


def _empty(columns: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in columns.items()})


# -- usage ---------------------------------------------------------------------------------------


def usage_frame(ledger: Ledger) -> pd.DataFrame:
    """One row per finished request, in ledger order (see the module docstring for dtypes)."""
    raw = ledger.raw_columns()
    cost = _numbers(raw.floats["cost_usd"], np.float64)
    data: dict[str, Any] = {}
    for name in USAGE_COLUMNS:
        if name in ("time", "started"):
            data[name] = _utc(_numbers(raw.floats[name], np.float64))
        elif name == "priced":
            data[name] = ~np.isnan(cost)
        elif name == "cost_usd":
            data[name] = cost
        elif name in raw.floats:
            data[name] = _numbers(raw.floats[name], np.float64)
        elif name in raw.ints:
            data[name] = _numbers(raw.ints[name], np.int64)
        elif name in raw.bools:
            data[name] = _numbers(raw.bools[name], np.int8).astype(bool)
        elif name in raw.codes:
            data[name] = _category(raw.codes[name], raw.tables[name])
        else:
            data[name] = pd.array(raw.texts[name], dtype=STR)
    return pd.DataFrame(data, copy=False)


def cost_summary_frame(ledger: Ledger, by: str | Sequence[str] = ("provider", "model")) -> pd.DataFrame:
    """Requests, errors, tokens and cost grouped ``by`` usage columns or "minute"/"hour"/"day"/"month".

    ``cost_usd`` sums the priced requests (NaN when none in the group was priced);
    ``unpriced_requests`` counts the successful requests whose price is unknown.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise ValueError("cost_summary_frame: 'by' needs at least one column")
    usage = usage_frame(ledger)
    frame = pd.DataFrame({key: _group_key(usage, key) for key in keys})
    frame["_error"] = (usage["status"] == "error").to_numpy()
    frame["_unpriced"] = (~usage["priced"] & (usage["status"] == "ok")).to_numpy()
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "cached",
                 "cost_saved_usd"):
        frame[name] = usage[name]
    grouped = frame.groupby(keys, observed=True, dropna=False, sort=True)
    out = pd.DataFrame({
        "requests": grouped.size(),
        "errors": grouped["_error"].sum(),
        "input_tokens": grouped["input_tokens"].sum(),
        "output_tokens": grouped["output_tokens"].sum(),
        "cache_read_tokens": grouped["cache_read_tokens"].sum(),
        "cache_write_tokens": grouped["cache_write_tokens"].sum(),
        "cost_usd": grouped["cost_usd"].sum(min_count=1),
        "unpriced_requests": grouped["_unpriced"].sum(),
        "cached_requests": grouped["cached"].sum(),
        "cost_saved_usd": grouped["cost_saved_usd"].sum(),
    }).reset_index()
    return out.astype(SUMMARY_COLUMNS)


def _group_key(usage: pd.DataFrame, key: str) -> pd.Series:
    if key in _TIME_KEYS:
        return usage["time"].dt.floor(_TIME_KEYS[key])
    if key == "month":
        naive = usage["time"].dt.tz_localize(None)
        return (naive - pd.to_timedelta(naive.dt.day - 1, unit="D")).dt.normalize().dt.tz_localize("UTC")
    if key not in usage.columns or key in ("request_id", "metadata", "prompt"):
        allowed = sorted([*_TIME_KEYS, "month", *(c for c in usage.columns if c not in ("request_id", "prompt"))])
        raise ValueError(f"cost_summary_frame: cannot group by {key!r}; expected one of {allowed}")
    return usage[key]


def latency_frame(ledger: Ledger, freq: str = "10s") -> pd.DataFrame:
    """Per time bucket (``freq``, a pandas offset like "10s", "1min") and provider: requests, errors,
    and the 50th/95th percentile latency of the successful requests. Sorted by time, then provider."""
    usage = usage_frame(ledger)
    if usage.empty:
        return _empty(LATENCY_COLUMNS)
    ok = (usage["status"] == "ok").to_numpy()
    frame = pd.DataFrame({
        "time": usage["time"].dt.floor(freq),
        "provider": usage["provider"],
        "_error": (usage["status"] == "error").to_numpy(),  # a cancelled request is not an error
        "_latency": usage["latency_s"].where(ok),
    })
    grouped = frame.groupby(["time", "provider"], observed=True, dropna=False, sort=True)
    quantiles = grouped["_latency"].quantile(np.array([0.5, 0.95])).unstack()
    out = pd.DataFrame({
        "requests": grouped.size(),
        "errors": grouped["_error"].sum(),
        "latency_p50_s": quantiles[0.5],
        "latency_p95_s": quantiles[0.95],
    }).reset_index()
    return out.astype({k: v for k, v in LATENCY_COLUMNS.items() if k != "provider"})


# -- health and events --------------------------------------------------------------------------


def health_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``HealthMonitor.rows()`` as a frame: one row per provider, ``last_check`` as UTC time."""
    if not rows:
        return _empty(HEALTH_COLUMNS)
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in HEALTH_COLUMNS]
    data: dict[str, Any] = {}
    for name, dtype in HEALTH_COLUMNS.items():
        values = [r.get(name) for r in rows]
        if name == "last_check":
            data[name] = _utc([np.nan if v is None else v for v in values])
        elif dtype == "float64":
            data[name] = pd.array([np.nan if v is None else v for v in values], dtype="float64")
        elif dtype in ("int64", "bool"):
            data[name] = pd.array([v or 0 for v in values], dtype=dtype)
        else:
            data[name] = pd.array(values, dtype=dtype)
    for name in extra:
        data[name] = [r.get(name) for r in rows]
    return pd.DataFrame(data)


def events_frame(events: list[Event]) -> pd.DataFrame:
    """Events as rows: seq, time (UTC), kind, provider, request_id, then one column per detail key
    (a detail key that clashes with those five is prefixed ``detail_``)."""
    if not events:
        return _empty(EVENT_COLUMNS)
    keys = list(dict.fromkeys(k for e in events for k in e.detail))
    data: dict[str, Any] = {
        "seq": pd.array([e.seq for e in events], dtype="int64"),
        "time": _utc([e.time for e in events]),
        "kind": pd.array([e.kind for e in events], dtype=STR),
        "provider": pd.array([e.provider for e in events], dtype=STR),
        "request_id": pd.array([e.request_id for e in events], dtype=STR),
    }
    for key in keys:
        column = f"detail_{key}" if key in EVENT_COLUMNS else key
        data[column] = pd.Series([e.detail.get(key) for e in events]).infer_objects()
    return pd.DataFrame(data)
