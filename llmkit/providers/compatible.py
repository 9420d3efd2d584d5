"""The adapter for OpenAI-compatible servers: Ollama, vLLM, llama.cpp's ``llama-server``, LM Studio.

It is the OpenAI adapter with the local servers' differences (see wire-formats.md section 4):
``max_tokens`` instead of ``max_completion_tokens`` (Ollama ignores the latter), no key required (a
Bearer header only when one is configured), usage optional (estimated when absent, with
``estimated=True``), integer ``error.code`` and vLLM's top-level ``{"object": "error"}`` bodies.

Options (``ProviderConfig.options``):

- ``health_path``: what ``health_check`` GETs, e.g. ``"/health"`` (vLLM, llama.cpp) or ``"/"`` (Ollama).
  A path starting with ``/`` is taken from the server's root; otherwise it is relative to ``base_url``.
  Default: ``{base_url}/models``.
- ``include_usage``: send ``stream_options.include_usage`` when streaming (default True).
- ``structured_output``: how a JSON-schema ``response_format`` (or ``response_model``) is sent:
  ``"json_schema"`` (default: ``response_format`` as OpenAI's, which vLLM, llama.cpp and Ollama accept),
  ``"json_object"`` (``{"type": "json_object"}`` plus the schema in a system message, for servers that only
  have a JSON mode) or ``"prompt"`` (no ``response_format`` at all, the schema in a system message).

``preset`` (``ProviderConfig.preset``: groq, together, mistral, deepseek, openrouter, ollama, vllm,
lmstudio; see ``_adapters.PRESETS``) fills the base URL, the key's environment variable, whether a key
is required, the genai-prices id and the service's quirks (renamed fields, default options).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .. import _errors as e
from .. import structured
from .._adapters import PRESETS
from .._config import DEFAULT_BASE_URLS, ProviderConfig
from .._errors import ConfigError
from .._types import Request
from .openai import OpenAIProvider

_MODES = ("json_schema", "json_object", "prompt")


class OpenAICompatibleProvider(OpenAIProvider):
    """A local or self-hosted OpenAI-compatible server (``adapter = "openai_compatible"``)."""

    adapter = "openai_compatible"
    price_provider_id: str | None = None
    default_base_url = DEFAULT_BASE_URLS["openai_compatible"]
    max_tokens_field = "max_tokens"
    requires_key = False
    known_options = frozenset({"health_path", "include_usage", "structured_output"})

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.preset = PRESETS.get(config.preset) if config.preset else None
        self.options: dict[str, Any] = {**(self.preset.options if self.preset else {}), **config.options}
        if self.preset is not None:
            if not config.base_url:
                self.base_url = self.preset.base_url.rstrip("/")
            self.price_provider_id = self.preset.price_provider_id
        mode = self.options.get("structured_output", "json_schema")
        if mode not in _MODES:
            raise ConfigError(f"provider {config.name!r}: option 'structured_output': expected one of {list(_MODES)}, "
                              f"got {mode!r}")
        self.structured_output = mode

    def _check_key(self) -> None:
        if self.preset is not None and self.preset.requires_key and not self.api_key:
            env = self.config.api_key_env or self.preset.key_env
            raise e.AuthenticationError(f"no API key for preset {self.config.preset!r}: set api_key or the "
                                        f"environment variable {env}", provider=self.name)

    def build_body(self, request: Request, stream: bool = False) -> dict[str, Any]:
        body = super().build_body(request, stream)
        if stream and not self.options.get("include_usage", True) and "stream_options" not in request.extra:
            body.pop("stream_options", None)
        if self.preset is not None:
            for old, new in self.preset.rename.items():
                if old in body:
                    body[new] = body.pop(old)
        return body

    def _response_format(self, body: dict[str, Any], fmt: Any) -> None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        mode = self.structured_output
        if mode == "json_schema" or kind not in ("json_object", "json_schema") or (
                kind == "json_object" and mode == "json_object"):
            body["response_format"] = fmt  # as asked
            return
        if mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        named = structured.output_schema(fmt)
        instruction = structured.schema_instruction(named[1] if named else None)
        body["messages"] = [{"role": "system", "content": instruction}, *body["messages"]]

    def health_url(self) -> str:
        path = self.options.get("health_path")
        if not path:
            return f"{self.base_url}/models"
        path = str(path)
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/"):
            parts = urlsplit(self.base_url)
            return f"{parts.scheme}://{parts.netloc}{path}"
        return f"{self.base_url}/{path}"

    async def health_check(self) -> None:
        await self._get(self.health_url())
