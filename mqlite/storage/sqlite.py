"""``SQLiteStorage``: queues in one SQLite database file, shared by threads and processes.

This module holds the storage's public surface (the class, its constructor and the
:class:`Storage` calls, ``from_url``), opening the file, and the operations: each call runs in a
``BEGIN IMMEDIATE`` transaction (shared with the calls other threads made meanwhile, see
:mod:`~mqlite.storage._sqlite_combiner`) and first applies what time did to the queue it names (due
delays become ready, ended leases fail their attempt) and then does its work; a lease is one
``UPDATE ... RETURNING`` whose subquery picks the eligible rows in delivery order.

The rest lives in private modules with one job each:

* :mod:`mqlite.storage._sqlite_schema`: the file's layout, its versions and upgrades, the check
  that a file is an mqlite database, and the longer statements.
* :mod:`mqlite.storage._sqlite_connection`: creating the file and connecting, ``BEGIN
  IMMEDIATE`` with retries, and leaving connections inherited across ``fork`` alone.
* :mod:`mqlite.storage._sqlite_combiner`: calls from many threads of one process are
  *combined* into one transaction (one commit, one fsync for all of them: group commit), and
  with ``durability="full"`` (on POSIX) the commit runs with ``synchronous=NORMAL`` and the
  callers of durable calls fsync the WAL before returning, outside the write lock. A durable
  call still returns only once its commit is on stable storage; other connections may see a
  commit a moment before it is synced (a lease of such a message is lost with it by a power
  cut, which the lease's own promise already allows).
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from typing import ClassVar, Final, final

from .._errors import StorageError, StorageLocked
from ._sqlite_combiner import MISS, Combiner, WaitingCall
from ._sqlite_connection import abandon, begin_immediate, connect, track
from ._sqlite_schema import (
    APPLICATION_ID,
    CLAIM,
    CLAIM_ONE,
    COUNTER_ID,
    COUNTS,
    DELAYED,
    IN_FLIGHT,
    INSERT,
    NEXT_DEADLINE,
    PEEK,
    READY,
    SCHEMA_VERSION,
    check_file,
    create_or_upgrade,
    dumps_headers,
    insert_plain,
    loads_headers,
)
from ._watcher import Watcher
from .base import (
    DEATH_ATTEMPTS,
    DEATH_DETAIL,
    DEATH_HEADERS,
    DEATH_QUEUE,
    DEATH_REASON,
    LIMIT_MAX,
    Envelope,
    Handle,
    Leased,
    Outcome,
    QueueSpec,
    QueueStats,
    Storage,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStorage", "from_url"]

_PLAIN: Final = Envelope(None)[1:]  # the options of an envelope put with every default
_OPTIONS: Final = operator.itemgetter(slice(1, None))  # an envelope's options
_BODY: Final = operator.itemgetter(0)
_DURABILITY: Final = {"full": "FULL", "normal": "NORMAL"}
_MAX_BUSY_TIMEOUT: Final = 2**31 // 1000  # SQLite takes it in milliseconds, as a C int


def _seconds(what: str, value: object, alternative: str = "") -> None:
    """Refuse what is not a positive, finite number of seconds, naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number of seconds" + (f" {alternative}" if alternative else "")
        raise TypeError(f"{what} must be {kind}, not {type(value).__name__}")
    if not 0.0 < value < math.inf:
        raise ValueError(f"{what} must be a positive, finite number of seconds, got {value!r}")


_DEDUP_SWEEP: Final = 1024
"""Dedup keys a process puts into a queue between two deletions of the queue's expired keys."""
_VACUUM_SLACK: Final = 256  # free pages kept for reuse (1 MiB at 4 KiB pages)


@final
class SQLiteStorage(Combiner, Storage):
    """Queues in one SQLite database file: durable, shared by threads and processes on one host.

    ``path`` is the database file (created 0600 if missing). ``durability="full"`` (default):
    a put, ack, nack, release, reject, extend, redrive or purge is committed with
    an fsync of the write-ahead log (what ``synchronous=FULL`` does at each commit, here done by
    the callers after the commit, shared and outside the write lock) before the call returns, so
    it survives power loss; a lease is committed without fsync (a lease lost to a power cut only
    means a redelivery).
    ``durability="normal"``: ``synchronous=NORMAL``, which survives a killed process but not an
    OS crash or power cut. Concurrent calls from threads of one process share transactions and
    fsyncs (group commit).

    ``poll_interval``: while a get, join or put (waiting for room) of this process is blocked,
    one thread per storage looks for what other processes did (put, ack, took a message) with
    a backoff from 1 ms up to this many seconds (the worst-case extra latency), however many
    callers wait, and wakes them when something changed; each look costs one
    ``PRAGMA data_version``. None turns cross-process wake-ups off (one process only).
    ``busy_timeout``: how long a call waits for
    another process's write transaction before raising :class:`StorageLocked`.
    """

    blocking_io: ClassVar[bool] = True
    requires_bytes: ClassVar[bool] = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "full",
        poll_interval: float | None = 0.05,
        busy_timeout: float = 30.0,
    ) -> None:
        if not isinstance(durability, str) or durability not in _DURABILITY:
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        if poll_interval is not None:
            _seconds("poll_interval", poll_interval, "or None")
        _seconds("busy_timeout", busy_timeout)
        if busy_timeout > _MAX_BUSY_TIMEOUT:
            raise ValueError(f"busy_timeout must be at most {_MAX_BUSY_TIMEOUT:g} seconds, got {busy_timeout!r}")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        self.path = os.fspath(path)
        if not isinstance(self.path, str):
            raise TypeError(f"path must be a str path, not {type(self.path).__name__}")
        if not self.path or self.path == ":memory:" or "\x00" in self.path:
            raise ValueError(f"path must name a database file, got {path!r}")
        self.durability = durability
        self.poll_interval = None if poll_interval is None else float(poll_interval)
        self.busy_timeout = float(busy_timeout)
        self._full = durability == "full"
        self._closed = False
        self._opened = 0  # connections opened so far
        self._subscribers: list[tuple[Callable[[], None], Callable[[], bool]]] = []
        self._init_process_state()
        self._connection()  # open now, so a bad file fails here and names its path
        track(self)

    # -- process-local state -------------------------------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._init_combiner()
        self._conn: sqlite3.Connection | None = None
        self._sync: str | None = None
        self._writes = 0  # bumped by every change this process makes; caches record it
        self._cached_at = -1  # the write count when a cache entry was last stored
        self._qids: dict[str, int] = {}
        self._watcher = (
            None
            if self.poll_interval is None
            else Watcher(self, "_data_version", self.poll_interval, self._subscribers)
        )
        self._forget()

    def _forget(self) -> None:
        """Drop every cache (another process wrote, or a transaction rolled back)."""
        self._bound: dict[int, float] = {}  # qid -> lower bound of its delayed/in-flight deadlines
        self._keyed: dict[int, int] = {}  # qid -> dedup keys this process put there since it last swept them
        self._empty: dict[int, tuple[int, float]] = {}  # qid -> (writes, bound) when lease found none
        self._wake: dict[int, tuple[int, float | None]] = {}  # qid -> (writes, exact next deadline)
        self._dv = -1

    def _before_fork(self) -> None:
        """See :func:`mqlite.storage._sqlite_connection._before_fork`: hold the write and sync
        locks across the fork, with the connection and the WAL descriptor closed. A later call
        in the parent opens a new connection (a few milliseconds, once per fork)."""
        self._conn_lock.acquire()
        try:
            self._sync_lock.acquire()
        except BaseException:
            self._conn_lock.release()
            raise
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self._sync = None
            self._forget()
        fd, self._wal_fd = self._wal_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _after_fork_in_parent(self) -> None:
        self._sync_lock.release()
        self._conn_lock.release()

    def _forked(self) -> None:
        """In a child after fork: start afresh (new locks, no connection, empty caches). A
        connection the parent had open (only if it forked without the at-fork hook) is kept
        referenced, never used nor closed here: closing could act on the parent's WAL."""
        if self._conn is not None:
            abandon(self._conn)
        if self._wal_fd is not None:  # this process's copy of the descriptor only
            with contextlib.suppress(OSError):
                os.close(self._wal_fd)
        self._init_process_state()

    def __repr__(self) -> str:
        return f"<SQLiteStorage {self.path!r} durability={self.durability}{' closed' if self._closed else ''}>"

    # -- opening -------------------------------------------------------------------------------

    def _error(self, error: BaseException, what: str = "") -> StorageError:
        """The error reporting ``error`` from SQLite: :class:`StorageLocked` if another
        connection kept the database locked past busy_timeout, else :class:`StorageError`."""
        text = str(error)
        if isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return StorageLocked(
                f"SQLite database {self.path!r} stayed locked by another connection for {self.busy_timeout:g}s{what}"
            )
        return StorageError(f"SQLite database {self.path!r}{what}: {error}")

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened (and the file checked) on first use."""
        if self._pid != os.getpid():  # fork without the at-fork hook (should not happen)
            self._forked()
        conn = self._conn
        if conn is None:
            conn = self._conn = self._open()
        return conn

    def _open(self) -> sqlite3.Connection:
        """A new connection to the file, checked and set up (closed again if that fails)."""
        conn = connect(self.path, self.busy_timeout)
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._opened += 1
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check that the file is an mqlite database, switch it to WAL, set the sync level and
        create or upgrade the schema if needed."""
        path = self.path
        tables, setup = check_file(conn, path)
        try:
            if not tables:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect before the first table
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"SQLite database {path!r} cannot use WAL mode (journal_mode is {mode})")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            self._set_sync(conn, "FULL" if self._full and not self._split else "NORMAL")
            if setup:
                create_or_upgrade(conn, self._begin)
        except sqlite3.Error as error:
            raise self._error(error, " while opening") from error

    def _set_sync(self, conn: sqlite3.Connection, level: str) -> None:
        """Set ``PRAGMA synchronous`` to ``level`` unless it already is (remembered per connection)."""
        if self._sync != level:
            conn.execute(f"PRAGMA synchronous = {level}")
            self._sync = level

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, retried (beyond SQLite's own busy handler) until busy_timeout."""
        begin_immediate(conn, self.busy_timeout)

    def _put_together(self, conn: sqlite3.Connection, todo: list[WaitingCall]) -> set[WaitingCall]:
        """Run the batch's plain puts to one queue (default options, no maxsize) as one id
        range and one ``executemany``, instead of a savepoint, a counter update and an insert
        each; return the calls so answered. Among themselves they get ids in the order they
        arrived; they run before the batch's other calls (all of them concurrent, so any order
        is one they may see). If the combined insert fails, it is rolled back and those puts run
        one by one after all, so a bad call still fails alone."""
        plain: dict[str, list[WaitingCall]] = {}
        for op in todo:
            if op.function.__name__ == "_do_put":
                queue, envelopes, _, maxsize = op.args
                if not maxsize and envelopes and all(map(_PLAIN.__eq__, map(_OPTIONS, envelopes))):
                    plain.setdefault(queue, []).append(op)
        merged: set[WaitingCall] = set()
        for queue, ops in plain.items():
            if len(ops) < 2:
                continue
            conn.execute("SAVEPOINT mq_merged")
            try:
                qid = self._qid(conn, queue)
                self._advance(conn, qid, max(op.args[2] for op in ops))
                total = sum(len(op.args[1]) for op in ops)
                next_id = (
                    conn.execute(
                        "UPDATE mq_messages SET token = token + ? WHERE id = ? RETURNING token", (total, COUNTER_ID)
                    ).fetchone()[0]
                    - total
                    + 1
                )
                flat: list[object] = []
                for op in ops:
                    _, envelopes, now, _ = op.args
                    ids = range(next_id, next_id + len(envelopes))
                    flat.extend(chain.from_iterable(zip(ids, repeat(now), map(_BODY, envelopes))))
                    op.result = list(ids)
                    next_id += len(envelopes)
                insert_plain(conn, qid, flat)
                self._writes += 1
            except Exception:
                conn.execute("ROLLBACK TO mq_merged")
                conn.execute("RELEASE mq_merged")
                self._qids.clear()
                self._forget()
                self._writes += 1
                for op in ops:
                    op.result = None
                continue
            conn.execute("RELEASE mq_merged")
            merged.update(ops)
        return merged

    def _vacuum(self, conn: sqlite3.Connection) -> None:
        """Give free pages back to the file system, keeping some slack for reuse."""
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free > 2 * _VACUUM_SLACK:
            # Python's sqlite3 runs "incremental_vacuum(N)" for one step, which frees one page, so
            # free them one statement each (about 5 us a page), at most 4096 (16 MiB) per call.
            for _ in range(min(free - _VACUUM_SLACK, 4096)):
                conn.execute("PRAGMA incremental_vacuum(1)")

    # -- helpers inside a transaction ------------------------------------------------------------

    def _qid(self, conn: sqlite3.Connection, name: str) -> int:
        qid = self._qids.get(name)
        if qid is None:
            row = conn.execute("SELECT qid FROM mq_queues WHERE name = ?", (name,)).fetchone()
            if row is None:
                row = conn.execute("INSERT INTO mq_queues (name) VALUES (?) RETURNING qid", (name,)).fetchone()
            qid = self._qids[name] = row[0]
        return qid

    @staticmethod
    def _spec(conn: sqlite3.Connection, qid: int) -> tuple[str, int | None, str, float]:
        """``(name, max_attempts, dead-letter queue name, dedup_window)`` of queue ``qid``."""
        name, max_attempts, dead_letter, window = conn.execute(
            "SELECT name, max_attempts, dead_letter, dedup_window FROM mq_queues WHERE qid = ?", (qid,)
        ).fetchone()
        return name, max_attempts, dead_letter or name + ".dead", window

    def _lower_bound(self, qid: int, deadline: float) -> None:
        bound = self._bound.get(qid)
        if bound is not None and deadline < bound:
            self._bound[qid] = deadline

    def _advance(self, conn: sqlite3.Connection, qid: int, now: float) -> None:
        """Apply what time did to queue ``qid``: due delays ready, ended leases failed."""
        bound = self._bound.get(qid)
        if bound is not None and now < bound:
            return
        if conn.execute(
            "UPDATE mq_messages SET state = 0, deadline = -priority WHERE qid = ? AND state = 1 AND deadline <= ?",
            (qid, now),
        ).rowcount:
            self._writes += 1
        expired = conn.execute(
            "SELECT id, attempts, headers FROM mq_messages WHERE qid = ? AND state = 2 AND deadline <= ?",
            (qid, now),
        ).fetchall()
        if expired:
            self._writes += 1
            spec = self._spec(conn, qid)
            limit = spec[1]
            back = []
            for mid, attempts, headers in expired:
                if limit is not None and attempts >= limit:
                    self._kill(conn, mid, spec, attempts, headers, "max_attempts", "lease expired")
                else:
                    back.append((mid,))
            conn.executemany("UPDATE mq_messages SET state = 0, deadline = -priority WHERE id = ?", back)
        deadline = conn.execute(NEXT_DEADLINE, {"qid": qid}).fetchone()[0]
        self._bound[qid] = math.inf if deadline is None else deadline

    def _kill(
        self,
        conn: sqlite3.Connection,
        mid: int,
        spec: tuple[str, int | None, str, float],
        attempts: int,
        headers_text: str | None,
        reason: str,
        detail: str | None,
    ) -> None:
        """Move a message to its queue's dead-letter queue under its id, ready, attempts 0."""
        headers = dict(loads_headers(headers_text))
        headers[DEATH_REASON] = reason
        headers[DEATH_QUEUE] = spec[0]
        headers[DEATH_ATTEMPTS] = str(attempts)
        if detail is not None:
            headers[DEATH_DETAIL] = detail
        else:
            headers.pop(DEATH_DETAIL, None)
        dead_qid = self._qid(conn, spec[2])
        conn.execute(
            "UPDATE mq_messages SET qid = ?, state = 0, deadline = -priority, attempts = 0, token = token + 1,"
            " headers = ?, dead_from = ? WHERE id = ?",
            (dead_qid, dumps_headers(headers), spec[0], mid),
        )
        self._writes += 1

    # -- the operations, each run inside a transaction -------------------------------------------

    def _do_open_queue(self, conn: sqlite3.Connection, spec: QueueSpec) -> None:
        conn.execute(
            "INSERT INTO mq_queues (name, max_attempts, dead_letter, dedup_window) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET max_attempts = excluded.max_attempts,"
            " dead_letter = excluded.dead_letter, dedup_window = excluded.dedup_window",
            (spec.name, spec.max_attempts, spec.dead_letter, float(spec.dedup_window)),
        )
        self._writes += 1

    def _duplicates(
        self, conn: sqlite3.Connection, qid: int, envelopes: Sequence[Envelope], now: float
    ) -> tuple[dict[int, int] | None, dict[str, int] | None]:
        """The envelopes a put at ``now`` would not store, by position (the id their key names,
        or ``-1 - position`` of the batch's first envelope with that key), and the new keys by
        position; (None, None) if no envelope has a key."""
        duplicates: dict[int, int] | None = None
        keys: dict[str, int] | None = None
        window = 0.0
        for position, envelope in enumerate(envelopes):
            key = envelope.dedup_key
            if key is None:
                continue
            if keys is None:
                keys = {}
                duplicates = {}
                window = self._spec(conn, qid)[3]
            assert duplicates is not None
            if key in keys:
                duplicates[position] = -1 - keys[key]
                continue
            seen = conn.execute("SELECT id, first_at FROM mq_dedup WHERE qid = ? AND key = ?", (qid, key)).fetchone()
            if seen is not None and now < seen[1] + window:
                duplicates[position] = seen[0]
            else:
                keys[key] = position
        return duplicates, keys

    def _do_count_new(self, conn: sqlite3.Connection, queue: str, envelopes: Sequence[Envelope], now: float) -> int:
        duplicates, _ = self._duplicates(conn, self._qid(conn, queue), envelopes, now)
        return len(envelopes) - (len(duplicates) if duplicates else 0)

    def _do_put(
        self, conn: sqlite3.Connection, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int
    ) -> list[int] | None:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        count = len(envelopes)
        if not count:
            return []
        duplicates, keys = self._duplicates(conn, qid, envelopes, now)
        fresh = count - (len(duplicates) if duplicates else 0)
        if maxsize and fresh:
            ready, delayed, _ = conn.execute(COUNTS, {"qid": qid}).fetchone()
            if ready + delayed + fresh > maxsize:
                return None
        if not fresh:
            assert duplicates is not None
            return [duplicates[position] for position in range(count)]
        last = conn.execute(
            "UPDATE mq_messages SET token = token + ? WHERE id = ? RETURNING token", (fresh, COUNTER_ID)
        ).fetchone()[0]
        next_id = last - fresh + 1
        self._writes += 1
        if not duplicates and all(map(_PLAIN.__eq__, map(_OPTIONS, envelopes))):  # default options
            given = range(next_id, next_id + count)
            insert_plain(conn, qid, list(chain.from_iterable(zip(given, repeat(now), map(_BODY, envelopes)))))
            return list(given)
        rows = []
        ids: list[int] = []
        for position, envelope in enumerate(envelopes):
            if duplicates and position in duplicates:
                first = duplicates[position]
                ids.append(first if first >= 0 else ids[-1 - first])
                continue
            mid = next_id
            next_id += 1
            ids.append(mid)
            delay = envelope.delay
            if delay > 0.0:
                ready_at = now + delay
                self._lower_bound(qid, ready_at)
                state = DELAYED
            else:
                ready_at = -envelope.priority  # a ready row's deadline is its place in the claim order
                state = READY
            rows.append(
                (
                    mid,
                    qid,
                    state,
                    envelope.priority,
                    envelope.group,
                    ready_at,
                    now,
                    dumps_headers(envelope.headers),
                    envelope.body,
                )
            )
        conn.executemany(INSERT, rows)
        if keys:
            conn.executemany(
                "INSERT OR REPLACE INTO mq_dedup (qid, key, id, first_at) VALUES (?, ?, ?, ?)",
                [(qid, key, ids[position], now) for key, position in keys.items()],
            )
            keyed = self._keyed.get(qid, 0) + len(keys)
            if keyed >= _DEDUP_SWEEP:  # every so many keys put in this queue, forget those whose window closed
                window = self._spec(conn, qid)[3]
                conn.execute("DELETE FROM mq_dedup WHERE qid = ? AND first_at + ? <= ?", (qid, window, now))
                keyed = 0
            self._keyed[qid] = keyed
        return ids

    def _do_lease(self, conn: sqlite3.Connection, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        expires_at = now + lease
        rows = (
            conn.execute(CLAIM_ONE if n == 1 else CLAIM, {"until": expires_at, "qid": qid, "n": n}).fetchall()
            if n > 0
            else []
        )
        if not rows:
            self._empty[qid] = (self._writes, self._bound.get(qid, -math.inf))
            self._cached_at = self._writes
            return []
        self._writes += 1
        if self._watcher is not None:
            self._watcher.found()
        self._lower_bound(qid, expires_at)
        if len(rows) > 1:  # RETURNING gives no order
            rows.sort(key=lambda row: (-row[5], row[0]))
        return [  # RETURNING gives a REAL column's whole numbers as ints: float() them
            Leased(mid, token, body, attempts, float(enqueued_at), priority, group, loads_headers(headers), expires_at)
            for mid, token, body, attempts, enqueued_at, priority, group, headers in rows
        ]

    def _fast_lease(self, queue: str, n: int, now: float, lease: float) -> object:
        qid = self._qids.get(queue)
        if qid is None:
            return MISS
        empty = self._empty.get(qid)
        if empty is not None and empty[0] == self._writes and now < empty[1]:
            return []
        return MISS

    def _settle(
        self,
        conn: sqlite3.Connection,
        queue: str,
        handles: Sequence[Handle],
        now: float,
        apply: Callable[[int, int, int, str | None], Outcome],
    ) -> tuple[int, list[Outcome]]:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        outcomes: list[Outcome] = []
        for mid, token in handles:
            row = None
            if token:
                row = conn.execute(
                    "SELECT state, attempts, headers FROM mq_messages WHERE id = ? AND qid = ? AND token = ?",
                    (mid, qid, token),
                ).fetchone()
            outcomes.append(Outcome.LOST if row is None else apply(mid, *row))
        return qid, outcomes

    def _do_ack(self, conn: sqlite3.Connection, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        self._writes += 1
        outcomes: list[Outcome] = []
        delete = "DELETE FROM mq_messages WHERE id = ? AND qid = ? AND token = ?"
        for mid, token in handles:
            done = token and conn.execute(delete, (mid, qid, token)).rowcount
            outcomes.append(Outcome.DONE if done else Outcome.LOST)
        return outcomes

    def _do_nack(
        self,
        conn: sqlite3.Connection,
        queue: str,
        handles: Sequence[Handle],
        now: float,
        delay: float,
        error: str | None,
    ) -> list[Outcome]:
        spec: tuple[str, int | None, str, float] | None = None

        def apply(mid: int, state: int, attempts: int, headers: str | None) -> Outcome:
            nonlocal spec
            if state != IN_FLIGHT:
                return Outcome.NOOP
            if spec is None:
                spec = self._spec(conn, qid)
            limit = spec[1]
            if limit is not None and attempts >= limit:
                self._kill(conn, mid, spec, attempts, headers, "max_attempts", error)
            elif delay > 0.0:
                ready_at = now + delay
                conn.execute("UPDATE mq_messages SET state = 1, deadline = ? WHERE id = ?", (ready_at, mid))
                self._lower_bound(qid, ready_at)
            else:
                conn.execute("UPDATE mq_messages SET state = 0, deadline = -priority WHERE id = ?", (mid,))
            return Outcome.DONE

        self._writes += 1
        qid = self._qid(conn, queue)
        return self._settle(conn, queue, handles, now, apply)[1]

    def _do_release(self, conn: sqlite3.Connection, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        def apply(mid: int, state: int, attempts: int, headers: str | None) -> Outcome:
            if state != IN_FLIGHT:
                return Outcome.NOOP
            conn.execute(
                "UPDATE mq_messages SET state = 0, deadline = -priority, attempts = attempts - 1 WHERE id = ?", (mid,)
            )
            return Outcome.DONE

        self._writes += 1
        return self._settle(conn, queue, handles, now, apply)[1]

    def _do_reject(
        self, conn: sqlite3.Connection, queue: str, handles: Sequence[Handle], now: float, reason: str | None
    ) -> list[Outcome]:
        spec: tuple[str, int | None, str, float] | None = None

        def apply(mid: int, state: int, attempts: int, headers: str | None) -> Outcome:
            nonlocal spec
            if spec is None:
                spec = self._spec(conn, self._qid(conn, queue))
            self._kill(conn, mid, spec, attempts, headers, "rejected", reason)
            return Outcome.DONE

        self._writes += 1
        return self._settle(conn, queue, handles, now, apply)[1]

    def _do_extend(
        self, conn: sqlite3.Connection, queue: str, handles: Sequence[Handle], now: float, seconds: float
    ) -> list[Outcome]:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        self._writes += 1
        expires_at = now + seconds
        outcomes: list[Outcome] = []
        update = "UPDATE mq_messages SET deadline = ? WHERE id = ? AND qid = ? AND token = ? AND state = 2"
        for mid, token in handles:
            done = token and conn.execute(update, (expires_at, mid, qid, token)).rowcount
            outcomes.append(Outcome.DONE if done else Outcome.LOST)
        self._lower_bound(qid, expires_at)
        return outcomes

    def _do_redrive(self, conn: sqlite3.Connection, queue: str, now: float, max_messages: int | None) -> int:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        name, _, dead_name, _ = self._spec(conn, qid)
        dead_qid = self._qid(conn, dead_name)
        self._advance(conn, dead_qid, now)
        rows = conn.execute(
            "SELECT id, headers FROM mq_messages WHERE qid = ? AND dead_from = ? AND state < 2 ORDER BY id LIMIT ?",
            (dead_qid, name, -1 if max_messages is None else max_messages),
        ).fetchall()
        moved = []
        for mid, headers_text in rows:
            headers = {k: v for k, v in loads_headers(headers_text).items() if k not in DEATH_HEADERS}
            moved.append((qid, dumps_headers(headers), mid))
        conn.executemany(
            "UPDATE mq_messages SET qid = ?, state = 0, deadline = -priority, attempts = 0, token = token + 1,"
            " headers = ?, dead_from = NULL WHERE id = ?",
            moved,
        )
        self._writes += 1
        return len(moved)

    def _do_purge(self, conn: sqlite3.Connection, queue: str, now: float) -> int:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        self._writes += 1
        return conn.execute("DELETE FROM mq_messages WHERE qid = ? AND state < 2", (qid,)).rowcount

    def _do_peek(self, conn: sqlite3.Connection, queue: str, n: int, now: float) -> list[Leased]:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        rows = conn.execute(PEEK, {"qid": qid, "n": n}).fetchall()
        rows.sort(key=lambda row: (-row[5], row[0]))
        return [
            Leased(
                mid,
                0,
                body,
                attempts,
                enqueued_at,
                priority,
                group,
                loads_headers(headers),
                deadline if state == IN_FLIGHT else None,
            )
            for mid, state, body, attempts, enqueued_at, priority, group, headers, deadline in rows[:n]
        ]

    def _do_counts(self, conn: sqlite3.Connection, queue: str, now: float) -> tuple[int, int, int]:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        ready, delayed, in_flight = conn.execute(COUNTS, {"qid": qid}).fetchone()
        return ready, delayed, in_flight

    def _do_stats(self, conn: sqlite3.Connection, queue: str, now: float) -> QueueStats:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        ready, delayed, in_flight = conn.execute(COUNTS, {"qid": qid}).fetchone()
        name, _, dead_name, _ = self._spec(conn, qid)
        dead_row = conn.execute("SELECT qid FROM mq_queues WHERE name = ?", (dead_name,)).fetchone()
        dead = 0
        if dead_row is not None:
            dead = conn.execute(
                "SELECT count(*) FROM mq_messages WHERE qid = ? AND dead_from = ?", (dead_row[0], name)
            ).fetchone()[0]
        oldest = conn.execute(
            "SELECT min(enqueued_at) FROM mq_messages WHERE qid = ? AND state = 0", (qid,)
        ).fetchone()[0]
        return QueueStats(ready, delayed, in_flight, dead, None if oldest is None else max(0.0, now - oldest))

    def _do_next_wakeup(self, conn: sqlite3.Connection, queue: str, now: float) -> float | None:
        qid = self._qid(conn, queue)
        self._advance(conn, qid, now)
        deadline: float | None = conn.execute(NEXT_DEADLINE, {"qid": qid}).fetchone()[0]
        self._wake[qid] = (self._writes, deadline)
        self._cached_at = self._writes
        return deadline

    def _fast_next_wakeup(self, queue: str, now: float) -> object:
        qid = self._qids.get(queue)
        if qid is None:
            return MISS
        wake = self._wake.get(qid)
        if wake is None or wake[0] != self._writes or (wake[1] is not None and now >= wake[1]):
            return MISS
        return wake[1]

    def _do_data_version(self, conn: sqlite3.Connection) -> tuple[int, int]:
        return self._opened, conn.execute("PRAGMA data_version").fetchone()[0]

    def _fast_data_version(self) -> object:
        return self._do_data_version(self._connection())  # no transaction needed

    _fast: ClassVar[dict[str, Callable[..., object]]] = {
        "_do_lease": _fast_lease,
        "_do_next_wakeup": _fast_next_wakeup,
        "_do_data_version": _fast_data_version,
    }

    # -- wake-ups across processes ------------------------------------------------------------------

    def _data_version(self) -> tuple[int, int]:
        """What changes whenever another connection commits (the watcher's look): the count of
        connections this process opened (a new one counts anew) and its ``data_version``."""
        result: tuple[int, int] = self._submit(self._do_data_version, False)
        return result

    def watch(self, changed: Callable[[], None], waiting: Callable[[], bool]) -> Callable[[], None] | None:
        """Other processes change this database: while ``waiting()``, a thread looks for their
        commits every ``poll_interval`` at most and calls ``changed()`` after one. Returns the
        function to call when a caller starts waiting; None if ``poll_interval`` is None."""
        if self.poll_interval is None:
            return None
        self._subscribers.append((changed, waiting))
        this = weakref.ref(self)  # the front keeps the kick for as long as it knows the storage

        def kick() -> None:
            storage = this()
            if storage is not None and storage._watcher is not None:
                storage._watcher.kick()

        return kick

    # -- the Storage interface --------------------------------------------------------------------

    def open_queue(self, spec: QueueSpec) -> None:
        if spec.max_attempts is not None and spec.max_attempts > LIMIT_MAX:  # SQLite ints are 64-bit
            spec = spec._replace(max_attempts=LIMIT_MAX)
        self._submit(self._do_open_queue, True, spec)

    def put(self, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int = 0) -> list[int] | None:
        result: list[int] | None = self._submit(self._do_put, True, queue, envelopes, now, maxsize)
        return result

    def count_new(self, queue: str, envelopes: Sequence[Envelope], now: float) -> int:
        result: int = self._submit(self._do_count_new, False, queue, envelopes, now)
        return result

    def lease(self, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        result: list[Leased] = self._submit(self._do_lease, False, queue, min(n, LIMIT_MAX), now, lease)
        return result

    def ack(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        result: list[Outcome] = self._submit(self._do_ack, True, queue, handles, now)
        return result

    def nack(self, queue: str, handles: Sequence[Handle], now: float, delay: float, error: str | None) -> list[Outcome]:
        result: list[Outcome] = self._submit(self._do_nack, True, queue, handles, now, delay, error)
        return result

    def release(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        result: list[Outcome] = self._submit(self._do_release, True, queue, handles, now)
        return result

    def reject(self, queue: str, handles: Sequence[Handle], now: float, reason: str | None) -> list[Outcome]:
        result: list[Outcome] = self._submit(self._do_reject, True, queue, handles, now, reason)
        return result

    def extend(self, queue: str, handles: Sequence[Handle], now: float, seconds: float) -> list[Outcome]:
        result: list[Outcome] = self._submit(self._do_extend, True, queue, handles, now, seconds)
        return result

    def redrive(self, queue: str, now: float, max_messages: int | None) -> int:
        if max_messages is not None:
            max_messages = min(max_messages, LIMIT_MAX)
        result: int = self._submit(self._do_redrive, True, queue, now, max_messages)
        return result

    def purge(self, queue: str, now: float) -> int:
        result: int = self._submit(self._do_purge, True, queue, now)
        return result

    def peek(self, queue: str, n: int, now: float) -> list[Leased]:
        result: list[Leased] = self._submit(self._do_peek, False, queue, min(n, LIMIT_MAX), now)
        return result

    def counts(self, queue: str, now: float) -> tuple[int, int, int]:
        result: tuple[int, int, int] = self._submit(self._do_counts, False, queue, now)
        return result

    def stats(self, queue: str, now: float) -> QueueStats:
        result: QueueStats = self._submit(self._do_stats, False, queue, now)
        return result

    def next_wakeup(self, queue: str, now: float) -> float | None:
        result: float | None = self._submit(self._do_next_wakeup, False, queue, now)
        return result

    def close(self) -> None:
        """Close the connection (after the transaction in progress, if any). Idempotent."""
        with self._mutex:
            self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
        if self._pid != os.getpid():
            return
        with self._conn_lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA busy_timeout = 100")  # tidy up only if nobody is writing
                    self._vacuum(conn)
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        with self._sync_lock:
            fd, self._wal_fd = self._wal_fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def from_url(rest: str) -> SQLiteStorage:
    """The storage of a ``sqlite://`` URL, given what follows ``sqlite://``.

    ``sqlite:///app.db`` is relative to the working directory, ``sqlite:////var/lib/app.db``
    absolute; ``?durability=normal`` picks the durability.
    """
    url = f"sqlite://{rest}"
    location, _, query = rest.partition("?")
    if not location.startswith("/") or len(location) < 2:
        raise ValueError(f"storage URL {url!r} must look like 'sqlite:///relative.db' or 'sqlite:////absolute.db'")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, separator, value = item.partition("=")
        if not separator or key != "durability":
            raise ValueError(f"storage URL {url!r}: unknown option {item!r} (only 'durability=full|normal')")
        options[key] = value
    return SQLiteStorage(location[1:], durability=options.get("durability", "full"))
