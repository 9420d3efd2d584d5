"""The Azure OpenAI adapter: OpenAI's wire format on an Azure resource (``adapter = "azure_openai"``).

Two routes (see the README's wire-format section):

- deployments (default): ``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=V``
  (and ``/embeddings``). The deployment is the model name unless the entry's ``deployments`` maps
  model -> deployment. ``V`` is the entry's ``api_version``, else ``OPENAI_API_VERSION``, else the
  current GA version (``AZURE_DEFAULT_API_VERSION``).
- v1 (``api_version = "v1"``, or a ``base_url`` ending in ``/openai/v1``): ``{endpoint}/openai/v1/...``
  with the deployment name as ``model`` in the body and no ``api-version``.

The key goes in the ``api-key`` header (``AZURE_OPENAI_API_KEY`` by default); option
``auth = "bearer"`` sends it as ``Authorization: Bearer`` instead (an Entra ID token). Azure's content
filter (a 400 with ``code: content_filter``, or an answer cut with ``finish_reason: content_filter``
and no text) raises ``ContentFilterError``. Everything else is the OpenAI adapter's parsing.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from .. import _errors as e
from .._config import AZURE_DEFAULT_API_VERSION, ProviderConfig
from .._errors import ConfigError, ProviderError
from .._types import Request, Response
from ._http import ErrorContext
from .openai import OpenAIProvider, error_fields


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI (``adapter = "azure_openai"``); ``base_url`` is the resource endpoint."""

    adapter = "azure_openai"
    price_provider_id: str | None = "azure"
    default_base_url = ""
    request_id_header = "apim-request-id"
    known_options: ClassVar[frozenset[str]] = frozenset({"auth"})

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        if not self.base_url:
            raise ConfigError(f"provider {config.name!r}: azure_openai needs base_url, the resource endpoint "
                              "(https://<resource>.openai.azure.com)")
        auth = config.options.get("auth", "api-key")
        if auth not in ("api-key", "bearer"):
            raise ConfigError(f"provider {config.name!r}: option 'auth': expected 'api-key' or 'bearer', got {auth!r}")
        self.auth = auth
        version = config.api_version or os.environ.get("OPENAI_API_VERSION") or AZURE_DEFAULT_API_VERSION
        root = self.base_url
        for suffix in ("/openai/v1", "/openai"):
            if root.endswith(suffix):
                if suffix == "/openai/v1" and not config.api_version:
                    version = "v1"
                root = root[: -len(suffix)]
                break
        self.endpoint = root
        self.api_version = version
        self.v1 = version == "v1"

    def _auth_headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        return {"authorization": f"Bearer {self.api_key}"} if self.auth == "bearer" else {"api-key": self.api_key}

    def _check_key(self) -> None:
        if not self.api_key:
            env = self.config.api_key_env or "AZURE_OPENAI_API_KEY"
            raise e.AuthenticationError(f"no API key: set api_key or the environment variable {env}",
                                        provider=self.name)

    def deployment(self, model: str) -> str:
        return self.config.deployments.get(model, model)

    def path_for(self, request: Request, endpoint: str) -> str:
        if self.v1:
            return f"{self.endpoint}/openai/v1/{endpoint}"
        deployment = quote(self.deployment(request.model), safe="")
        return f"{self.endpoint}/openai/deployments/{deployment}/{endpoint}?api-version={self.api_version}"

    def build_body(self, request: Request, stream: bool = False) -> dict[str, Any]:
        body = super().build_body(request, stream)
        body["model"] = self.deployment(request.model)
        return body

    def embedding_body(self, request: Request) -> dict[str, Any]:
        body = super().embedding_body(request)
        body["model"] = self.deployment(request.model)
        return body

    async def health_check(self) -> None:
        self._check_key()
        path = "/openai/v1/models" if self.v1 else f"/openai/models?api-version={self.api_version}"
        await self._get(f"{self.endpoint}{path}")

    # -- Azure's own answers ---------------------------------------------------------------------

    def _to_response(self, request: Request, data: Any, resp: httpx.Response) -> Response:
        response = super()._to_response(request, data, resp)
        if response.finish_reason == "content_filter" and not response.content and not response.tool_calls:
            raise e.ContentFilterError("the answer was filtered by Azure's content filter (finish_reason "
                                       "content_filter)", provider=self.name, status=resp.status_code,
                                       code="content_filter", body=data,
                                       request_id=resp.headers.get(self.request_id_header))
        if response.model == self.deployment(request.model) or not response.model:
            response.model = request.model
        return response

    def _error_for(self, ctx: ErrorContext) -> ProviderError:
        message, code, _ = error_fields(ctx.body)
        inner = ctx.body.get("error", {}).get("innererror") if isinstance(ctx.body, dict) and isinstance(
            ctx.body.get("error"), dict) else None
        inner_code = inner.get("code") if isinstance(inner, dict) else None
        if code == "content_filter" or inner_code == "ResponsibleAIPolicyViolation":
            return e.ContentFilterError(f"HTTP {ctx.status} content_filter: {message}",
                                        **self._error_kwargs(ctx, "content_filter"))
        if ctx.status == 404 and code == "DeploymentNotFound":
            return e.NotFoundError(f"HTTP 404 DeploymentNotFound: {message}", **self._error_kwargs(ctx, code))
        return super()._error_for(ctx)
