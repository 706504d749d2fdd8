"""Closing a storage the queue owns only once no operation of the queue still needs it.

``Queue.close()`` releases what its consumers hold, then closes a storage it made itself (from a
URL). But a get or a settle racing with close may be between two storage calls: its lease has
landed and it has yet to find the queue closed and give the message back, or its ack is on its
way. Closed under it, the storage refuses the give-back, and on a persistent storage the
message stays in flight, an attempt counted, until its lease ends. So every step of the front
that touches such a storage runs as a counted *operation* (``with operations:``), from before
it checks whether the queue is closed until its last storage call (for a call whose coroutine
was cancelled, until its effect was accounted for: :meth:`Operations.hold`); the storage is
closed by ``close()`` once none is under way, or by the last one to finish. An operation that
would start after that raises :class:`QueueClosed`: close has released what it had to.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from types import TracebackType

from ._errors import QueueClosed
from .storage.base import Storage

NOTHING = contextlib.nullcontext()
"""What ``with queue._ops or NOTHING:`` enters when the queue does not count its operations."""

CLOSE_GRACE = 10.0
"""Seconds close() waits for operations under way before closing the storage all the same (an
operation of a coroutine whose event loop stopped may never finish)."""

_every: weakref.WeakSet[Operations] = weakref.WeakSet()


class Operations:
    """A count of the queue's operations under way on its own storage (``with operations:``)."""

    __slots__ = ("__weakref__", "_closed", "_closing", "_count", "_done", "_finished", "_name", "_storage")

    def __init__(self, storage: Storage, name: str) -> None:
        self._storage = storage
        self._name = name
        self._done = threading.Condition(threading.Lock())
        self._count = 0
        self._closing = False  # close() was called
        self._closed = False  # closing the storage was decided: no operation may start
        self._finished = False  # the storage's close() returned
        _every.add(self)

    def __enter__(self) -> None:
        with self._done:
            if self._closed:
                raise QueueClosed(f"queue {self._name!r} is closed")
            self._count += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def hold(self) -> bool:
        """Count one more operation for work that goes on after its caller left (the effect of
        a cancelled coroutine's call); False if the storage is closed already. Ended by
        :meth:`release`."""
        with self._done:
            if self._closed:
                return False
            self._count += 1
            return True

    def release(self) -> None:
        """End one operation; the last one after close() closes the storage."""
        with self._done:
            self._count -= 1
            if self._count:
                return
            self._done.notify_all()
            last = self._closing and not self._closed
            if last:
                self._closed = True
        if last:
            self._close()

    def close_storage(self, wait: bool) -> None:
        """Close the storage once no operation is under way. With ``wait``, wait for them (at
        most :data:`CLOSE_GRACE`), also when another close() got here first; without (close()
        called on an event loop, whose coroutines may be the ones under way), leave the closing
        to the last of them."""
        with self._done:
            self._closing = True
            if wait:
                self._done.wait_for(lambda: self._finished or not self._count, CLOSE_GRACE)
                if self._closed:  # another close() or the last operation is closing it
                    self._done.wait_for(lambda: self._finished, CLOSE_GRACE)
                    return
            elif self._closed or self._count:
                return
            self._closed = True
        self._close()

    def _close(self) -> None:
        try:
            self._storage.close()
        finally:
            with self._done:
                self._finished = True
                self._done.notify_all()

    def _forked(self) -> None:
        """In a child after fork: the threads whose operations were counted do not exist here."""
        self._done = threading.Condition(threading.Lock())
        self._count = 0


def _reset_in_child() -> None:
    for operations in list(_every):
        operations._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
