"""The ledger as the store of record (issue 12): sessions, since/until/scope, metadata columns, SQL
summaries, the bounded in-memory window, pruning, a first-version file, and one budget per file."""

from __future__ import annotations

import math
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import llmkit
from llmkit import frames
from llmkit.ledger.migrations import applied
from llmkit.ledger.queries import Selection, selection, to_epoch
from llmkit.ledger.store import Ledger, LedgerRecord

FIXTURES = Path(__file__).parent / "fixtures"
MSG = [{"role": "user", "content": "Hello there"}]
DAY = 86400.0
NOW = time.time()
PRICED = {"name": "m", "adapter": "mock", "pricing": {"m1": {"input": 1000.0, "output": 1000.0}}}


def rec(rid: str, t: float, session: str | None = "s-old", **kw: Any) -> LedgerRecord:
    values: dict[str, Any] = dict(
        request_id=rid, time=t, started=t - 0.5, provider="openai", model="gpt-4o", requested_model="gpt-4o",
        status="ok", error_type=None, error_message=None, input_tokens=100, output_tokens=10,
        cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0, usage_estimated=False, cost_usd=0.01,
        latency_s=0.5, attempts=1, fallback=False, stream=False, priority=0, metadata=None, session_id=session,
    )
    values.update(kw)
    return LedgerRecord(**values)


def fill(path: Path, records: list[LedgerRecord]) -> None:
    with Ledger(path) as ledger:
        for r in records:
            ledger.append_sync(r)


def client(path: Path, **kw: Any) -> llmkit.Client:
    return llmkit.Client([PRICED], ledger=str(path), health_interval=None, **kw)


# -- since / until / scope -----------------------------------------------------------------------


def test_since_and_until_accept_iso_datetimes_and_durations() -> None:
    now = 1_800_000_000.0
    assert to_epoch("7d", "since", now) == now - 7 * DAY
    assert to_epoch("12h", "since", now) == now - 12 * 3600
    assert to_epoch("30min", "since", now) == now - 1800
    assert to_epoch("2w", "since", now) == now - 14 * DAY
    assert to_epoch(timedelta(hours=1), "since", now) == now - 3600
    assert to_epoch(pd.Timedelta("90s"), "since", now) == now - 90
    assert to_epoch("2026-12-01", "since", now) == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert to_epoch("2026-12-01T08:00:00+02:00", "x", now) == datetime(2026, 12, 1, 6, tzinfo=UTC).timestamp()
    assert to_epoch(datetime(2026, 12, 1, 6), "x", now) == datetime(2026, 12, 1, 6, tzinfo=UTC).timestamp()
    assert to_epoch(pd.Timestamp("2026-12-01", tz="UTC"), "x", now) == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    for bad in ("yesterday", 7, "7 parsecs", object()):
        with pytest.raises(llmkit.InvalidRequestError, match="since"):
            to_epoch(bad, "since", now)
    with pytest.raises(llmkit.InvalidRequestError, match="scope"):
        selection(scope="everything", session_id="s")


def test_scope_defaults_to_the_session_and_since_reaches_every_session() -> None:
    assert selection(session_id="s", now=100.0) == Selection(None, None, "s")
    assert selection("10s", session_id="s", now=100.0) == Selection(90.0, None, None)  # the contract's reading
    assert selection("10s", scope="session", session_id="s", now=100.0) == Selection(90.0, None, "s")
    assert selection(until="10s", scope="all", session_id="s", now=100.0) == Selection(None, 90.0, None)


def test_sessions_since_until_and_scope_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    fill(path, [rec("old-1", NOW - 10 * DAY), rec("old-2", NOW - 3 * DAY), rec("old-3", NOW - 3600)])
    with client(path) as a:
        mine = [a.completion("m1", MSG, metadata={"experiment": "x"}).id for _ in range(2)]
        usage = a.usage()  # this session only: a re-run does not see the earlier runs
        assert usage["request_id"].tolist() == mine
        assert set(usage["session_id"]) == {a.session_id}
        assert a.usage(scope="all")["request_id"].tolist() == ["old-1", "old-2", "old-3", *mine]
        assert a.usage(since="2d")["request_id"].tolist() == ["old-3", *mine]  # every session since then
        assert a.usage(since="2d", scope="session")["request_id"].tolist() == mine
        assert a.usage(until="1d")["request_id"].tolist() == ["old-1", "old-2"]
        assert a.usage(since="5d", until="1d")["request_id"].tolist() == ["old-2"]
        since = datetime.fromtimestamp(NOW - 4 * DAY, UTC)
        assert a.usage(since=since)["request_id"].tolist() == ["old-2", "old-3", *mine]
        assert a.cost_summary()["requests"].sum() == 2
        assert a.cost_summary(scope="all")["requests"].sum() == 5
        assert a.cost_summary(since="2d")["requests"].sum() == 3
        assert a.latency(scope="all")["requests"].sum() == 5
        assert a.latency(since="2d", freq="1h")["requests"].sum() == 3
        with pytest.raises(llmkit.InvalidRequestError, match="since"):
            a.usage(since="last tuesday")
    with client(path) as b:
        assert b.session_id != a.session_id and b.usage().empty
        b.completion("m1", MSG)
        assert len(b.usage()) == 1 and len(b.usage(scope="all")) == 6


# -- metadata as columns -------------------------------------------------------------------------


META_RECORDS = [
    ("r1", {"experiment": "a", "row": 1, "score": 0.5, "flag": True}),
    ("r2", {"experiment": "b", "row": 2, "score": 1, "flag": False}),
    ("r3", None),
    ("r4", {"experiment": "a", "row": 3, "note": "x.y", "odd key.v": 1}),
]


def meta_ledger(path: Path | None) -> Ledger:
    ledger = Ledger(path, session_id="s")
    for i, (rid, meta) in enumerate(META_RECORDS):
        ledger.append_sync(rec(rid, NOW - 100 + i, session="s", metadata=meta, cost_usd=0.01 * (i + 1),
                               provider="openai" if i % 2 else "anthropic"))
    return ledger


@pytest.mark.parametrize("where", ["memory", "sql"])
def test_metadata_keys_become_typed_columns(tmp_path: Path, where: str) -> None:
    ledger = meta_ledger(None if where == "memory" else tmp_path / "l.sqlite3")
    sel = Selection(session_id=None if where == "sql" else "s")  # no session: read from the file
    df = frames.usage_frame(ledger, sel)
    assert [c for c in df.columns if c.startswith("meta.")] == [
        "meta.experiment", "meta.row", "meta.score", "meta.flag", "meta.note", "meta.odd key.v"]
    assert str(df["meta.row"].dtype) == "Int64" and df["meta.row"].tolist()[:2] == [1, 2]
    assert pd.isna(df["meta.row"].iloc[2])
    assert str(df["meta.score"].dtype) == "float64"  # ints and floats: float
    assert str(df["meta.flag"].dtype) == "boolean"
    assert df["meta.experiment"].tolist()[:2] == ["a", "b"] and pd.isna(df["meta.experiment"].iloc[2])
    assert df["metadata"].notna().tolist() == [True, True, False, True]  # the JSON stays as it was
    ledger.close()


@pytest.mark.parametrize("where", ["memory", "sql"])
def test_cost_summary_groups_by_metadata_and_mixed_lists(tmp_path: Path, where: str) -> None:
    ledger = meta_ledger(None if where == "memory" else tmp_path / "l.sqlite3")
    sel = Selection(session_id=None if where == "sql" else "s")
    by_exp = frames.cost_summary_frame(ledger, by="meta.experiment", selection=sel)
    assert by_exp["meta.experiment"].tolist()[:2] == ["a", "b"] and pd.isna(by_exp["meta.experiment"].iloc[2])
    assert by_exp["requests"].tolist() == [2, 1, 1]
    assert by_exp["cost_usd"].tolist() == pytest.approx([0.05, 0.02, 0.03])
    mixed = frames.cost_summary_frame(ledger, by=["provider", "meta.experiment"], selection=sel)
    assert list(mixed.columns[:2]) == ["provider", "meta.experiment"]
    assert str(mixed["provider"].dtype) == "category"
    got = {(p, e if isinstance(e, str) else None): n
           for p, e, n in zip(mixed["provider"], mixed["meta.experiment"], mixed["requests"], strict=True)}
    assert got == {("anthropic", "a"): 1, ("anthropic", None): 1, ("openai", "b"): 1, ("openai", "a"): 1}
    dotted = frames.cost_summary_frame(ledger, by="meta.odd key.v", selection=sel)
    assert dotted["requests"].tolist() == [1, 3]
    with pytest.raises(llmkit.InvalidRequestError, match=r"cannot group by 'meta\.nope'") as err:
        frames.cost_summary_frame(ledger, by="meta.nope", selection=sel)
    assert "'meta.experiment'" in str(err.value) and "'provider'" in str(err.value)  # the valid names
    with pytest.raises(ValueError, match="cannot group by 'colour'"):
        frames.cost_summary_frame(ledger, by=["provider", "colour"], selection=sel)
    ledger.close()


def test_sql_and_memory_answers_agree(tmp_path: Path) -> None:
    """The same records read from memory (this session) and from the file (SQL) give equal frames."""
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path, session_id="s")
    for i in range(60):
        ledger.append_sync(rec(f"r{i}", NOW - 3 * DAY + i * 4000, session="s", provider=[None, "a", "b"][i % 3],
                               status="error" if i % 7 == 0 else "ok", cost_usd=None if i % 5 == 0 else i / 100,
                               metadata={"k": i % 4} if i % 2 else None, fallback=i % 3 == 0))
    memory, sql = Selection(session_id="s"), Selection()
    pd.testing.assert_frame_equal(frames.usage_frame(ledger, memory), frames.usage_frame(ledger, sql),
                                  check_categorical=False)
    for by in (("provider", "model"), "day", ["month", "status"], ["meta.k", "fallback"], "hour", "priced"):
        pd.testing.assert_frame_equal(frames.cost_summary_frame(ledger, by, memory),
                                      frames.cost_summary_frame(ledger, by, sql), check_categorical=False)
    edge = Selection(since=NOW - 2.5 * DAY, until=NOW - 0.7 * DAY)  # partial days at both edges
    pd.testing.assert_frame_equal(
        frames.cost_summary_frame(ledger, ["day", "provider"], Selection(edge.since, edge.until, "s")),
        frames.cost_summary_frame(ledger, ["day", "provider"], edge), check_categorical=False)
    pd.testing.assert_frame_equal(frames.latency_frame(ledger, "1h", memory), frames.latency_frame(ledger, "1h", sql))
    ledger.close()


# -- memory: nothing loaded on open, a bounded window ----------------------------------------------


def test_opening_loads_nothing_and_memory_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(f"old-{i}", NOW - 1000 + i) for i in range(50)])
    ledger = Ledger(path, memory_records=8, session_id="s")
    assert len(ledger) == 0 and len(ledger.raw_columns()) == 0  # the history stays in the file
    for i in range(100):
        ledger.append_sync(rec(f"new-{i}", NOW + i, session="s"))
    assert len(ledger) == 100  # positions keep counting
    assert 8 <= len(ledger.raw_columns()) <= 10  # memory holds only the newest few
    first, cols = ledger.columns_at(0)
    assert first == ledger.first_held > 0 and cols["request_id"][0] == f"new-{first}"
    assert ledger[-1].request_id == "new-99"
    with pytest.raises(IndexError, match="no longer in memory"):
        ledger[0]
    ledger.append_sync(rec("new-0", NOW, session="s"))  # a dropped id is not remembered in memory...
    # ...but this session's frames still have every record: past the window they come from the file
    session = frames.usage_frame(ledger, Selection(session_id="s"))
    assert session["request_id"].tolist()[:3] == ["new-0", "new-1", "new-2"] and len(session) == 101
    assert len(ledger.request_ids()) == 151
    ledger.close()


def test_a_client_keeps_only_its_window_and_still_reports_its_whole_session(tmp_path: Path) -> None:
    with client(tmp_path / "l.sqlite3", memory_records=5) as c:
        ids = [c.completion("m1", MSG).id for _ in range(20)]
        assert c.monitor.record_count() == 20
        first, rows = c.monitor.records_from(0)
        assert first >= 12 and rows["request_id"] == ids[first:]
        assert c.usage()["request_id"].tolist() == ids
        assert c.cost_summary()["requests"].sum() == 20


# -- pruning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rollup", [True, False])
def test_prune_deletes_old_rows_and_keeps_daily_totals(tmp_path: Path, rollup: bool) -> None:
    path = tmp_path / "l.sqlite3"
    day0 = math.floor(NOW / DAY) * DAY - 30 * DAY
    fill(path, [rec(f"r{i}", day0 + (i // 4) * DAY + 60 * i, provider=["a", "b"][i % 2], cost_usd=0.25)
                for i in range(40)])  # 10 days, 4 requests a day
    with client(path) as c:
        before = c.cost_summary(by="day", scope="all")
        out = c.prune_ledger(before=datetime.fromtimestamp(day0 + 5 * DAY, UTC), rollup=rollup)
        assert out["deleted"] == 20
        assert len(c.usage(scope="all")) == 20  # the rows are gone...
        after = c.cost_summary(by="day", scope="all")
        if rollup:  # ...their day totals are not
            pd.testing.assert_frame_equal(after, before, check_categorical=False)
            by_pm = c.cost_summary(scope="all")
            assert by_pm["requests"].tolist() == [20, 20] and by_pm["cost_usd"].sum() == pytest.approx(10.0)
        else:
            assert after["requests"].tolist() == [4] * 5 and after["day"].iloc[0] == pd.Timestamp(
                day0 + 5 * DAY, unit="s", tz="UTC")
        assert c.cost_summary(by="status", scope="all")["requests"].sum() == 20  # no day totals by status
        assert c.prune_ledger("1d")["deleted"] == 20
    with llmkit.Client(ledger=None, health_interval=None) as memory, pytest.raises(llmkit.ConfigError, match="file"):
        memory.prune_ledger("1d")


# -- a first-version file -----------------------------------------------------------------------


def test_a_first_version_ledger_opens_migrates_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    shutil.copy(FIXTURES / "v1_ledger.sqlite3", path)  # made by the first version (make_v1_ledger.py)
    db = sqlite3.connect(path)
    assert applied(db) == ["m001_requests", "m002_requests_time_index"]
    db.close()
    with client(path) as c:
        df = c.usage(scope="all")
        assert df["request_id"].tolist() == ["v1-1", "v1-2", "v1-3", "v1-4", "v1-5"]
        assert df["session_id"].isna().all() and (df["kind"] == "completion").all()
        assert df["meta.experiment"].tolist()[:2] == ["a", "b"] and str(df["meta.row"].dtype) == "Int64"
        summary = c.cost_summary(scope="all")
        assert summary["requests"].sum() == 5
        assert summary["cost_usd"].sum() == pytest.approx(0.0045 + 0.004 + 0.0069)
        by_day = c.cost_summary(by="day", scope="all")  # day totals were filled from the old rows
        assert by_day["requests"].tolist() == [2, 2, 1]
        by_exp = c.cost_summary(by="meta.experiment", scope="all")
        assert by_exp["requests"].tolist() == [2, 1, 2]
        c.completion("m1", MSG)
        assert len(c.usage(scope="all")) == 6
    db = sqlite3.connect(path)
    names = applied(db)
    assert names[:2] == ["m001_requests", "m002_requests_time_index"]
    assert "m004_history_indexes_and_daily_rollup" in names
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"requests_time", "requests_session"} <= indexes
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
        "requests_daily", "requests_daily_upto"}
    db.close()


# -- one budget per ledger file ------------------------------------------------------------------


def spend_until_refused(clients: list[llmkit.Client]) -> int:
    """Alternate calls between the clients until every one is refused; returns the calls that ran."""
    ran, refused = 0, set()
    while len(refused) < len(clients):
        for i, c in enumerate(clients):
            try:
                c.completion("m1", MSG, max_tokens=50)
                ran += 1
            except llmkit.BudgetExceededError:
                refused.add(i)
    return ran


def file_spend(path: Path) -> tuple[float, float]:
    """(total priced cost, the costliest request) in the file."""
    db = sqlite3.connect(path)
    total, most = db.execute("SELECT total(cost_usd), max(cost_usd) FROM requests").fetchone()
    db.close()
    return total, most


def test_two_clients_on_one_file_share_one_budget(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    budget = 0.5
    with client(path, budget_usd=budget) as a, client(path, budget_usd=budget) as b:
        ran = spend_until_refused([a, b])
        assert ran > 4
        total, one = file_spend(path)
        assert total <= budget + one  # together, never past the budget by more than one request
        for c in (a, b):  # each sees the other's spend
            assert c.budget_status()["spent_usd"] == pytest.approx(total)
    with client(path, budget_usd=budget) as late, pytest.raises(llmkit.BudgetExceededError):
        late.completion("m1", MSG, max_tokens=50)  # a new session starts from the file's spend


CHILD = textwrap.dedent(
    """
    import sys, llmkit
    provider = {"name": "m", "adapter": "mock", "pricing": {"m1": {"input": 1000.0, "output": 1000.0}}}
    with llmkit.Client([provider], ledger=sys.argv[1], health_interval=None, budget_usd=float(sys.argv[2])) as c:
        print("ready", flush=True)
        sys.stdin.readline()
        n = 0
        while True:
            try:
                c.completion("m1", [{"role": "user", "content": "Hello there"}], max_tokens=50)
                n += 1
            except llmkit.BudgetExceededError:
                break
        print(n, flush=True)
    """
)


@pytest.mark.timeout(120)
def test_two_processes_on_one_file_share_one_budget(tmp_path: Path) -> None:
    path, script, budget = tmp_path / "l.sqlite3", tmp_path / "child.py", 0.5
    script.write_text(CHILD)
    Ledger(path).close()  # the schema, before both open it
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(budget)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:  # start both together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        counts = [int(p.communicate(timeout=100)[0].strip()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    total, one = file_spend(path)
    assert sum(counts) > 4 and all(n > 0 for n in counts)
    assert total <= budget + one  # one process alone would have spent the whole budget


def test_day_totals_fold_new_requests_in_and_stay_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing runs per insert: readers add the requests past the day totals, and the budget folds them
    in every FOLD_EVERY requests; answers are the same before and after, and after a prune that emptied
    the file (SQLite then hands out ids again)."""
    monkeypatch.setattr("llmkit.ledger.queries.FOLD_EVERY", 3)
    path = tmp_path / "l.sqlite3"

    def upto() -> int:
        db = sqlite3.connect(path)
        value = db.execute("SELECT id FROM requests_daily_upto").fetchone()[0]
        db.close()
        return int(value)

    with client(path, budget_usd=100.0) as c:
        c.completion("m1", MSG)
        assert upto() == 0  # one request past the totals: read, not folded
        for _ in range(4):
            c.completion("m1", MSG)
        assert upto() >= 3  # the budget folded them in
        total, _ = file_spend(path)
        summary = c.cost_summary(scope="all")
        assert summary["requests"].sum() == 5 and summary["cost_usd"].sum() == pytest.approx(total)
        assert c.budget_status()["spent_usd"] == pytest.approx(total)
        ahead = datetime.now(UTC) + timedelta(days=1)  # everything
        assert c.prune_ledger(before=ahead, rollup=False)["deleted"] == 5
        assert c.cost_summary(scope="all").empty and c.budget_status()["spent_usd"] == 0.0
        ids = [c.completion("m1", MSG).id for _ in range(2)]  # rowids start again at 1
        assert c.cost_summary(scope="all")["requests"].sum() == 2
        assert file_spend(path)[0] > 0 and c.budget_status()["spent_usd"] == pytest.approx(file_spend(path)[0])
        assert c.usage(scope="all")["request_id"].tolist() == ids


def test_cached_answers_and_saved_dollars_are_summed_in_sql_and_kept_by_the_day_totals(tmp_path: Path) -> None:
    """cost_summary(scope="all") reads SQL (and the day totals after a prune): cached answers count there too."""
    ledger, cache = tmp_path / "ledger.sqlite3", tmp_path / "cache.sqlite3"
    entry = [{"name": "mock", "adapter": "mock", "pricing": {"m": {"input": 1.0, "output": 2.0}}}]
    msg = [{"role": "user", "content": "hello"}]
    with llmkit.Client(entry, ledger=str(ledger), cache=str(cache), health_interval=None) as one:
        paid = one.completion("m", msg).cost_usd
    with llmkit.Client(entry, ledger=str(ledger), cache=str(cache), health_interval=None) as two:
        assert two.completion("m", msg).cached
        summary = two.cost_summary(by="provider", scope="all")
        assert summary["requests"].tolist() == [2] and summary["cached_requests"].tolist() == [1]
        assert summary["cost_saved_usd"].iloc[0] == pytest.approx(paid)
    with llmkit.Client(entry, ledger=str(ledger), health_interval=None) as three:
        three.prune_ledger(before="2999-01-01", rollup=True)  # every row goes; the day totals stay
        by_day = three.cost_summary(by="day", scope="all")
        assert by_day["cached_requests"].sum() == 1 and by_day["cost_saved_usd"].sum() == pytest.approx(paid)
