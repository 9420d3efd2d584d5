"""Shared fixtures: fake time, and clients that never touch the user's real ledger."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_WIRE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "wire"


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test writes to the user's data folder, and no real key leaks in from the environment."""
    monkeypatch.setenv("LLMKIT_DATA_DIR", str(tmp_path_factory.mktemp("llmkit-data")))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION"):
        monkeypatch.delenv(name, raising=False)
    yield


class FakeTime:
    """A clock and an async sleep that advances it: retries and pauses take no real time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def pytest_report_header() -> str:
    return f"llmkit tests; shared wire fixtures: {'present' if SHARED_WIRE.is_dir() else 'absent'}; pid {os.getpid()}"
