"""Provider adapters and the registry that builds them from a ``ProviderConfig``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .._adapters import BUILTIN_ADAPTERS
from .._errors import ConfigError
from .base import Provider

if TYPE_CHECKING:
    from .._config import ProviderConfig



def provider_class(adapter: str | type) -> type[Provider]:
    """The class behind an adapter name or a ``"package.module:Class"`` path (imported on demand)."""
    if isinstance(adapter, type):
        if not issubclass(adapter, Provider):
            raise ConfigError(f"adapter {adapter.__name__!r} is not a subclass of llmkit.providers.Provider")
        return adapter
    target = BUILTIN_ADAPTERS.get(adapter, adapter)
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"adapter {adapter!r}: cannot import {target!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(f"adapter {adapter!r}: {target!r} is not a subclass of llmkit.providers.Provider")
    return cls


def create_provider(config: ProviderConfig) -> Provider:
    return provider_class(config.adapter)(config)


__all__ = ["Provider", "create_provider", "provider_class"]
