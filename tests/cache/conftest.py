"""Helpers for the response cache's tests: a priced mock client on a cache file of the test's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llmkit

MSG = [{"role": "user", "content": "What is the capital of France?"}]
MODEL = "gpt-x"
PRICED = {MODEL: {"input": 1.0, "output": 2.0}}  # USD per million tokens: every answer costs something


def mock_client(path: Path | str, **kw: Any) -> llmkit.Client:
    """One mock provider, priced, with its own options (``replies``...), caching into ``path``."""
    options = kw.pop("options", {})
    entry = {"name": "m", "adapter": "mock", "pricing": PRICED, "options": options, **kw.pop("provider", {})}
    kw.setdefault("ledger", None)
    kw.setdefault("health_interval", None)
    return llmkit.Client([entry], cache=path, **kw)


@pytest.fixture
def cache_path(tmp_path: Path) -> Path:
    return tmp_path / "answers.sqlite3"
