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
import logging
import os
import threading
import weakref
from collections.abc import Callable
from types import TracebackType

from ._errors import QueueClosed
from .storage.base import Storage

log = logging.getLogger("mqlite")

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
        "_after_close",
        "_closed",
        "_closers",
        "_closing",
        "_count",
        "_done",
        "_error",
        "_finished",
        "_name",
        "_storage",
        "_watchers",
    )

    def __init__(self, storage: Storage, name: str, after_close: Callable[[], None] | None = None) -> None:
        self._storage = storage
        self._name = name
        self._after_close = after_close  # run once the storage closed (the queue lets its I/O threads go)
        # Reentrant: release() may run from a finalizer (an abandoned coroutine inside an
        # operation, collected) on a thread that holds it already.
        self._done = threading.Condition(threading.RLock())
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._count = 0
        self._closing = False  # close() was called
        self._closed = False  # closing the storage was decided: no operation may start
        self._finished = False  # the storage's close() returned
        self._closers = 0  # close() calls waiting to close the storage themselves
        self._error: BaseException | None = None  # what the storage's close raised, for a closer
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
        """End one operation. The last one after close() began closes the storage if no
        close() waits to do it, off the event loop if it runs on one; never raises."""
        with self._done:
            # never below zero: an operation begun before a fork may end in the child after
            # the child's count was reset
            self._count = max(self._count - 1, 0)
            if self._count:
                return
            self._done.notify_all()
            last = self._closing and not self._closed and not self._closers
            if last:
                self._closed = True
        if last:
            if asyncio._get_running_loop() is not None:  # a coroutine's last step: not on its loop
                threading.Thread(target=self._close, name="mqlite-close", daemon=True).start()
            else:
                self._close()

    def close_storage(self, wait: bool) -> None:
        """Close the storage once no operation is under way. With ``wait``, wait for them (at
        most :data:`CLOSE_GRACE`) and close it here, also when another close() got here first,
        and raise what the storage's close raised; without (close() called on an event loop,
        whose coroutines may be the ones under way, or on an I/O thread for ``aclose``, which
        waits with :meth:`finished`), leave the closing to the last of them."""
        with self._done:
            self._closing = True
            if not wait:
                if self._closed or self._count:
                    return
                self._closed = True
            else:
                self._closers += 1
                try:
                    self._done.wait_for(lambda: self._closed or not self._count, CLOSE_GRACE)
                finally:
                    self._closers -= 1
                if self._closed:  # another closer is closing it: return once it did
                    self._done.wait_for(lambda: self._finished, CLOSE_GRACE)
                    self._raise_error()
                    return
                self._closed = True
        self._close()
        if wait:
            with self._done:
                self._raise_error()

    async def finished(self) -> None:
        """Await the storage's close (``aclose``): without holding a thread, since the
        operations it waits for may need the I/O threads; after :data:`CLOSE_GRACE`, close it
        all the same (on the loop's default executor). Raises what the storage's close raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._done:
            if not self._finished:
                self._watchers.append((loop, future))
        if not future.done() and not self._finished:
            try:
                await asyncio.wait_for(asyncio.shield(future), CLOSE_GRACE)
            except TimeoutError:  # the grace is over: close it now (or wait for whoever does)
                await loop.run_in_executor(None, self._close_now)
                return
            except asyncio.CancelledError:  # nobody awaits any more: a thread keeps the grace
                threading.Thread(target=self._close_in_background, name="mqlite-close", daemon=True).start()
                raise
        with self._done:
            self._raise_error()

    def _close_now(self) -> None:
        """Close the storage now, operations under way or not, or wait for whoever closes it."""
        with self._done:
            if self._closed:
                self._done.wait_for(lambda: self._finished, CLOSE_GRACE)
                self._raise_error()
                return
            self._closed = True
        self._close()
        with self._done:
            self._raise_error()

    def _close_in_background(self) -> None:
        try:
            self.close_storage(wait=True)
        except Exception as exc:  # nobody to raise it to
            log.warning("mqlite: closing the storage of queue %r failed: %s", self._name, exc)

    def _raise_error(self) -> None:
        """Raise what the storage's close raised, once, to one of the closers (lock held)."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _close(self) -> None:
        """Close the storage; an error is kept for the closers (:meth:`close_storage`,
        :meth:`finished`), never raised into an operation that happened to end last."""
        error: BaseException | None = None
        try:
            self._storage.close()
        except Exception as exc:
            error = exc
            log.warning("mqlite: closing the storage of queue %r failed: %s", self._name, exc)
        finally:
            if self._after_close is not None:
                self._after_close()
            with self._done:
                self._error = error
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
        self._closers = 0
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
