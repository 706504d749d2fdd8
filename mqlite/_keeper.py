"""The lease keeper: one daemon thread that renews the leases of ``auto_extend`` consumers."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._consumer import Consumer

log = logging.getLogger("mqlite")


class LeaseKeeper:
    """Renews each watched consumer's held leases every ``lease / 3`` seconds.

    One thread serves every consumer of the process; it sleeps on a condition until the next
    renewal is due, so it costs nothing while no consumer uses ``auto_extend``. A consumer
    stops being watched when it holds nothing, closes, or is garbage-collected.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._due: list[tuple[float, int, weakref.ref[Consumer[Any]]]] = []
        self._watched: weakref.WeakSet[Consumer[Any]] = weakref.WeakSet()
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, consumer: Consumer[Any]) -> None:
        """Start renewing ``consumer``'s leases (no-op if already watched)."""
        with self._condition:
            if consumer in self._watched:
                return
            self._watched.add(consumer)
            due = time.monotonic() + consumer.lease / 3
            heapq.heappush(self._due, (due, next(self._sequence), weakref.ref(consumer)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mqlite-lease-keeper", daemon=True)
                self._thread.start()
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._due or self._due[0][0] > time.monotonic():
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._condition.wait(timeout)
                _, _, ref = heapq.heappop(self._due)
            consumer = ref()
            if consumer is None:
                continue
            try:
                again = consumer._renew()
            except Exception:
                log.exception("mqlite: renewing the leases of %r failed", consumer)
                again = True
            with self._condition:
                # Held again since _renew looked (a get that called watch() meanwhile found the
                # consumer still watched and scheduled nothing): keep renewing.
                if again or (consumer._held and not consumer._closed):
                    due = time.monotonic() + consumer.lease / 3
                    heapq.heappush(self._due, (due, next(self._sequence), ref))
                else:
                    self._watched.discard(consumer)


_keeper: LeaseKeeper | None = None
_keeper_lock = threading.Lock()


def _forget_keeper() -> None:
    """In a forked child: the parent's keeper thread does not exist here; start a new one."""
    global _keeper, _keeper_lock
    _keeper = None
    _keeper_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_keeper)


def keeper() -> LeaseKeeper:
    """The process's lease keeper, made on first use."""
    global _keeper
    with _keeper_lock:
        if _keeper is None:
            _keeper = LeaseKeeper()
        return _keeper
