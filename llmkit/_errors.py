"""The error tree. Every error llmkit raises derives from ``LLMError``::

    LLMError
    ├── ConfigError (ValueError)             bad config or bad call arguments, raised before any I/O
    │   └── InvalidRequestError              a call's messages/temperature/model are malformed
    ├── ProviderError                        a provider answered badly (.provider .status .code .retryable)
    │   ├── RateLimitError                   429 (retryable; .retry_after in seconds when sent)
    │   │   └── QuotaExceededError           insufficient_quota / spend cap (not retryable)
    │   ├── AuthenticationError              401 (misconfigured here: fall back, don't retry)
    │   │   └── PermissionDeniedError        403
    │   ├── BadRequestError                  400/422: malformed anywhere, fail fast
    │   │   ├── ContextWindowExceededError   prompt too long for this model: try another
    │   │   ├── ContentFilterError           blocked by the provider's safety/content filter: try another
    │   │   └── UnsupportedArgumentError     an argument this adapter can't send (also InvalidRequestError)
    │   ├── NotFoundError                    404 (model not found here)
    │   ├── ServerError                      5xx (retryable)
    │   │   └── OverloadedError              529 / overloaded_error (retryable)
    │   ├── ProviderTimeoutError             per-attempt timeout (retryable)
    │   └── ProviderConnectionError          refused / reset / malformed reply (retryable)
    ├── CircuitOpenError                     the provider's breaker is open; it was not contacted
    ├── NoProviderError (ValueError)         no configured provider serves the model
    ├── AllProvidersFailedError              every candidate failed (.errors)
    ├── BudgetExceededError                  the estimated cost would pass the budget
    ├── RequestTimeoutError (TimeoutError)   the whole request passed its deadline
    ├── OutputValidationError                the answer did not validate, retries included (.raw .errors)
    ├── ClientClosedError                    the client was closed before the request finished
    └── ResultLimitError                     completion_async holds max_results unfetched results

Messages are scrubbed of registered secrets when the error is built (see ``_secrets``).
"""

from __future__ import annotations

from typing import Any

from ._secrets import redact


class LLMError(Exception):
    """Base class of every llmkit error."""

    def __init__(self, message: str = "") -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(LLMError, ValueError):
    """A configuration (or call argument) is malformed. Names the file, entry and field."""


class InvalidRequestError(ConfigError):
    """A call's arguments are malformed; raised before anything is sent."""


class ProviderError(LLMError):
    """A provider failed. ``status`` is the HTTP status (None for transport errors)."""

    default_retryable = False

    def __init__(
        self,
        message: str = "",
        *,
        provider: str | None = None,
        status: int | None = None,
        code: str | int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        where = f"[{provider}] " if provider else ""
        super().__init__(f"{where}{message}")
        self.provider = provider
        self.status = status
        self.code = code
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.body = body
        self.request_id = request_id

    def __reduce__(self) -> Any:  # keep keyword fields across pickling (multiprocessing, ledger)
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[ProviderError], message: str, state: dict[str, Any]) -> ProviderError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class RateLimitError(ProviderError):
    default_retryable = True


class QuotaExceededError(RateLimitError):
    default_retryable = False


class AuthenticationError(ProviderError):
    pass


class PermissionDeniedError(AuthenticationError):
    pass


class BadRequestError(ProviderError):
    pass


class ContextWindowExceededError(BadRequestError):
    pass


class ContentFilterError(BadRequestError):
    """The provider's content filter or safety system blocked the prompt or the answer (Azure's
    ``content_filter``, Gemini's ``SAFETY``/``blockReason``). Another provider may answer."""


class UnsupportedArgumentError(BadRequestError, InvalidRequestError):
    """This provider's adapter cannot send one of the call's arguments (e.g. an OpenAI-only extra given to
    Gemini). Raised before anything is sent to it; the next candidate is tried and the breaker is untouched."""


class NotFoundError(ProviderError):
    pass


class ServerError(ProviderError):
    default_retryable = True


class OverloadedError(ServerError):
    default_retryable = True


class ProviderTimeoutError(ProviderError):
    default_retryable = True


class ProviderConnectionError(ProviderError):
    default_retryable = True


class CircuitOpenError(LLMError):
    """The provider's circuit breaker is open: the call was not sent."""

    def __init__(self, provider: str, retry_in_s: float | None = None) -> None:
        hint = f"; next probe in {retry_in_s:.1f}s" if retry_in_s is not None else ""
        super().__init__(f"[{provider}] circuit breaker is open{hint}")
        self.provider = provider
        self.retry_in_s = retry_in_s


class NoProviderError(LLMError, ValueError):
    """No configured provider serves the requested model."""


class AllProvidersFailedError(LLMError):
    """Every candidate failed; ``errors`` holds each one, in the order tried."""

    def __init__(self, model: str, errors: list[BaseException]) -> None:
        parts = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
        super().__init__(f"all providers failed for model {model!r}: {parts}")
        self.model = model
        self.errors = list(errors)


class BudgetExceededError(LLMError):
    """The request's estimated cost would pass the budget; nothing was sent."""

    def __init__(self, message: str, *, spent_usd: float = 0.0, budget_usd: float = 0.0,
                 estimate_usd: float = 0.0) -> None:
        super().__init__(message)
        self.spent_usd = spent_usd
        self.budget_usd = budget_usd
        self.estimate_usd = estimate_usd


class RequestTimeoutError(LLMError, TimeoutError):
    """The request passed its overall deadline (retries, fallbacks and queue waits included)."""


class OutputValidationError(LLMError):
    """A structured answer (``response_model``, a JSON-schema ``response_format``, tool arguments) did not
    parse or validate, after ``max_validation_retries`` more tries. ``raw`` is the last answer's text,
    ``errors`` its validation errors, ``response`` the last ``Response`` (usage and cost of all tries)."""

    def __init__(self, message: str, *, raw: str = "", errors: list[Any] | None = None,
                 response: Any = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.errors = list(errors or [])
        self.response = response


class ClientClosedError(LLMError):
    """The client was closed: a call made after ``close()``, or a request still queued or running then."""


class ResultLimitError(LLMError):
    """``completion_async`` refused a request: ``max_results`` results are waiting to be fetched.

    Nothing is dropped to make room; fetch results with ``get_result`` (or raise ``max_results``)."""


# Errors that are the provider's problem: move on to the next candidate.
FALLBACK_ERRORS: tuple[type[BaseException], ...] = (
    RateLimitError,
    AuthenticationError,
    ContextWindowExceededError,
    ContentFilterError,
    UnsupportedArgumentError,
    NotFoundError,
    ServerError,
    ProviderTimeoutError,
    ProviderConnectionError,
    CircuitOpenError,
)


def is_fallback_error(exc: BaseException) -> bool:
    """Whether another provider might succeed where this one failed."""
    return isinstance(exc, FALLBACK_ERRORS)


def counts_against_breaker(exc: BaseException) -> bool:
    """Whether a failure is the provider's health problem (trips the breaker)."""
    if isinstance(exc, (BadRequestError, NotFoundError, QuotaExceededError)):
        return False
    if isinstance(exc, RateLimitError):
        return False  # throttling is handled by the limiter, not the breaker
    return isinstance(exc, ProviderError)
