"""Ledger records, health rows and events as pandas DataFrames: the only module that imports pandas.

Import it on first use (``client.usage()`` does), never from ``llmkit/__init__``. Every builder returns
the same column names and dtypes whether there are no rows or a million:

- times are ``datetime64[ns, UTC]``;
- low-cardinality strings (provider, model, status, error type) are ``category`` with sorted categories;
- other text is pandas' string dtype, missing as NaN; ``metadata`` holds the compact JSON the ledger
  stores (``df.metadata.map(json.loads, na_action="ignore")`` gives dicts);
- ``cost_usd`` is NaN for an unpriced request, never 0, and ``priced`` says which is which;
- each metadata key becomes a column ``meta.<key>`` after the built-in ones, in order of first
  appearance, with a dtype from its values: ``Int64`` (all integers), ``float64`` (numbers),
  ``boolean``, the string dtype, or ``object`` when mixed; missing is NA.

Which records: a ``Selection`` (``llmkit.ledger.queries``: a time range, one session or all). This
session's records come from the ledger's memory while it still holds all of them; anything else is
read from the ledger file with SQL, and ``cost_summary_frame`` groups there (``GROUP BY``), or over
the file's day totals when the grouping allows (provider, model, day, month over every session).
Without a selection, a frame covers what the ledger holds in memory.
"""

from __future__ import annotations

import contextlib
import gc
import json
from array import array
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from ._errors import InvalidRequestError
from .ledger.queries import DAILY_KEYS, META, SUMS, TIME_KEYS, Selection, day_span
from .ledger.store import BOOLS, CODED, FIELDS, FLOATS, INTS

if TYPE_CHECKING:
    from ._events import Event
    from .ledger.blocks import Block
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


def _category(codes: array[int] | np.ndarray[Any, Any], table: list[str]) -> pd.Categorical[Any]:
    """Codes into ``table`` (-1 for None) as a Categorical whose categories are sorted."""
    order = sorted(range(len(table)), key=table.__getitem__)
    remap = np.empty(len(table) + 1, dtype=np.int32)
    remap[np.asarray(order, dtype=np.intp)] = np.arange(len(table), dtype=np.int32)
    remap[-1] = -1
    raw = _numbers(codes, np.int32) if isinstance(codes, array) else codes
    categories = pd.Index([table[i] for i in order], dtype=STR)
    return pd.Categorical.from_codes(remap[raw], dtype=pd.CategoricalDtype(categories))


def _empty(columns: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in columns.items()})


# -- usage ---------------------------------------------------------------------------------------


def usage_frame(ledger: Ledger, selection: Selection | None = None) -> pd.DataFrame:
    """One row per finished request in ``selection``, oldest first (see the module docstring)."""
    if _in_memory(ledger, selection):
        frame = _memory_frame(ledger)
        if selection is not None:
            frame = _select(frame, selection)
    else:
        with _gc_paused():  # millions of fresh row tuples would set off full collections over and over
            frame = _sql_frame(ledger, selection or Selection())
    return _with_meta(frame)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _in_memory(ledger: Ledger, selection: Selection | None) -> bool:
    """Can ``selection`` be answered from memory? Yes without a file, or for this ledger's own session
    while memory still holds all of it; no for other sessions or a session past the memory window."""
    if ledger.history is None or selection is None:
        return True
    return (selection.session_id is not None and selection.session_id == ledger.session_id
            and ledger.first_held == 0)


def _select(frame: pd.DataFrame, sel: Selection) -> pd.DataFrame:
    seconds = frame["time"].to_numpy(dtype="int64") / 1e9
    keep = np.ones(len(frame), dtype=bool)
    if sel.since is not None:
        keep &= seconds >= sel.since
    if sel.until is not None:
        keep &= seconds < sel.until
    if sel.session_id is not None:
        keep &= (frame["session_id"] == sel.session_id).to_numpy(dtype=bool, na_value=False)
    return frame if keep.all() else frame[keep].reset_index(drop=True)


_NUMERIC = [n for n in FIELDS if n in FLOATS or n in INTS or n in BOOLS]
_TEXT = [n for n in FIELDS if n not in _NUMERIC]


def _sql_frame(ledger: Ledger, sel: Selection, names: list[str] | None = None) -> pd.DataFrame:
    """The selected records read from the file: column blocks (``ledger.blocks``) for the older records
    when the selection spans sessions, then the rows past them (numbers as one float matrix, text
    transposed), concatenated in SQL's order."""
    assert ledger.history is not None
    wanted = set(names or USAGE_COLUMNS)
    numeric = [n for n in _NUMERIC if n in wanted or (n == "cost_usd" and "priced" in wanted)
               or (n == "time" and (sel.since is not None or sel.until is not None))]
    text = [n for n in _TEXT if n in wanted]
    floats = [n for n in numeric if n in FLOATS]
    ints = [n for n in numeric if n not in FLOATS]  # read as integers: exact past 2**53
    packed, (float_rows, int_rows, text_rows) = ledger.history.columns(sel, [floats, ints, text])
    float_matrix = np.array(float_rows, dtype=np.float64).reshape(len(float_rows), len(floats))
    int_matrix = _int_matrix(int_rows, len(ints))
    texts = list(zip(*text_rows, strict=True)) if text_rows else [()] * len(text)
    keep = [_in_range(block, sel) for block in packed]
    columns = _Columns(packed, keep)
    data: dict[str, Any] = {}
    for name in [*numeric, *text]:
        if name in floats:
            data[name] = columns.numbers(name, float_matrix[:, floats.index(name)])
        elif name in ints:
            data[name] = columns.numbers(name, int_matrix[:, ints.index(name)])
        elif name in CODED:
            data[name] = columns.codes(name, texts[text.index(name)])
        else:
            data[name] = columns.texts(name, texts[text.index(name)])
    if packed and (sel.since is not None or sel.until is not None):  # SQL's order: time, then id
        order = np.argsort(data["time"], kind="stable")
        data = {name: _take(values, order) for name, values in data.items()}
    out: dict[str, Any] = {}
    for name in USAGE_COLUMNS:
        if name not in wanted:
            continue
        if name == "priced":
            out[name] = ~np.isnan(data["cost_usd"])
        elif name in ("time", "started"):
            out[name] = _utc(data[name])
        elif name in BOOLS:
            out[name] = data[name].astype(bool)
        elif name in CODED:
            codes, table = data[name]
            out[name] = _category(codes, table)
        elif name in numeric:
            out[name] = data[name]
        else:
            out[name] = pd.array(data[name], dtype=STR)
    return pd.DataFrame(out, columns=[n for n in USAGE_COLUMNS if n in wanted], copy=False)




def _int_matrix(rows: list[tuple[Any, ...]], width: int) -> np.ndarray[Any, Any]:
    """Integer columns read from SQL as int64 (a REAL someone wrote into one is truncated, as before)."""
    try:
        return np.array(rows, dtype=np.int64).reshape(len(rows), width)
    except (TypeError, ValueError, OverflowError):  # beyond 64 bits, or not a number: as floats
        return np.array(rows, dtype=np.float64).reshape(len(rows), width).astype(np.int64)


def _in_range(block: Block, sel: Selection) -> np.ndarray[Any, Any] | None:
    """Which of ``block``'s rows ``sel``'s time range keeps (None: all of them)."""
    link = block.link
    if (sel.since is None or link.t_min >= sel.since) and (sel.until is None or link.t_max < sel.until):
        return None
    seconds = np.frombuffer(block.raw("time")[1], dtype="<f8")
    keep = np.ones(len(seconds), dtype=bool)
    if sel.since is not None:
        keep &= seconds >= sel.since
    if sel.until is not None:
        keep &= seconds < sel.until
    return keep


_DTYPES = {"d": "<f8", "q": "<i8", "i": "<i4", "h": "<i2", "b": "<i1"}


class _Columns:
    """One column at a time from column blocks (with their row masks) followed by rows read from SQL."""

    def __init__(self, packed: list[Block], keep: list[np.ndarray[Any, Any] | None]) -> None:
        self.packed = packed
        self.keep = keep

    def _pieces(self, name: str) -> Iterator[np.ndarray[Any, Any]]:
        for block, keep in zip(self.packed, self.keep, strict=True):
            kind, raw = block.raw(name)
            values = np.frombuffer(raw, dtype=_DTYPES[kind])
            yield values if keep is None else values[keep]

    def numbers(self, name: str, tail: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        pieces = [*self._pieces(name), tail]
        if len(pieces) == 1:
            return np.ascontiguousarray(tail)  # not a view that keeps the whole matrix alive
        return np.concatenate(pieces).astype(tail.dtype, copy=False)

    def codes(self, name: str, tail: Sequence[Any]) -> tuple[np.ndarray[Any, Any], list[str]]:
        """Codes (-1 for None) into one table for every piece."""
        table: dict[str, int] = {}
        pieces: list[np.ndarray[Any, Any]] = []
        for block, raw in zip(self.packed, self._pieces(name), strict=True):
            remap = np.array([*(table.setdefault(v, len(table)) for v in block.table(name)), -1], dtype=np.int32)
            pieces.append(remap[raw])
        codes, uniques = pd.factorize(np.asarray(tail, dtype=object), use_na_sentinel=True)
        remap = np.array([*(table.setdefault(str(u), len(table)) for u in uniques), -1], dtype=np.int32)
        pieces.append(remap[codes.astype(np.intp)] if len(codes) else np.empty(0, dtype=np.int32))
        merged, values = np.concatenate(pieces), list(table)
        used = np.zeros(len(values) + 1, dtype=bool)
        used[merged] = True  # a value only in rows a time range dropped is no category
        if not used[:-1].all():
            keep = np.flatnonzero(used[:-1])
            compact = np.full(len(values) + 1, -1, dtype=np.int32)
            compact[keep] = np.arange(len(keep), dtype=np.int32)
            merged, values = compact[merged], [values[i] for i in keep]
        return merged, values

    def texts(self, name: str, tail: Sequence[Any]) -> np.ndarray[Any, Any]:
        """An object array, NaN for missing."""
        pieces: list[np.ndarray[Any, Any]] = []
        for block, keep in zip(self.packed, self.keep, strict=True):
            if block.kind(name) == "n":  # all missing
                values = np.full(block.rows, np.nan, dtype=object)
            else:
                values = np.empty(block.rows, dtype=object)
                texts, missing = block.texts(name)
                values[:] = texts
                values[values == missing if missing is not None else pd.isna(values)] = np.nan
            pieces.append(values if keep is None else values[keep])
        values = np.empty(len(tail), dtype=object)
        values[:] = tail
        values[pd.isna(values)] = np.nan
        pieces.append(values)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _take(values: Any, order: np.ndarray[Any, Any]) -> Any:
    if isinstance(values, tuple):  # (codes, table)
        return values[0][order], values[1]
    return values[order]


def _memory_frame(ledger: Ledger) -> pd.DataFrame:
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


# -- metadata columns ----------------------------------------------------------------------------


def _with_meta(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus a ``meta.<key>`` column per metadata key present (see the module docstring)."""
    present = frame["metadata"].notna().to_numpy()
    if not present.any():
        return frame
    where = np.flatnonzero(present)
    parsed = json.loads("[" + ",".join(frame["metadata"].to_numpy()[where]) + "]")  # one parse, not one per row
    dicts = parsed if set(map(type, parsed)) == {dict} else [d if isinstance(d, dict) else {} for d in parsed]
    keys = list(dicts[0]) if dicts else []  # in order of first appearance: the first row's keys, then
    if len(set().union(*dicts)) > len(keys):  # (only when other rows have more keys) a walk through them
        seen = set(keys)
        for d in dicts:
            if not seen.issuperset(d):
                for k in d:
                    if k not in seen:
                        seen.add(k)
                        keys.append(k)
    columns: dict[str, Any] = {}
    for key in keys:
        values = np.full(len(frame), None, dtype=object)
        try:  # every row has it (C speed); fromiter: a list value stays one object
            values[where] = np.fromiter(map(itemgetter(key), dicts), dtype=object, count=len(dicts))
        except KeyError:
            values[where] = np.fromiter((d.get(key) for d in dicts), dtype=object, count=len(dicts))
        columns[META + str(key)] = meta_series(values)
    return pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)


def meta_series(values: Sequence[Any] | np.ndarray[Any, Any]) -> pd.Series:
    """Metadata values (None or NaN for missing: JSON has no NaN) with the most specific dtype that holds
    them all: ``boolean``, ``Int64``, ``float64``, the string dtype, else ``object``."""
    array_ = values.copy() if isinstance(values, np.ndarray) else np.fromiter(values, dtype=object, count=len(values))
    missing = pd.isna(array_)
    kind = infer_dtype(array_, skipna=True)
    if kind == "boolean":
        array_[missing] = None
        return pd.Series(pd.array(array_, dtype="boolean"))
    if kind == "integer":
        try:
            data = np.where(missing, 0, array_).astype(np.int64)
        except OverflowError:  # beyond 64 bits: as floats (the SQL summaries' json_extract reads them so too)
            kind = "floating"
        else:
            return pd.Series(pd.arrays.IntegerArray(data, missing.astype(bool)))
    if kind in ("floating", "mixed-integer-float"):
        try:
            return pd.Series(np.where(missing, np.nan, array_).astype(np.float64))
        except OverflowError:  # an integer beyond a float's range: keep the values as they are
            pass
    if kind in ("string", "empty"):
        array_[missing] = np.nan
        return pd.Series(pd.array(array_, dtype=STR))
    array_[missing] = None
    return pd.Series(array_, dtype=object)


def cost_summary_frame(ledger: Ledger, by: str | Sequence[str] = ("provider", "model"),
                       selection: Selection | None = None) -> pd.DataFrame:
    """Requests, errors, tokens and cost of ``selection`` grouped ``by`` usage columns, time buckets
    ("minute", "hour", "day", "month") or metadata keys ("meta.<key>"), in any mix.

    ``cost_usd`` sums the priced requests (NaN when none in the group was priced);
    ``unpriced_requests`` counts the successful requests whose price is unknown. An unknown name raises
    ``InvalidRequestError`` (a ``ValueError``) listing the valid ones, metadata keys present included.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise InvalidRequestError("cost_summary: 'by' needs at least one column")
    for key in keys:
        if not isinstance(key, str) or (key not in _GROUPABLE and not key.startswith(META)):
            _unknown_key(ledger, selection, key)
    if _in_memory(ledger, selection):
        frame = _summary_in_memory(ledger, selection, keys)
    else:
        frame = _summary_in_sql(ledger, selection or Selection(), keys)
    return frame.astype(SUMMARY_COLUMNS)


_GROUPABLE = frozenset([*TIME_KEYS, "month",
                        *(c for c in USAGE_COLUMNS if c not in ("request_id", "metadata", "prompt"))])


def _unknown_key(ledger: Ledger, selection: Selection | None, key: Any) -> None:
    if _in_memory(ledger, selection):
        usage = usage_frame(ledger, selection)
        meta = [c for c in usage.columns if c.startswith(META)]
    else:
        assert ledger.history is not None
        meta = [META + k for k in ledger.history.meta_keys(selection or Selection())]
    raise InvalidRequestError(f"cost_summary: cannot group by {key!r}; expected a metadata key present "
                              f"{meta} or one of {sorted(_GROUPABLE)}")


def _summary_in_memory(ledger: Ledger, selection: Selection | None, keys: list[str]) -> pd.DataFrame:
    usage = usage_frame(ledger, selection)
    for key in keys:
        if key.startswith(META) and key not in usage.columns and len(usage):
            _unknown_key(ledger, selection, key)
    frame = pd.DataFrame({key: _group_key(usage, key) for key in keys})
    frame["_error"] = (usage["status"] == "error").to_numpy()
    frame["_unpriced"] = (~usage["priced"] & (usage["status"] == "ok")).to_numpy()
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "cached",
                 "cost_saved_usd"):
        frame[name] = usage[name]
    grouped = frame.groupby(keys, observed=True, dropna=False, sort=True)
    return pd.DataFrame({
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


def _summary_in_sql(ledger: Ledger, sel: Selection, keys: list[str]) -> pd.DataFrame:
    """GROUP BY in SQLite; over the day totals (pruned days included) when every key allows it and
    the question is about every session, with the partial days at the range's edges from the requests."""
    history = ledger.history
    assert history is not None
    meta = [k for k in keys if k.startswith(META)]
    if meta and history.count(sel):
        for key in meta:
            if not history.has_meta_key(sel, key[len(META):]):
                _unknown_key(ledger, sel, key)
    if sel.session_id is None and set(keys) <= DAILY_KEYS:
        day_from, day_to, edges = day_span(sel)
        rows = history.daily(keys, day_from, day_to)
        for edge in edges:
            rows += history.summary(edge, keys)
        regroup = True  # day totals, requests past them and the edges may share groups
    else:
        rows, regroup = history.summary(sel, keys), False
    columns = list(zip(*rows, strict=True)) if rows else [()] * (len(keys) + len(SUMS))
    data: dict[str, Any] = {key: _sql_key(key, list(columns[i])) for i, key in enumerate(keys)}
    for j, name in enumerate(SUMS):
        values = columns[len(keys) + j]
        data[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    out = pd.DataFrame(data)
    if regroup and len(out):
        grouped = out.groupby(keys, observed=True, dropna=False, sort=False)
        sums = {name: grouped[name].sum(min_count=1 if name == "cost_usd" else 0) for name in SUMS}
        out = pd.DataFrame(sums).reset_index()
    try:
        out = out.sort_values(keys, na_position="last", kind="stable")
    except TypeError:  # metadata values of mixed types do not sort: keep SQLite's order
        pass
    return out.reset_index(drop=True)


def _sql_key(key: str, values: list[Any]) -> Any:
    """A group-by column from SQLite values, with the dtype the same key has in ``usage_frame``."""
    if key in TIME_KEYS or key in ("month", "time", "started"):
        return _utc(np.array([np.nan if v is None else v for v in values], dtype=np.float64))
    if key.startswith(META):
        return meta_series(values)
    dtype = USAGE_COLUMNS[key]
    if dtype == "category":
        codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
        return _category(codes.astype(np.int32), [str(u) for u in uniques])
    if dtype == "bool":
        return np.array([bool(v) for v in values], dtype=bool)
    if dtype == "int64":
        return np.array(values, dtype=np.int64)
    if dtype == "float64":
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.array(values, dtype=STR)


def _group_key(usage: pd.DataFrame, key: str) -> pd.Series:
    if key in _TIME_KEYS:
        return usage["time"].dt.floor(_TIME_KEYS[key])
    if key == "month":
        naive = usage["time"].dt.tz_localize(None)
        return (naive - pd.to_timedelta(naive.dt.day - 1, unit="D")).dt.normalize().dt.tz_localize("UTC")
    if key.startswith(META) and key not in usage.columns:
        return pd.Series([], dtype=STR) if not len(usage) else usage[key]  # raises KeyError only if present
    return usage[key]


def latency_frame(ledger: Ledger, freq: str = "10s", selection: Selection | None = None) -> pd.DataFrame:
    """Per time bucket (``freq``, a pandas offset like "10s", "1min") and provider: requests, errors,
    and the 50th/95th percentile latency of the successful requests. Sorted by time, then provider."""
    if _in_memory(ledger, selection):
        usage = usage_frame(ledger, selection)
    else:
        usage = _sql_frame(ledger, selection or Selection(), ["time", "provider", "status", "latency_s"])
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


def events_frame(events: list[Event], kind: str | None = None) -> pd.DataFrame:
    """Events as rows: seq, time (UTC), kind, provider, request_id, then one column per detail key
    (a detail key that clashes with those five is prefixed ``detail_``). Events of one ``kind`` always
    have that kind's detail columns (``_events.DETAIL_KEYS``), even when no such event happened."""
    from ._events import DETAIL_KEYS

    fixed = DETAIL_KEYS.get(kind, ()) if kind is not None else ()
    if not events:
        columns = dict(EVENT_COLUMNS)
        for key in fixed:
            columns[f"detail_{key}" if key in EVENT_COLUMNS else key] = object
        return _empty(columns)
    keys = list(dict.fromkeys([*fixed, *(k for e in events for k in e.detail)]))
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
