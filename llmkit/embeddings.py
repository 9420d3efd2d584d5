"""Embeddings: ``client.embedding`` (one routed call) and ``client.embed`` (a column, batched).

An embedding call goes through the same chain as a completion (``Router.route_call``): providers
serving the model by priority, limits, breakers, retries, the budget, and one ledger record with
``kind="embedding"``. Fallback is restricted to embedding models that give vectors of the same
dimension (a known table, the mock's configured size, or ``dimensions=`` on models that take it), so
a fallback never mixes vector spaces in one column.

``embed`` deduplicates its texts, takes the ones a cache already holds (the ``EmbeddingCache`` hook:
two methods, ``get_many`` and ``put_many``, run off the loop thread; ``client_cache`` picks the client's),
cuts the rest into batches within every candidate
provider's limit, runs them concurrently, shows a tqdm bar, and puts the vectors back in input order.
numpy and pandas are imported here on first use only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import InvalidRequestError, ProviderError
from ._secrets import redact
from ._types import Attempt, EmbeddingResponse, Request
from ._validate import build_request, encodable
from .cache import ResponseCache
from .ledger.store import LedgerRecord
from .providers.base import Provider

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ._loop import ClientLoop
    from ._service import Service
    from .routing.router import Slot

#: Native vector sizes of well-known embedding models (for same-dimension fallback).
EMBEDDING_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536,
    "gemini-embedding-001": 3072, "text-embedding-004": 768, "embedding-001": 768,
    "nomic-embed-text": 768, "mxbai-embed-large": 1024, "all-minilm": 384, "bge-m3": 1024,
    "snowflake-arctic-embed": 1024,
}
#: Model families that take ``dimensions=`` (OpenAI) / ``outputDimensionality`` (Gemini).
RESIZABLE = ("text-embedding-3-", "gemini-embedding-")
DEFAULT_BATCH_SIZE = 256
DEFAULT_CONCURRENCY = 8
#: Arguments that do not change a vector (left out of the per-text cache key).
_NOT_IN_KEY = ("timeout", "priority", "metadata", "provider", "encoding_format")


class EmbeddingCache(Protocol):
    """Where ``embed`` looks texts up before sending them, and stores what it got.

    ``key`` names everything besides the text that changes the vector (``dimensions``, ``task_type``);
    ``get_many`` returns one vector (a sequence of floats) or None per text. Both are called on a worker
    thread (off the client's event loop), possibly several at once: an implementation must be thread-safe.
    """

    def get_many(self, model: str, key: str, texts: Sequence[str]) -> list[Any | None]: ...

    def put_many(self, model: str, key: str, texts: Sequence[str], vectors: Any) -> None: ...


class MemoryEmbeddingCache:
    """A per-client, in-process ``EmbeddingCache`` (the default until a persistent cache is wired in)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def get_many(self, model: str, key: str, texts: Sequence[str]) -> list[Any | None]:
        with self._lock:
            return [self._data.get((model, key, t)) for t in texts]

    def put_many(self, model: str, key: str, texts: Sequence[str], vectors: Any) -> None:
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                self._data[(model, key, text)] = vector

    def __len__(self) -> int:
        return len(self._data)


class PersistentEmbeddingCache:
    """The per-text ``EmbeddingCache`` on the client's response cache file (SQLite, or any cache backend):
    one entry per (model, parameters, text), keyed by SHA-256, holding the vector as float32 bytes."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    @staticmethod
    def _key(model: str, key: str, text: str) -> str:
        doc = "\x00".join(("embedding-v1", model, key, text)).encode("utf-8", "surrogatepass")
        return hashlib.sha256(doc).hexdigest()

    def get_many(self, model: str, key: str, texts: Sequence[str]) -> list[Any | None]:
        import numpy as np

        blobs = self.cache.get_blobs([self._key(model, key, t) for t in texts])
        return [None if b is None or len(b) % 4 else np.frombuffer(b, dtype=np.float32) for b in blobs]

    def put_many(self, model: str, key: str, texts: Sequence[str], vectors: Any) -> None:
        import numpy as np

        self.cache.put_blobs([(self._key(model, key, t), np.asarray(v, dtype=np.float32).tobytes())
                              for t, v in zip(texts, vectors, strict=True)])


def client_cache(config: Any, cache: ResponseCache) -> EmbeddingCache | None:
    """The per-text cache ``embed(cache=True)`` uses on a client, by the client's ``cache=`` and ``ledger=``:

    - ``cache=False``: none (nothing is kept, in memory or on disk);
    - no ``cache=`` setting and ``ledger=None`` (or ``":memory:"``): in memory, for this client's life;
    - otherwise the response cache's store: ``cache=`` (a file, ``":memory:"``, ``"redis"``, a backend), else
      ``cache.sqlite3`` beside the ledger file.
    """
    setting = getattr(config, "cache", None)
    if setting is False:
        return None
    if setting is None and getattr(config, "ledger", None) in (None, ":memory:"):
        return MemoryEmbeddingCache()
    return PersistentEmbeddingCache(cache)


# ----------------------------------------------------------------------------------------------
# one call


def build_embedding_request(model: Any, input: Any, **kwargs: Any) -> Request:
    """Validate an embedding call; ``InvalidRequestError`` before anything is sent."""
    texts = _texts(input, "input")
    named = {k: kwargs.pop(k) for k in ("timeout", "priority", "metadata", "provider") if k in kwargs}
    for bad in ("temperature", "max_tokens", "messages"):
        if bad in kwargs:
            raise InvalidRequestError(f"{bad}: not an argument of an embedding call")
    if kwargs.get("encoding_format", "float") not in ("float", "base64"):  # base64: decoded by the adapter
        raise InvalidRequestError(f"encoding_format: expected 'float' or 'base64', got {kwargs['encoding_format']!r}")
    base = build_request(model, [{"role": "user", "content": "-"}], extra=kwargs, **named)
    return dataclasses.replace(base, messages=(), extra={**base.extra, "input": tuple(texts)})


def _texts(value: Any, name: str, labels: Sequence[Any] | None = None) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, bytes) or not isinstance(value, Sequence) or not value:
        raise InvalidRequestError(f"{name}: expected a non-empty list of strings, got {type(value).__name__}")
    for i, text in enumerate(value):
        where = f"{name}[{labels[i]!r}]" if labels is not None else f"{name}[{i}]"
        if not isinstance(text, str):
            raise InvalidRequestError(f"{where}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidRequestError(f"{where}: empty text cannot be embedded")
    encodable(name, list(value))
    return list(value)


def dimension_of(provider: Provider, model: str, dimensions: Any = None) -> int | None:
    """The vector size ``provider`` gives for ``model`` (None when unknown)."""
    fixed = getattr(provider, "embedding_dimensions", None)
    if isinstance(fixed, int):
        return int(dimensions) if dimensions else fixed
    name = model.removeprefix("models/")
    if dimensions and name.startswith(RESIZABLE):
        return int(dimensions)
    return EMBEDDING_DIMENSIONS.get(name)


def embedding_candidates(service: Service, request: Request) -> list[tuple[Slot, str]]:
    """Providers that can embed the model, then fallbacks that give vectors of the same size."""
    pairs = [(s, m) for s, m in service.router.candidates(request.model, request.provider)
             if s.provider.supports_embeddings]
    if not pairs:
        raise InvalidRequestError(f"model {request.model!r}: no provider serving it supports embeddings")
    dims = request.extra.get("dimensions")
    primary = dimension_of(pairs[0][0].provider, pairs[0][1], dims)
    kept = []
    for slot, m in pairs:
        size = dimension_of(slot.provider, m, dims)
        # a known size must match (the asked model on another provider too); unknown: checked on the answer
        if (size is not None and size == primary) or (m == request.model and None in (size, primary)):
            kept.append((slot, m))
    return kept


def expected_dimension(service: Service, request: Request) -> int | None:
    """The vector size the first provider serving ``request`` gives (None when unknown)."""
    slot, model = embedding_candidates(service, request)[0]
    return dimension_of(slot.provider, model, request.extra.get("dimensions"))


def as_matrix(vectors: Any, count: int, provider: str | None) -> np.ndarray:
    """``count`` vectors of one length as a float32 matrix, else ``ProviderError`` (never numpy's ValueError)."""
    import numpy as np

    rows = list(vectors) if vectors is not None else []
    sizes = {len(v) if hasattr(v, "__len__") else -1 for v in rows}
    if len(rows) != count or len(sizes) > 1 or -1 in sizes:
        raise ProviderError(f"malformed embeddings: expected {count} vectors of one length, got {len(rows)} "
                            f"of sizes {sorted(sizes)}", provider=provider, code="malformed_embeddings")
    try:
        matrix = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ProviderError(f"malformed embeddings: {exc}", provider=provider, code="malformed_embeddings") from None
    if matrix.ndim != 2:
        raise ProviderError(f"malformed embeddings: expected {count} vectors of one length", provider=provider,
                            code="malformed_embeddings")
    return matrix


async def run_embedding(service: Service, request: Request) -> EmbeddingResponse:
    """Route one embedding request, price it, record it (``kind="embedding"``) and return it with
    ``vectors`` as a float32 numpy array."""
    candidates = embedding_candidates(service, request)
    t0, started = service.clock(), service.wallclock()
    attempts: list[Attempt] = []
    flight = service.flight()  # counted, ended by close() like a completion, its budget released at the end
    try:
        token = await flight.reserve(request)
        deadline = service._deadline_at(request, t0)

        async def call(provider: Provider, req: Request) -> EmbeddingResponse:
            return await provider.embed(req)

        response: EmbeddingResponse = await service._deadline(request, t0, attempts, service.router.route_call(
            request, attempts, deadline, call, service._rebudget(token, request), candidates))
        response.vectors = as_matrix(response.vectors, len(request.extra["input"]), response.provider)
        response.id, response.attempts = request.id, attempts
        response.latency_s = service.clock() - t0
        response.requested_model = request.model
        response.cost_usd = _cost(service, request, response)
    except BaseException as exc:
        closed = flight.closed_error(request, exc)
        await _record(service, request, None, closed or exc, attempts, started, t0)
        if closed is not None:
            raise closed from None
        raise
    else:  # recorded before the reservation is released (as ``Service.execute``): a shared budget settles
        # the cost with the release, and the local budget always counts the reservation or the spend
        flight.recording = True
        await _record(service, request, response, None, attempts, started, t0)
        return response
    finally:
        flight.end()


def _cost(service: Service, request: Request, response: EmbeddingResponse) -> float | None:
    slot = service.router.by_name.get(response.provider)
    price_id = slot.provider.price_provider_id if slot is not None else None
    cost = service.pricer.cost(response.provider, price_id, response.model, response.usage)
    if cost is None and response.model != request.model:
        cost = service.pricer.cost(response.provider, price_id, request.model, response.usage)
    return None if cost is None else float(cost)


async def _record(service: Service, request: Request, response: EmbeddingResponse | None, exc: BaseException | None,
                  attempts: list[Attempt], started: float, t0: float) -> None:
    common: dict[str, Any] = {
        "request_id": request.id, "time": service.wallclock(), "started": started, "requested_model": request.model,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "output_tokens": 0,
        "attempts": len(attempts), "stream": False, "priority": request.priority,
        "metadata": request.metadata or None, "session_id": service.session_id, "kind": "embedding",
    }
    if response is not None:
        record = LedgerRecord(
            provider=response.provider, model=response.model, status="ok", error_type=None, error_message=None,
            input_tokens=response.usage.input_tokens, usage_estimated=response.usage.estimated,
            cost_usd=response.cost_usd, latency_s=response.latency_s, fallback=response.fallback, **common)
    else:
        last = attempts[-1] if attempts else None
        cancelled = isinstance(exc, asyncio.CancelledError)  # by its caller (``aclose()`` records ClientClosedError)
        record = LedgerRecord(
            provider=last.provider if last else None, model=last.model if last else None,
            status="cancelled" if cancelled else "error", error_type=type(exc).__name__,
            error_message=f"request {request.id} cancelled by its caller" if cancelled else redact(str(exc))[:500],
            input_tokens=0,
            usage_estimated=False, cost_usd=0.0, latency_s=service.clock() - t0,
            fallback=len({a.provider for a in attempts}) > 1, **common)
    await service.commit(record, call="embedding")


# ----------------------------------------------------------------------------------------------
# a column


@dataclasses.dataclass
class EmbedStats:
    """What one ``embed`` run did (also in the result's ``attrs``)."""

    texts: int = 0
    unique: int = 0
    cached: int = 0
    requests: int = 0
    input_tokens: int = 0
    cost_usd: float | None = 0.0


async def embed_texts(service: Service, texts: list[str], model: str, *, batch_size: int | None = None,
                      max_concurrency: int | None = None, cache: EmbeddingCache | None = None,
                      on_batch: Callable[[int], None] | None = None, **kwargs: Any) -> tuple[np.ndarray, EmbedStats]:
    """Embed ``texts`` (in order) with ``model``: dedupe, cache, batch, run concurrently."""
    import numpy as np

    probe = build_embedding_request(model, texts[:1], **kwargs)  # validates every argument once
    candidates = embedding_candidates(service, probe)
    limit = min(s.provider.max_embedding_batch for s, _ in candidates)
    size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InvalidRequestError(f"batch_size: expected a positive integer, got {batch_size!r}")
    size = min(size, limit)
    concurrency = DEFAULT_CONCURRENCY if max_concurrency is None else max_concurrency
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise InvalidRequestError(f"max_concurrency: expected a positive integer, got {max_concurrency!r}")

    position: dict[str, int] = {}
    inverse = [position.setdefault(t, len(position)) for t in texts]
    unique = list(position)
    copies = [0] * len(unique)  # how many input texts each unique text stands for (the bar counts texts)
    for i in inverse:
        copies[i] += 1
    stats = EmbedStats(texts=len(texts), unique=len(unique))
    key = json.dumps({k: v for k, v in sorted(kwargs.items()) if k not in _NOT_IN_KEY}, sort_keys=True)
    loop = asyncio.get_running_loop()
    found: list[Any] = [None] * len(unique)
    if cache is not None:  # off the loop thread: a file or Redis read never stalls other requests
        found = list(await loop.run_in_executor(None, cache.get_many, model, key, unique))
    rows: list[Any] = list(found)
    todo = [i for i, v in enumerate(rows) if v is None]
    stats.cached = len(unique) - len(todo)
    if on_batch is not None and stats.cached:
        on_batch(sum(copies[i] for i, v in enumerate(rows) if v is not None))
    batches = [todo[i:i + size] for i in range(0, len(todo), size)]
    gate = asyncio.Semaphore(concurrency)
    dims: list[int] = []

    async def one(batch: list[int]) -> None:
        async with gate:
            request = build_embedding_request(model, [unique[i] for i in batch], **kwargs)
            response = await run_embedding(service, request)
        vectors = response.vectors
        if dims and vectors.shape[1] != dims[0]:
            raise ProviderError(f"embedding size changed within one embed call ({dims[0]} then "
                                f"{vectors.shape[1]}, from {response.provider}/{response.model})",
                                provider=response.provider, code="dimension_mismatch")
        dims.append(vectors.shape[1])
        for i, vector in zip(batch, vectors, strict=True):
            rows[i] = vector
        stats.requests += 1
        stats.input_tokens += response.usage.input_tokens
        stats.cost_usd = None if stats.cost_usd is None or response.cost_usd is None else \
            stats.cost_usd + response.cost_usd
        served = cache_model(response, model, candidates, kwargs.get("dimensions"))
        if cache is not None and served is not None:
            await loop.run_in_executor(None, cache.put_many, served, key, [unique[i] for i in batch], vectors)
        if on_batch is not None:
            on_batch(sum(copies[i] for i in batch))

    tasks = [asyncio.ensure_future(one(b)) for b in batches]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if len({len(v) for v in rows}) > 1:
        raise ProviderError(f"cached and fresh embeddings of {model!r} differ in size ({sorted({len(v) for v in rows})}"
                            "); client.clear_cache() empties the cache", code="dimension_mismatch")
    matrix = np.asarray(rows, dtype=np.float32) if rows else np.zeros((0, 0), dtype=np.float32)
    return matrix[np.asarray(inverse, dtype=np.intp)], stats


def cache_model(response: EmbeddingResponse, model: str, candidates: list[tuple[Slot, str]],
                dimensions: Any) -> str | None:
    """The model name to cache ``response``'s vectors under: the model that produced them; None (not cached)
    when the asked model answered from another provider whose vector size is not known to be the first's.
    So a fallback never puts vectors of another space under the asked model's name."""
    ok = [a for a in response.attempts if a.outcome == "ok"]
    produced = ok[-1].model if ok else response.model
    first_slot, first_model = candidates[0]
    if produced != model or response.provider == first_slot.name:
        return produced  # another model (same known size: see ``embedding_candidates``), or the first provider
    this = next((s for s, m in candidates if s.name == response.provider and m == model), None)
    size = dimension_of(this.provider, model, dimensions) if this is not None else None
    return model if size is not None and size == dimension_of(first_slot.provider, first_model, dimensions) else None


def _inputs(data: Any) -> tuple[list[str], Any]:
    """The texts of a Series, Index, array or list, and the index to put on the result (or None)."""
    index = getattr(data, "index", None)
    if callable(index):  # list.index: a plain list has no labels
        index = None
    if hasattr(data, "tolist") and not isinstance(data, (str, bytes)):
        values = data.tolist()
    elif isinstance(data, str) or not isinstance(data, Sequence):
        raise InvalidRequestError(f"embed: expected a pandas Series or a list of strings, got {type(data).__name__}")
    else:
        values = list(data)
    labels = list(index) if index is not None else None
    if not values:
        return [], index
    return _texts(values, "input", labels), index


def _frame(matrix: np.ndarray, index: Any, stats: EmbedStats, name: str | None) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame({"embedding": list(matrix)}, index=index)
    if name is not None:
        frame.index.name = name
    frame.attrs["embed"] = dataclasses.asdict(stats)
    return frame


def _progress(total: int, show: bool) -> Any:
    if not show or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="embedding", unit="text")


def embed(loop: ClientLoop, service: Service, data: Any, model: str, *, as_array: bool = False,
          progress: bool = True, cache: EmbeddingCache | None = None, **kwargs: Any) -> Any:
    """``client.embed``: run ``embed_texts`` on the client's loop and shape the result."""
    texts, index = _inputs(data)
    bar = _progress(len(texts), progress)
    try:
        matrix, stats = loop.run(embed_texts(service, texts, model, cache=cache,
                                             on_batch=bar.update if bar is not None else None, **kwargs)) \
            if texts else _empty()
    finally:
        if bar is not None:
            bar.close()
    return matrix if as_array else _frame(matrix, index, stats, getattr(index, "name", None))


async def aembed(loop: ClientLoop, service: Service, data: Any, model: str, *, as_array: bool = False,
                 progress: bool = True, cache: EmbeddingCache | None = None, **kwargs: Any) -> Any:
    """``client.aembed``: ``embed`` for async code."""
    texts, index = _inputs(data)
    bar = _progress(len(texts), progress)
    try:
        matrix, stats = (await loop.arun(embed_texts(service, texts, model, cache=cache,
                                                     on_batch=bar.update if bar is not None else None, **kwargs))
                         if texts else _empty())
    finally:
        if bar is not None:
            bar.close()
    return matrix if as_array else _frame(matrix, index, stats, getattr(index, "name", None))


def _empty() -> tuple[np.ndarray, EmbedStats]:
    import numpy as np

    return np.zeros((0, 0), dtype=np.float32), EmbedStats()


__all__ = ["EMBEDDING_DIMENSIONS", "EmbeddingCache", "MemoryEmbeddingCache", "aembed", "build_embedding_request",
           "dimension_of", "embed", "embed_texts", "run_embedding"]
