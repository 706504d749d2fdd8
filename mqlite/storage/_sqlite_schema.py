"""The SQLite storage's schema: its tables, versions and upgrades, and the statements that use them.

Everything that knows the layout of an mqlite database file lives here, apart from the short
one-table statements written where they run in :mod:`mqlite.storage.sqlite`: the ``CREATE``
statements of a new file, the upgrade steps from each older version, the file's
``application_id``, the check that a file is an mqlite database this code can open, and the
longer statements (the claim, the inserts, peek, counts). Kept apart so that a schema change
(a new version, its upgrade step, the statements it affects) is made in one place, and the
storage module reads as what each call does rather than how rows are laid out.

Layout (schema version 2, ``PRAGMA user_version``; ``PRAGMA application_id`` marks the file as
mqlite's):

* ``mq_queues``: one row per queue: its number (``qid``) and the settings of its
  :class:`QueueSpec`, so every process applies the same max_attempts, dead-letter queue and
  dedup window.
* ``mq_messages``: every unsettled message of every queue, one row each, keyed by its id.
  ``state`` is 0 ready, 1 delayed, 2 in flight; ``deadline`` is the row's place in its state:
  ``-priority`` when ready (so one index, ``mq_order (qid, state, deadline)`` plus the implicit
  id, gives both the delivery order of ready rows and the time order of delayed and in-flight
  rows, and a lease or ack rewrites one index page, not two), ready_at when delayed and the
  lease's end in flight; ``token`` counts the deliveries the message ever had (plus one burnt
  value each time it dies or is redriven), so ``(id, token)`` names one delivery and never
  comes back. ``dead_from`` is the queue a dead letter died in. Acked rows are deleted.
  One more row, id ``2**63 - 1`` in no queue (qid 0, state 3), keeps the last id given in its
  ``token``, so ids never repeat even after the newest row is acked; it sits next to the
  newest messages, so a put rewrites the page it writes anyway instead of one more.
* ``mq_dedup``: ``(qid, dedup_key) -> (id, first put time)``.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Final

from .._errors import StorageError

SCHEMA_VERSION: Final = 2
"""The schema this code writes (``PRAGMA user_version``)."""
APPLICATION_ID: Final = 0x6D714C74
"""``PRAGMA application_id`` of an mqlite database ("mqLt")."""

READY: Final = 0
"""``state`` of a row that can be leased now (its ``deadline`` is ``-priority``)."""
DELAYED: Final = 1
"""``state`` of a row put with a delay or nacked with one (its ``deadline`` is when it is due)."""
IN_FLIGHT: Final = 2
"""``state`` of a leased row (its ``deadline`` is when the lease ends)."""
COUNTER_ID: Final = 2**63 - 1
"""The id of the row that holds the last id given (in its ``token``)."""

SCHEMA: Final = (
    "CREATE TABLE mq_queues (qid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, max_attempts INTEGER,"
    " dead_letter TEXT NOT NULL DEFAULT '', dedup_window REAL NOT NULL DEFAULT 300.0)",
    "CREATE TABLE mq_messages (id INTEGER PRIMARY KEY, qid INTEGER NOT NULL, state INTEGER NOT NULL,"
    " priority INTEGER NOT NULL, grp TEXT, deadline REAL NOT NULL, attempts INTEGER NOT NULL,"
    " token INTEGER NOT NULL, enqueued_at REAL NOT NULL, headers TEXT, dead_from TEXT, body BLOB NOT NULL)",
    f"INSERT INTO mq_messages (id, qid, state, priority, deadline, attempts, token, enqueued_at, body)"
    f" VALUES ({COUNTER_ID}, 0, 3, 0, 0, 0, 0, 0, X'')",
    # The claim: ready rows of one queue in delivery order (deadline = -priority, then id);
    # applying time and next_wakeup: delayed and in-flight rows by deadline. Counts by state.
    "CREATE INDEX mq_order ON mq_messages (qid, state, deadline)",
    # Group heads: the lowest id of a group; and whether a group has a message in flight.
    "CREATE INDEX mq_group ON mq_messages (qid, grp, id) WHERE grp IS NOT NULL",
    "CREATE INDEX mq_busy ON mq_messages (qid, grp) WHERE state = 2 AND grp IS NOT NULL",
    # Dead letters by the queue they died in (stats().dead, redrive).
    "CREATE INDEX mq_dead ON mq_messages (qid, dead_from, id) WHERE dead_from IS NOT NULL",
    "CREATE TABLE mq_dedup (qid INTEGER NOT NULL, key TEXT NOT NULL, id INTEGER NOT NULL,"
    " first_at REAL NOT NULL, PRIMARY KEY (qid, key)) WITHOUT ROWID",
)

UPGRADES: Final[dict[int, tuple[str, ...]]] = {
    # 1 -> 2: one index for every state instead of three (ready rows keep -priority in their
    # deadline), and the id counter moves from its own table into a row of mq_messages.
    1: (
        "DROP INDEX mq_ready",
        "DROP INDEX mq_delayed",
        "DROP INDEX mq_leased",
        "UPDATE mq_messages SET deadline = -priority WHERE state = 0",
        f"INSERT INTO mq_messages (id, qid, state, priority, deadline, attempts, token, enqueued_at, body)"
        f" SELECT {COUNTER_ID}, 0, 3, 0, 0, 0, last_id, 0, X'' FROM mq_counter",
        "DROP TABLE mq_counter",
        "CREATE INDEX mq_order ON mq_messages (qid, state, deadline)",
    ),
}
"""Statements taking the schema from version ``v`` to ``v + 1``, run at open in one transaction."""

CLAIM: Final = """
UPDATE mq_messages SET state = 2, attempts = attempts + 1, token = token + 1, deadline = :until
WHERE id IN (
    SELECT m.id FROM mq_messages AS m
    WHERE m.qid = :qid AND m.state = 0
      AND (m.grp IS NULL OR (
            m.id = (SELECT min(g.id) FROM mq_messages AS g WHERE g.qid = :qid AND g.grp = m.grp)
            AND NOT EXISTS (SELECT 1 FROM mq_messages AS f INDEXED BY mq_busy
                            WHERE f.qid = :qid AND f.grp = m.grp AND f.state = 2 AND f.grp IS NOT NULL)))
    ORDER BY m.deadline, m.id
    LIMIT :n)
RETURNING id, token, body, attempts, enqueued_at, priority, grp, headers
"""
"""A lease of up to ``:n`` messages of queue ``:qid`` until ``:until``: the ready rows in
delivery order that are not behind an earlier or in-flight message of their group, in one
statement. Named parameters, bound from a dict: numbered ones (``?1``) bound from a sequence
are deprecated since Python 3.12 and an error from 3.14."""
CLAIM_ONE: Final = CLAIM.replace("WHERE id IN (", "WHERE id = (", 1)
"""The claim of one message (a plain get): a scalar subquery, no list of ids to build (~2 us less)."""
INSERT: Final = (
    "INSERT INTO mq_messages (id, qid, state, priority, grp, deadline, attempts, token, enqueued_at, headers, body)"
    " VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?)"
)
"""The insert of one message with any options (a put with a delay, priority, group or headers)."""
ROWS_PER_INSERT: Final = 100
"""Rows per multi-row INSERT of plain messages (300 parameters, under every SQLite's limit)."""


@functools.lru_cache(maxsize=64)
def insert_plain_sql(qid: int, rows: int) -> str:
    """An INSERT of ``rows`` ready messages with default options into queue ``qid``: only the
    id, the time and the body are bound (binding the constant and NULL columns too costs ~40 %
    more), and many rows per statement halve the cost of a batch (one step, not one a row)."""
    values = ", ".join([f"(?, {int(qid)}, 0, 0, 0, 0, 0, ?, ?)"] * rows)
    columns = "id, qid, state, priority, deadline, attempts, token, enqueued_at, body"
    return f"INSERT INTO mq_messages ({columns}) VALUES {values}"


def insert_plain(conn: sqlite3.Connection, qid: int, flat: list[object]) -> None:
    """Insert ready messages with default options; ``flat`` is id, enqueued_at, body, id, ..."""
    step = 3 * ROWS_PER_INSERT
    full = len(flat) // step * step
    if full:
        conn.executemany(insert_plain_sql(qid, ROWS_PER_INSERT), (flat[i : i + step] for i in range(0, full, step)))
    if full < len(flat):
        conn.executemany(insert_plain_sql(qid, 1), (flat[i : i + 3] for i in range(full, len(flat), 3)))


PEEK_COLUMNS: Final = "id, state, body, attempts, enqueued_at, priority, grp, headers, deadline"
PEEK: Final = f"""
SELECT * FROM (SELECT {PEEK_COLUMNS} FROM mq_messages WHERE qid = :qid AND state = 0 ORDER BY deadline, id LIMIT :n)
UNION ALL
SELECT * FROM (SELECT {PEEK_COLUMNS} FROM mq_messages WHERE qid = :qid AND state = 1
               ORDER BY priority DESC, id LIMIT :n)
UNION ALL
SELECT * FROM (SELECT {PEEK_COLUMNS} FROM mq_messages WHERE qid = :qid AND state = 2
               ORDER BY priority DESC, id LIMIT :n)
"""
"""Up to ``:n`` messages of each state of queue ``:qid`` (the caller sorts and cuts them)."""
COUNTS: Final = """
SELECT (SELECT count(*) FROM mq_messages WHERE qid = :qid AND state = 0),
       (SELECT count(*) FROM mq_messages WHERE qid = :qid AND state = 1),
       (SELECT count(*) FROM mq_messages WHERE qid = :qid AND state = 2)
"""
"""The ready, delayed and in-flight counts of queue ``:qid``."""
NEXT_DEADLINE: Final = """
SELECT min(d) FROM (
    SELECT min(deadline) AS d FROM mq_messages WHERE qid = :qid AND state = 1
    UNION ALL
    SELECT min(deadline) AS d FROM mq_messages WHERE qid = :qid AND state = 2)
"""
"""The earliest deadline of queue ``:qid``'s delayed and in-flight rows (None if it has none)."""


def check_file(conn: sqlite3.Connection, path: str) -> tuple[int, bool]:
    """``(schema objects, whether create_or_upgrade must run)`` of the file open on ``conn``.

    Raises :class:`StorageError` naming ``path``, and leaves the file untouched, if it is not an
    SQLite database, is one of another application, or has a schema newer than this code
    knows: mqlite never writes into a file it cannot read correctly."""
    try:
        # One read transaction, so the three reads see one state: another process may be
        # creating the schema right now, and separate reads could see its tables without its
        # application_id.
        conn.execute("BEGIN")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as error:
        if getattr(error, "sqlite_errorname", "SQLITE_NOTADB") == "SQLITE_NOTADB":
            raise StorageError(f"{path!r} is not an mqlite database (SQLite says: {error})") from error
        raise StorageError(f"cannot read SQLite database {path!r} (SQLite says: {error})") from error
    if app_id != APPLICATION_ID and (app_id != 0 or tables):
        raise StorageError(
            f"{path!r} is an SQLite database but not an mqlite one (application_id {app_id:#x}, "
            f"{tables} schema objects); refusing to touch it"
        )
    if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
        raise StorageError(
            f"{path!r} has mqlite schema version {version}, newer than this mqlite knows "
            f"({SCHEMA_VERSION}); upgrade mqlite to open it"
        )
    return tables, version < SCHEMA_VERSION or app_id != APPLICATION_ID


def create_or_upgrade(conn: sqlite3.Connection, begin: Callable[[sqlite3.Connection], None]) -> None:
    """Create the schema in an empty file, or upgrade an older one step by step to
    :data:`SCHEMA_VERSION`, in one transaction opened by ``begin`` (so a crash or a failing
    step leaves the file as it was). The version is re-read under the write lock because
    another process may have created or upgraded the file meanwhile."""
    begin(conn)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id == 0:  # another process may have created it meanwhile: re-read under the lock
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        else:
            while version < SCHEMA_VERSION:
                for statement in UPGRADES[version]:
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


EMPTY_HEADERS: Final[Mapping[str, str]] = {}
"""The headers of a message put without any (shared: callers never mutate it)."""


def dumps_headers(headers: Mapping[str, str] | None) -> str | None:
    """The ``headers`` column of a message: compact JSON, or NULL when it has none."""
    return json.dumps(dict(headers), separators=(",", ":")) if headers else None


def loads_headers(text: str | None) -> Mapping[str, str]:
    """A message's headers from its ``headers`` column (see :func:`dumps_headers`)."""
    if not text:
        return EMPTY_HEADERS
    headers: dict[str, str] = json.loads(text)
    return headers
