"""Test doubles and helpers for the concurrency tests.

- :class:`BlockingMemoryStorage`: a :class:`~mqlite.Storage` delegating every call to a
  :class:`~mqlite.MemoryStorage`, but declaring ``blocking_io = True`` so that the front runs
  its calls off the event loop, as it does for SQLite or file storages. Optional hooks run
  before a call is delegated (e.g. to block inside ``lease`` until the test says so).
- :class:`FailingStorage`: the same, raising :class:`~mqlite.StorageError` on chosen calls
  (the idea of CPython's ``FailingQueueTest``).
- :class:`LoopThread`: an event loop running in a thread of its own.
- :func:`start_thread` / :func:`wait_until` / :func:`waiting`: small synchronization helpers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

import mqlite
from mqlite.storage.base import Envelope, Handle, Leased, Outcome, QueueSpec, QueueStats, Storage

T = TypeVar("T")

TIMEOUT = 10.0
"""Generous bound for anything that should happen promptly; never an assertion of speed."""


class BlockingMemoryStorage(Storage):
    """A ``MemoryStorage`` that says its calls may block on I/O (``blocking_io = True``).

    ``hooks`` maps a method name to a callable run (with the call's arguments) before the call
    is delegated: a hook may block on an Event, record the call, or raise. ``calls`` counts the
    calls per method.
    """

    blocking_io: ClassVar[bool] = True
    requires_bytes: ClassVar[bool] = False

    def __init__(self, inner: mqlite.MemoryStorage | None = None) -> None:
        self.inner = inner if inner is not None else mqlite.MemoryStorage()
        self.hooks: dict[str, Callable[..., None]] = {}
        self.calls: dict[str, int] = {}
        self._calls_lock = threading.Lock()
        self.closed = False

    def _before(self, method: str, *args: Any) -> None:
        with self._calls_lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            count = self.calls[method]
        hook = self.hooks.get(method)
        if hook is not None:
            hook(count, *args)

    def open_queue(self, spec: QueueSpec) -> None:
        self._before("open_queue", spec)
        self.inner.open_queue(spec)

    def put(self, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int = 0) -> list[int] | None:
        self._before("put", queue, envelopes, now, maxsize)
        return self.inner.put(queue, envelopes, now, maxsize)

    def lease(self, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        self._before("lease", queue, n, now, lease)
        return self.inner.lease(queue, n, now, lease)

    def ack(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        self._before("ack", queue, handles, now)
        return self.inner.ack(queue, handles, now)

    def nack(self, queue: str, handles: Sequence[Handle], now: float, delay: float, error: str | None) -> list[Outcome]:
        self._before("nack", queue, handles, now, delay, error)
        return self.inner.nack(queue, handles, now, delay, error)

    def release(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        self._before("release", queue, handles, now)
        return self.inner.release(queue, handles, now)

    def reject(self, queue: str, handles: Sequence[Handle], now: float, reason: str | None) -> list[Outcome]:
        self._before("reject", queue, handles, now, reason)
        return self.inner.reject(queue, handles, now, reason)

    def extend(self, queue: str, handles: Sequence[Handle], now: float, seconds: float) -> list[Outcome]:
        self._before("extend", queue, handles, now, seconds)
        return self.inner.extend(queue, handles, now, seconds)

    def redrive(self, queue: str, now: float, max_messages: int | None) -> int:
        self._before("redrive", queue, now, max_messages)
        return self.inner.redrive(queue, now, max_messages)

    def purge(self, queue: str, now: float) -> int:
        self._before("purge", queue, now)
        return self.inner.purge(queue, now)

    def peek(self, queue: str, n: int, now: float) -> list[Leased]:
        self._before("peek", queue, n, now)
        return self.inner.peek(queue, n, now)

    def counts(self, queue: str, now: float) -> tuple[int, int, int]:
        self._before("counts", queue, now)
        return self.inner.counts(queue, now)

    def stats(self, queue: str, now: float) -> QueueStats:
        self._before("stats", queue, now)
        return self.inner.stats(queue, now)

    def next_wakeup(self, queue: str, now: float) -> float | None:
        self._before("next_wakeup", queue, now)
        return self.inner.next_wakeup(queue, now)

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class FailingStorage(BlockingMemoryStorage):
    """Raises ``StorageError`` on the calls listed in ``fail``: method name -> set of call
    numbers (1-based, per method) that fail. The failing call changes nothing.

    ``blocking_io`` is configurable per instance so both the inline and the off-loop paths
    of the front can be exercised.
    """

    def __init__(self, fail: dict[str, set[int]] | None = None, *, blocking_io: bool = False) -> None:
        super().__init__()
        self.fail: dict[str, set[int]] = dict(fail or {})
        self.blocking_io = blocking_io  # type: ignore[misc]
        self.failures = 0

    def _before(self, method: str, *args: Any) -> None:
        with self._calls_lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            count = self.calls[method]
            failing = count in self.fail.get(method, ())
            if failing:
                self.failures += 1
        if failing:
            raise mqlite.StorageError(f"injected failure in {method} call #{count}")


class LoopThread:
    """An event loop running forever in its own thread, until :meth:`close`."""

    def __init__(self, name: str = "loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        assert self._ready.wait(TIMEOUT)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` as a task on this loop; return a thread-safe future of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        """Run ``coro`` on this loop and wait (at most ``timeout``) for its result."""
        return self.submit(coro).result(timeout)

    def call(self, function: Callable[[], T], timeout: float = TIMEOUT) -> T:
        """Run a plain callable on the loop's thread and return its result."""

        async def wrapper() -> T:
            return function()

        return self.run(wrapper(), timeout)

    def stop(self) -> None:
        """Stop the loop and join its thread, leaving the loop unclosed."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "event loop thread did not stop"

    def close(self) -> None:
        """Cancel what still runs, stop the loop, join its thread and close the loop."""
        if self.loop.is_closed():
            return
        if self.loop.is_running():

            async def cancel_all() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                self.run(cancel_all())
            finally:
                self.stop()
        self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Worker(threading.Thread):
    """A daemon thread running ``target(*args)``, keeping its result or exception."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._args = args
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_fn(*self._args)
        except BaseException as error:
            self.error = error

    def finish(self, timeout: float = TIMEOUT) -> Any:
        """Join (at most ``timeout``), assert the thread ended, re-raise its error, return its result."""
        self.join(timeout)
        assert not self.is_alive(), f"thread {self.name} did not finish within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def async_test(function: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test in a fresh event loop (``asyncio.run``), bounded by ``TIMEOUT``
    so a lost wake-up fails the test instead of hanging the suite."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(function(*args, **kwargs), 2 * TIMEOUT)

        asyncio.run(bounded())

    return wrapper


def start_thread(target: Callable[..., Any], *args: Any, name: str | None = None) -> Worker:
    """Start a :class:`Worker` thread and return it."""
    worker = Worker(target, *args, name=name)
    worker.start()
    return worker


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds, checking every millisecond; fail after ``timeout``.

    Used to know that another thread reached a blocking call (it cannot signal once blocked).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


async def async_wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Async :func:`wait_until`: yields to the loop between checks."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def waiting(queue: mqlite.Queue[Any], kind: str = "getters") -> int:
    """How many callers are blocked in ``queue``'s waiting room: ``getters``, ``putters`` or
    ``joiners`` (white box: the only way to know a thread is really asleep in ``get``)."""
    channel = queue._channel
    with channel.mutex:
        return len(getattr(channel, kind))
