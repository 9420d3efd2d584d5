"""The provider facts that configuration and the adapters both need: which adapters are built in and
where each one's class lives, and the ``openai_compatible`` presets. Below both ``_config`` and
``providers`` so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BUILTIN_ADAPTERS: dict[str, str] = {
    "openai": "llmkit.providers.openai:OpenAIProvider",
    "anthropic": "llmkit.providers.anthropic:AnthropicProvider",
    "openai_compatible": "llmkit.providers.compatible:OpenAICompatibleProvider",
    "mock": "llmkit.providers.mock:MockProvider",
    "gemini": "llmkit.providers.gemini:GeminiProvider",
    "azure_openai": "llmkit.providers.azure:AzureOpenAIProvider",
}


@dataclass(frozen=True, slots=True)
class Preset:
    """A hosted or local OpenAI-compatible service: where it lives, its key variable and its quirks.

    ``price_provider_id`` is the service's id in genai-prices (None: unpriced unless ``pricing`` is set);
    ``rename`` maps OpenAI body fields to the service's names; ``options`` are adapter options filled in
    unless the entry sets them.
    """

    base_url: str
    key_env: str | None
    price_provider_id: str | None = None
    requires_key: bool = True
    rename: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "groq": Preset("https://api.groq.com/openai/v1", "GROQ_API_KEY", "groq"),
    "together": Preset("https://api.together.xyz/v1", "TOGETHER_API_KEY", "together"),
    # Mistral names the seed ``random_seed`` and sends usage on the last chunk without stream_options.
    "mistral": Preset("https://api.mistral.ai/v1", "MISTRAL_API_KEY", "mistral", rename={"seed": "random_seed"},
                      options={"include_usage": False}),
    "deepseek": Preset("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", "deepseek"),
    "openrouter": Preset("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openrouter"),
    "ollama": Preset("http://127.0.0.1:11434/v1", None, requires_key=False, options={"health_path": "/"}),
    "vllm": Preset("http://127.0.0.1:8000/v1", "VLLM_API_KEY", requires_key=False,
                   options={"health_path": "/health"}),
    "lmstudio": Preset("http://127.0.0.1:1234/v1", None, requires_key=False),
}
