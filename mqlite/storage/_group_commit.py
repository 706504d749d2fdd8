"""Group commit for :class:`~mqlite.storage.file.FileStorage`: one ``fdatasync`` for many callers.

With durability "full", a call that changed the state returns only once its record is on disk.
An ``fdatasync`` costs a tenth of a millisecond (a fast virtual disk) to several, so concurrent
callers share one: the first to need a sync leads it, writing everything appended so far in one
write and syncing it; the others wait on private locks
and are woken as soon as a sync covers their record. This module holds that protocol as the
:class:`GroupCommit` mixin, so that its state stays on the storage (the storage's lock order,
its file descriptor and its failure state are shared with the writing side in ``file.py``).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Final

from .._errors import StorageError

__all__ = ["GroupCommit"]

_MAX_GATHER: Final = 0.005  # seconds: the longest a sync waits for callers about to append


class _Gather:
    """``with storage._gather:`` around the part of a synced call that appends its record: counts
    the caller in ``_pending`` until that part is over (or given up), so that a sync about to
    start waits for its record (see :meth:`GroupCommit._commit`). The part includes the space
    check or roll that the append may run; a roll waits for a running sync, whose leader may be
    waiting for this caller, so such a sync starts only when its wait (at most as long as the
    last sync took, and 5 ms) runs out: a few milliseconds once per roll. Does nothing with
    durability "normal"."""

    __slots__ = ("storage",)

    def __init__(self, storage: GroupCommit) -> None:
        self.storage = storage

    def __enter__(self) -> None:
        storage = self.storage
        if storage._full:
            with storage._sync_mutex:
                storage._pending += 1

    def __exit__(self, *exc_info: object) -> None:
        storage = self.storage
        if storage._full:
            with storage._sync_mutex:
                storage._pending -= 1
                gate = storage._gatherer
                if gate is not None and not storage._pending:
                    storage._gatherer = None
                    gate.release()


# What a leader tells a _Waiter it wakes (_Waiter.outcome):
_COVERED: Final = 1  # a sync covered its record: return
_RETRY: Final = 2  # not covered: try again (lead the next sync or wait for it)
_FAILED: Final = 3  # the sync failed: raise


class _Waiter:
    """A caller waiting for a sync past ``end``: blocked on its own ``gate`` until a leader sets
    ``outcome`` (covered by a sync, to try again, or the sync failed) and releases it."""

    __slots__ = ("end", "gate", "outcome")

    def __init__(self, end: int) -> None:
        self.end = end
        self.gate = threading.Lock()
        self.gate.acquire()
        self.outcome = 0


class GroupCommit:
    """Mixin: make appended records durable with as few ``fdatasync`` calls as the callers allow.

    The class that mixes it in provides ``path``, ``_full`` (durability "full"), ``_fd`` (the
    file appended to), :meth:`_flush` (writes the records appended so far to ``_fd``; safe to
    call without the class's own lock), ``_flushed`` (the log position written so far) and
    ``_failed`` (the error that made the storage unusable, or None), calls
    :meth:`_init_group_commit` in its constructor, wraps the part of a synced call that appends
    in ``with self._gather:`` and calls :meth:`_commit` with the position after its record once
    it released its own lock.
    """

    path: str
    _full: bool
    _fd: int
    _flushed: int
    _failed: BaseException | None

    def _flush(self) -> None:
        raise NotImplementedError

    def _init_group_commit(self) -> None:
        """Set up the group-commit state (nothing synced, no sync running)."""
        self._sync_mutex = threading.Lock()  # guards the group-commit state below
        self._sync_idle = threading.Condition(self._sync_mutex)  # notified when _syncing becomes False
        self._syncing = False  # a leader is gathering or syncing; callers that need a sync wait for it
        self._waiters: list[_Waiter] = []
        self._pending = 0  # callers inside a synced call that have not appended yet (durability "full")
        self._gatherer: threading.Lock | None = None  # released when _pending drops to 0
        self._sync_seconds = 0.001  # how long the last fdatasync took: the most a sync waits for appends
        self._gather = _Gather(self)
        self._synced = 0  # the log position up to which the log is known to be on disk

    def _commit(self, end: int) -> None:
        """With durability "full", return once the log is on disk up to ``end``.

        Group commit. The first caller to find no sync running becomes the *leader*; callers
        arriving while a sync runs queue a private lock in ``_waiters`` and block on it (no
        shared lock to take again when they wake). Before it syncs, the leader waits until the
        callers already inside a synced call (``_pending``: between entering the call and
        appending its record) have appended, for at most as long as the last sync took, so their
        records share this sync instead of paying for the next one. It then writes everything
        appended so far (:meth:`_flush`, one write for all the records waiting) and syncs it,
        with ``_sync_mutex`` released (appends go on meanwhile), and wakes every
        waiter the sync covered (:meth:`_release_covered`). If some were not covered, one of
        them is woken to try again: whichever thread reaches ``_commit`` first leads the next
        sync, often a caller that is already running, so no thread wake-up sits between syncs.
        """
        if not self._full:
            return
        mutex = self._sync_mutex
        while True:
            with mutex:
                if self._synced >= end:
                    return
                if not self._syncing:
                    self._syncing = True
                    break
                waiter = _Waiter(end)
                self._waiters.append(waiter)
            try:
                waiter.gate.acquire()  # released once a sync covered us, it failed, or to try again
            except BaseException:  # interrupted (KeyboardInterrupt): leave without stranding others
                self._abandon(waiter)
                raise
            if waiter.outcome == _COVERED:
                return
            if waiter.outcome == _FAILED:
                raise StorageError(f"{self!r} could not make the record durable") from self._failed
        self._lead()

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter interrupted while blocked leaves the queue of waiters; if a leader had
        already handed it the next sync (``_RETRY``), another waiter gets that turn, so that the
        records of those still waiting are synced."""
        with self._sync_mutex:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.outcome == _RETRY and not self._syncing and self._waiters:
                successor = self._waiters.pop(0)
                successor.outcome = _RETRY
                successor.gate.release()

    def _lead(self) -> None:
        """Run one sync as the leader (``_syncing`` is set and this thread owns it). If the
        leader is interrupted (KeyboardInterrupt, MemoryError) rather than the sync failing, it
        gives up leading before it re-raises: the next caller or a waiter leads instead, and
        the records it had not seen synced are synced again by that sync."""
        mutex = self._sync_mutex
        mutex.acquire()
        try:
            if self._pending and self._failed is None:
                gate = threading.Lock()
                gate.acquire()
                self._gatherer = gate
                mutex.release()
                try:
                    gate.acquire(timeout=self._sync_seconds)
                finally:
                    mutex.acquire()
                    self._gatherer = None
            error: StorageError | None = None
            upto = 0
            if self._failed is not None or self._fd < 0:
                error = StorageError(f"{self!r} could not make the record durable")
            else:
                mutex.release()
                try:
                    self._flush()  # the fd cannot change while this sync runs (see _wait_idle)
                    fd, upto = self._fd, self._flushed
                    started = time.monotonic()
                    os.fdatasync(fd)
                    self._sync_seconds = min(time.monotonic() - started, _MAX_GATHER)
                    if os.fstat(fd).st_nlink == 0:  # synced into a file no name reaches any more
                        raise FileNotFoundError(errno.ENOENT, "the log's segment was deleted while open")
                except StorageError as exc:
                    error = exc
                except OSError as exc:
                    self._failed = exc
                    error = StorageError(f"{self.path}: fdatasync failed: {exc}; the storage must be reopened")
                finally:
                    mutex.acquire()
            if error is not None:
                for waiter in self._waiters:
                    waiter.outcome = _FAILED
                    waiter.gate.release()
                self._waiters = []
                self._syncing = False
                self._sync_idle.notify_all()
                raise error from self._failed
            self._synced = max(self._synced, upto)
            self._syncing = False
            self._release_covered()
        except BaseException:
            if self._syncing:  # interrupted, not failed: hand the lead on (the mutex is held here)
                self._syncing = False
                self._release_covered()
            raise
        finally:
            mutex.release()

    def _release_covered(self) -> None:
        """With ``_sync_mutex`` held and no sync running: wake the waiters that ``_synced``
        covers, and one of the others (if any) to lead the next sync or wait again."""
        waiters = self._waiters
        if waiters:
            synced = self._synced
            rest: list[_Waiter] = []
            for waiter in waiters:
                if waiter.end <= synced:
                    waiter.outcome = _COVERED
                    waiter.gate.release()
                else:
                    rest.append(waiter)
            if rest:
                retry = rest.pop(0)
                retry.outcome = _RETRY
                retry.gate.release()
            self._waiters = rest
        self._sync_idle.notify_all()

    def _wait_idle(self) -> None:
        """With ``_sync_mutex`` held: wait until no leader is gathering or syncing."""
        while self._syncing:
            self._sync_idle.wait()
