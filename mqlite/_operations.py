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

import asyncio
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

    __slots__ = (
        "__weakref__",
        "_closed",
        "_closing",
        "_count",
        "_done",
        "_finished",
        "_name",
        "_storage",
        "_watchers",
    )

    def __init__(self, storage: Storage, name: str) -> None:
        self._storage = storage
        self._name = name
        # Reentrant: release() may run from a finalizer (an abandoned coroutine inside an
        # operation, collected) on a thread that holds it already.
        self._done = threading.Condition(threading.RLock())
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
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
        called on an event loop, whose coroutines may be the ones under way, or on an I/O
        thread for ``aclose``, which waits with :meth:`finished`), leave the closing to the
        last of them."""
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

    async def finished(self) -> None:
        """Await the storage's close (``aclose``): without holding a thread, since the
        operations it waits for may need the I/O threads; after :data:`CLOSE_GRACE`, close it
        all the same (on an I/O thread of the caller's choosing: here, the loop's default)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._done:
            if self._finished:
                return
            self._watchers.append((loop, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), CLOSE_GRACE)
        except TimeoutError:
            with self._done:
                late = not self._closed
                if late:
                    self._closed = True
            if late:
                await loop.run_in_executor(None, self._close)

    def _close(self) -> None:
        try:
            self._storage.close()
        finally:
            with self._done:
                self._finished = True
                self._done.notify_all()
                watchers, self._watchers = self._watchers, []
            for loop, future in watchers:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody awaits
                    loop.call_soon_threadsafe(_resolve, future)

    def _forked(self) -> None:
        """In a child after fork: the threads whose operations were counted, or that were
        closing the storage, do not exist here."""
        self._done = threading.Condition(threading.RLock())
        self._count = 0
        self._watchers = []
        if self._closed:
            self._finished = True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reset_in_child() -> None:
    for operations in list(_every):
        operations._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
