"""The ledger's SQLite schema, as numbered, append-only migrations (after simonw/llm's ``migrations.py``).

Never edit or reorder a migration that has shipped: add a new one at the end. ``migrate(db)`` applies
the ones a database has not seen, each in its own transaction with its name recorded in
``_llmkit_migrations``, so running it again (or from two processes at once) is a no-op.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_requests(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            time REAL NOT NULL,
            started REAL NOT NULL,
            provider TEXT,
            model TEXT,
            requested_model TEXT NOT NULL,
            status TEXT NOT NULL,
            error_type TEXT,
            error_message TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens INTEGER NOT NULL DEFAULT 0,
            usage_estimated INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            latency_s REAL NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            fallback INTEGER NOT NULL DEFAULT 0,
            stream INTEGER NOT NULL DEFAULT 0,
            priority INTEGER NOT NULL DEFAULT 0,
            metadata TEXT,
            prompt TEXT
        )
        """
    )


@migration
def m002_requests_time_index(db: sqlite3.Connection) -> None:
    db.execute("CREATE INDEX requests_time ON requests (time)")


@migration
def m003_session_kind_cache_columns(db: sqlite3.Connection) -> None:
    """Second version: which client made a record, what kind of call, cache hits, suspect usage."""
    for column in ("session_id TEXT", "kind TEXT NOT NULL DEFAULT 'completion'",
                   "cached INTEGER NOT NULL DEFAULT 0", "cost_saved_usd REAL NOT NULL DEFAULT 0",
                   "usage_suspect INTEGER NOT NULL DEFAULT 0"):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column}")
    db.execute("CREATE INDEX requests_session ON requests (session_id, time)")



#: The day totals of the requests with ``lo < id <= hi`` (parameters), in ``requests_daily``'s column order
#: since m005. Migrations keep their own frozen copies: this one may grow, theirs never change.
DAILY_ROLLUP = """
    SELECT CAST(time / 86400 AS INTEGER) * 86400, ifnull(provider, ''), ifnull(model, ''), count(*),
           total(status = 'error'), total(input_tokens), total(output_tokens), total(cache_read_tokens),
           total(cache_write_tokens), total(cost_usd), count(cost_usd), total(cost_usd IS NULL AND status = 'ok'),
           total(cached), total(cost_saved_usd)
    FROM requests WHERE id > ? AND id <= ? GROUP BY 1, 2, 3
"""

_DAILY_ROLLUP_M004 = """
    SELECT CAST(time / 86400 AS INTEGER) * 86400, ifnull(provider, ''), ifnull(model, ''), count(*),
           total(status = 'error'), total(input_tokens), total(output_tokens), total(cache_read_tokens),
           total(cache_write_tokens), total(cost_usd), count(cost_usd), total(cost_usd IS NULL AND status = 'ok')
    FROM requests WHERE id > ? AND id <= ? GROUP BY 1, 2, 3
"""


@migration
def m004_history_indexes_and_daily_rollup(db: sqlite3.Connection) -> None:
    """Issue 12: history is queried in SQL (by time and session through the indexes of m002/m003).
    ``requests_daily``: one row per UTC day, provider and model (NULL stored as ''), the totals of every
    request up to the id in ``requests_daily_upto`` (readers add the few rows past it and fold them in
    from time to time: see ``queries.History``), so long-range cost summaries and the budget's period spend read a few
    hundred rows instead of millions, and pruning can delete requests while their day totals stay.
    Nothing runs per insert, and no index is added: provider/model summaries read the day totals (an
    index on provider/model served no query here and cost ~8 µs a commit). Filled from the rows here."""
    db.execute(
        """
        CREATE TABLE requests_daily (
            day INTEGER NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            requests INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL,
            cache_write_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            priced INTEGER NOT NULL,
            unpriced_requests INTEGER NOT NULL,
            PRIMARY KEY (day, provider, model)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE TABLE requests_daily_upto (id INTEGER NOT NULL)")
    upto = db.execute("SELECT ifnull(max(id), 0) FROM requests").fetchone()[0]
    db.execute(f"INSERT INTO requests_daily {_DAILY_ROLLUP_M004}", (0, upto))
    db.execute("INSERT INTO requests_daily_upto VALUES (?)", (upto,))


@migration
def m005_daily_cache_totals(db: sqlite3.Connection) -> None:
    """Issue 13 x 12: the day totals also count cached answers and the dollars they saved, so
    ``cost_summary(scope="all")`` shows ``cached_requests`` and ``cost_saved_usd`` from SQL too."""
    db.execute("ALTER TABLE requests_daily ADD COLUMN cached_requests INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE requests_daily ADD COLUMN cost_saved_usd REAL NOT NULL DEFAULT 0")
    db.execute(
        """
        UPDATE requests_daily SET cached_requests = d.cached, cost_saved_usd = d.saved
        FROM (SELECT CAST(time / 86400 AS INTEGER) * 86400 AS day, ifnull(provider, '') AS provider,
                     ifnull(model, '') AS model, total(cached) AS cached, total(cost_saved_usd) AS saved
              FROM requests WHERE id <= (SELECT id FROM requests_daily_upto) GROUP BY 1, 2, 3) AS d
        WHERE requests_daily.day = d.day AND requests_daily.provider = d.provider AND requests_daily.model = d.model
        """
    )


@migration
def m006_request_blocks(db: sqlite3.Connection) -> None:
    """Issue 12: column blocks, a derived, droppable copy of older requests packed column by column so a
    read of millions of records is fast (see ``blocks``). Starts empty; packing fills it. (Replaced by
    m007's table before any release; kept so files made in between migrate.)"""
    db.execute(
        """
        CREATE TABLE request_blocks (
            id_after INTEGER PRIMARY KEY,
            id_hi INTEGER NOT NULL,
            rows INTEGER NOT NULL,
            t_min REAL NOT NULL,
            t_max REAL NOT NULL,
            format INTEGER NOT NULL,
            layout TEXT NOT NULL,
            data BLOB NOT NULL
        )
        """
    )


@migration
def m007_request_block_chains(db: sqlite3.Connection) -> None:
    """Column blocks, second layout (m006's blocks are dropped: a derived copy, packed again). Blocks of
    each ``format`` form their own chain, so two llmkit versions on one file keep theirs; the layout
    lives inside the compressed body. The triggers keep the copy honest whoever changes ``requests`` (an
    older llmkit's prune, a hand-run DELETE): a block covering a deleted or changed row goes, with every
    later one; packing rebuilds them."""
    db.execute("DROP TABLE request_blocks")
    db.execute(
        """
        CREATE TABLE request_blocks (
            format INTEGER NOT NULL,
            id_after INTEGER NOT NULL,
            id_hi INTEGER NOT NULL,
            rows INTEGER NOT NULL,
            t_min REAL NOT NULL,
            t_max REAL NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (format, id_after)
        )
        """
    )
    db.execute("CREATE INDEX request_blocks_hi ON request_blocks (id_hi)")
    db.execute("""CREATE TRIGGER request_blocks_deleted AFTER DELETE ON requests
                  BEGIN DELETE FROM request_blocks WHERE id_hi >= OLD.id; END""")
    db.execute("""CREATE TRIGGER request_blocks_updated AFTER UPDATE ON requests
                  BEGIN DELETE FROM request_blocks WHERE id_hi >= min(OLD.id, NEW.id); END""")


def applied(db: sqlite3.Connection) -> list[str]:
    """Names of the migrations this database has, in the order they ran."""
    _ensure_table(db)
    return [row[0] for row in db.execute("SELECT name FROM _llmkit_migrations ORDER BY rowid")]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied now. ``db`` must be in autocommit mode."""
    _ensure_table(db)
    done_now: list[str] = []
    for fn in MIGRATIONS:
        db.execute("BEGIN IMMEDIATE")  # serialises concurrent openers of the same file
        try:
            seen = db.execute("SELECT 1 FROM _llmkit_migrations WHERE name = ?", (fn.__name__,)).fetchone()
            if seen is None:
                fn(db)
                db.execute("INSERT INTO _llmkit_migrations (name, applied_at) VALUES (?, ?)",
                           (fn.__name__, time.time()))
                done_now.append(fn.__name__)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return done_now


def _ensure_table(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS _llmkit_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
