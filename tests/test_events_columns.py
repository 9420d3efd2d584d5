"""``client.events(kind)`` has the kind's columns whether or not such an event happened yet."""

from __future__ import annotations

import pytest

import llmkit
from llmkit import frames
from llmkit._events import DETAIL_KEYS, KINDS, EventLog

BASE = ["seq", "time", "kind", "provider", "request_id"]


def test_every_kind_has_fixed_detail_columns() -> None:
    assert set(DETAIL_KEYS) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(DETAIL_KEYS))
def test_an_empty_log_has_the_columns_of_the_kind(kind: str) -> None:
    empty = frames.events_frame([], kind)
    assert list(empty.columns) == BASE + list(DETAIL_KEYS[kind])
    assert str(empty["time"].dtype) == "datetime64[ns, UTC]"


def test_the_readme_snippet_works_before_redis_ever_went_down() -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, health_interval=None) as client:
        client.completion("gpt-4o", [{"role": "user", "content": "hi"}])
        table = client.events("shared_state")[["time", "state", "error"]]
        assert table.empty
        assert list(client.events("breaker").columns) == [*BASE, "old", "new", "shared"]


def test_events_of_a_kind_keep_the_fixed_columns_first_and_extra_keys_after() -> None:
    log = EventLog()
    log.emit("shared_state", None, state="up", resumed=True)
    log.emit("shared_state", None, state="up", resumed=False, extra=1)
    df = frames.events_frame(log.snapshot("shared_state"), "shared_state")
    assert list(df.columns) == BASE + list(DETAIL_KEYS["shared_state"]) + ["extra"]
    assert df["state"].tolist() == ["up", "up"] and df["error"].isna().all()
    assert df["extra"].tolist()[1] == 1
