"""``MemoryStorage``: every queue in this process's memory, bodies kept by reference."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import ClassVar, final

from .._errors import StorageError
from ._index import Index
from .base import Envelope, Handle, Leased, Outcome, QueueSpec, QueueStats, Storage

__all__ = ["MemoryStorage"]


@final
class MemoryStorage(Storage):
    """Queues held in memory: the fastest storage, and the default.

    Nothing survives the process. Bodies are kept as the objects you put (no serializer by
    default), so a consumer receives the very object a producer put. One lock guards the
    index; a call holds it for microseconds per message it handles, so async methods call in
    directly (a batch of many thousands, from another thread, holds a coroutine up that long:
    docs/concurrency.md).
    """

    blocking_io: ClassVar[bool] = False
    requires_bytes: ClassVar[bool] = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index = Index()
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemoryStorage queues={len(self._index.queues)}{' closed' if self._closed else ''}>"

    def _check(self) -> None:
        if self._closed:
            raise StorageError(f"{self!r} is closed")

    def open_queue(self, spec: QueueSpec) -> None:
        with self._lock:
            self._check()
            self._index.open_queue(spec)

    def put(self, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int = 0) -> list[int] | None:
        lock = self._lock  # acquire/release: half the cost of ``with`` on this per-message path
        lock.acquire()
        try:
            if self._closed:
                self._check()
            return self._index.put(queue, envelopes, now, maxsize)
        finally:
            lock.release()

    def count_new(self, queue: str, envelopes: Sequence[Envelope], now: float) -> int:
        with self._lock:
            self._check()
            return self._index.count_new(queue, envelopes, now)

    def lease(self, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        lock = self._lock  # acquire/release: half the cost of ``with`` on this per-message path
        lock.acquire()
        try:
            if self._closed:
                self._check()
            return self._index.lease(queue, n, now, lease)
        finally:
            lock.release()

    def ack(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        lock = self._lock  # acquire/release: half the cost of ``with`` on this per-message path
        lock.acquire()
        try:
            if self._closed:
                self._check()
            return self._index.ack(queue, handles, now)
        finally:
            lock.release()

    def nack(self, queue: str, handles: Sequence[Handle], now: float, delay: float, error: str | None) -> list[Outcome]:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.nack(queue, handles, now, delay, error)

    def release(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.release(queue, handles, now)

    def reject(self, queue: str, handles: Sequence[Handle], now: float, reason: str | None) -> list[Outcome]:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.reject(queue, handles, now, reason)

    def extend(self, queue: str, handles: Sequence[Handle], now: float, seconds: float) -> list[Outcome]:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.extend(queue, handles, now, seconds)

    def redrive(self, queue: str, now: float, max_messages: int | None) -> int:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.redrive(queue, now, max_messages)

    def purge(self, queue: str, now: float) -> int:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.purge(queue, now)

    def peek(self, queue: str, n: int, now: float) -> list[Leased]:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.peek(queue, n, now)

    def counts(self, queue: str, now: float) -> tuple[int, int, int]:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.counts(queue, now)

    def stats(self, queue: str, now: float) -> QueueStats:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.stats(queue, now)

    def next_wakeup(self, queue: str, now: float) -> float | None:
        with self._lock:
            if self._closed:
                self._check()
            return self._index.next_wakeup(queue, now)

    def close(self) -> None:
        with self._lock:
            self._closed = True
