"""The provider facts that configuration and the adapters both need: which adapters are built in and
where each one's class lives. Below both ``_config`` and ``providers`` so neither imports the other."""

from __future__ import annotations

BUILTIN_ADAPTERS: dict[str, str] = {
    "openai": "llmkit.providers.openai:OpenAIProvider",
    "anthropic": "llmkit.providers.anthropic:AnthropicProvider",
    "openai_compatible": "llmkit.providers.compatible:OpenAICompatibleProvider",
    "mock": "llmkit.providers.mock:MockProvider",
}
