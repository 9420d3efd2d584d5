"""Column blocks: the ledger's older records packed column by column, so reading a million of them back
is about a hundred blob reads instead of a million rows (``usage(scope="all")``, issue 12).

SQLite stores rows; a reader through Python's ``sqlite3`` pays for one Python object per value (about
5 s for the 28 columns of a million records here, before pandas sees any of it). A block holds
``BLOCK_ROWS`` consecutive records (by id), each column as one run of little-endian bytes: floats in
8 bytes (an unpriced cost as NaN), integers as narrow as the block's values allow, low-cardinality text
as codes into a table (the same way), other text joined with a control character (a JSON list if a
value holds one, nothing if every value is missing). A block's body is its layout (JSON) and its
columns, zlib-compressed (level 1: fast both ways; zlib's checksum covers all of it).

``request_blocks`` (migrations m006, m007) is a derived copy of ``requests``, never the store of record:
dropping it loses nothing, and readers fall back to the rows. The invariant that keeps it exact:

- Blocks of this ``FORMAT`` form a chain: the first covers every row with ``0 < id <= hi``, each next
  one every row with ``previous hi < id <= its hi``. Readers follow the chain from 0 to its first break
  (a missing block) and read the rows past its top from ``requests``. Blocks of another format (another
  llmkit version on the same file) form a chain of their own and are left alone.
- New rows get ids above every id in the file, so rows inside a block's range never change, except
  through a DELETE or UPDATE of ``requests``: m007's triggers then delete the block covering that row
  and every later one, whoever ran it (``prune``, an older llmkit, a hand-run statement).
- ``pack`` reads a full block's rows in one snapshot and encodes them outside any lock, then inserts
  the block in a short write transaction only if the chain's top and the rows in its range (ids and
  request ids) are still what it read.
- A block that does not decode into what its layout claims (``Block`` checks kinds, sizes, codes) is
  treated as a break: its records are read from the rows, and it is dropped to be packed again.

No pandas or numpy here (``llmkit.frames`` turns blocks into columns); stdlib only.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import threading
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .schema import BOOLS, CODED, FIELDS, FLOATS, INTS

BLOCK_ROWS = 8192
FORMAT = 1  # bump when FIELDS or the encoding change: each format keeps its own chain
_LITTLE = struct.pack("=H", 1) == struct.pack("<H", 1)
_STANDARD_WIDTHS = {k: array(k).itemsize for k in "bhiqd"} == {"b": 1, "h": 2, "i": 4, "q": 8, "d": 8}
_WIDTH = {"d": 8, "q": 8, "i": 4, "h": 2, "b": 1}
_INTEGER_KINDS = frozenset("bhiq")
_ALLOWED = {**{n: frozenset("d") for n in FLOATS}, **{n: _INTEGER_KINDS | {"d"} for n in INTS + BOOLS},
            **{n: _INTEGER_KINDS for n in CODED}}  # text: "s", "j" or "n"
_SELECT = f"SELECT id, {', '.join(FIELDS)} FROM requests WHERE id > ? ORDER BY id LIMIT ?"
_NAN = math.nan
_SEPARATOR = "\x1f"  # text columns are joined with this (JSON metadata never holds a raw control character)
NONE = "\x1e"  # and a missing value is this; a column holding either is stored as a JSON list


class Unpackable(ValueError):
    """Rows whose values do not fit their columns' kinds (e.g. bytes in a TEXT column written by another
    program): they stay rows. ``added``: the blocks ``pack`` added before meeting them."""

    added = 0


@dataclass(frozen=True, slots=True)
class Link:
    """One block's place in the chain (no data)."""

    after: int  # the block covers every row with after < id <= hi
    hi: int
    rows: int
    t_min: float
    t_max: float


class Block:
    """One block's columns, checked when it is read (``ValueError`` or ``zlib.error`` if it does not hold
    what it claims) and decoded on demand."""

    __slots__ = ("body", "layout", "link")

    def __init__(self, link: Link, data: bytes) -> None:
        self.link = link
        body = zlib.decompress(data)
        (size,) = struct.unpack_from("<I", body)
        layout = json.loads(body[4:4 + size])
        self.body = memoryview(body)[4 + size:]
        self.layout: dict[str, list[Any]] = layout
        for name in FIELDS:
            self._check(name, layout[name])

    def _check(self, name: str, entry: list[Any]) -> None:
        kind, offset, length = entry[:3]
        rows = self.link.rows
        if not (isinstance(offset, int) and isinstance(length, int) and offset >= 0
                and offset + length <= len(self.body)):
            raise ValueError(f"column {name!r} lies outside its block")
        if kind in ("s", "j", "n"):
            if name in _ALLOWED:
                raise ValueError(f"column {name!r} holds text")
            if kind == "n" and length:
                raise ValueError(f"column {name!r}: an all-missing column has bytes")
            if kind == "s" and bytes(self.body[offset:offset + length]).count(b"\x1f") != rows - 1:
                raise ValueError(f"column {name!r} has the wrong number of values")
            if kind == "j":
                values = json.loads(bytes(self.body[offset:offset + length]))
                if len(values) != rows or not all(v is None or isinstance(v, str) for v in values):
                    raise ValueError(f"column {name!r} has the wrong values")
            return
        if kind not in _ALLOWED.get(name, ()) or length != _WIDTH[kind] * rows:
            raise ValueError(f"column {name!r} has the wrong kind or size")
        if name in CODED and not (isinstance(entry[3], list) and all(isinstance(v, str) for v in entry[3])):
            raise ValueError(f"column {name!r} has a bad code table")  # (zlib's checksum vouches for the codes)

    @property
    def rows(self) -> int:
        return self.link.rows

    def kind(self, name: str) -> str:
        """How a column is stored: 'd', 'b'/'h'/'i'/'q' (see ``raw``), 's' or 'j' text, 'n' all missing."""
        return str(self.layout[name][0])

    def raw(self, name: str) -> tuple[str, memoryview]:
        """A number or code column as (array typecode, little-endian bytes): 'd' float64; integers as
        'b', 'h', 'i' or 'q' (1, 2, 4, 8 bytes, the narrowest that holds the block's values); codes
        (-1: None) into ``table(name)`` the same way."""
        kind, offset, length = self.layout[name][:3]
        return kind, self.body[offset:offset + length]

    def table(self, name: str) -> list[str]:
        return list(self.layout[name][3])

    def texts(self, name: str) -> tuple[Sequence[str | None], str | None]:
        """A text column and how it marks a missing value: ``NONE`` (the caller turns it into None or
        NaN: faster than doing it here), or None."""
        kind, offset, length = self.layout[name][:3]
        if kind == "n":
            return [None] * self.rows, None
        raw = bytes(self.body[offset:offset + length]).decode(errors="surrogatepass")
        if kind == "s":
            return (raw.split(_SEPARATOR) if self.rows else []), NONE
        return json.loads(raw), None


def encode(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """Rows of ``SELECT id, FIELDS...`` as a block's compressed body; ``Unpackable`` if a value does not
    fit its column's kind."""
    columns = list(zip(*rows, strict=True))[1:] if rows else [()] * len(FIELDS)
    parts: list[bytes] = []
    layout: dict[str, list[Any]] = {}
    offset = 0
    for name, values in zip(FIELDS, columns, strict=True):
        extra: list[Any] = []
        try:
            kind, blob, extra = _column(name, values)
        except (TypeError, ValueError, OverflowError, UnicodeError, KeyError) as exc:
            raise Unpackable(f"column {name!r}: {type(exc).__name__}") from None
        layout[name] = [kind, offset, len(blob), *extra]
        parts.append(blob)
        offset += len(blob)
    head = json.dumps(layout, ensure_ascii=False, separators=(",", ":")).encode()
    return zlib.compress(b"".join([struct.pack("<I", len(head)), head, *parts]), 1)


def _column(name: str, values: Sequence[Any]) -> tuple[str, bytes, list[Any]]:
    if name in FLOATS:
        return "d", _bytes(array("d", [_NAN if v is None else v for v in values])), []
    if name in INTS or name in BOOLS:
        if all(type(v) is int for v in values):
            kind = _narrowest(min(values, default=0), max(values, default=0))
            return kind, _bytes(array(kind, values)), []
        return "d", _bytes(array("d", values)), []  # a REAL in an INTEGER column: as the rows read it
    if name in CODED:
        table = list(dict.fromkeys(v for v in values if v is not None))
        if not all(type(v) is str for v in table):
            raise TypeError("not text")
        index = {v: i for i, v in enumerate(table)}
        kind = _narrowest(-1, len(table))
        return kind, _bytes(array(kind, [-1 if v is None else index[v] for v in values])), [table]
    if not all(v is None or type(v) is str for v in values):
        raise TypeError("not text")
    if all(v is None for v in values):
        return "n", b"", []  # every value missing (a prompt column unless log_prompts is on)
    if not any(_SEPARATOR in v or NONE in v for v in values if v is not None):
        return "s", _SEPARATOR.join(NONE if v is None else v for v in values).encode(errors="surrogatepass"), []
    # text with our separators in it: a JSON list (slower to read back)
    return "j", json.dumps(list(values), ensure_ascii=False, separators=(",", ":")).encode(
        errors="surrogatepass"), []


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
    """The blocks readers may use, oldest first: this format's chain from id 0 up to its first break."""
    out: list[Link] = []
    top = 0
    for after, hi, rows, t_min, t_max in db.execute(
            "SELECT id_after, id_hi, rows, t_min, t_max FROM request_blocks WHERE format = ? ORDER BY id_after",
            (FORMAT,)):
        if after != top:
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
        row = db.execute("SELECT data FROM request_blocks WHERE format = ? AND id_after = ?",
                         (FORMAT, link.after)).fetchone()
        try:
            out.append(Block(link, row[0]))
        except (ValueError, TypeError, KeyError, IndexError, struct.error, zlib.error):
            return out, link
    return out, None


def pending(db: sqlite3.Connection) -> int:
    """How many rows are past the chain's top."""
    links = chain(db)
    top = links[-1].hi if links else 0
    return int(db.execute("SELECT count(*) FROM requests WHERE id > ?", (top,)).fetchone()[0])


def pack(db: sqlite3.Connection, max_blocks: int | None = None, stop: threading.Event | None = None) -> int:
    """Pack full blocks of the rows past the chain's top; returns how many were added. ``db`` is in
    autocommit mode; a busy file raises ``sqlite3.OperationalError`` (callers that must not wait catch
    it), rows that do not fit their columns ``Unpackable``. ``stop`` set: stop before the next step."""
    added = 0
    if not _STANDARD_WIDTHS:  # an unusual C ABI: leave the rows as they are (readers handle that)
        return 0
    while (max_blocks is None or added < max_blocks) and not (stop is not None and stop.is_set()):
        db.execute("BEGIN")  # one snapshot: the chain and the rows past it agree
        try:
            links = chain(db)
            top = links[-1].hi if links else 0
            rows = db.execute(_SELECT, (top, BLOCK_ROWS)).fetchall()
        finally:
            db.execute("COMMIT")
        if len(rows) < BLOCK_ROWS:
            break
        try:
            data = encode(rows)
        except Unpackable as exc:
            exc.added = added
            raise
        if stop is not None and stop.is_set():
            break
        hi = int(rows[-1][0])
        times = [r[2] for r in rows]
        db.execute("BEGIN IMMEDIATE")
        try:
            now = chain(db)
            same = (now[-1].hi if now else 0) == top and db.execute(
                "SELECT id, request_id FROM requests WHERE id > ? AND id <= ? ORDER BY id", (top, hi)
            ).fetchall() == [(r[0], r[1]) for r in rows]  # ids and request ids: nothing pruned and reused
            if same:
                # this format's blocks past the chain (after a break) would overlap the new one
                db.execute("DELETE FROM request_blocks WHERE format = ? AND id_after >= ?", (FORMAT, top))
                if not now:  # a new chain: older formats' blocks are of no more use to this version
                    db.execute("DELETE FROM request_blocks WHERE format < ?", (FORMAT,))
                db.execute("INSERT INTO request_blocks (format, id_after, id_hi, rows, t_min, t_max, data) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (FORMAT, top, hi, len(rows), min(times), max(times),
                                                            data))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if not same:
            continue  # someone packed or pruned meanwhile: look again
        added += 1
    return added


def drop_from(db: sqlite3.Connection, after: int) -> None:
    """Forget this format's block covering rows past ``after`` and every later one (a damaged block:
    packing rebuilds them from the rows). Autocommit: one statement."""
    db.execute("DELETE FROM request_blocks WHERE format = ? AND id_after >= ?", (FORMAT, after))


def drop(db: sqlite3.Connection) -> None:
    """Forget every block of every format (inside the caller's write transaction, e.g. prune's)."""
    db.execute("DELETE FROM request_blocks")
