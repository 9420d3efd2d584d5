"""llmkit: one routing client for LLM providers, built for notebooks.

    >>> import llmkit
    >>> client = llmkit.Client()           # keys from the environment, else the offline mock
    >>> client.completion(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]).content

Heavy libraries (pandas, panel, genai-prices) are imported on first use, so ``import llmkit`` is fast.
"""

from __future__ import annotations

from ._client import Client
from ._config import ProviderConfig
from ._errors import (
    AllProvidersFailedError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    CircuitOpenError,
    ClientClosedError,
    ConfigError,
    ContentFilterError,
    ContextWindowExceededError,
    InvalidRequestError,
    LLMError,
    NoProviderError,
    NotFoundError,
    OutputValidationError,
    OverloadedError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    QuotaExceededError,
    RateLimitError,
    RequestTimeoutError,
    ResultLimitError,
    ServerError,
    UnsupportedArgumentError,
)
from ._types import Attempt, EmbeddingResponse, Request, Response, StreamChunk, ToolCall, Usage

__version__ = "0.1.0"


def enable_nested_asyncio() -> None:
    """Opt in to nest-asyncio, for code that calls ``asyncio.run`` inside a notebook cell.

    llmkit itself never needs it (its sync API runs on a private loop thread). This patches asyncio
    process-wide, so it is off unless you call it.
    """
    import nest_asyncio

    nest_asyncio.apply()


__all__ = [
    "AllProvidersFailedError",
    "Attempt",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "CircuitOpenError",
    "Client",
    "ClientClosedError",
    "ConfigError",
    "ContentFilterError",
    "ContextWindowExceededError",
    "EmbeddingResponse",
    "InvalidRequestError",
    "LLMError",
    "NoProviderError",
    "NotFoundError",
    "OutputValidationError",
    "OverloadedError",
    "PermissionDeniedError",
    "ProviderConfig",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeoutError",
    "QuotaExceededError",
    "RateLimitError",
    "Request",
    "RequestTimeoutError",
    "Response",
    "ResultLimitError",
    "ServerError",
    "StreamChunk",
    "ToolCall",
    "UnsupportedArgumentError",
    "Usage",
    "__version__",
    "enable_nested_asyncio",
]
