"""Opening an SQLite connection for ``SQLiteStorage``, beginning its write transactions, and
keeping connections safe across ``fork``.

Why apart: these are the rules of SQLite and POSIX file locks that the storage must follow
whatever it stores - how to create the file without dropping this process's locks, how to wait
for another process's write transaction, and why no connection may be open when the process
forks - and they read best next to each other, with their reasons.
"""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from typing import Protocol

from .._errors import StorageError


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A new autocommit connection to the database file ``path``, created 0600 if missing.

    Usable from any thread (the storage serialises its use) and caching the statements of
    every call. Raises :class:`StorageError` naming the path if the file cannot be opened."""
    # Create the file 0600 if missing, but never open and close a descriptor of an existing
    # one: closing any descriptor of a file drops every POSIX lock this process holds on it,
    # including the shared lock of a connection already open here, after which another
    # process closing its last connection would checkpoint and delete the WAL in use.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        if not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"cannot open SQLite database {path!r}: not readable and writable") from None
    except OSError as error:
        raise StorageError(f"cannot open SQLite database {path!r}: {error}") from error
    else:
        os.close(fd)
    try:
        return sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False, cached_statements=256
        )
    except sqlite3.Error as error:
        raise StorageError(f"cannot open SQLite database {path!r}: {error}") from error


def begin_immediate(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """BEGIN IMMEDIATE, retried (beyond SQLite's own busy handler) until ``busy_timeout``
    seconds have passed since the first attempt, then the busy or locked error is raised.

    SQLite's busy handler does not cover every case where another connection holds the write
    lock, so a busy or locked error is retried here, with a backoff from 1 ms to 50 ms. Each
    retry's own busy handler is limited to the time left, so the whole wait stays within
    ``busy_timeout`` (plus one backoff step), as documented."""
    started = time.monotonic()
    try:
        conn.execute("BEGIN IMMEDIATE")  # the usual case, without the retry loop's set-up
        return
    except sqlite3.OperationalError as error:
        if not _busy(error):
            raise
        last = error
    deadline = started + busy_timeout
    pause = 0.001
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise last
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)
            conn.execute(f"PRAGMA busy_timeout = {max(int((deadline - time.monotonic()) * 1000), 0)}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if not _busy(error):
                    raise
                last = error
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether ``error`` says another connection holds the lock (worth waiting for)."""
    text = str(error)
    return "locked" in text or "busy" in text


class ForkAware(Protocol):
    """What :func:`track` needs of a storage: a way to hand no SQLite state to a child."""

    def _before_fork(self) -> None:
        """In the parent, just before fork: wait for the transaction and the WAL sync under
        way, keep the next from starting, and close the connection and the WAL descriptor."""

    def _after_fork_in_parent(self) -> None:
        """In the parent, after fork: let calls run again (they reopen the connection)."""

    def _forked(self) -> None:
        """In a child after fork: abandon the parent's connection and locks."""


_abandoned: list[sqlite3.Connection] = []
"""Connections inherited across fork: never used nor closed in the child (closing could act on
the parent's WAL), only kept referenced so they are not closed by garbage collection."""
_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()
"""Every open storage of this process, told when the process forks."""


def track(storage: ForkAware) -> None:
    """Call ``storage._forked()`` in the child whenever this process forks (while it lives)."""
    _live.add(storage)


def abandon(conn: sqlite3.Connection) -> None:
    """Keep a connection inherited from the parent referenced forever, never used nor closed."""
    _abandoned.append(conn)


_forking: list[ForkAware] = []
"""The storages :func:`_before_fork` closed, to be let go on again after the fork."""


def _before_fork() -> None:
    """Close every open storage's connection before the process forks.

    SQLite keeps the locks of every file it has open in tables shared by the whole process. A
    child inherits those tables but not the POSIX locks they describe, so even a connection
    the child opens anew would believe it holds locks it does not: another process (the parent
    closing last) then checkpoints and deletes the WAL the child writes to, and what the child
    committed is lost. With no connection open at the fork, the child inherits no such state."""
    storages = [storage for storage in list(_live) if getattr(storage, "_pid", None) == os.getpid()]
    done: list[ForkAware] = []
    try:
        for storage in storages:
            storage._before_fork()
            done.append(storage)
    except BaseException:
        for storage in done:
            storage._after_fork_in_parent()
        raise
    _forking[:] = done


def _after_fork_in_parent() -> None:
    storages, _forking[:] = list(_forking), []
    for storage in storages:
        storage._after_fork_in_parent()


def _after_fork_in_child() -> None:
    _forking.clear()
    for storage in list(_live):
        storage._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
