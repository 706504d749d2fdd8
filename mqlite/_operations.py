"""Closing a storage the queue owns only once no operation of the queue still needs it.

``Queue.close()`` releases what its consumers hold, then closes a storage it made itself (from a
URL). But a get or a settle racing with close may be between two storage calls: its lease has
landed and it has yet to find the queue closed and give the message back, or its ack is on its
way. Closed under it, the storage refuses the give-back, and on a persistent storage the
message stays in flight, an attempt counted, until its lease ends. So such operations are
counted, and the storage is closed by close() once none is under way, or by the last one to
finish.
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

from .storage.base import Storage

NOTHING = contextlib.nullcontext()
"""What ``with queue._ops or NOTHING:`` enters when the queue does not count its operations."""

CLOSE_GRACE = 10.0
"""Seconds close() waits for operations under way before closing the storage all the same (an
operation of a coroutine whose event loop stopped may never finish)."""


class Operations:
    """A count of the queue's operations under way on its own storage (``with operations:``)."""

    __slots__ = ("_closed", "_closing", "_count", "_done", "_storage")

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._done = threading.Condition(threading.Lock())
        self._count = 0
        self._closing = False
        self._closed = False

    def __enter__(self) -> None:
        with self._done:
            self._count += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        with self._done:
            self._count -= 1
            if self._count:
                return
            self._done.notify_all()
            last = self._closing and not self._closed
            if last:
                self._closed = True
        if last:
            self._storage.close()

    def close_storage(self, wait: bool) -> None:
        """Close the storage once no operation is under way. With ``wait``, wait for them (at
        most :data:`CLOSE_GRACE`); without (close() called on an event loop, whose coroutines
        may be the ones under way), leave the closing to the last of them."""
        with self._done:
            self._closing = True
            if self._count and wait:
                self._done.wait_for(lambda: not self._count, CLOSE_GRACE)
            if self._closed or (self._count and not wait):
                return
            self._closed = True
        self._storage.close()
