"""Waiting rooms: how blocked threads and coroutines sleep and are woken, without polling.

Every blocked call (a get finding nothing eligible, a put finding the queue full, a join) puts
a *waiter* in its queue's :class:`Channel` and sleeps on it. A thread sleeps on a lock of its
own; a coroutine awaits a future of its own loop, resolved thread-safely. Nothing here binds
to an event loop, so one queue serves many threads and many loops at once.

The race "storage was empty, a producer put and woke nobody, the consumer went to sleep" is
closed with an *eventcount*: a caller reads ``epoch`` before it asks the storage, and only
sleeps if ``epoch`` is unchanged once it holds the mutex; every change bumps ``epoch`` after
its storage call returned. The mutex is only ever held for a few list operations: never
across storage calls, serialization, logging or user code.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .storage.base import Storage

NEVER = float("inf")


class Waiter(Protocol):
    """One sleeping caller. ``notified`` and membership change only under the channel mutex."""

    owner: object
    notified: bool
    relay: bool  # woken for a change another process made: pass the wake-up on after acting on it
    wake_at: float
    need: int

    def wake(self) -> bool:
        """Make the sleeper run; False if it never can (its event loop is closed)."""
        ...


class ThreadWaiter:
    """A thread sleeping on a lock that only ``wake`` releases."""

    __slots__ = ("_gate", "need", "notified", "owner", "relay", "wake_at")

    def __init__(self, owner: object, need: int = 1) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()
        self.owner = owner
        self.notified = False
        self.relay = False
        self.wake_at = NEVER
        self.need = need

    def wait(self, timeout: float | None) -> bool:
        """Sleep until woken or ``timeout`` seconds passed; True if woken. A timeout longer
        than a lock can wait (``threading.TIMEOUT_MAX``, about 292 years) wakes early, which
        callers take as any other timer: they look again and sleep on."""
        if timeout is None:
            return self._gate.acquire()
        return self._gate.acquire(True, min(max(timeout, 0.0), threading.TIMEOUT_MAX))

    def wake(self) -> bool:
        """Release the sleeping thread."""
        self._gate.release()
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncWaiter:
    """A coroutine awaiting a future of its running loop; woken from any thread."""

    __slots__ = ("future", "loop", "need", "notified", "owner", "relay", "wake_at")

    def __init__(self, owner: object, need: int = 1) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.owner = owner
        self.notified = False
        self.relay = False
        self.wake_at = NEVER
        self.need = need

    def wake(self) -> bool:
        """Resolve the future on its loop: directly on that loop's thread, else thread-safely."""
        loop = self.loop
        if asyncio._get_running_loop() is loop:
            _resolve(self.future)
            return True
        try:
            loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # the loop is closed: this waiter will never run
            return False
        return True


class Channel:
    """The waiting room of one queue name in one storage, shared by every Queue object on it.

    ``getters`` wait for an eligible message, ``putters`` for room under maxsize, ``joiners``
    for the queue to be settled. A getter also sleeps no later than its ``wake_at``: the next
    time at which time alone changes the queue (a delay or a lease ending, here or, for a
    dead-letter queue, in one of its ``feeders``).

    ``kick`` (from :meth:`Storage.watch`, for storages that other processes change) is called
    whenever a caller starts waiting, so that the storage looks out for other processes'
    changes; it answers with :meth:`external`.
    """

    __slots__ = ("__weakref__", "epoch", "feeders", "getters", "joiners", "kick", "mutex", "putters", "timer_at")

    def __init__(self, kick: Callable[[], None] | None = None) -> None:
        self.kick = kick
        self.mutex = threading.Lock()
        self.epoch = 0
        self.getters: deque[Waiter] = deque()
        self.putters: deque[Waiter] = deque()
        self.joiners: deque[Waiter] = deque()
        self.timer_at = NEVER
        # Queues (opened in this process) that dead-letter into this one after max_attempts: a
        # lease of theirs ending unsettled can move a message here, with no call saying so.
        self.feeders: dict[str, int] = {}  # name -> open Queue objects of it (see Queue._feed)

    def enlist(self, waiters: deque[Waiter], waiter: Waiter) -> None:
        """Add ``waiter``; the caller holds the mutex and checked ``epoch``."""
        waiters.append(waiter)
        if waiters is self.getters and waiter.wake_at < self.timer_at:
            self.timer_at = waiter.wake_at
        if self.kick is not None:
            try:
                self.kick()
            except BaseException:  # no watcher could start: the caller fails, leaving no waiter behind
                waiters.remove(waiter)
                if waiters is self.getters:
                    self._retime()
                raise

    def withdraw(self, waiters: deque[Waiter], waiter: Waiter, pass_on: bool) -> bool:
        """Take back a waiter that stops waiting; return whether it had been notified. If it
        had and ``pass_on`` (it leaves without acting on the wake-up: cancelled, failed), wake
        another in its place (to relay it too, if it was a relay). A getter that leaves this way
        while it slept on the channel's earliest timer wakes another too, to take the timer over:
        otherwise nobody would wake when that delay or lease ends."""
        timer = False
        with self.mutex:
            notified = waiter.notified
            if not notified:
                waiters.remove(waiter)
                if waiters is self.getters and waiter.wake_at <= self.timer_at:
                    self._retime()
                    timer = waiter.wake_at < self.timer_at
        if pass_on and (notified or timer):
            self.notify(waiters, 1, waiter.relay)
        return notified

    def pass_room(self, need: int, relay: bool = False) -> None:
        """A woken putter needing ``need`` places found too little room: wake the first putter
        that needs fewer, which may fit (as a relay, if it was one: another process made the
        room, and whoever fits must pass the wake-up on). Needs strictly decrease along a chain
        of passes, so passing always ends."""
        chosen: list[Waiter] = []
        with self.mutex:
            for waiter in self.putters:
                if waiter.need < need:
                    self.putters.remove(waiter)
                    waiter.notified = True
                    waiter.relay = relay
                    chosen.append(waiter)
                    break
        if chosen:
            self._wake(self.putters, chosen, relay)

    def _retime(self) -> None:
        self.timer_at = min((w.wake_at for w in self.getters), default=NEVER)

    def _pop(self, waiters: deque[Waiter], k: int, chosen: list[Waiter]) -> None:
        while waiters and k > 0:
            waiter = waiters.popleft()
            waiter.notified = True
            chosen.append(waiter)
            k -= 1
        if waiters is self.getters and chosen:
            self._retime()

    def notify(self, waiters: deque[Waiter], k: int, relay: bool = False) -> None:
        """Bump the epoch and wake up to ``k`` of ``waiters``; with ``relay``, each is to pass
        its wake-up on once it acted on it (see :meth:`external`)."""
        chosen: list[Waiter] = []
        with self.mutex:
            self.epoch += 1
            if waiters:
                self._pop(waiters, k, chosen)
                for waiter in chosen:
                    waiter.relay = relay
        self._wake(waiters, chosen, relay)

    def external(self) -> None:
        """Another process changed the storage, in ways nobody here was told of: bump the
        epoch (a caller between its check and its sleep checks again) and wake every joiner,
        the first getter and the first putter. Those two relay: one that got a message (or
        made its put) wakes the next in line, which does the same, so a burst from elsewhere
        is taken by as many waiters as it has messages, and the chain stops at the first one
        that finds nothing, instead of every waiter looking at every change."""
        relays: list[tuple[deque[Waiter], list[Waiter]]] = []
        joiners: list[Waiter] = []
        with self.mutex:
            self.epoch += 1
            for waiters in (self.getters, self.putters):
                if waiters:
                    first: list[Waiter] = []
                    self._pop(waiters, 1, first)
                    first[0].relay = True
                    relays.append((waiters, first))
            if self.joiners:
                self._pop(self.joiners, len(self.joiners), joiners)
        for waiters, first in relays:
            self._wake(waiters, first, True)
        for waiter in joiners:
            waiter.wake()

    def changed(self, ready: int, wake_at: float = NEVER, room: int = 0, settled: bool = False) -> None:
        """Report a change: ``ready`` messages became eligible, the queue's next timed change
        may now be at ``wake_at``, ``room`` places were freed under maxsize, and (``settled``)
        messages were settled, which joiners check for.

        Wakes one getter per ready message, plus one to take over the timer if ``wake_at`` is
        earlier than every sleeping getter's, up to ``room`` putters, every joiner if messages
        were settled, else the joiners that would sleep past ``wake_at``.
        """
        mutex = self.mutex  # acquire/release: half the cost of ``with``, and this runs 3x a message
        mutex.acquire()
        try:
            self.epoch += 1
            if not (self.getters or self.putters or self.joiners):
                return  # the common case: nobody waits
            getters: list[Waiter] = []
            putters: list[Waiter] = []
            joiners: list[Waiter] = []
            if self.getters:
                if wake_at < self.timer_at:
                    ready += 1
                if ready:
                    self._pop(self.getters, ready, getters)
            if room and self.putters:
                self._pop(self.putters, room, putters)
            if self.joiners:
                if settled:
                    self._pop(self.joiners, len(self.joiners), joiners)
                elif wake_at < NEVER:
                    self._wake_late_joiners(wake_at, joiners)
        finally:
            mutex.release()
        if getters:
            self._wake(self.getters, getters)
        if putters:
            self._wake(self.putters, putters)
        for waiter in joiners:
            waiter.wake()

    def _wake_late_joiners(self, wake_at: float, chosen: list[Waiter]) -> None:
        """Take the joiners that would sleep past ``wake_at`` (with the mutex held): something
        may settle then without any call saying so (a lease ending into the dead-letter queue),
        so they must look again and sleep until the new time."""
        late = [waiter for waiter in self.joiners if waiter.wake_at > wake_at]
        for waiter in late:
            self.joiners.remove(waiter)
            waiter.notified = True
        chosen.extend(late)

    def _wake(self, waiters: deque[Waiter], chosen: list[Waiter], relay: bool = False) -> None:
        failed = sum(1 for waiter in chosen if not waiter.wake())
        if failed:
            self.notify(waiters, failed, relay)

    def close_owner(self, owner: object) -> None:
        """Wake every waiter belonging to ``owner`` (a closing queue); they raise QueueClosed."""
        chosen: list[Waiter] = []
        with self.mutex:
            self.epoch += 1
            for waiters in (self.getters, self.putters, self.joiners):
                keep = [w for w in waiters if w.owner is not owner]
                for waiter in waiters:
                    if waiter.owner is owner:
                        waiter.notified = True
                        chosen.append(waiter)
                waiters.clear()
                waiters.extend(keep)
            self._retime()
        for waiter in chosen:
            waiter.wake()


# By storage, then by queue name; a channel lives as long as a Queue object refers to it, so a
# process that opens a queue per tenant does not keep one for every name it ever used.
_channels: weakref.WeakKeyDictionary[Storage, weakref.WeakValueDictionary[str, Channel]] = weakref.WeakKeyDictionary()
_kicks: weakref.WeakKeyDictionary[Storage, Callable[[], None] | None] = weakref.WeakKeyDictionary()
_channels_lock = threading.Lock()


def _reset_channels_in_child() -> None:
    """In a forked child: no thread of the parent runs here, so no waiter is asleep and no
    mutex is really held; make every channel fresh (a mutex held at the fork stays held)."""
    global _channels_lock
    _channels_lock = threading.Lock()
    for by_name in list(_channels.values()):
        for channel in by_name.values():
            channel.mutex = threading.Lock()
            channel.getters.clear()
            channel.putters.clear()
            channel.joiners.clear()
            channel.timer_at = NEVER


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_channels_in_child)


def channel_for(storage: Storage, name: str) -> Channel:
    """The channel of queue ``name`` in ``storage``; every Queue object on it shares it."""
    with _channels_lock:
        by_name = _channels.get(storage)
        if by_name is None:
            by_name = _channels[storage] = weakref.WeakValueDictionary()
            _kicks[storage] = storage.watch(partial(_external, by_name), partial(_anyone_waits, by_name))
        channel = by_name.get(name)
        if channel is None:
            channel = by_name[name] = Channel(_kicks.get(storage))
        return channel


def _external(by_name: Mapping[str, Channel]) -> None:
    """Another process changed the storage: every channel of it looks again (see ``external``)."""
    for channel in list(by_name.values()):
        channel.external()


def _anyone_waits(by_name: Mapping[str, Channel]) -> bool:
    """Whether a caller of this process waits on a queue of the storage (read without locks:
    a caller that starts waiting calls the storage's kick after it enlisted)."""
    return any(channel.getters or channel.putters or channel.joiners for channel in list(by_name.values()))
