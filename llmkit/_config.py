"""Configuration: ``ProviderConfig``, ``ClientConfig``, loading from TOML or a dict, validation.

Every problem raises ``ConfigError`` naming where it is (file, entry, field) and what was expected,
at construction time, before anything touches the network.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ._adapters import BUILTIN_ADAPTERS, PRESETS
from ._errors import ConfigError
from ._secrets import hide_url_secrets, mask, redact, register_header, register_secret, register_url_credentials

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "openai_compatible": "http://127.0.0.1:11434/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
}
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY",
                   "azure_openai": "AZURE_OPENAI_API_KEY"}
#: Tried, in order, when the adapter's default variable is unset (Google's SDKs read either name).
ALTERNATE_KEY_ENV = {"gemini": ("GOOGLE_API_KEY",)}
#: The Azure OpenAI data-plane ``api-version`` used unless the entry or ``OPENAI_API_VERSION`` sets one.
AZURE_DEFAULT_API_VERSION = "2024-10-21"
_PERIODS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}
_ADAPTER_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``count`` requests per ``period_s`` seconds; ``burst`` requests may start back to back."""

    count: int
    period_s: float
    burst: int = 1

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s:g}s"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    fail_max: int = 5
    reset_timeout: float = 30.0


@dataclass(frozen=True)
class ProviderConfig:
    """One provider entry. Fields mirror the TOML ``[[providers]]`` table."""

    name: str
    adapter: Any = "mock"  # a built-in name, "package.module:Class", or a Provider subclass
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    base_url: str | None = None
    models: tuple[str, ...] = ("*",)
    priority: int = 0
    rate_limit: RateLimit | None = None
    tokens_per_minute: int | None = None
    max_retries: int = 3
    timeout: float = 60.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    pricing: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    max_concurrency: int = 1024  # a safety net: rate limits pace a batch; connection pools are made lazily
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)
    max_response_bytes: int = 32 * 1024 * 1024  # a body or stream beyond this fails (decoded bytes)
    reply: Any = field(default=None, repr=False)  # mock only: callable(Request) -> str | dict | list[ToolCall]
    deployments: Mapping[str, str] = field(default_factory=dict)  # azure_openai: model -> deployment name
    api_version: str | None = None  # azure_openai: "2024-10-21", "v1", ... (else OPENAI_API_VERSION)
    preset: str | None = None  # openai_compatible: a hosted/local service in _adapters.PRESETS

    def __post_init__(self) -> None:
        register_secret(self.api_key)
        if isinstance(self.api_key, str) and self.api_key != self.api_key.strip():
            object.__setattr__(self, "api_key", self.api_key.strip())  # a pasted key's newline: never send it
            register_secret(self.api_key)
        register_url_credentials(self.base_url)  # https://user:password@host
        for name, value in dict(self.headers or {}).items():
            register_header(name, value)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={_hidden_url(self.base_url) if f.name == 'base_url' else getattr(self, f.name)!r}"
            for f in fields(self) if f.name not in ("api_key", "headers")
        )
        return f"ProviderConfig({shown}, api_key={mask(self.api_key)!r})"

    def resolved_api_key(self) -> str | None:
        """The key itself, or the one in ``api_key_env`` (looked up now)."""
        if self.api_key:
            register_secret(self.api_key)
            return self.api_key
        env = self.api_key_env or (PRESETS[self.preset].key_env if self.preset in PRESETS
                                   else DEFAULT_KEY_ENV.get(self.adapter))
        key = os.environ.get(env) if env else None
        if key is None and not self.api_key_env:
            key = next((os.environ[alt] for alt in ALTERNATE_KEY_ENV.get(self.adapter, ()) if alt in os.environ),
                       None)
        register_secret(key)
        if key is not None and key != key.strip():
            key = key.strip()  # `export KEY="$(cat key.txt)"` keeps the newline
            register_secret(key)
        return key

    def serves(self, model: str) -> bool:
        """Whether this provider serves ``model``: listed, ``"*"``, or a glob such as ``"claude-*"``."""
        return any(
            m == "*" or m == model or (("*" in m or "?" in m) and fnmatchcase(model, m)) for m in self.models
        )

    def resolved_base_url(self) -> str | None:
        preset = PRESETS[self.preset].base_url if self.preset in PRESETS else None
        return (self.base_url or preset or DEFAULT_BASE_URLS.get(self.adapter) or "").rstrip("/") or None


@dataclass(frozen=True)
class ClientConfig:
    providers: tuple[ProviderConfig, ...]
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ledger: Any = "default"
    budget_usd: float | None = None
    budget_period: str | None = None
    timeout: float | None = 600.0
    health_interval: float | None = 30.0
    max_results: int = 100_000
    max_events: int = 50_000
    retry_after_cap: float = 60.0
    store_prompts: bool = False
    max_validation_retries: int = 2  # structured output: failed validations asked again (llmkit.structured)
    cache: Any = None  # the response cache: None/False off (calls may ask), True, a path, ":memory:", a backend
    cache_ttl: float | None = None  # seconds an answer stays usable; None: no expiry
    cache_max_bytes: int | None = 1 << 30  # stored answers beyond this evict the least recently hit; None: no bound
    shared_state: str | None = None  # "redis://host:port/db": limits, breakers and budget shared (llmkit.shared)
    namespace: str = "llmkit"
    memory_records: int = 100_000  # a ledger file's in-memory window: this session's newest records


# ----------------------------------------------------------------------------------------------
# parsing


class _Where:
    """Builds the 'file: entry: field' prefix of a ConfigError message."""

    def __init__(self, source: str | None, entry: str | None = None) -> None:
        self.source = source
        self.entry = entry

    def error(self, fieldname: str | None, expected: str, got: Any = ...) -> ConfigError:
        parts = [p for p in (self.source, self.entry) if p]
        if fieldname:
            parts.append(f"field {fieldname!r}")
        got_s = "" if got is ... else f", got {_show(got)}"
        return ConfigError(f"{': '.join(parts) or 'config'}: expected {expected}{got_s}")


def _hidden_url(url: str | None) -> str | None:
    return None if url is None else hide_url_secrets(url)


def _show(value: Any) -> str:
    text = redact(repr(value))  # before cutting, so a cut can't leave half a secret
    return text if len(text) <= 60 else text[:57] + "..."


def parse_rate_limit(value: Any, where: _Where | None = None, fieldname: str = "rate_limit") -> RateLimit:
    """``"100/minute"``, ``"5/s"``, ``(100, "minute")`` or ``{"count":..,"period":..,"burst":..}``."""
    where = where or _Where(None)
    expected = "a rate like '100/minute' or (100, 'minute'); units second, minute, hour"
    burst = 1
    if isinstance(value, RateLimit):
        return value
    if isinstance(value, Mapping):
        burst = value.get("burst", 1)
        value = (value.get("count"), value.get("period", "second"))
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([A-Za-z]+)\s*", value)
        if not m:
            raise where.error(fieldname, expected, value)
        count, mult, unit = int(m.group(1)), float(m.group(2) or 1), m.group(3).lower()
    elif isinstance(value, Sequence) and len(value) == 2:
        count, unit = value[0], value[1]
        mult = 1.0
        if not isinstance(count, int) or isinstance(count, bool):
            raise where.error(fieldname, expected, value)
        if isinstance(unit, (int, float)) and not isinstance(unit, bool):
            if unit <= 0:
                raise where.error(fieldname, expected, value)
            return RateLimit(count, float(unit), _positive_int(burst, where, f"{fieldname}.burst"))
        unit = str(unit).lower()
    else:
        raise where.error(fieldname, expected, value)
    if unit not in _PERIODS or count <= 0 or mult <= 0:
        raise where.error(fieldname, expected, value)
    return RateLimit(count, _PERIODS[unit] * mult, _positive_int(burst, where, f"{fieldname}.burst"))


def _positive_int(value: Any, where: _Where, name: str, *, zero_ok: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero_ok else 1):
        raise where.error(name, "a non-negative integer" if zero_ok else "a positive integer", value)
    return value


def _positive_number(value: Any, where: _Where, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise where.error(name, "a positive number of seconds", value)
    return float(value)


def _parse_pricing(value: Any, where: _Where) -> dict[str, dict[str, float]]:
    if not isinstance(value, Mapping):
        raise where.error("pricing", "a table of model -> {input, output, cache_read, cache_write}", value)
    out: dict[str, dict[str, float]] = {}
    for model, prices in value.items():
        if not isinstance(prices, Mapping):
            raise where.error(f"pricing.{model}", "a table with input/output prices per million tokens", prices)
        entry: dict[str, float] = {}
        for kind, price in prices.items():
            if kind not in ("input", "output", "cache_read", "cache_write"):
                raise where.error(f"pricing.{model}.{kind}", "one of input, output, cache_read, cache_write")
            if not isinstance(price, (int, float)) or isinstance(price, bool) or price < 0:
                raise where.error(f"pricing.{model}.{kind}", "a non-negative USD price per million tokens", price)
            entry[kind] = float(price)
        if "input" not in entry or "output" not in entry:
            raise where.error(f"pricing.{model}", "both 'input' and 'output' prices", dict(prices))
        out[str(model)] = entry
    return out


_PROVIDER_FIELDS = {f.name for f in fields(ProviderConfig)}


def parse_provider(raw: Any, index: int, source: str | None = None) -> ProviderConfig:
    """Validate one ``[[providers]]`` entry (a dict or a ProviderConfig)."""
    if isinstance(raw, ProviderConfig):
        raw = {f.name: getattr(raw, f.name) for f in fields(ProviderConfig)}
    name_hint = raw.get("name") if isinstance(raw, Mapping) else None
    where = _Where(source, f"providers[{index}]" + (f" ({name_hint!r})" if isinstance(name_hint, str) else ""))
    if not isinstance(raw, Mapping):
        raise where.error(None, "a table (dict) describing a provider", raw)
    unknown = set(raw) - _PROVIDER_FIELDS
    if unknown:
        raise where.error(sorted(unknown)[0], f"one of the fields {sorted(_PROVIDER_FIELDS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise where.error("name", "a non-empty provider name", name)
    adapter = raw.get("adapter", "mock")
    if isinstance(adapter, type):
        pass  # a class: that it is a Provider subclass is checked when the client builds it (ConfigError)
    elif not isinstance(adapter, str) or (adapter not in BUILTIN_ADAPTERS and not _ADAPTER_PATH.match(adapter)):
        raise where.error("adapter", f"one of {list(BUILTIN_ADAPTERS)} or 'package.module:Class'", adapter)
    api_key = raw.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise where.error("api_key", "a string", "<not shown>")
    register_secret(api_key)  # as given; ProviderConfig strips it (and registers the stripped key)
    api_key_env = raw.get("api_key_env")
    if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env):
        raise where.error("api_key_env", "the name of an environment variable", api_key_env)
    base_url = raw.get("base_url")
    if base_url is not None and (not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url)):
        raise where.error("base_url", "an http:// or https:// URL", base_url)
    models = raw.get("models", ("*",))
    if isinstance(models, str):
        models = (models,)
    if not isinstance(models, Sequence) or not models or not all(isinstance(m, str) and m for m in models):
        raise where.error("models", "a non-empty list of model names (or ['*'])", models)
    priority = raw.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise where.error("priority", "an integer (lower is tried first)", priority)
    rate_limit = raw.get("rate_limit")
    if rate_limit is not None:
        rate_limit = parse_rate_limit(rate_limit, where)
    tpm = raw.get("tokens_per_minute")
    if tpm is not None:
        tpm = _positive_int(tpm, where, "tokens_per_minute")
    max_retries = _positive_int(raw.get("max_retries", 3), where, "max_retries", zero_ok=True)
    timeout = _positive_number(raw.get("timeout", 60.0), where, "timeout")
    breaker_raw = raw.get("breaker") or {}
    if isinstance(breaker_raw, BreakerConfig):
        breaker = breaker_raw
    elif isinstance(breaker_raw, Mapping):
        extra = set(breaker_raw) - {"fail_max", "reset_timeout"}
        if extra:
            raise where.error(f"breaker.{sorted(extra)[0]}", "only fail_max and reset_timeout")
        breaker = BreakerConfig(
            _positive_int(breaker_raw.get("fail_max", 5), where, "breaker.fail_max"),
            _positive_number(breaker_raw.get("reset_timeout", 30.0), where, "breaker.reset_timeout"),
        )
    else:
        raise where.error("breaker", "a table {fail_max, reset_timeout}", breaker_raw)
    pricing = _parse_pricing(raw.get("pricing") or {}, where)
    max_conc = _positive_int(raw.get("max_concurrency", 1024), where, "max_concurrency")
    max_bytes = _positive_int(raw.get("max_response_bytes", 32 * 1024 * 1024), where, "max_response_bytes")
    headers = raw.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        raise where.error("headers", "a table of header name -> string value")
    options = raw.get("options") or {}
    if not isinstance(options, Mapping):
        raise where.error("options", "a table of adapter options", options)
    reply = raw.get("reply")
    if reply is not None and (not callable(reply) or adapter != "mock"):
        raise where.error("reply", "a callable(request) -> str | dict | list of ToolCall, on a mock entry", reply)
    deployments, api_version, preset = _parse_provider_extras(raw, adapter, where)
    return ProviderConfig(
        name=name, adapter=adapter, api_key=api_key, api_key_env=api_key_env, base_url=base_url,
        models=tuple(models), priority=priority, rate_limit=rate_limit, tokens_per_minute=tpm,
        max_retries=max_retries, timeout=timeout, breaker=breaker, pricing=pricing,
        max_concurrency=max_conc, headers=dict(headers), options=dict(options),
        max_response_bytes=max_bytes, reply=reply, deployments=deployments, api_version=api_version, preset=preset,
    )


def _parse_provider_extras(raw: Mapping[str, Any], adapter: Any, where: _Where,
                           ) -> tuple[dict[str, str], str | None, str | None]:
    """The second version's adapter-specific fields: ``deployments`` and ``api_version``
    (azure_openai), ``preset`` (openai_compatible)."""
    deployments = raw.get("deployments") or {}
    if not isinstance(deployments, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in deployments.items()):
        raise where.error("deployments", "a table of model name -> Azure deployment name", deployments)
    if deployments and adapter != "azure_openai":
        raise where.error("deployments", "only with adapter 'azure_openai'", dict(deployments))
    api_version = raw.get("api_version")
    if api_version is not None:
        if not isinstance(api_version, str) or not re.fullmatch(r"v1|\d{4}-\d{2}-\d{2}(-preview)?|preview|latest",
                                                                  api_version):
            raise where.error("api_version", "an Azure api-version like '2024-10-21', "
                              "'2025-04-01-preview' or 'v1'", api_version)
        if adapter != "azure_openai":
            raise where.error("api_version", "only with adapter 'azure_openai'", api_version)
    preset = raw.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise where.error("preset", f"one of {sorted(PRESETS)}", preset)
        if adapter != "openai_compatible":
            raise where.error("preset", "only with adapter 'openai_compatible'", preset)
    return dict(deployments), api_version, preset


_CLIENT_KEYS = {f.name for f in fields(ClientConfig)}


def parse_client_config(raw: Mapping[str, Any], source: str | None = None) -> ClientConfig:
    """Validate a whole config (the shape of a TOML file)."""
    where = _Where(source)
    if not isinstance(raw, Mapping):
        raise where.error(None, "a table (dict) with [[providers]]", raw)
    unknown = set(raw) - _CLIENT_KEYS
    if unknown:
        raise where.error(sorted(unknown)[0], f"one of the top-level keys {sorted(_CLIENT_KEYS)}")
    providers_raw = raw.get("providers")
    if providers_raw is None:
        providers_raw = []
    if not isinstance(providers_raw, Sequence) or isinstance(providers_raw, (str, bytes)):
        raise where.error("providers", "a list of provider tables", providers_raw)
    providers = tuple(parse_provider(p, i, source) for i, p in enumerate(providers_raw))
    seen: set[str] = set()
    for i, p in enumerate(providers):
        if p.name in seen:
            raise _Where(source, f"providers[{i}] ({p.name!r})").error("name", "a unique provider name", p.name)
        seen.add(p.name)
    fallbacks_raw = raw.get("fallbacks") or {}
    if not isinstance(fallbacks_raw, Mapping):
        raise where.error("fallbacks", "a table of model -> list of equivalent models", fallbacks_raw)
    fallbacks: dict[str, tuple[str, ...]] = {}
    for model, alts in fallbacks_raw.items():
        if isinstance(alts, str):
            alts = [alts]
        if not isinstance(alts, Sequence) or not all(isinstance(a, str) and a for a in alts):
            raise where.error(f"fallbacks.{model}", "a list of model names", alts)
        fallbacks[str(model)] = tuple(alts)
    budget = raw.get("budget_usd")
    if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget < 0):
        raise where.error("budget_usd", "a non-negative amount in USD", budget)
    period = raw.get("budget_period")
    if period is not None and period not in ("day", "month", "total"):
        raise where.error("budget_period", "'day', 'month' or 'total'", period)
    timeout = raw.get("timeout", 600.0)
    if timeout is not None:
        timeout = _positive_number(timeout, where, "timeout")
    interval = raw.get("health_interval", 30.0)
    if interval is not None and interval is not False:
        interval = _positive_number(interval, where, "health_interval")
    else:
        interval = None
    ledger = raw.get("ledger", "default")
    if ledger is not None and not isinstance(ledger, (str, os.PathLike)):
        raise where.error("ledger", "a file path, 'default', ':memory:' or None", ledger)
    return ClientConfig(
        providers=providers,
        fallbacks=fallbacks,
        ledger=ledger,
        budget_usd=None if budget is None else float(budget),
        budget_period=period,
        timeout=timeout,
        health_interval=interval,
        max_results=_positive_int(raw.get("max_results", 100_000), where, "max_results"),
        max_events=_positive_int(raw.get("max_events", 50_000), where, "max_events"),
        retry_after_cap=_positive_number(raw.get("retry_after_cap", 60.0), where, "retry_after_cap"),
        store_prompts=bool(raw.get("store_prompts", False)),
        max_validation_retries=_positive_int(raw.get("max_validation_retries", 2), where, "max_validation_retries",
                                             zero_ok=True),
        **_parse_cache(raw, where),
        shared_state=_parse_shared_state(raw.get("shared_state"), where),
        namespace=_parse_namespace(raw.get("namespace", "llmkit"), where),
        memory_records=_positive_int(raw.get("memory_records", 100_000), where, "memory_records"),
    )


def _parse_cache(raw: Mapping[str, Any], where: _Where) -> dict[str, Any]:
    """The response cache's keys: ``cache`` (bool, a path, ":memory:", "redis" or a backend object),
    ``cache_ttl``, ``cache_max_bytes``."""
    cache = raw.get("cache")
    if cache == "redis" and not raw.get("shared_state"):
        raise where.error("cache", "'redis' only with shared_state='redis://...' (where the cache lives)", cache)
    backend = callable(getattr(cache, "lookup", None)) and callable(getattr(cache, "store", None))
    if cache is not None and not isinstance(cache, (bool, str, os.PathLike)) and not backend:
        raise where.error("cache", "true, false, a file path, ':memory:' or a cache backend", cache)
    if isinstance(cache, str) and not cache.strip():
        raise where.error("cache", "true, false, a file path, ':memory:' or a cache backend", cache)
    ttl = raw.get("cache_ttl")
    max_bytes = raw.get("cache_max_bytes", 1 << 30)
    return {"cache": cache, "cache_ttl": None if ttl is None else _positive_number(ttl, where, "cache_ttl"),
            "cache_max_bytes": None if max_bytes is None else _positive_int(max_bytes, where, "cache_max_bytes")}


def _parse_shared_state(value: Any, where: _Where) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^(rediss?|unix)://\S+$", value):
        raise where.error("shared_state", "a Redis URL like 'redis://127.0.0.1:6379/0'", "<not shown>")
    from urllib.parse import urlsplit

    register_secret(urlsplit(value).password)  # a password in the URL never shows in errors or logs
    return value


def _parse_namespace(value: Any, where: _Where) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\w.\-]+", value):
        raise where.error("namespace", "a key prefix of letters, digits, '.', '-' or '_'", value)
    return value


def load_config(path_or_dict: str | os.PathLike[str] | Mapping[str, Any]) -> ClientConfig:
    """Read a TOML file (or take a dict) and validate it."""
    if isinstance(path_or_dict, Mapping):
        return parse_client_config(path_or_dict)
    path = Path(path_or_dict)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_client_config(data, source=str(path))


def default_providers() -> tuple[ProviderConfig, ...]:
    """The zero-config default: providers whose keys are in the environment, else the mock."""
    found: list[ProviderConfig] = []
    if os.environ.get("OPENAI_API_KEY"):
        found.append(ProviderConfig(name="openai", adapter="openai", api_key_env="OPENAI_API_KEY", priority=0,
                                    models=("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*")))
    if os.environ.get("ANTHROPIC_API_KEY"):
        found.append(ProviderConfig(name="anthropic", adapter="anthropic", api_key_env="ANTHROPIC_API_KEY",
                                    priority=1, models=("claude-*",)))
    if not found:
        found.append(ProviderConfig(name="mock", adapter="mock", models=("*",)))
    for p in found:
        p.resolved_api_key()
    return tuple(found)
