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

    There is one keeper per storage, each with its own thread, so a storage that stalls (an
    SQLite file another process keeps locked) delays only the renewals of its own consumers,
    never those of the process's other storages. The thread sleeps on a condition until the
    next renewal is due and ends once nothing is due, so it costs nothing while no consumer of
    the storage uses ``auto_extend``. A consumer stops being watched when it holds nothing,
    closes, or is garbage-collected.
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

    def forget(self, consumers: list[Consumer[Any]]) -> None:
        """Stop watching ``consumers`` (closed): drop their renewals and wake the thread, which
        ends at once if nothing else is due, instead of sleeping until their next renewal."""
        with self._condition:
            gone = [consumer for consumer in consumers if consumer in self._watched]
            if not gone:
                return
            for consumer in gone:
                self._watched.discard(consumer)
            self._due = [entry for entry in self._due if entry[2]() not in gone]
            heapq.heapify(self._due)
            self._condition.notify()

    def _run(self) -> None:
        try:
            while self._turn():
                pass
        finally:
            with self._condition:  # also after an unexpected error: the next watch() starts anew
                if self._thread is threading.current_thread():
                    self._thread = None

    def _turn(self) -> bool:
        """Wait for the next renewal due and run it; False once nothing is due (the thread ends)."""
        with self._condition:
            while True:
                if not self._due:
                    self._thread = None
                    return False
                wait = self._due[0][0] - time.monotonic()
                if wait <= 0.0:
                    break
                self._condition.wait(min(wait, threading.TIMEOUT_MAX))  # a lease may be centuries long
            _, _, ref = heapq.heappop(self._due)
        consumer = ref()
        if consumer is None:
            return True
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
        return True


_keepers: weakref.WeakKeyDictionary[object, LeaseKeeper] = weakref.WeakKeyDictionary()
_keepers_lock = threading.Lock()


def _forget_keepers() -> None:
    """In a forked child: the parent's keeper threads do not exist here; start new ones."""
    global _keepers, _keepers_lock
    _keepers = weakref.WeakKeyDictionary()
    _keepers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_keepers)


def forget(storage: object, consumers: list[Consumer[Any]]) -> None:
    """Tell ``storage``'s lease keeper, if it has one, that ``consumers`` closed."""
    with _keepers_lock:
        found = _keepers.get(storage)
    if found is not None:
        found.forget(consumers)


def keeper(storage: object) -> LeaseKeeper:
    """The lease keeper of ``storage`` in this process, made on first use."""
    with _keepers_lock:
        found = _keepers.get(storage)
        if found is None:
            found = _keepers[storage] = LeaseKeeper()
        return found
