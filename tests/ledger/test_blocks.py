"""Column blocks (``llmkit.ledger.blocks``): a derived copy of older records that makes reading millions
of them fast. Whatever the blocks hold, a frame read through them must equal the one read from the rows."""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit import frames
from llmkit.ledger import blocks, queries, store
from llmkit.ledger.queries import Selection
from llmkit.ledger.store import Ledger, LedgerRecord

from .test_history import fill

NOW = 1_800_000_000.0


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 4 rows, and reads never pack by themselves (tests pack when they mean to)."""
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 4)
    monkeypatch.setattr(queries, "PACK_ON_READ", 10**9)


def rec(i: int, t: float | None = None, **kw: Any) -> LedgerRecord:
    values: dict[str, Any] = dict(
        request_id=f"r{i}", time=NOW + i if t is None else t, started=(NOW + i if t is None else t) - 0.5,
        provider=["openai", "anthropic", None][i % 3], model=["gpt-4o", "claude", None][i % 3],
        requested_model="gpt-4o", status=["ok", "error", "cancelled"][i % 3],
        error_type="ServerError" if i % 3 == 1 else None, error_message="boom" if i % 3 == 1 else None,
        input_tokens=100 + i, output_tokens=10 + i, cache_read_tokens=i % 5, cache_write_tokens=0,
        reasoning_tokens=i % 2, usage_estimated=i % 4 == 0, cost_usd=None if i % 5 == 0 else 0.001 * i,
        latency_s=0.25 + i / 1000, attempts=1 + i % 2, fallback=i % 6 == 0, stream=i % 7 == 0, priority=i % 3,
        metadata={"experiment": f"e{i % 2}", "row": i} if i % 2 else None, session_id=f"s{i // 5}",
        kind="completion", cached=i % 8 == 0, cost_saved_usd=0.5 if i % 8 == 0 else 0.0,
    )
    values.update(kw)
    return LedgerRecord(**values)


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def read(path: Path, sel: Selection = Selection()) -> pd.DataFrame:
    ledger = Ledger(path)
    try:
        return frames.usage_frame(ledger, sel)
    finally:
        ledger.close()


def read_rows_only(path: Path, sel: Selection = Selection()) -> pd.DataFrame:
    """The same read with the blocks table emptied in a copy of the file: the rows are the truth."""
    copy = path.with_name(path.stem + "-rows.sqlite3")
    src, dst = connect(path), connect(copy)
    src.backup(dst)
    src.close()
    dst.execute("DELETE FROM request_blocks")
    dst.close()
    try:
        return read(copy, sel)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(str(copy) + suffix).unlink(missing_ok=True)


def layout_of(path: Path) -> dict[str, Any]:
    """The first block's layout (inside its compressed body)."""
    db = connect(path)
    data = db.execute("SELECT data FROM request_blocks ORDER BY id_after").fetchone()[0]
    db.close()
    body = zlib.decompress(data)
    (size,) = struct.unpack_from("<I", body)
    layout: dict[str, Any] = json.loads(body[4:4 + size])
    return layout


def chain_of(path: Path) -> list[blocks.Link]:
    db = connect(path)
    try:
        return blocks.chain(db)
    finally:
        db.close()


def pack(path: Path, max_blocks: int | None = None) -> int:
    db = connect(path)
    try:
        return blocks.pack(db, max_blocks)
    finally:
        db.close()


def test_packed_blocks_read_back_exactly_what_the_rows_hold(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(i) for i in range(30)])
    assert pack(path) == 7  # 28 rows in full blocks of 4; the last 2 stay rows
    links = chain_of(path)
    assert [link.after for link in links] == [0, *[link.hi for link in links[:-1]]]
    assert sum(link.rows for link in links) == 28
    layout = layout_of(path)
    assert (layout["prompt"][0], layout["priority"][0], layout["time"][0], layout["input_tokens"][0]) == (
        "n", "b", "d", "b")
    frame = read(path)
    assert len(frame) == 30 and frame["request_id"].tolist() == [f"r{i}" for i in range(30)]
    pd.testing.assert_frame_equal(frame, read_rows_only(path))
    assert frame["cost_usd"].isna().sum() == 6 and not frame["priced"][0]
    assert frame["meta.row"].dtype == "Int64" and frame["meta.row"].tolist()[:4] == [pd.NA, 1, pd.NA, 3]
    assert frame["provider"].dtype == "category" and frame["provider"].isna().sum() == 10


def test_time_ranges_cut_blocks_and_keep_sql_order(tmp_path: Path) -> None:
    """Records finish out of order (a long request ends after a short later one): a time range cuts
    through blocks, and the frame is ordered by time, then id, as the SQL read orders it."""
    path = tmp_path / "l.sqlite3"
    times = [NOW + ((i * 7) % 23) for i in range(23)]
    fill(path, [rec(i, t) for i, t in enumerate(times)])
    pack(path)
    for since, until in [(NOW + 3, NOW + 11), (None, NOW + 5), (NOW + 20, None), (NOW + 100, None)]:
        sel = Selection(since, until)
        frame = read(path, sel)
        expect = sorted(t for t in times if (since is None or t >= since) and (until is None or t < until))
        assert (frame["time"].astype("int64") / 1e9).tolist() == pytest.approx(expect)
        pd.testing.assert_frame_equal(frame, read_rows_only(path, sel))


def test_a_session_read_uses_the_rows_and_latency_reads_blocks(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(i) for i in range(20)])
    pack(path)
    assert read(path, Selection(session_id="s1"))["request_id"].tolist() == ["r5", "r6", "r7", "r8", "r9"]
    ledger = Ledger(path)
    try:
        with_blocks = frames.latency_frame(ledger, "5s", Selection())
    finally:
        ledger.close()
    db = connect(path)
    db.execute("DELETE FROM request_blocks")
    db.close()
    ledger = Ledger(path)
    try:
        pd.testing.assert_frame_equal(with_blocks, frames.latency_frame(ledger, "5s", Selection()))
    finally:
        ledger.close()


def test_text_holding_the_separators_is_stored_as_json_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    odd = ["a\x1fb", "\x1e", "", "line\nbreak", "ünï ✓"]
    fill(path, [rec(i, error_message=odd[i % 5], prompt=odd[(i + 1) % 5]) for i in range(8)])
    pack(path)
    layout = layout_of(path)
    assert layout["error_message"][0] == "j" and layout["request_id"][0] == "s"
    frame = read(path)
    assert frame["error_message"].tolist() == [odd[i % 5] for i in range(8)]
    pd.testing.assert_frame_equal(frame, read_rows_only(path))


def test_prune_drops_the_blocks_and_packing_rebuilds_them_from_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(i) for i in range(21)])
    pack(path)
    assert chain_of(path)
    ledger = Ledger(path)
    try:
        assert ledger.history is not None
        assert ledger.history.prune(NOW + 6)["deleted"] == 6
    finally:
        ledger.close()
    assert chain_of(path) == []  # a block may have held a pruned row
    assert read(path)["request_id"].tolist() == [f"r{i}" for i in range(6, 21)]
    assert pack(path) == 3
    assert chain_of(path)[0].after == 0
    frame = read(path)
    assert frame["request_id"].tolist() == [f"r{i}" for i in range(6, 21)]
    pd.testing.assert_frame_equal(frame, read_rows_only(path))


def four_blocks(path: Path) -> tuple[pd.DataFrame, sqlite3.Connection, int]:
    """17 records packed into four blocks: the frame read from rows, a connection, the second block's id."""
    fill(path, [rec(i) for i in range(17)])
    pack(path)
    truth = read_rows_only(path)
    db = connect(path)
    second = db.execute("SELECT id_after FROM request_blocks ORDER BY id_after LIMIT 1 OFFSET 1").fetchone()[0]
    return truth, db, int(second)


def test_a_broken_chain_or_another_format_falls_back_to_the_rows_and_packing_repairs_it(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    truth, db, second = four_blocks(path)
    db.execute("DELETE FROM request_blocks WHERE id_after = ?", (second,))  # a hole after the first block
    db.close()
    assert len(chain_of(path)) == 1
    pd.testing.assert_frame_equal(read(path), truth)
    assert pack(path) == 3 and len(chain_of(path)) == 4
    pd.testing.assert_frame_equal(read(path), truth)
    db = connect(path)
    db.execute("UPDATE request_blocks SET format = 0")  # blocks written by an older version
    db.close()
    assert chain_of(path) == []
    pd.testing.assert_frame_equal(read(path), truth)
    assert pack(path) == 4
    db = connect(path)
    assert db.execute("SELECT count(*), min(format), max(format) FROM request_blocks").fetchone() == (
        4, blocks.FORMAT, blocks.FORMAT)  # a new chain of this format replaces an older format's
    db.close()


def test_two_formats_on_one_file_keep_their_own_chains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older and a newer llmkit packing the same file do not undo each other's work."""
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(i) for i in range(12)])
    assert pack(path) == 3
    monkeypatch.setattr(blocks, "FORMAT", 2)
    assert pack(path) == 3  # the newer version's own chain (the older one's blocks go once)
    monkeypatch.setattr(blocks, "FORMAT", 1)
    assert pack(path) == 3  # the older version rebuilds its chain, leaving the newer one's alone
    monkeypatch.setattr(blocks, "FORMAT", 2)
    assert pack(path) == 0 and len(chain_of(path)) == 3
    monkeypatch.setattr(blocks, "FORMAT", 1)
    assert pack(path) == 0 and len(chain_of(path)) == 3
    pd.testing.assert_frame_equal(read(path), read_rows_only(path))


@pytest.mark.parametrize("statement", ["DELETE FROM requests WHERE id = 6",
                                       "UPDATE requests SET prompt = 'redacted' WHERE id = 6"])
def test_rows_changed_behind_llmkits_back_drop_their_blocks(tmp_path: Path, statement: str) -> None:
    """An older llmkit's prune or a hand-run statement knows nothing of the blocks: m007's triggers drop
    the block holding the changed row and every later one, so reads show the change."""
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(i) for i in range(12)])
    pack(path)
    db = connect(path)
    db.execute(statement)
    db.close()
    assert len(chain_of(path)) == 1  # rows 1-4 stay packed; 5-12 are rows again
    frame = read(path)
    pd.testing.assert_frame_equal(frame, read_rows_only(path))
    assert "r5" not in frame["request_id"].tolist() or frame["prompt"][5] == "redacted"


def test_rows_that_do_not_fit_a_block_stay_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another program wrote a REAL into an INTEGER column (packed as floats, read as the rows read it)
    and bytes into a TEXT column (not packable: those rows are read as rows, logged once)."""
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(i) for i in range(12)])
    db = connect(path)
    db.execute("UPDATE requests SET input_tokens = 12.5 WHERE id = 2")
    db.execute("UPDATE requests SET error_message = x'6869' WHERE id = 7")
    db.close()
    ledger = Ledger(path)
    try:
        assert ledger.history is not None
        with caplog.at_level("WARNING", logger="llmkit"):
            assert ledger.history.pack_quietly(None) == 1
            assert ledger.history.pack_quietly(None) == 0  # not tried again while the chain stays put
        assert caplog.text.count("do not fit the column blocks") == 1
        frame = frames.usage_frame(ledger, Selection())
    finally:
        ledger.close()
    assert frame["input_tokens"][1] == 12 and frame["error_message"][6] == "hi"
    pd.testing.assert_frame_equal(frame, read_rows_only(path))


def test_a_prune_and_reused_ids_during_a_pack_never_store_the_old_rows(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """While a block is encoded, a prune deletes the newest rows and new rows take their ids: the count
    in the block's range is the same again, but the packer compares ids and request ids."""
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(0, NOW), rec(1, NOW), rec(2, NOW + 100), rec(3, NOW + 100)])
    encode = blocks.encode

    def prune_and_refill(rows: Any) -> Any:
        monkeypatch.setattr(blocks, "encode", encode)
        ledger = Ledger(path)
        try:
            assert ledger.history is not None
            assert ledger.history.prune(NOW + 200)["deleted"] == 4
            for i in (10, 11, 12, 13):
                ledger.append_sync(rec(i, NOW + 300))
        finally:
            ledger.close()
        return encode(rows)

    monkeypatch.setattr(blocks, "encode", prune_and_refill)
    pack(path)
    frame = read(path)
    assert frame["request_id"].tolist() == ["r10", "r11", "r12", "r13"]
    pd.testing.assert_frame_equal(frame, read_rows_only(path))


@pytest.mark.parametrize("damage", ["blob", "layout", "short"])
def test_a_damaged_block_is_read_from_the_rows_and_repacked(tmp_path: Path, damage: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "l.sqlite3"
    truth, db, second = four_blocks(path)
    change = {"blob": ("UPDATE request_blocks SET data = x'00ff' WHERE id_after = ?", ()),
              "layout": ("UPDATE request_blocks SET data = ? WHERE id_after = ?",
                         (zlib.compress(struct.pack("<I", 2) + b"{}"),)),
              "short": ("UPDATE request_blocks SET rows = rows + 1 WHERE id_after = ?", ())}[damage]
    db.execute(change[0], (*change[1], second))
    db.close()
    with caplog.at_level("WARNING", logger="llmkit"):
        pd.testing.assert_frame_equal(read(path), truth)
    assert "column block is damaged" in caplog.text
    assert len(chain_of(path)) == 1  # the damaged block and those after it are gone...
    assert pack(path) == 3  # ...and packing rebuilds them
    pd.testing.assert_frame_equal(read(path), truth)


def test_a_packer_that_lost_a_race_writes_nothing_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between reading its rows and inserting its block, another process packs the same rows: the
    late packer sees the chain moved and starts over, so no rows are covered twice or missed."""
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(i) for i in range(12)])
    encode = blocks.encode
    raced = []

    def encode_while_another_packs(rows: Any) -> Any:
        if not raced:
            raced.append(-1)
            raced[0] = pack(path)  # the other process, on its own connection
        return encode(rows)

    monkeypatch.setattr(blocks, "encode", encode_while_another_packs)
    assert pack(path) == 0 and raced == [3]
    links = chain_of(path)
    assert len(links) == 3 and sum(link.rows for link in links) == 12
    fill(path, [rec(i) for i in range(12, 16)])
    db = connect(path)
    db.execute("DELETE FROM requests WHERE id = 14")  # a gap: the count no longer matches a full block
    db.close()
    assert pack(path) == 0  # three rows past the chain: not a full block yet
    pd.testing.assert_frame_equal(read(path), read_rows_only(path))


def test_the_idle_writer_packs_and_a_read_far_behind_packs_first(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.sqlite3"
    fill(path, [rec(i) for i in range(10)])
    monkeypatch.setattr(queries, "PACK_ON_READ", 8)
    assert chain_of(path) == []
    assert len(read(path, Selection(since=NOW + 2))) == 8
    assert chain_of(path) == []  # a time range reads through the index and packs nothing
    assert len(read(path)) == 10
    assert len(chain_of(path)) == 2  # a read of everything packed the two full blocks first

    monkeypatch.setattr(store, "_CHECKPOINT_IDLE_S", 0.01)
    monkeypatch.setattr(store, "_PACK_AGAIN_S", 0.01)
    ledger = Ledger(path)
    assert ledger._writer is not None and ledger.history is not None
    packed = threading.Event()
    work = ledger.history.pack_quietly

    def idle(max_blocks: int, stop: threading.Event) -> int:
        n = work(max_blocks, stop)
        if len(chain_of(path)) == 4:
            packed.set()
        return n

    ledger._writer.idle_work = idle
    try:
        for i in range(10, 20):
            ledger.append_sync(rec(i))
        assert packed.wait(10)  # the writer went idle and packed the new rows (one block per idle turn)
    finally:
        ledger.close()
    pd.testing.assert_frame_equal(read(path), read_rows_only(path))


_text = st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6))
_meta = st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "c.d"]),
                                              st.one_of(st.integers(-10**6, 10**6), st.booleans(), _text,
                                                        st.floats(allow_nan=False, allow_infinity=False),
                                                        st.lists(st.integers(), max_size=2)), max_size=3))
_records = st.lists(st.tuples(st.floats(0, 50), _text, _text, _meta,
                              st.one_of(st.none(), st.floats(0, 10, allow_nan=False)),
                              st.integers(0, 2**40), st.sampled_from(["ok", "error", "cancelled"]),
                              st.one_of(st.none(), st.sampled_from(["openai", "x\x1fy", "é"]))),
                    min_size=0, max_size=14)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_records, st.integers(0, 3), st.one_of(st.none(), st.floats(0, 50)))
def test_any_records_read_the_same_through_blocks_as_from_rows(spec: list[tuple[Any, ...]], packed: int,
                                                               since: float | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "l.sqlite3"
        records = [rec(i, NOW + t, error_message=msg, prompt=prompt, metadata=meta, cost_usd=cost,
                       input_tokens=tokens, status=status, provider=provider, model=provider)
                   for i, (t, msg, prompt, meta, cost, tokens, status, provider) in enumerate(spec)]
        fill(path, records)
        pack(path, packed)
        for sel in (Selection(), Selection(None if since is None else NOW + since)):
            frame = read(path, sel)
            pd.testing.assert_frame_equal(frame, read_rows_only(path, sel))
        assert len(read(path)) == len(records)
        assert all(math.isnan(c) if r.cost_usd is None else c == r.cost_usd
                   for r, c in zip(records, read(path)["cost_usd"], strict=True))


def test_a_first_version_file_gets_the_blocks_table_empty(tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "v1.sqlite3"
    shutil.copy(Path(__file__).parent / "fixtures" / "v1_ledger.sqlite3", path)
    frame = read(path)
    assert len(frame) > 0 and chain_of(path) == []
    assert pack(path) == len(frame) // 4
    pd.testing.assert_frame_equal(read(path), frame)


def test_a_file_with_the_first_block_table_migrates_and_packs_again(tmp_path: Path) -> None:
    """m006's table (one chain, layout column) was replaced by m007's before release; a file made in
    between loses its blocks (a derived copy) and is packed again."""
    from llmkit.ledger import migrations

    path = tmp_path / "l.sqlite3"
    db = connect(path)
    migrations.applied(db)  # the bookkeeping table
    for fn in migrations.MIGRATIONS[:6]:
        fn(db)
        db.execute("INSERT INTO _llmkit_migrations (name, applied_at) VALUES (?, 0)", (fn.__name__,))
    db.execute("INSERT INTO request_blocks VALUES (0, 4, 4, 0, 1, 1, '{}', x'00')")
    db.close()
    fill(path, [rec(i) for i in range(9)])  # opening migrates: m007
    db = connect(path)
    assert migrations.applied(db)[-1] == "m007_request_block_chains"
    assert db.execute("SELECT count(*) FROM request_blocks").fetchone()[0] == 0
    db.close()
    assert pack(path) == 2
    pd.testing.assert_frame_equal(read(path), read_rows_only(path))
