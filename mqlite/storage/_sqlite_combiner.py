"""The combiner of ``SQLiteStorage``: every call waiting runs in one transaction, and the WAL
fsync of ``durability="full"`` is shared by the callers, outside the write lock.

Why: a commit, and above all its fsync, costs far more than the statements of one call, so
calls from many threads of one process are *combined*. Whoever calls while another caller's
transaction runs waits; when that transaction ends, the first waiter leads the next one, which
carries every call that waited, each inside its own ``SAVEPOINT`` (a failing call rolls back
alone) - one ``BEGIN IMMEDIATE``, one commit, at most one fsync for all of them (group commit).

With ``durability="full"`` on POSIX (the *split sync*) the commit runs with
``synchronous=NORMAL`` and the callers of durable calls fsync the WAL themselves before
returning (:meth:`Combiner._sync_wal`): one fsync serves every commit made before it began, it
runs outside the write lock so the next transaction proceeds meanwhile, and leases and reads of
the batch return right after the commit.

:class:`Combiner` is a mixin of ``SQLiteStorage``: it keeps its state on the storage object
(tests and ``close()`` reach it there) and calls back into the storage for the connection, the
caches and the operations (its abstract methods).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Final

from .._errors import StorageError
from ._descriptors import Descriptors

MISS: Final = object()
"""What a cache answer (``SQLiteStorage._fast``) returns when it cannot answer: run the call."""
VACUUM_EVERY: Final = 256
"""Write commits between free-page checks (``SQLiteStorage._vacuum``)."""

_fdatasync: Final[Callable[[int], None]] = getattr(os, "fdatasync", os.fsync)
"""How the WAL is synced: as SQLite itself does on Linux (data and the size, not timestamps).
A module global so that tests can watch or break it."""


_new_gate: Callable[[], threading.Lock] = threading.Lock
"""What a waiting caller blocks on (a module global so that tests can interrupt a wait)."""


class WaitingCall:
    """One storage call waiting to run in the next combined transaction, and its outcome."""

    __slots__ = ("args", "durable", "error", "function", "gate", "lead", "result", "sync")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...], durable: bool) -> None:
        self.function = function
        self.args = args
        self.durable = durable
        self.result: Any = None
        self.error: BaseException | None = None
        self.gate: threading.Lock | None = None
        self.lead = False
        self.sync = 0  # the commit number its caller must see synced before returning (0: none)


class Combiner(abc.ABC):
    """Runs the storage calls of a process's threads in combined transactions (see the module).

    A storage call is ``self._submit(operation, durable, *args)``: ``operation(conn, *args)``
    runs inside a transaction (never concurrently with another), ``durable`` says whether its
    commit must be on stable storage before the call returns under ``durability="full"``.
    Calls whose operation's name is in ``_fast`` are first offered to that cache answer, and
    need no transaction if it does not return :data:`MISS`."""

    # Set by the storage (its constructor, or per process by _init_process_state).
    path: str
    _closed: bool
    _full: bool
    _pid: int
    _writes: int  # bumped by every change this process makes; caches record it
    _cached_at: int  # the write count when a cache entry was last stored
    _dv: int  # the PRAGMA data_version the caches are valid for
    _qids: dict[str, int]
    _fast: ClassVar[dict[str, Callable[..., object]]]

    @property
    def _wal_fd(self) -> int | None:
        """The descriptor the WAL is fsync'ed through (None until the first durable call)."""
        fd = self._descriptors.wal
        return None if fd < 0 else fd

    @_wal_fd.setter
    def _wal_fd(self, fd: int | None) -> None:
        self._descriptors.wal = -1 if fd is None else fd

    def _init_combiner(self) -> None:
        """Set up the combiner's process-local state (at start, and again in a forked child)."""
        self._mutex = threading.Lock()  # guards _pending and _busy
        self._pending: list[WaitingCall] = []
        self._busy = False
        self._conn_lock = threading.Lock()  # held by the leader while it runs a transaction
        self._commits = 0
        # Split sync (durability="full" on POSIX): transactions commit with synchronous=NORMAL,
        # then callers of durable calls fsync the WAL themselves, outside the write lock, one
        # fsync for every commit made before it started (see _sync_wal).
        self._split = self._full and os.name == "posix"
        self._sync_lock = threading.Lock()  # one fsync of the WAL at a time
        if not hasattr(self, "_descriptors"):  # kept across a fork: the finalizer is registered once
            self._descriptors = Descriptors(self)
        self._wal_fd = None
        self._committed = 0  # transactions with a durable call, numbered as they commit
        self._synced = 0  # the highest of those numbers known to be on stable storage
        self._sync_failed: OSError | None = None

    # -- what the storage provides -----------------------------------------------------------

    @abc.abstractmethod
    def _forked(self) -> None:
        """In a child after fork: drop the parent's connection and reset the process state."""

    @abc.abstractmethod
    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened on first use."""

    @abc.abstractmethod
    def _error(self, error: BaseException, what: str = "") -> StorageError:
        """The :class:`StorageError` that reports an ``sqlite3`` error to the caller."""

    @abc.abstractmethod
    def _forget(self) -> None:
        """Drop every cache (another process wrote, or a transaction rolled back)."""

    @abc.abstractmethod
    def _set_sync(self, conn: sqlite3.Connection, level: str) -> None:
        """Set ``PRAGMA synchronous`` to ``level`` unless it already is."""

    @abc.abstractmethod
    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting for other processes' writes up to busy_timeout."""

    @abc.abstractmethod
    def _put_together(self, conn: sqlite3.Connection, todo: list[WaitingCall]) -> set[WaitingCall]:
        """Run calls of the batch that can share statements; return the calls so answered."""

    @abc.abstractmethod
    def _vacuum(self, conn: sqlite3.Connection) -> None:
        """Give free pages back to the file system (every VACUUM_EVERY write commits)."""

    # -- the combiner: one transaction for every call waiting ---------------------------------

    def _submit(self, function: Callable[..., Any], durable: bool, *args: Any) -> Any:
        """Run ``function(conn, *args)`` in the next combined transaction and return its result
        (or raise its error): lead that transaction if none runs, else wait for it to end."""
        if self._pid != os.getpid():
            self._forked()
        op = WaitingCall(function, args, durable)
        with self._mutex:
            if self._closed:
                raise StorageError(f"{self!r} is closed")
            self._pending.append(op)
            gate = None
            if self._busy:
                gate = op.gate = _new_gate()
                gate.acquire()
            else:
                self._busy = True
                op.lead = True
        if gate is not None:
            try:
                gate.acquire()  # released when our transaction ended, or when it is our turn to lead
            except BaseException:  # interrupted (KeyboardInterrupt): leave without stranding others
                self._abandon(op)
                raise
        if op.lead:
            self._lead()
        if op.error is not None:
            raise op.error
        if op.sync:
            self._sync_wal(op.sync)
        return op.result

    def _abandon(self, op: WaitingCall) -> None:
        """A caller interrupted while waiting: if its call has not been taken into a batch yet,
        it is withdrawn (it never runs); if it had just been made the next leader, the lead
        goes to the next call waiting, or the combiner becomes idle. A call already taken into
        a running batch runs, and its outcome is dropped."""
        with self._mutex:
            if op not in self._pending:
                return
            self._pending.remove(op)
            if not op.lead:
                return
            op.lead = False
            if self._pending:
                successor = self._pending[0]
                successor.lead = True
                assert successor.gate is not None
                successor.gate.release()
            else:
                self._busy = False

    def _sync_wal(self, number: int) -> None:
        """Make commit ``number`` durable: fsync the WAL, unless an fsync that started after
        that commit already finished. One fsync serves every commit made before it began, and
        it runs outside the write lock, so the next transaction proceeds meanwhile.

        Same promise as ``synchronous=FULL``, which syncs the WAL at each commit: a checkpoint
        (which syncs the WAL before and the database after copying) or a WAL reset (only after
        a complete checkpoint) never leaves a committed frame on neither synced file."""
        with self._sync_lock:
            if self._sync_failed is not None:  # it failed while this call's commit waited for it
                raise self._sync_failure()
            if self._synced >= number:
                return
            target = self._committed  # every transaction numbered up to here has committed
            try:
                fd = self._wal_fd
                if fd is None:
                    # SQLite resolves symbolic links and keeps the WAL beside the real file.
                    wal = os.path.realpath(self.path) + "-wal"
                    fd = self._wal_fd = os.open(wal, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                _fdatasync(fd)
                if os.fstat(fd).st_nlink == 0:  # synced into a file no name reaches any more
                    raise OSError(errno.ENOENT, "the database's write-ahead log was deleted while open")
            except FileNotFoundError as error:
                # SQLite deletes the WAL only when the last connection closes, checkpointing it
                # (with syncs) first; while ours is open, a missing WAL means we cannot sync.
                if not self._closed:
                    self._sync_failed = error
                    raise StorageError(
                        f"SQLite database {self.path!r}: committed, but its WAL was not found to sync: {error}"
                    ) from error
            except OSError as error:
                self._sync_failed = error
                raise StorageError(
                    f"SQLite database {self.path!r}: committed, but the WAL could not be synced: {error}"
                ) from error
            self._synced = target
            if self._closed and self._wal_fd is not None:  # close() ran while this call was syncing
                with contextlib.suppress(OSError):
                    os.close(self._wal_fd)
                self._wal_fd = None

    def _sync_failure(self) -> StorageError:
        """The error of every call after a failed fsync of the WAL. After one, the kernel may
        have dropped pages of commits it covered and will not report that again, so no later
        sync can vouch for them: the storage refuses every call until it is opened again."""
        return StorageError(
            f"SQLite database {self.path!r}: an earlier fsync of the WAL failed ({self._sync_failed}); "
            "committed changes may not be on stable storage: close this storage and open the file again"
        )

    def _lead(self) -> None:
        """Run every call waiting now in one transaction, then hand the lead to the first call
        that arrived meanwhile (or mark the combiner idle) and wake the batch's callers."""
        with self._mutex:
            batch, self._pending = self._pending, []
        try:
            with self._conn_lock:
                self._run(batch)
        except BaseException as error:  # not a call's own failure (those land in the call)
            for op in batch:
                if op.error is None:
                    op.error = error  # none of the batch's callers may take its call for done
            raise
        finally:
            with self._mutex:
                successor = self._pending[0] if self._pending else None
                if successor is None:
                    self._busy = False
                else:
                    successor.lead = True
            for op in batch:
                if op.gate is not None and not op.lead:
                    op.gate.release()
            if successor is not None:
                assert successor.gate is not None
                successor.gate.release()

    def _run(self, batch: list[WaitingCall]) -> None:
        """Answer what the caches can (after checking that no other process wrote) and run the
        rest in one transaction; every error lands in the calls, none escapes."""
        if self._closed:
            for op in batch:
                op.error = StorageError(f"{self!r} is closed")
            return
        if self._sync_failed is not None:  # refused before it runs: a call that raises changed nothing
            for op in batch:
                op.error = self._sync_failure()
            return
        fast = self._fast
        try:
            conn = self._connection()
            # A cache entry is only valid if stored at the current write count, so while none
            # is, no call can be answered from the cache and the check is not needed.
            if self._cached_at == self._writes and any(op.function.__name__ in fast for op in batch):
                dv = conn.execute("PRAGMA data_version").fetchone()[0]
                if dv != self._dv:
                    self._forget()
                    self._dv = dv
        except BaseException as error:
            for op in batch:
                op.error = error if not isinstance(error, sqlite3.Error) else self._error(error)
            return
        todo: list[WaitingCall] = []
        for op in batch:  # calls that a cache answers need no transaction
            answer = fast.get(op.function.__name__)
            if answer is not None:
                try:
                    result = answer(self, *op.args)
                except BaseException as error:  # this call's own failure (a bad argument)
                    op.error = error
                    continue
                if result is not MISS:
                    op.result = result
                    continue
            todo.append(op)
        if todo:
            self._transaction(conn, todo)

    def _transaction(self, conn: sqlite3.Connection, todo: list[WaitingCall]) -> None:
        """Run ``todo`` in one ``BEGIN IMMEDIATE`` transaction, each call in its own savepoint
        when there are several, commit once, and number the commit for the durable calls'
        WAL fsync under the split sync. A batch of puts refused for lack of room (each answer
        None: a producer waiting under maxsize retries often) that changed no row syncs
        nothing: they promise nothing. Any other durable call syncs even when it changed no
        row, since its answer may rest on a commit not yet synced (a duplicate put returns the
        id of a message another caller's commit made)."""
        try:
            durable = self._full and any(op.durable for op in todo)
            self._set_sync(conn, "FULL" if durable and not self._split else "NORMAL")
            self._begin(conn)
        except BaseException as error:
            for op in todo:
                op.error = self._error(error) if isinstance(error, sqlite3.Error) else error
            return
        writes = self._writes
        changes = conn.total_changes
        try:
            dv = conn.execute("PRAGMA data_version").fetchone()[0]
            if dv != self._dv:
                self._forget()
                self._dv = dv
            if len(todo) == 1:
                op = todo[0]
                op.result = op.function(conn, *op.args)
            else:
                merged = self._put_together(conn, todo)
                for op in todo:
                    if op in merged:
                        continue
                    conn.execute("SAVEPOINT mq_op")
                    try:
                        op.result = op.function(conn, *op.args)
                    except Exception as error:
                        conn.execute("ROLLBACK TO mq_op")
                        self._qids.clear()
                        self._forget()
                        self._writes += 1
                        op.error = self._error(error) if isinstance(error, sqlite3.Error) else error
                    conn.execute("RELEASE mq_op")
            if self._writes != writes:
                self._commits += 1
                if self._commits % VACUUM_EVERY == 0:
                    self._vacuum(conn)
            conn.execute("COMMIT")
            refused = conn.total_changes == changes and all(op.result is None for op in todo if op.durable)
            if durable and self._split and not refused:
                self._committed += 1
                for op in todo:
                    if op.durable and op.error is None:
                        op.sync = self._committed
        except BaseException as error:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._qids.clear()
            self._forget()
            failure = self._error(error) if isinstance(error, sqlite3.Error) else error
            for op in todo:
                if op.error is None:
                    op.error = failure
                op.result = None
