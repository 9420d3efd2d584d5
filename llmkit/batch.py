"""Batch over a DataFrame: ``client.map`` / ``client.amap``.

Owns turning the inputs into one request per row, running the rows on the client's loop, and the
result frame:

- **Inputs** (``plan``): a pandas Series (each value fills ``{}`` in ``prompt``, or is the user
  message when ``prompt`` is None), a DataFrame (``prompt`` names its columns as ``{col}``), or a list
  of strings or of message lists. ``{{``/``}}`` are literal braces, and braces around text that is not
  a name (a JSON example in a prompt) stay as they are. A template naming a missing column fails with
  ``InvalidRequestError`` before anything is sent; a missing cell (None, NaN, NA) fails its own row.
- **Running** (``_Batch``): at most ``max_concurrency`` rows in flight (default: the serving
  provider's own cap), each an ordinary request (its own ledger record, tagged with
  ``meta.batch`` and ``meta.row``) that waits out an open breaker or a server pause within its
  timeout (``Request.wait_for_breaker``), so a short outage costs time, not rows. A failed row keeps
  its error; ``on_error="raise"`` cancels the rest and raises the first error.
- **Progress**: a ``tqdm.auto`` bar (a widget in Jupyter, text in a terminal) with done/total,
  failed, cached and dollars so far, updated from the caller's thread; running batches are also in
  ``client.monitor.batches()`` (the dashboard shows them).
- **Interrupt**: Ctrl-C during ``map`` (or cancelling ``amap``) cancels what is in flight and sends
  nothing more, within a second. Every finished row is already in the ledger (and the response cache,
  with ``cache=True``). ``map`` then raises ``BatchInterrupted`` (a ``KeyboardInterrupt``) whose
  ``partial`` holds the frame so far, unfinished rows ``status="cancelled"``; ``amap`` re-raises the
  cancellation. Running the same call again sends only the unfinished rows (from the cache).

pandas is imported on first use only, like everywhere in llmkit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ._errors import InvalidRequestError
from .monitor import BatchProgress, track_batch, untrack_batch

if TYPE_CHECKING:
    import pandas as pd

    from ._client import Client
    from ._loop import ClientLoop

__all__ = ["COLUMNS", "BatchInterrupted", "Plan", "amap", "map_rows", "plan"]


#: The result's columns, in order (``parsed`` and the response model's fields follow when asked).
COLUMNS = ("content", "status", "error_type", "error", "provider", "model", "input_tokens", "output_tokens",
           "cost_usd", "latency_s", "cached", "request_id")
STATUSES = ("ok", "error", "cancelled")
POLL_S = 0.1  # how often the caller's thread refreshes the progress bar and checks for Ctrl-C
STOP_WAIT_S = 1.0  # how long an interrupt waits for in-flight rows to be recorded as cancelled


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``client.map``. ``partial`` is the result so far (unfinished rows ``cancelled``);
    finished rows are in the ledger and, with ``cache=True``, in the cache: run the call again to resume."""

    def __init__(self, message: str, partial: pd.DataFrame) -> None:
        super().__init__(message)
        self.partial = partial


# ----------------------------------------------------------------------------------------------
# inputs -> rows


class Plan:
    """The rows of one batch, built before anything is sent: messages (None for a row that failed
    validation, whose error is in ``invalid``), metadata, and the input's index."""

    __slots__ = ("index", "invalid", "messages", "metadata", "n")

    def __init__(self, index: pd.Index, messages: list[list[dict[str, Any]] | None],
                 metadata: list[dict[str, Any]], invalid: dict[int, str]) -> None:
        self.index = index
        self.messages = messages
        self.metadata = metadata
        self.invalid = invalid
        self.n = len(messages)


_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_NAME_LIKE = re.compile(r"^[\w][\w .\-]*$")  # what a column reference looks like (JSON does not)


class _Template:
    """``prompt`` split into literal text and fields: ``{}`` (the value) or ``{col}`` (a column)."""

    __slots__ = ("fields", "format", "parts")

    def __init__(self, prompt: str, names: Mapping[str, Any], value_names: frozenset[str]) -> None:
        parts: list[str | tuple[Any, ...]] = []  # text, or ("value",) / ("col", key)
        fields: list[Any] = []
        last = 0
        for m in _FIELD.finditer(prompt):
            parts.append(prompt[last:m.start()])
            last = m.end()
            token = m.group(0)
            if token in ("{{", "}}"):
                parts.append(token[0])
                continue
            name = m.group(1).strip()
            if name == "" or name in value_names:
                parts.append(("value",))
                fields.append(None)
            elif name in names:
                parts.append(("col", names[name]))
                fields.append(names[name])
            elif _NAME_LIKE.match(name):
                known = ", ".join(repr(k) for k in names) or "none: the input is not a DataFrame"
                raise InvalidRequestError(f"prompt: {{{name}}} names no column of the input (columns: {known}); "
                                          "nothing was sent")
            else:
                parts.append(token)  # not a field: braces in the prompt's own text (a JSON example)
        parts.append(prompt[last:])
        self.parts = [p for p in parts if p != ""]
        self.fields = fields
        # the same as a str.format pattern (one C call a row): literal braces doubled, fields positional
        self.format = "".join(p.replace("{", "{{").replace("}", "}}") if isinstance(p, str) else f"{{{k}}}"
                              for k, p in _numbered(self.parts))

    def render(self, value: Any, columns: Mapping[Any, list[Any]], i: int) -> str:
        """The prompt for row ``i``: ``{}`` filled with ``value``, ``{col}`` with ``columns[col][i]``."""
        cells = []
        for column in self.fields:
            cell = value if column is None else columns[column][i]
            if type(cell) is not str:
                if _is_missing(cell):
                    raise _Missing("the value" if column is None else f"column {str(column)!r}")
                cell = str(cell)
            cells.append(cell)
        return self.format.format(*cells)


def _numbered(parts: list[str | tuple[Any, ...]]) -> Iterator[tuple[int, str | tuple[Any, ...]]]:
    """Each part with the position of its field among the fields (text parts get -1)."""
    k = 0
    for part in parts:
        if isinstance(part, str):
            yield -1, part
        else:
            yield k, part
            k += 1


class _Missing(Exception):
    def __init__(self, where: str) -> None:
        super().__init__(f"{where} is missing (None/NaN); the row was not sent")


def _is_missing(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return value is None
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (list, tuple, dict)):
        return False
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _is_messages(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, Mapping) for m in value)


def _jsonable(value: Any) -> Any:
    """An index label or cell as JSON for the ledger's metadata (tuples of a MultiIndex as lists)."""
    if type(value) in (str, int) or value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        with contextlib.suppress(Exception):
            return _jsonable(item())
    iso = getattr(value, "isoformat", None)  # Timestamp, datetime, date
    if callable(iso):
        return str(iso())
    return str(value)


def plan(inputs: Any, *, prompt: str | None = None, system: str | None = None,
         metadata: Any = None, batch_id: str = "") -> Plan:
    """The rows of a batch, or ``InvalidRequestError`` (nothing sent) when the call itself is malformed."""
    import pandas as pd

    if prompt is not None and not isinstance(prompt, str):
        raise InvalidRequestError("prompt: expected a string with {} or {column} fields, "
                                  f"got {type(prompt).__name__}")
    if system is not None and not isinstance(system, str):
        raise InvalidRequestError(f"system: expected a string, got {type(system).__name__}")
    if isinstance(inputs, pd.DataFrame):
        index = inputs.index
        if prompt is None:
            raise InvalidRequestError("prompt: a DataFrame needs prompt=..., naming its columns as {column}; "
                                      f"columns: {[str(c) for c in inputs.columns]}")
        names = {str(c): c for c in inputs.columns}
        template: _Template | None = _Template(prompt, names, frozenset())
        if None in template.fields:  # type: ignore[union-attr]
            raise InvalidRequestError("prompt: {} (the value) needs a Series or a list; with a DataFrame name "
                                      "the columns, e.g. {" + (next(iter(names), "col")) + "}")
        columns = {c: inputs[c].tolist() for c in dict.fromkeys(template.fields)}  # type: ignore[union-attr]
        values: list[Any] = list(range(len(inputs)))
        row_of: Callable[[int], Any] = _frame_rows(inputs)
    elif isinstance(inputs, pd.Series):
        index = inputs.index
        values = inputs.tolist()
        value_names = frozenset({str(inputs.name)}) if inputs.name is not None else frozenset()
        template = _Template(prompt, {}, value_names) if prompt is not None else None
        columns = {}
        row_of = values.__getitem__
    elif isinstance(inputs, (list, tuple)):
        values = list(inputs)
        index = pd.RangeIndex(len(values))
        template = _Template(prompt, {}, frozenset()) if prompt is not None else None
        columns = {}
        row_of = values.__getitem__
    else:
        raise InvalidRequestError("inputs: expected a pandas Series, a DataFrame, or a list of strings or of "
                                  f"message lists, got {type(inputs).__name__}")
    meta_of = _metadata(metadata, inputs, columns)
    messages: list[list[dict[str, Any]] | None] = []
    metas: list[dict[str, Any]] = []
    invalid: dict[int, str] = {}
    head = [{"role": "system", "content": system}] if system is not None else []
    frame = isinstance(inputs, pd.DataFrame)
    labels = index.tolist()
    for i, value in enumerate(values):
        label = labels[i]
        metas.append({"batch": batch_id, "row": label if type(label) in (str, int) else _jsonable(label)})
        try:
            if frame:
                assert template is not None
                messages.append([*head, {"role": "user", "content": template.render(None, columns, i)}])
            elif type(value) is str:
                text = template.render(value, columns, i) if template is not None else value
                messages.append([*head, {"role": "user", "content": text}])
            elif _is_messages(value):
                if template is not None:
                    raise InvalidRequestError("prompt: not used with message lists; put the text in the messages")
                has_system = any(m.get("role") == "system" for m in value)
                messages.append([*([] if has_system else head), *(dict(m) for m in value)])
            elif _is_missing(value):
                raise _Missing("the value")
            else:
                text = template.render(value, columns, i) if template is not None else str(value)
                messages.append([*head, {"role": "user", "content": text}])
            if meta_of is not None:
                metas[-1] = {**metas[-1], **meta_of(i, row_of)}
        except _Missing as exc:
            messages.append(None)
            invalid[i] = f"row {labels[i]!r}: {exc}"
    return Plan(index, messages, metas, invalid)


def _frame_rows(df: pd.DataFrame) -> Callable[[int], dict[str, Any]]:
    """Row ``i`` of ``df`` as a dict of column -> value (built once, on first use: cheap per row)."""
    records: list[dict[str, Any]] = []

    def row(i: int) -> dict[str, Any]:
        if not records:
            records.extend({str(k): v for k, v in r.items()} for r in df.to_dict("records"))
        return records[i]

    return row


def _metadata(metadata: Any, inputs: Any, columns: dict[Any, list[Any]]
              ) -> Callable[[int, Callable[[int], Any]], dict[str, Any]] | None:
    """Per-row metadata: a dict (the same for every row), a callable taking the row (a DataFrame row as a
    dict of its values, else the value) and returning a dict, or a column name (its value, by that name)."""
    import pandas as pd

    if metadata is None:
        return None
    if isinstance(metadata, Mapping):
        fixed = dict(metadata)
        return lambda i, row_of: fixed
    if isinstance(metadata, str):
        if not isinstance(inputs, pd.DataFrame) or metadata not in inputs.columns:
            raise InvalidRequestError(f"metadata: {metadata!r} names no column of the input; pass a dict, a "
                                      "callable taking the row, or a column name of a DataFrame")
        values = inputs[metadata].tolist()
        return lambda i, row_of: {metadata: _jsonable(values[i])}
    if callable(metadata):
        def call(i: int, row_of: Callable[[int], Any]) -> dict[str, Any]:
            out = metadata(row_of(i))
            if not isinstance(out, Mapping):
                raise InvalidRequestError(f"metadata: the callable returned {type(out).__name__}, expected a dict")
            return dict(out)

        return call
    raise InvalidRequestError(f"metadata: expected a dict, a callable or a column name, got {type(metadata).__name__}")


# ----------------------------------------------------------------------------------------------
# running


@functools.cache
def _features(client_type: Any) -> tuple[bool, bool]:
    """Whether this llmkit has the response cache and structured output (detected once): then ``cache=``
    and ``response_model=`` are passed on to every row's call."""
    package = sys.modules.get("llmkit")
    return hasattr(client_type, "cache_info"), "OutputValidationError" in getattr(package, "__all__", ())


class _Batch:
    """One batch's rows and results, run on the client's loop by ``run``; results as columns."""

    def __init__(self, client: Client, plan: Plan, model: str, kwargs: dict[str, Any], on_error: str,
                 concurrency: int, progress: BatchProgress) -> None:
        n = plan.n
        self.client = client
        self.plan = plan
        self.model = model
        self.kwargs = kwargs
        self.on_error = on_error
        self.concurrency = concurrency
        self.progress = progress
        progress.total = n
        self.status: list[str | None] = [None] * n
        self.content: list[str | None] = [None] * n
        self.error_type: list[str | None] = [None] * n
        self.error: list[str | None] = [None] * n
        self.provider: list[str | None] = [None] * n
        self.served: list[str | None] = [None] * n
        self.input_tokens = [0] * n
        self.output_tokens = [0] * n
        self.cost: list[float | None] = [0.0] * n
        self.latency: list[float] = [math.nan] * n
        self.cached = [False] * n
        self.request_id: list[str | None] = [None] * n
        self.parsed: list[Any] = [None] * n
        self.first_error: BaseException | None = None
        self.finished: concurrent.futures.Future[None] = concurrent.futures.Future()  # set when run() ends
        for i, message in plan.invalid.items():
            self._failed(i, InvalidRequestError(message))

    def _failed(self, i: int, exc: BaseException) -> None:
        from ._secrets import redact

        self.status[i] = "error"
        self.error_type[i] = type(exc).__name__
        self.error[i] = redact(str(exc))[:1000]
        self.provider[i] = getattr(exc, "provider", None)
        self.progress.failed += 1
        self.progress.done += 1

    async def run(self) -> None:
        """Run every pending row with at most ``concurrency`` in flight; cancelling this cancels them all
        (each in-flight row still ends in its ledger record) and sends nothing more."""
        rows = iter([i for i in range(self.plan.n) if self.status[i] is None])
        workers = [asyncio.ensure_future(self._worker(rows)) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            if not self.finished.done():
                self.finished.set_result(None)

    async def _worker(self, rows: Iterator[int]) -> None:
        for i in rows:
            await self._row(i)

    async def _row(self, i: int) -> None:
        messages = self.plan.messages[i]
        assert messages is not None
        try:
            resp = await self.client.acompletion(self.model, messages, metadata=self.plan.metadata[i],
                                                 wait_for_breaker=True, **self.kwargs)
        except asyncio.CancelledError:
            self.status[i] = "cancelled"
            raise
        except Exception as exc:
            self._failed(i, exc)
            if self.on_error == "raise":
                if self.first_error is None:
                    self.first_error = exc
                raise
            return
        self.status[i] = "ok"
        self.content[i] = resp.content
        self.provider[i] = resp.provider
        self.served[i] = resp.model
        self.input_tokens[i] = resp.usage.input_tokens
        self.output_tokens[i] = resp.usage.output_tokens
        self.cost[i] = resp.cost_usd
        self.latency[i] = resp.latency_s
        cached = bool(getattr(resp, "cached", False))
        self.cached[i] = cached
        self.request_id[i] = resp.id
        self.parsed[i] = getattr(resp, "parsed", None)
        p = self.progress
        p.done += 1
        p.cached += cached
        if resp.cost_usd:
            p.cost_usd += resp.cost_usd

    # -- the result --------------------------------------------------------------------------------

    def frame(self, response_model: Any = None) -> pd.DataFrame:
        import pandas as pd

        status = [s if s is not None else "cancelled" for s in self.status]
        data: dict[str, Any] = {
            "content": pd.array(self.content, dtype="string"),
            "status": pd.Categorical(status, categories=STATUSES),
            "error_type": pd.array(self.error_type, dtype="string"),
            "error": pd.array(self.error, dtype="string"),
            "provider": pd.array(self.provider, dtype="string"),
            "model": pd.array(self.served, dtype="string"),
            "input_tokens": pd.array(self.input_tokens, dtype="int64"),
            "output_tokens": pd.array(self.output_tokens, dtype="int64"),
            "cost_usd": pd.array([math.nan if c is None else c for c in self.cost], dtype="float64"),
            "latency_s": pd.array(self.latency, dtype="float64"),
            "cached": pd.array(self.cached, dtype="bool"),
            "request_id": pd.array(self.request_id, dtype="string"),
        }
        if response_model is not None:
            data.update(parsed_columns(response_model, self.parsed, taken=set(data)))
        out = pd.DataFrame(data, index=self.plan.index)
        out.attrs["batch_id"] = self.progress.batch_id
        out.attrs["model"] = self.model
        return out


def parsed_columns(response_model: Any, parsed: list[Any], taken: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """``parsed`` (the objects) and one typed column per top-level field of ``response_model`` (a pydantic
    model class; a ``Literal`` field becomes a categorical of its values). A field named like a result
    column gets a ``parsed_`` prefix."""
    import typing

    import pandas as pd

    out: dict[str, Any] = {"parsed": pd.Series(parsed, dtype="object").array}
    fields = getattr(response_model, "model_fields", None)
    if not isinstance(fields, Mapping):
        return out
    for name, info in fields.items():
        values = [_field(obj, name) for obj in parsed]
        annotation = getattr(info, "annotation", None)
        column = f"parsed_{name}" if name in taken or name == "parsed" else name
        if typing.get_origin(annotation) is Literal:
            out[column] = pd.Categorical(values, categories=list(typing.get_args(annotation)))
            continue
        series = pd.Series(values, dtype="object")
        if annotation in (int, float, bool, str):
            series = series.convert_dtypes()
        out[column] = series.array
    return out


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


# ----------------------------------------------------------------------------------------------
# the progress bar


class _Bar:
    """A ``tqdm.auto`` bar fed from a ``BatchProgress`` (called from the caller's thread)."""

    def __init__(self, progress: BatchProgress, option: bool | Mapping[str, Any], desc: str) -> None:
        self.progress = progress
        self.shown = 0
        self.bar: Any = None
        if not option:
            return
        with warnings.catch_warnings():  # tqdm.auto warns (once, on import) when ipywidgets is missing
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
        options = {"total": progress.total, "desc": desc, "unit": "row", "dynamic_ncols": True, "smoothing": 0.1,
                   **(option if isinstance(option, Mapping) else {})}
        self.bar = tqdm(**options)
        self.update()

    def update(self) -> None:
        bar = self.bar
        if bar is None:
            return
        p = self.progress
        done = p.done
        cost = p.cost_usd
        spent = f"${cost:,.4f}" if cost >= 0.01 or cost == 0 else f"${cost:.6f}"  # LLM calls cost fractions of a cent
        bar.set_postfix_str(f"failed={p.failed} cached={p.cached} {spent}", refresh=False)
        if done > self.shown:
            bar.update(done - self.shown)
            self.shown = done
        else:
            bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------------------------
# the two entry points


def _prepare(client: Client, inputs: Any, model: str, prompt: str | None, system: str | None,
             response_model: Any, max_concurrency: int | None, on_error: str, cache: Any,
             kwargs: dict[str, Any]) -> _Batch:
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(f"model: expected a non-empty model name, got {model!r}")
    if on_error not in ("record", "raise"):
        raise InvalidRequestError(f"on_error: expected 'record' or 'raise', got {on_error!r}")
    if max_concurrency is not None and (not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool)
                                        or max_concurrency < 1):
        raise InvalidRequestError(f"max_concurrency: expected a positive integer, got {max_concurrency!r}")
    for name in ("messages", "stream", "wait_for_breaker"):
        if name in kwargs:
            raise InvalidRequestError(f"{name}: not an argument of map; the rows are the messages")
    client_type: Any = type(client)
    has_cache, has_structured = _features(client_type)
    call = dict(kwargs)
    metadata = call.pop("metadata", None)
    if has_cache:
        call["cache"] = cache
    if response_model is not None:
        if not has_structured:
            raise InvalidRequestError("response_model: this llmkit has no structured output yet; "
                                      "nothing was sent")
        from .structured import check_model

        check_model(response_model)  # the same for every row: refused once, before anything is sent
        call["response_model"] = response_model
    candidates = client._service.router.candidates(model, call.get("provider"))  # NoProviderError before I/O
    progress = BatchProgress(0)
    rows = plan(inputs, prompt=prompt, system=system, metadata=metadata, batch_id=progress.batch_id)
    if on_error == "raise" and rows.invalid:
        raise InvalidRequestError(next(iter(rows.invalid.values())) + " (on_error='raise': nothing was sent)")
    cap = max_concurrency or candidates[0][0].config.max_concurrency
    pending = rows.n - len(rows.invalid)
    return _Batch(client, rows, model, call, on_error, min(cap, pending), progress)


def _interrupted(batch: _Batch, response_model: Any) -> BatchInterrupted:
    partial = batch.frame(response_model)
    done = int((partial["status"] != "cancelled").sum())
    message = (f"llmkit.map interrupted: {done} of {batch.plan.n} rows finished and are kept (in the ledger, "
               f"and in the response cache with cache=True); {batch.plan.n - done} cancelled, nothing more sent. "
               "Run the same call again to send only the unfinished rows; this exception's .partial holds "
               "the result so far.")
    return BatchInterrupted(message, partial)


def map_rows(client: Client, loop: ClientLoop, inputs: Any, *, model: str, prompt: str | None = None,
             system: str | None = None, response_model: Any = None, max_concurrency: int | None = None,
             on_error: str = "record", progress: bool | Mapping[str, Any] = True, cache: Any = True,
             **kwargs: Any) -> pd.DataFrame:
    """``client.map``: run the batch on the client's loop and wait here, refreshing the bar."""
    if loop.in_loop_thread():
        raise RuntimeError("client.map was called from llmkit's own event loop; use await client.amap(...)")
    batch = _prepare(client, inputs, model, prompt, system, response_model, max_concurrency, on_error, cache, kwargs)
    owner = client._service
    track_batch(owner, batch.progress)
    bar = _Bar(batch.progress, progress, "llmkit.map")
    future = loop.submit(batch.run())
    try:
        while True:
            try:
                future.result(POLL_S)
                break
            except concurrent.futures.TimeoutError:
                bar.update()
    except KeyboardInterrupt:
        future.cancel()
        with contextlib.suppress(BaseException):
            batch.finished.result(STOP_WAIT_S)
        bar.close()
        raise _interrupted(batch, response_model) from None
    except BaseException:
        future.cancel()
        raise
    finally:
        bar.close()
        untrack_batch(owner, batch.progress)
    if batch.first_error is not None:
        raise batch.first_error
    return batch.frame(response_model)


async def amap(client: Client, loop: ClientLoop, inputs: Any, *, model: str, prompt: str | None = None,
               system: str | None = None, response_model: Any = None, max_concurrency: int | None = None,
               on_error: str = "record", progress: bool | Mapping[str, Any] = True, cache: Any = True,
               **kwargs: Any) -> pd.DataFrame:
    """``client.amap``: like ``map``; cancelling it cancels the rows in flight and re-raises."""
    batch = _prepare(client, inputs, model, prompt, system, response_model, max_concurrency, on_error, cache, kwargs)
    owner = client._service
    track_batch(owner, batch.progress)
    bar = _Bar(batch.progress, progress, "llmkit.amap")
    job = asyncio.ensure_future(loop.arun(batch.run()))
    try:
        while not job.done():
            await asyncio.wait({job}, timeout=POLL_S)
            bar.update()
        job.result()
    except BaseException:
        job.cancel()
        raise
    finally:
        bar.close()
        untrack_batch(owner, batch.progress)
    return batch.frame(response_model)
