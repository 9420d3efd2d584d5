"""Column blocks: the ledger's older records packed column by column, so reading a million of them back
is about a hundred blob reads instead of a million rows (``usage(scope="all")``, issue 12).

SQLite stores rows; a reader through Python's ``sqlite3`` pays for one Python object per value (about
5 s for the 28 columns of a million records here, before pandas sees any of it). A block holds
``BLOCK_ROWS`` consecutive records (by id), each column as one run of little-endian bytes: floats in
8 bytes (an unpriced cost as NaN), integers as narrow as the block's values allow, low-cardinality text
as codes into a table (the same way), other text joined with a control character (a JSON list if a
value holds one, nothing if every value is missing); the whole body zlib-compressed (level 1: fast both
ways).

``request_blocks`` (migration m006) is a derived copy of ``requests``, never the store of record:
dropping it loses nothing, and readers fall back to the rows. The invariant that keeps it exact:

- Blocks form a chain: the first covers every row with ``0 < id <= hi``, each next one every row with
  ``previous hi < id <= its hi``. Readers follow the chain from 0 to its first break (a missing block,
  or one in another ``FORMAT``) and read the rows past its top from ``requests``.
- Rows are never updated, and new rows get ids above every id in the file, so rows inside a block's
  range never change; the one exception is ``prune``, which deletes blocks with the rows, in the same
  transaction (``drop``).
- ``pack`` reads a full block's rows in one snapshot and encodes them outside any lock, then inserts
  the block in a short write transaction only if the chain's top and the rows in its range are still
  what it read (another process may have packed or pruned meanwhile).

No pandas or numpy here (``llmkit.frames`` turns blocks into columns); stdlib only.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .schema import BOOLS, CODED, FIELDS, FLOATS, INTS

BLOCK_ROWS = 8192
FORMAT = 1  # bump when FIELDS or the encoding change: blocks in another format are ignored, then rebuilt
_LITTLE = struct.pack("=H", 1) == struct.pack("<H", 1)
_SELECT = f"SELECT id, {', '.join(FIELDS)} FROM requests WHERE id > ? ORDER BY id LIMIT ?"
_NAN = math.nan
_WIDTH = {"d": 8, "q": 8, "i": 4, "h": 2, "b": 1, "n": 0}  # bytes a value (None: text, any length)
_STANDARD_WIDTHS = {k: array(k).itemsize for k in "bhiqd"} == {"b": 1, "h": 2, "i": 4, "q": 8, "d": 8}
_SEPARATOR = "\x1f"  # text columns are joined with this (JSON metadata never holds a raw control character)
NONE = _NONE = "\x1e"  # and a missing value is this; a column holding either is stored as a JSON list


@dataclass(frozen=True, slots=True)
class Link:
    """One block's place in the chain (no data)."""

    after: int  # the block covers every row with after < id <= hi
    hi: int
    rows: int
    t_min: float
    t_max: float


class Block:
    """One block's columns, decoded on demand from its decompressed body."""

    __slots__ = ("body", "layout", "link")

    def __init__(self, link: Link, layout: dict[str, list[Any]], data: bytes) -> None:
        """Raises ``ValueError`` (or ``zlib.error``) for a block that does not hold what it claims."""
        self.link = link
        self.layout = layout
        self.body = zlib.decompress(data)
        for name in FIELDS:
            kind, offset, length = layout[name][:3]
            width = _WIDTH.get(kind)
            if offset < 0 or offset + length > len(self.body) or (width is not None and length != width * link.rows):
                raise ValueError(f"column block {link.after}: column {name!r} does not fit the block")

    @property
    def rows(self) -> int:
        return self.link.rows

    def raw(self, name: str) -> tuple[str, memoryview]:
        """A number or code column as (array typecode, little-endian bytes): 'd' float64; integers as
        'b', 'h', 'i' or 'q' (1, 2, 4, 8 bytes, the narrowest that holds the block's values); codes
        (-1: None) into ``table(name)`` the same way."""
        kind, offset, length = self.layout[name][:3]
        return kind, memoryview(self.body)[offset:offset + length]

    def kind(self, name: str) -> str:
        """How a column is stored: 'd', 'b'/'h'/'i'/'q' (see ``raw``), 's' or 'j' text, 'n' all missing."""
        return str(self.layout[name][0])

    def table(self, name: str) -> list[str]:
        return list(self.layout[name][3])

    def texts(self, name: str) -> tuple[list[str | None], str | None]:
        """A text column and how it marks a missing value: ``NONE`` (the caller turns it into None or
        NaN: faster than doing it here), or None."""
        kind, offset, length = self.layout[name][:3]
        if kind == "n":
            return [None] * self.rows, None
        raw = self.body[offset:offset + length].decode(errors="surrogatepass")
        if kind == "s":
            return (list(raw.split(_SEPARATOR)) if self.rows else []), NONE
        return json.loads(raw), None


def encode(rows: Sequence[tuple[Any, ...]]) -> tuple[str, bytes]:
    """Rows of ``SELECT id, FIELDS...`` as a block: (layout JSON, compressed body)."""
    columns = list(zip(*rows, strict=True))[1:] if rows else [()] * len(FIELDS)
    parts: list[bytes] = []
    layout: dict[str, list[Any]] = {}
    offset = 0
    for name, values in zip(FIELDS, columns, strict=True):
        extra: list[Any] = []
        if name in FLOATS:
            kind, blob = "d", _bytes(array("d", [_NAN if v is None else v for v in values]))
        elif name in INTS or name in BOOLS:
            kind = _narrowest(min(values, default=0), max(values, default=0))
            blob = _bytes(array(kind, values))
        elif name in CODED:
            table = list(dict.fromkeys(v for v in values if v is not None))
            index = {v: i for i, v in enumerate(table)}
            kind = _narrowest(-1, len(table))
            blob = _bytes(array(kind, [-1 if v is None else index[v] for v in values]))
            extra = [table]
        elif all(v is None for v in values):
            kind, blob = "n", b""  # every value missing (a prompt column unless log_prompts is on)
        elif not any(_SEPARATOR in v or _NONE in v for v in values if v is not None):
            kind, blob = "s", _SEPARATOR.join(_NONE if v is None else v for v in values).encode(errors="surrogatepass")
        else:  # text with our separators in it: a JSON list (slower to read back)
            kind, blob = "j", json.dumps(list(values), ensure_ascii=False, separators=(",", ":")).encode(
                errors="surrogatepass")
        layout[name] = [kind, offset, len(blob), *extra]
        parts.append(blob)
        offset += len(blob)
    return json.dumps(layout, ensure_ascii=False, separators=(",", ":")), zlib.compress(b"".join(parts), 1)


def _narrowest(lo: int, hi: int) -> str:
    """The smallest signed integer typecode holding ``lo..hi`` (1, 2, 4 or 8 bytes)."""
    for kind, bits in (("b", 8), ("h", 16), ("i", 32)):
        if -(2 ** (bits - 1)) <= lo and hi < 2 ** (bits - 1):
            return kind
    return "q"


def _bytes(values: array[Any]) -> bytes:
    if not _LITTLE:  # blocks are little-endian on every machine
        values.byteswap()
    return values.tobytes()


# -- the chain -------------------------------------------------------------------------------------


def chain(db: sqlite3.Connection) -> list[Link]:
    """The blocks readers may use, oldest first: the chain from id 0 up to its first break."""
    out: list[Link] = []
    top = 0
    for after, hi, rows, t_min, t_max, fmt in db.execute(
            "SELECT id_after, id_hi, rows, t_min, t_max, format FROM request_blocks ORDER BY id_after"):
        if after != top or fmt != FORMAT:
            break
        out.append(Link(after, hi, rows, t_min, t_max))
        top = hi
    return out


def read(db: sqlite3.Connection, links: Sequence[Link]) -> tuple[list[Block], Link | None]:
    """The blocks of ``links`` (a run of the chain, inside the caller's read transaction), decoded, up to
    the first one that cannot be (damaged: a bad blob or layout), which is returned second (else None):
    the caller reads the rows from there on instead."""
    out: list[Block] = []
    for link in links:
        row = db.execute("SELECT layout, data FROM request_blocks WHERE id_after = ?", (link.after,)).fetchone()
        try:
            out.append(Block(link, json.loads(row[0]), row[1]))
        except (ValueError, TypeError, KeyError, IndexError, zlib.error):
            return out, link
    return out, None


def pending(db: sqlite3.Connection) -> int:
    """How many rows are past the chain's top."""
    links = chain(db)
    top = links[-1].hi if links else 0
    return int(db.execute("SELECT count(*) FROM requests WHERE id > ?", (top,)).fetchone()[0])


def pack(db: sqlite3.Connection, max_blocks: int | None = None) -> int:
    """Pack full blocks of the rows past the chain's top; returns how many were added. ``db`` is in
    autocommit mode; a busy file raises ``sqlite3.OperationalError`` (callers that must not wait catch it)."""
    added = 0
    if not _STANDARD_WIDTHS:  # an unusual C ABI: leave the rows as they are (readers handle that)
        return 0
    while max_blocks is None or added < max_blocks:
        db.execute("BEGIN")  # one snapshot: the chain and the rows past it agree
        try:
            links = chain(db)
            top = links[-1].hi if links else 0
            rows = db.execute(_SELECT, (top, BLOCK_ROWS)).fetchall()
        finally:
            db.execute("COMMIT")
        if len(rows) < BLOCK_ROWS:
            break
        layout, data = encode(rows)
        hi = int(rows[-1][0])
        times = [r[2] for r in rows]
        db.execute("BEGIN IMMEDIATE")
        try:
            now = chain(db)
            same = (now[-1].hi if now else 0) == top and db.execute(
                "SELECT count(*) FROM requests WHERE id > ? AND id <= ?", (top, hi)).fetchone()[0] == len(rows)
            if same:
                # blocks past the chain (a break, another format) would overlap the new one
                db.execute("DELETE FROM request_blocks WHERE id_after >= ?", (top,))
                if not now:
                    db.execute("DELETE FROM request_blocks")
                db.execute("INSERT INTO request_blocks (id_after, id_hi, rows, t_min, t_max, format, layout, data) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (top, hi, len(rows), min(times), max(times), FORMAT,
                                                               layout, data))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if not same:
            continue  # someone packed or pruned meanwhile: look again
        added += 1
    return added


def drop_from(db: sqlite3.Connection, after: int) -> None:
    """Forget the block covering rows past ``after`` and every later one (a damaged block: packing
    rebuilds them from the rows). Autocommit: one statement."""
    db.execute("DELETE FROM request_blocks WHERE id_after >= ?", (after,))


def drop(db: sqlite3.Connection) -> None:
    """Forget every block (inside the caller's write transaction, e.g. prune's)."""
    db.execute("DELETE FROM request_blocks")
