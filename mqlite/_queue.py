"""``Queue``: the front of one named queue in one storage, for threads and coroutines alike."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, cast, final

from typing_extensions import TypeVar

from . import _validate
from ._consumer import YIELD_EVERY, Consumer, _sleep_on
from ._errors import Full, LeaseLost, QueueClosed, SerializationError
from ._keeper import LeaseKeeper, forget, keeper
from ._message import Message
from ._operations import NOTHING, Operations
from ._producer import Producer
from ._urls import open_storage
from ._waiting import NEVER, AsyncWaiter, Channel, ThreadWaiter, channel_for
from .serializers import JSON, Serializer
from .storage.base import Envelope, Leased, Outcome, QueueSpec, QueueStats, Storage
from .storage.memory import MemoryStorage

__all__ = ["Queue"]

T = TypeVar("T", default=Any)  # a Queue made without a type is a Queue[Any], as DESIGN.md writes it
R = TypeVar("R")

log = logging.getLogger("mqlite")

_tuple_new = tuple.__new__  # builds a default-option Envelope without the namedtuple's __new__ frame

_io_pools: weakref.WeakKeyDictionary[Storage, concurrent.futures.ThreadPoolExecutor] = weakref.WeakKeyDictionary()
_io_pool_lock = threading.Lock()


def _io_executor(storage: Storage) -> concurrent.futures.ThreadPoolExecutor:
    """The threads that run ``storage``'s calls for coroutines (for storages that may block on
    I/O). One pool per storage: a storage that stalls (an SQLite file another process keeps
    locked) occupies only its own threads, and coroutines using other storages go on. The
    pool's threads end when a queue closes the storage it made, or else when the storage is
    garbage-collected."""
    with _io_pool_lock:
        pool = _io_pools.get(storage)
        if pool is None:
            pool = _io_pools[storage] = concurrent.futures.ThreadPoolExecutor(
                max_workers=8, thread_name_prefix="mqlite-io"
            )
            weakref.finalize(storage, pool.shutdown, wait=False)
        return pool


def _retire_io_pool(storage: Storage) -> None:
    """Let the I/O threads of ``storage`` go (a storage a queue made and has closed): without
    this they would end only when the garbage collector frees the storage, which a queue per
    request can outrun by hundreds of threads. Calls running or queued still finish."""
    with _io_pool_lock:
        pool = _io_pools.pop(storage, None)
    if pool is not None:
        pool.shutdown(wait=False)


def _forget_io_pool() -> None:
    """In a forked child: the parent's pools have no threads here (and may count one as idle,
    so they would never start one); the child makes its own on first use."""
    global _io_pools, _io_pool_lock
    _io_pools = weakref.WeakKeyDictionary()
    _io_pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_io_pool)


@final
class Queue(Generic[T]):
    """A named FIFO queue with leases, acks and redelivery, shared by threads and coroutines.

    ``storage`` is None (a private :class:`MemoryStorage`), a URL for :func:`open_storage`, or a
    :class:`Storage` shared by many queues. A storage the queue made itself closes with it.

    ``serializer`` turns bodies into bytes: by default none for storages that keep objects
    (memory) and :data:`mqlite.serializers.JSON` for the others. ``maxsize`` > 0 makes puts
    wait (or raise :class:`Full`) while ``qsize()`` >= maxsize. ``lease`` is how long a delivery
    may stay unsettled before it counts as failed. After ``max_attempts`` failed deliveries
    (None: never) a message moves to the ``dead_letter`` queue (default ``name + ".dead"``).
    ``dedup_window`` is how long a ``dedup_key`` is remembered. ``clock`` returns wall-clock
    seconds (tests pass a fake one).

    Every method may be called from any thread; the ``a``-prefixed ones from coroutines of any
    event loop. ``put``/``get``/``join`` block only their caller, and ``close`` wakes them all.
    """

    __slots__ = (
        "__weakref__",
        "_channel",
        "_clock",
        "_closed",
        "_consumers",
        "_dead_letter_channel",
        "_default",
        "_maxsize",
        "_name",
        "_ops",
        "_owns_storage",
        "_serializer",
        "_spec",
        "_storage",
        "_yielded",
    )

    def __init__(
        self,
        name: str,
        storage: Storage | str | None = None,
        *,
        serializer: Serializer[Any] | None = None,
        maxsize: int = 0,
        lease: float = 30.0,
        max_attempts: int | None = 10,
        dead_letter: str | None = None,
        dedup_window: float = 300.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._name = _validate.queue_name(name)
        self._maxsize = _validate.count("maxsize", maxsize, minimum=0)
        lease = _validate.seconds("lease", lease, positive=True)
        if max_attempts is not None:
            _validate.count("max_attempts", max_attempts)
        if dead_letter is None:
            dead_letter = name + ".dead"
            if len(dead_letter) > _validate.MAX_NAME_LENGTH:
                raise ValueError(
                    f"queue name is {len(name)} characters long: its dead-letter queue (name + '.dead') "
                    f"would pass the limit of {_validate.MAX_NAME_LENGTH}; use a shorter name or pass dead_letter="
                )
        else:
            dead_letter = _validate.queue_name(dead_letter, "dead_letter")
        if dead_letter == name:
            raise ValueError(f"dead_letter must differ from the queue name {name!r}")
        dedup_window = _validate.seconds("dedup_window", dedup_window)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, not {type(clock).__name__}")
        given: object = serializer  # a class passes the protocol's check by its methods
        if isinstance(given, type):
            cls = given.__name__
            raise TypeError(f"serializer must be an instance, not the class {cls}: pass {cls}()")
        if serializer is not None and not (
            callable(getattr(serializer, "dumps", None)) and callable(getattr(serializer, "loads", None))
        ):
            raise TypeError(f"serializer must have dumps() and loads(), got {type(serializer).__name__}")
        if storage is None:
            storage, self._owns_storage = MemoryStorage(), True
        elif isinstance(storage, str):
            storage, self._owns_storage = open_storage(storage), True
        elif isinstance(storage, Storage):
            self._owns_storage = False
        else:
            raise TypeError(f"storage must be None, a URL string or a Storage, not {type(storage).__name__}")
        if serializer is None and storage.requires_bytes:
            serializer = JSON
        self._storage = storage
        # Operations under way, counted when the queue owns a storage that keeps what it stores.
        self._ops = (
            Operations(storage, self._name, functools.partial(_retire_io_pool, storage))
            if self._owns_storage and storage.blocking_io
            else None
        )
        self._serializer = serializer
        self._clock: Callable[[], float] = clock or time.time
        self._spec = QueueSpec(self._name, max_attempts, dead_letter, dedup_window)
        self._closed = False
        self._yielded = time.monotonic()
        try:
            storage.open_queue(self._spec)
        except BaseException:
            if self._owns_storage:
                storage.close()
            raise
        self._channel: Channel = channel_for(storage, self._name)
        self._dead_letter_channel: Channel | None = None
        if max_attempts is not None:  # deaths by lease expiry land in the dead-letter queue
            dead = self._dead_channel()
            with dead.mutex:
                dead.feeders[self._name] = dead.feeders.get(self._name, 0) + 1
        self._consumers: weakref.WeakSet[Consumer[T]] = weakref.WeakSet()
        self._default: Consumer[T] = Consumer(self, lease, 1, False)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<mqlite.Queue {self._name!r} on {type(self._storage).__name__}{state}>"

    # -- settings -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The queue's name in its storage."""
        return self._name

    @property
    def storage(self) -> Storage:
        """The storage holding the messages."""
        return self._storage

    @property
    def maxsize(self) -> int:
        """The bound on ``qsize()`` for puts (0: unbounded)."""
        return self._maxsize

    @property
    def lease(self) -> float:
        """The default lease, in seconds, of a delivery."""
        return self._default.lease

    @property
    def max_attempts(self) -> int | None:
        """Failed deliveries after which a message is dead-lettered (None: never)."""
        return self._spec.max_attempts

    @property
    def dead_letter(self) -> str:
        """The name of the dead-letter queue."""
        return self._spec.dead_letter_queue

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- internals shared with the handles ----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"queue {self._name!r} is closed")

    def _dead_channel(self) -> Channel:
        channel = self._dead_letter_channel
        if channel is None:
            channel = self._dead_letter_channel = channel_for(self._storage, self._spec.dead_letter_queue)
        return channel

    def _keeper(self) -> LeaseKeeper:
        return keeper(self._storage)

    def _feed(self, now: float) -> float | None:
        """For a dead-letter queue: apply what time did to the queues that feed it (a lease that
        ended at its last attempt moves its message here, but only once a call applies time to
        its queue) and return the earliest time one of them changes by itself, or None."""
        storage = self._storage
        first: float | None = None
        for name in tuple(self._channel.feeders):
            at = storage.next_wakeup(name, now)
            if at is not None and (first is None or at < first):
                first = at
        return first

    def _decode(self, record: Leased) -> T:
        serializer = self._serializer
        if serializer is None:
            return cast(T, record.body)
        try:
            return cast(T, serializer.loads(cast(bytes, record.body)))
        except Exception as error:
            raise SerializationError(
                f"message {record.id} in queue {self._name!r} cannot be decoded by {serializer!r}: {error}"
            ) from error

    async def _call(self, function: Callable[..., R], *args: Any) -> R:
        """Run a storage call for a coroutine: inline if the storage never blocks, else on the
        I/O threads. Once submitted it runs to its end even if the caller is cancelled (and
        the queue counts it as an operation under way until then)."""
        if not self._storage.blocking_io:
            return function(*args)
        future = _io_executor(self._storage).submit(function, *args)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except BaseException:  # cancelled, or the coroutine closed (GeneratorExit): the call goes on
            ops = self._ops
            if not future.done() and ops is not None and ops.hold():
                future.add_done_callback(lambda _: ops.release())
            raise

    async def _call_landing(
        self,
        function: Callable[..., R],
        args: tuple[Any, ...],
        landed: Callable[[R], None],
        never_ran: Callable[[], None] | None = None,
        failed: Callable[[], None] | None = None,
    ) -> R:
        """Like :meth:`_call`, for a call whose effect others must hear about. If the caller is
        cancelled while the call runs, the call still finishes and ``landed(result)`` runs then
        (give back a lease, wake getters for a put, account for a settle), or ``failed()`` if it
        raised (undo a claim); if it was cancelled before it started, nothing happened and
        ``never_ran()`` runs. Until then the queue counts the operation as under way, so
        closing a storage it owns waits for that accounting."""
        if not self._storage.blocking_io:
            return function(*args)
        pool = _io_executor(self._storage)
        future = pool.submit(function, *args)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except BaseException as error:
            if future.done() and not future.cancelled() and future.exception() is error:
                raise  # the call's own failure: its caller handles it
            # Cancelled, or the coroutine closed (GeneratorExit, a task destroyed with its loop).
            if future.cancel():
                if never_ran is not None:
                    never_ran()
                raise
            held = self._ops if self._ops is not None and self._ops.hold() else None
            if future.done() and isinstance(error, asyncio.CancelledError):
                # It finished as its caller was cancelled: account for it now, before the
                # cancellation goes on (a get retried at once must find the message given back),
                # and on an I/O thread, since ``landed`` may make storage calls that block.
                accounted = pool.submit(_after_cancel, future, landed, failed, held)
                await asyncio.shield(asyncio.wrap_future(accounted))
            elif future.done():  # closing: nothing may be awaited any more
                pool.submit(_after_cancel, future, landed, failed, held)
            else:
                # Submitted, not run here: a call that ends just now runs its callbacks on this
                # (the loop's) thread, and ``landed`` may block.
                future.add_done_callback(lambda done: pool.submit(_after_cancel, done, landed, failed, held))
            raise

    # -- producing ----------------------------------------------------------------------------

    def _encode(self, body: object, position: int | None = None) -> object:
        serializer = self._serializer
        if serializer is None:
            return body
        try:
            data = serializer.dumps(body)
        except Exception as error:
            where = "" if position is None else f" #{position}"
            raise SerializationError(
                f"body{where} ({type(body).__name__}) cannot be encoded by {serializer!r}: {error}"
            ) from error
        if not isinstance(data, bytes):
            raise SerializationError(f"{serializer!r}.dumps returned {type(data).__name__}, not bytes")
        return data

    def _options(
        self,
        delay: float,
        priority: int,
        group: str | None,
        dedup_key: str | None,
        headers: Mapping[str, str] | None,
    ) -> Envelope | None:
        """Check put options; return them as a body-less envelope, or None for the defaults."""
        if _defaults(delay, priority, group, dedup_key, headers):
            return None
        return Envelope(
            None,
            _validate.priority(priority),
            _validate.key("group", group),
            _validate.key("dedup_key", dedup_key),
            _validate.headers(headers),
            _validate.seconds("delay", delay),
        )

    def _envelope(
        self,
        body: object,
        delay: float,
        priority: int,
        group: str | None,
        dedup_key: str | None,
        headers: Mapping[str, str] | None,
    ) -> Envelope:
        options = self._options(delay, priority, group, dedup_key, headers)
        data = self._encode(body)
        return Envelope(data) if options is None else options._replace(body=data)

    def _envelopes(
        self,
        bodies: Iterable[T],
        delay: float,
        priority: int,
        group: str | None,
        dedup_key: str | None,
        headers: Mapping[str, str] | None,
    ) -> list[Envelope]:
        if isinstance(bodies, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(bodies, Iterable):
            raise TypeError(f"put_many takes an iterable of bodies, not {type(bodies).__name__}")
        batch_key = _validate.key("dedup_key", dedup_key)
        options = self._options(delay, priority, group, None, headers)
        encode = self._encode
        if batch_key is not None:  # message i is deduplicated under the batch's key and i
            options = options or Envelope(None)
            envelopes = [
                options._replace(body=encode(body, i), dedup_key=_batch_member_key(batch_key, i))
                for i, body in enumerate(bodies)
            ]
        elif options is None:  # default options: the same envelopes, three times faster than _replace
            envelopes = [Envelope(encode(body, i)) for i, body in enumerate(bodies)]
        else:
            envelopes = [options._replace(body=encode(body, i)) for i, body in enumerate(bodies)]
        if self._maxsize and len(envelopes) > self._maxsize and batch_key is None:
            raise self._never_fits(len(envelopes))
        return envelopes

    def _never_fits(self, count: int) -> ValueError:
        where = f"queue {self._name!r} (maxsize {self._maxsize})"
        return ValueError(f"put_many of {count} messages can never fit in {where}")

    def _room_needed(self, count_new: int) -> int:
        """The places a batch with dedup keys that found no room waits for: its new messages
        alone (its duplicates take none), at least one; ValueError if they can never fit."""
        if count_new > self._maxsize:
            raise self._never_fits(count_new)
        return max(count_new, 1)

    def _announce(self, envelopes: Sequence[Envelope], now: float) -> None:
        """Wake getters for messages just put: one per ready message, and one more to take
        over the timer if a delayed message becomes eligible before every sleeper's wake-up."""
        if len(envelopes) == 1:
            delay = envelopes[0].delay
            if delay > 0.0:
                self._channel.changed(0, now + delay)
            else:
                self._channel.changed(1)
            return
        ready = 0
        first = NEVER
        for envelope in envelopes:
            if envelope.delay > 0.0:
                first = min(first, now + envelope.delay)
            else:
                ready += 1
        self._channel.changed(ready, first)

    def _announcer(self, envelopes: Sequence[Envelope], now: float) -> Callable[[list[int] | None], None]:
        """What a cancelled aput whose write landed anyway must still do: wake getters."""

        def landed(ids: list[int] | None) -> None:
            if ids is not None:
                self._announce(envelopes, now)

        return landed

    def _put_sync(self, envelopes: list[Envelope], block: bool, timeout: float | None) -> list[int]:
        _validate.flag("block", block)
        channel = self._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        woken = relay = False
        need = len(envelopes)  # the places to wait for
        while True:
            try:
                with self._ops or NOTHING:  # each attempt, not the sleep
                    self._check_open()
                    epoch = channel.epoch
                    now = self._clock()
                    if self._maxsize and channel.feeders:  # the room left counts deaths due by now
                        self._feed(now)
                    ids = self._storage.put(self._name, envelopes, now, self._maxsize)
                    if ids is not None:
                        self._announce(envelopes, now)
                        if relay:  # another process made room, maybe for more: pass the wake-up on
                            channel.notify(channel.putters, 1, True)
                        return ids
                    if woken:
                        channel.pass_room(need, relay)
                    if _keyed_batch(envelopes):
                        need = self._room_needed(self._storage.count_new(self._name, envelopes, now))
                    remaining = self._room_wait_time(block, deadline)
                    remaining = self._until(self._storage.next_wakeup(self._name, now), remaining)
            except BaseException as error:
                if woken and not isinstance(error, Full):
                    channel.notify(channel.putters, 1, relay)  # this caller cannot use its wake-up
                raise
            waiter = ThreadWaiter(self, need)
            with channel.mutex:
                if channel.epoch != epoch or self._closed:
                    continue
                channel.enlist(channel.putters, waiter)
            try:
                waiter.wait(remaining)
            except BaseException:
                channel.withdraw(channel.putters, waiter, pass_on=True)
                raise
            woken = channel.withdraw(channel.putters, waiter, pass_on=False)
            relay = waiter.relay

    async def _put_async(self, envelopes: list[Envelope], timeout: float | None) -> list[int]:
        channel = self._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        woken = relay = False
        need = len(envelopes)  # the places to wait for
        while True:
            try:
                with self._ops or NOTHING:  # each attempt, not the sleep
                    self._check_open()
                    epoch = channel.epoch
                    now = self._clock()
                    if self._maxsize and channel.feeders:  # the room left counts deaths due by now
                        await self._call(self._feed, now)
                    ids = await self._call_landing(
                        self._storage.put,
                        (self._name, envelopes, now, self._maxsize),
                        self._announcer(envelopes, now),
                    )
                    if ids is not None:
                        self._announce(envelopes, now)
                        if relay:  # another process made room, maybe for more: pass the wake-up on
                            channel.notify(channel.putters, 1, True)
                        return ids
                    if woken:
                        channel.pass_room(need, relay)
                    if _keyed_batch(envelopes):
                        count_new = await self._call(self._storage.count_new, self._name, envelopes, now)
                        need = self._room_needed(count_new)
                    remaining = self._room_wait_time(True, deadline)
                    remaining = self._until(await self._call(self._storage.next_wakeup, self._name, now), remaining)
            except BaseException as error:
                if woken and not isinstance(error, Full):
                    channel.notify(channel.putters, 1, relay)
                raise
            waiter = AsyncWaiter(self, need)
            with channel.mutex:
                if channel.epoch != epoch or self._closed:
                    continue
                channel.enlist(channel.putters, waiter)
            await _sleep_on(waiter, remaining, channel, channel.putters)
            woken = channel.withdraw(channel.putters, waiter, pass_on=False)
            relay = waiter.relay

    def _until(self, wake_at: float | None, remaining: float | None) -> float | None:
        """``remaining``, shortened to end at ``wake_at`` (the storage's next wake-up, on the
        queue's clock: a delay or a lease ends then, which may make room)."""
        if wake_at is None:
            return remaining
        until = max(wake_at - self._clock(), 0.0)
        return until if remaining is None else min(remaining, until)

    def _room_wait_time(self, block: bool, deadline: float | None) -> float | None:
        if not block:
            raise Full(f"queue {self._name!r} is full (maxsize {self._maxsize})")
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0.0:
            raise Full(f"queue {self._name!r} stayed full (maxsize {self._maxsize})")
        return remaining

    def put(
        self,
        body: T,
        *,
        delay: float = 0.0,
        priority: int = 0,
        group: str | None = None,
        dedup_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        block: bool = True,
        timeout: float | None = None,
    ) -> int:
        """Put one message and return its id.

        ``delay``: seconds before it may be delivered. ``priority``: higher is delivered first.
        ``group``: messages of one group are delivered one at a time, in order. ``dedup_key``:
        a put with a key seen in the last ``dedup_window`` seconds enqueues nothing and returns
        the first id. ``headers``: str to str metadata.

        With maxsize, if ``block`` is true and ``timeout`` is None, wait for room; with a
        timeout wait at most that long; then (or at once if ``block`` is false) raise
        :class:`Full`. Raises :class:`SerializationError` (nothing enqueued) for a body the
        serializer cannot encode, :class:`QueueClosed` once closed.
        """
        if (
            timeout is None
            and block is True
            and group is None
            and dedup_key is None
            and headers is None
            and (delay.__class__ is float or delay.__class__ is int)
            and delay == 0
            and priority.__class__ is int
            and priority == 0
            and not self._closed
            and self._ops is None  # a storage the queue owns: each put counted (_put_sync)
            and not (self._maxsize and self._channel.feeders)  # room in a dead-letter queue: _put_sync
        ):  # the fast path: default options (_defaults, inline), one attempt; the envelope is
            # built as Envelope(data) would be, minus the namedtuple's Python-level __new__
            data = body if self._serializer is None else self._encode(body)
            envelopes: list[Envelope] = [_tuple_new(Envelope, (data, 0, None, None, None, 0.0))]
            ids = self._storage.put(self._name, envelopes, self._clock(), self._maxsize)
            if ids is not None:
                self._channel.changed(1)
                return ids[0]
        else:
            envelopes = [self._envelope(body, delay, priority, group, dedup_key, headers)]
        return self._put_sync(envelopes, block, _validate.timeout(timeout))[0]

    def put_nowait(
        self,
        body: T,
        *,
        delay: float = 0.0,
        priority: int = 0,
        group: str | None = None,
        dedup_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Put one message without waiting for room; raise :class:`Full` if there is none."""
        envelope = self._envelope(body, delay, priority, group, dedup_key, headers)
        return self._put_sync([envelope], False, None)[0]

    def put_many(
        self,
        bodies: Iterable[T],
        *,
        delay: float = 0.0,
        priority: int = 0,
        group: str | None = None,
        dedup_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        block: bool = True,
        timeout: float | None = None,
    ) -> list[int]:
        """Put many messages with the same options, all or nothing, under consecutive ids.

        Every body is encoded before anything is stored, so a body the serializer rejects
        enqueues none. With maxsize, waits for room for all of them (or raises Full).
        ``dedup_key`` names the batch: the message at position ``i`` is deduplicated as the
        ``i``-th of that batch, so putting the same batch again within the queue's dedup
        window enqueues nothing and returns the same ids (a longer one enqueues only the
        bodies past the first batch's end). Batch keys never match the keys of single puts.
        """
        envelopes = self._envelopes(bodies, delay, priority, group, dedup_key, headers)
        if not envelopes:
            self._check_open()
            return []
        return self._put_sync(envelopes, block, _validate.timeout(timeout))

    async def aput(
        self,
        body: T,
        *,
        delay: float = 0.0,
        priority: int = 0,
        group: str | None = None,
        dedup_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Async :meth:`put`: await room (at most ``timeout`` seconds) and put one message."""
        if (
            timeout is None
            and not self._closed
            and not self._storage.blocking_io
            and not (self._maxsize and self._channel.feeders)
            and _defaults(delay, priority, group, dedup_key, headers)
        ):  # the fast path: default options on a storage that never blocks, one attempt
            data = body if self._serializer is None else self._encode(body)
            envelopes: list[Envelope] = [_tuple_new(Envelope, (data, 0, None, None, None, 0.0))]
            now = time.monotonic()
            if now - self._yielded > YIELD_EVERY:  # let the loop run other tasks now and then,
                self._yielded = now  # before putting, so a cancellation here enqueues nothing
                await asyncio.sleep(0)
            if not self._closed:
                ids = self._storage.put(self._name, envelopes, self._clock(), self._maxsize)
                if ids is not None:
                    self._channel.changed(1)
                    return ids[0]
        else:
            envelopes = [self._envelope(body, delay, priority, group, dedup_key, headers)]
        return (await self._put_async(envelopes, _validate.timeout(timeout)))[0]

    async def aput_many(
        self,
        bodies: Iterable[T],
        *,
        delay: float = 0.0,
        priority: int = 0,
        group: str | None = None,
        dedup_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[int]:
        """Async :meth:`put_many`."""
        envelopes = self._envelopes(bodies, delay, priority, group, dedup_key, headers)
        if not envelopes:
            self._check_open()
            return []
        return await self._put_async(envelopes, _validate.timeout(timeout))

    def producer(self, **defaults: Any) -> Producer[T]:
        """A handle whose puts use ``defaults`` (delay, priority, group, dedup_key, headers,
        block, timeout) unless a call overrides them."""
        self._check_open()
        return Producer(self, defaults)

    # -- consuming ----------------------------------------------------------------------------

    def consumer(self, lease: float | None = None, prefetch: int = 1, auto_extend: bool = False) -> Consumer[T]:
        """A handle that receives messages and owns their leases; see :class:`Consumer`."""
        self._check_open()
        consumer = Consumer(self, lease, prefetch, auto_extend)
        self._consumers.add(consumer)
        return consumer

    def get(self, block: bool = True, timeout: float | None = None) -> Message[T]:
        """Receive one message; see :meth:`Consumer.get`. The queue holds its lease."""
        return self._default.get(block, timeout)

    def get_nowait(self) -> Message[T]:
        """Receive one message if one is eligible now, else raise :class:`Empty`."""
        return self._default.get_nowait()

    def get_many(self, max_messages: int, timeout: float | None = None) -> list[Message[T]]:
        """Receive up to ``max_messages``; see :meth:`Consumer.get_many`."""
        return self._default.get_many(max_messages, timeout)

    async def aget(self, timeout: float | None = None) -> Message[T]:
        """Async :meth:`get`; cancelling it never loses or leases a message."""
        return await self._default.aget(timeout)

    async def aget_many(self, max_messages: int, timeout: float | None = None) -> list[Message[T]]:
        """Async :meth:`get_many`."""
        return await self._default.aget_many(max_messages, timeout)

    def __iter__(self) -> Iterator[Message[T]]:
        """Receive messages until the queue is closed."""
        return iter(self._default)

    def __aiter__(self) -> AsyncIterator[Message[T]]:
        """Receive messages asynchronously until the queue is closed."""
        return aiter(self._default)

    def ack_many(self, messages: Iterable[Message[T]]) -> None:
        """Ack many received messages in one storage call (one transaction on SQLite).

        Each message follows the rules of :meth:`Message.ack`: one acked already is skipped,
        and one settled with another verb raises :class:`LeaseLost` before anything is acked.
        Messages whose lease was lost are reported together in one :class:`LeaseLost` after
        the others were acked.
        """
        with self._ops or NOTHING:
            batch = self._claim_acks(messages)
            if not batch:
                return
            try:
                outcomes = self._storage.ack(self._name, [(m.id, m._record.token) for m in batch], self._clock())
            except BaseException:
                for message in batch:
                    message._unclaim(False)
                raise
            self._acked(batch, outcomes)

    async def aack_many(self, messages: Iterable[Message[T]]) -> None:
        """Async :meth:`ack_many`."""
        with self._ops or NOTHING:
            await self._aack_many(messages)

    async def _aack_many(self, messages: Iterable[Message[T]]) -> None:
        batch = self._claim_acks(messages)
        if not batch:
            return
        handles = [(m.id, m._record.token) for m in batch]

        def unclaim() -> None:
            for message in batch:
                message._unclaim(False)

        try:
            outcomes = await self._call_landing(
                self._storage.ack,
                (self._name, handles, self._clock()),
                lambda landed: self._acked(batch, landed, quiet=True),
                never_ran=unclaim,
                failed=unclaim,
            )
        except asyncio.CancelledError:
            raise
        except BaseException:
            unclaim()
            raise
        self._acked(batch, outcomes)

    def _claim_acks(self, messages: Iterable[Message[T]]) -> list[Message[T]]:
        """Claim every message for an ack, or none (a refused claim undoes the others)."""
        self._check_open()
        if not isinstance(messages, Iterable):
            raise TypeError(f"ack_many takes an iterable of messages, not {type(messages).__name__}")
        batch: list[Message[T]] = []
        try:
            for message in messages:
                if not isinstance(message, Message):
                    raise TypeError(f"ack_many takes messages, not {type(message).__name__}")
                consumer = message._consumer
                if consumer is not None and consumer._queue is not self:
                    raise ValueError(f"message {message.id} was received from another queue, not {self._name!r}")
                if message._claim("ack"):
                    batch.append(message)
        except BaseException:
            for message in batch:
                message._unclaim(False)
            raise
        return batch

    def _acked(self, batch: Sequence[Message[T]], outcomes: Sequence[Outcome], quiet: bool = False) -> None:
        """After a batch ack: forget the messages, wake getters of their groups and joiners."""
        lost: list[int] = []
        grouped = late = 0
        now = self._clock()
        for message, outcome in zip(batch, outcomes, strict=True):
            consumer = message._consumer
            if consumer is not None:
                consumer._held.pop(message, None)
            if outcome == Outcome.LOST:
                message._unclaim(True)
                lost.append(message.id)
                continue
            if message.group is not None:
                grouped += 1
            if message._lease_ended(now):
                late += 1
        self._channel.changed(grouped, room=late, settled=True)
        if lost and not quiet:
            raise LeaseLost(
                f"message(s) {', '.join(map(str, lost))}: the lease ended and the message was delivered "
                "again, dead-lettered or settled elsewhere; the others were acked"
            )

    # -- administration -----------------------------------------------------------------------

    def qsize(self) -> int:
        """How many messages wait to be delivered: ready plus delayed (not in flight)."""
        with self._ops or NOTHING:  # counted, as every call that reaches the storage (_operations)
            self._check_open()
            now = self._clock()
            if self._channel.feeders:
                self._feed(now)
            ready, delayed, _ = self._storage.counts(self._name, now)
        return ready + delayed

    def __len__(self) -> int:
        return self.qsize()

    def empty(self) -> bool:
        """Whether ``qsize()`` is 0."""
        return self.qsize() == 0

    def full(self) -> bool:
        """Whether maxsize is set and ``qsize()`` has reached it."""
        self._check_open()
        return self._maxsize > 0 and self.qsize() >= self._maxsize

    def stats(self) -> QueueStats:
        """Counts of ready, delayed, in-flight and dead messages, and the oldest ready age."""
        with self._ops or NOTHING:
            self._check_open()
            now = self._clock()
            if self._channel.feeders:
                self._feed(now)
            return self._storage.stats(self._name, now)

    def peek(self, n: int = 1) -> list[Message[T]]:
        """Up to ``n`` unsettled messages in the order they would be delivered if all were
        eligible now, leasing nothing; their settle verbs raise :class:`LeaseLost`."""
        n = _validate.count("n", n, minimum=0)
        with self._ops or NOTHING:
            self._check_open()
            now = self._clock()
            if self._channel.feeders:
                self._feed(now)
            records = self._storage.peek(self._name, n, now)
        return [Message(record, self._decode(record), None) for record in records]

    def purge(self) -> int:
        """Delete every ready and delayed message (not those in flight); return how many."""
        with self._ops or NOTHING:
            self._check_open()
            now = self._clock()
            if self._channel.feeders:
                self._feed(now)
            removed = self._storage.purge(self._name, now)
        self._channel.changed(0, room=removed, settled=True)
        return removed

    def redrive(self, max_messages: int | None = None) -> int:
        """Move up to ``max_messages`` (None: all) of this queue's dead letters back to it,
        under their ids and with attempts reset; return how many moved."""
        if max_messages is not None:
            _validate.count("max_messages", max_messages, minimum=0)
        with self._ops or NOTHING:
            self._check_open()
            moved = self._storage.redrive(self._name, self._clock(), max_messages)
        if moved:
            self._channel.changed(moved)
            self._dead_channel().changed(0, room=moved, settled=True)
        return moved

    def _unsettled(self) -> bool:
        now = self._clock()
        if self._channel.feeders:
            self._feed(now)
        ready, delayed, in_flight = self._storage.counts(self._name, now)
        return bool(ready or delayed or in_flight)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is ready, delayed or in flight. Return False if ``timeout``
        seconds passed first. Raises :class:`QueueClosed` if the queue is closed meanwhile."""
        timeout = _validate.timeout(timeout)
        channel = self._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._ops or NOTHING:  # each look, not the sleep
                self._check_open()
                epoch = channel.epoch
                if not self._unsettled():
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0.0:
                    return False
                wake_at = self._storage.next_wakeup(self._name, self._clock())
            waiter = ThreadWaiter(self)
            waiter.wake_at = NEVER if wake_at is None else wake_at
            with channel.mutex:
                if channel.epoch != epoch or self._closed:
                    continue
                channel.enlist(channel.joiners, waiter)
            if wake_at is not None:
                until = max(wake_at - self._clock(), 0.0)
                remaining = until if remaining is None else min(remaining, until)
            try:
                waiter.wait(remaining)
            finally:
                channel.withdraw(channel.joiners, waiter, pass_on=False)

    async def ajoin(self, timeout: float | None = None) -> bool:
        """Async :meth:`join`."""
        timeout = _validate.timeout(timeout)
        channel = self._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._ops or NOTHING:  # each look, not the sleep
                self._check_open()
                epoch = channel.epoch
                if not await self._call(self._unsettled):
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0.0:
                    return False
                wake_at = await self._call(self._storage.next_wakeup, self._name, self._clock())
            waiter = AsyncWaiter(self)
            waiter.wake_at = NEVER if wake_at is None else wake_at
            with channel.mutex:
                if channel.epoch != epoch or self._closed:
                    continue
                channel.enlist(channel.joiners, waiter)
            if wake_at is not None:
                until = max(wake_at - self._clock(), 0.0)
                remaining = until if remaining is None else min(remaining, until)
            await _sleep_on(waiter, remaining, channel, channel.joiners)  # withdraws if cancelled
            channel.withdraw(channel.joiners, waiter, pass_on=False)

    def close(self) -> None:
        """Close the queue: release the leases its consumers hold (no attempt counted), wake
        every blocked call with :class:`QueueClosed`, and close the storage if the queue made
        it. Messages stay stored. Idempotent."""
        self._close(wait=asyncio._get_running_loop() is None)

    def _close(self, wait: bool) -> None:
        """:meth:`close`; ``wait``: until a storage the queue owns is closed (see _operations)."""
        ops = self._ops
        if self._closed:
            if ops is not None and wait:
                ops.close_storage(wait=True)  # return once the first close() closed the storage
            return
        counted = ops is not None and ops.hold()  # before _closed: a second close() waits for our releases
        self._closed = True  # first: a get or a verb racing with close sees it after its step
        consumers: list[Consumer[T]] = []
        try:
            consumers = [self._default, *list(self._consumers)]
            for consumer in consumers:
                consumer._release_held()
        finally:
            if self._spec.max_attempts is not None:  # this object no longer feeds the dead-letter queue
                dead = self._dead_channel()
                with dead.mutex:
                    left = dead.feeders.get(self._name, 0) - 1
                    if left > 0:
                        dead.feeders[self._name] = left
                    else:
                        dead.feeders.pop(self._name, None)
            forget(self._storage, consumers)  # a lease keeper left with nothing to renew ends now
            for consumer in consumers:
                self._channel.close_owner(consumer)
            self._channel.close_owner(self)
            if ops is not None:
                if counted:
                    ops.release()
                ops.close_storage(wait)  # once no get or settle under way needs it
            elif self._owns_storage:
                self._storage.close()

    async def aclose(self) -> None:
        """Async :meth:`close`, off the event loop when the storage may block."""
        if not self._storage.blocking_io:
            self._close(wait=False)
            return
        # Not through _call: a close is not an operation to wait for, and its waiting must not
        # hold an I/O thread that the operations it waits for may need.
        await asyncio.shield(asyncio.wrap_future(_io_executor(self._storage).submit(self._close, False)))
        if self._ops is not None:
            await self._ops.finished()

    def __enter__(self) -> Queue[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Queue[T]:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _defaults(delay: object, priority: object, group: object, dedup_key: object, headers: object) -> bool:
    """Whether put options are all the defaults (checked by type, so ``False`` is no priority
    and ``"0"`` no delay): such a put needs no validation."""
    return (
        (delay.__class__ is float or delay.__class__ is int)
        and delay == 0
        and priority.__class__ is int
        and priority == 0
        and group is None
        and dedup_key is None
        and headers is None
    )


def _keyed_batch(envelopes: Sequence[Envelope]) -> bool:
    """Whether a put that found no room is a batch with dedup keys, whose duplicates need no
    room (asked only then, not on every put)."""
    return len(envelopes) > 1 and any(envelope.dedup_key is not None for envelope in envelopes)


def _batch_member_key(batch_key: str, position: int) -> str:
    """The dedup key of the message at ``position`` of a ``put_many`` with ``batch_key``: the
    NUL that user keys may not contain keeps it apart from every key of a single put."""
    return f"{batch_key}\x00{position}"


def _after_cancel(
    done: concurrent.futures.Future[R],
    landed: Callable[[R], None],
    failed: Callable[[], None] | None,
    held: Operations | None,
) -> None:
    """Account for the effect of a storage call whose caller was cancelled (on an I/O thread),
    then end the operation ``held`` for it."""
    try:
        if done.cancelled():
            return
        if done.exception() is not None:
            if failed is not None:
                failed()
            return
        landed(done.result())
    except Exception:
        log.exception("mqlite: could not account for a storage call whose caller was cancelled")
    finally:
        if held is not None:
            held.release()
