"""``Consumer``: a handle that receives messages and owns their leases until they are settled."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, final

from typing_extensions import TypeVar

from . import _validate
from ._errors import Empty, Error, LeaseLost, QueueClosed, SerializationError
from ._keeper import forget
from ._message import Message, Verb
from ._operations import NOTHING
from ._waiting import NEVER, AsyncWaiter, Channel, ThreadWaiter, Waiter, _resolve
from .storage.base import Handle, Leased, Outcome

if TYPE_CHECKING:
    from ._queue import Queue

__all__ = ["Consumer"]

T = TypeVar("T", default=Any)  # a Queue made without a type is a Queue[Any], as DESIGN.md writes it
W = TypeVar("W", ThreadWaiter, AsyncWaiter)

log = logging.getLogger("mqlite")

_DONE = Outcome.DONE  # module globals: reading an enum member off its class costs ~50 ns
_NOOP = Outcome.NOOP

_ABSENT: Any = object()  # dict.pop's default, to tell a missing key from a None value

YIELD_EVERY = 0.001  # seconds of consecutive fast-path async calls before yielding to the loop


@final
class Consumer(Generic[T]):
    """A receiving handle on a queue: it gets messages and owns their leases.

    Made by :meth:`Queue.consumer`. ``lease`` overrides the queue's lease for messages it
    receives; ``prefetch`` leases up to that many messages per storage call and hands them out
    one by one (their leases run from the moment they are leased); ``auto_extend`` renews the
    lease of every message it holds every ``lease / 3`` seconds until it is settled.

    Closing the consumer (``close()``, or leaving ``with`` / ``async with``) releases every
    message it still holds: ready again at once, no attempt counted.
    """

    __slots__ = (
        "__weakref__",
        "_auto_extend",
        "_buffer",
        "_closed",
        "_held",
        "_lease",
        "_prefetch",
        "_queue",
        "_sweep_at",
        "_yielded",
    )

    def __init__(self, queue: Queue[T], lease: float | None, prefetch: int, auto_extend: bool) -> None:
        self._queue = queue
        self._lease = queue.lease if lease is None else _validate.seconds("lease", lease, positive=True)
        self._prefetch = _validate.count("prefetch", prefetch)
        if not isinstance(auto_extend, bool):
            raise TypeError(f"auto_extend must be a bool, not {type(auto_extend).__name__}")
        self._auto_extend = auto_extend
        self._buffer: deque[Message[T]] = deque()
        self._held: dict[Message[T], None] = {}  # by delivery: one id may be held twice, once lost
        self._sweep_at = _SWEEP_MIN  # when _held reaches this size, forget deliveries whose lease ended
        self._closed = False
        self._yielded = time.monotonic()
        _consumers.add(self)

    def __repr__(self) -> str:
        return f"<Consumer of {self._queue.name!r} lease={self._lease:g} holding={len(self._held)}>"

    @property
    def queue(self) -> Queue[T]:
        """The queue this consumer receives from."""
        return self._queue

    @property
    def lease(self) -> float:
        """The lease, in seconds, of every message this consumer receives."""
        return self._lease

    @property
    def held(self) -> int:
        """How many messages this consumer holds: received (or prefetched) and not settled."""
        return len(self._held)

    # -- receiving --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"this consumer of queue {self._queue.name!r} is closed")
        if self._queue._closed:
            raise QueueClosed(f"queue {self._queue.name!r} is closed")

    def _take(self, n: int) -> list[Message[T]] | None:
        """One attempt to lease ``n`` messages without waiting; None if none is eligible."""
        if self._buffer:
            buffered = self._unbuffer(n)
            if buffered:
                if self._queue._closed or self._closed:  # close may have released them meanwhile
                    self._give_back(buffered, None)
                return buffered
        queue = self._queue
        now = queue._clock()
        records = queue._storage.lease(queue._name, max(n, self._prefetch), now, self._lease)
        if not records:
            return None
        return self._adopt(records, n)

    def _unbuffer(self, n: int) -> list[Message[T]]:
        """Up to ``n`` prefetched messages whose lease still runs, in the order they were leased.

        A buffered message whose lease ended was failed by the storage (ready again or dead):
        it may be with another consumer already, so it is dropped, never handed out. Safe with
        several threads taking from one consumer (``popleft`` is atomic)."""
        buffer = self._buffer
        now = self._queue._clock()
        taken: list[Message[T]] = []
        while len(taken) < n:
            try:
                message = buffer.popleft()
            except IndexError:
                break
            if message._lease_ended(now):
                if message._claim_lost():  # else closing claimed it to release it
                    self._held.pop(message, None)
                continue
            taken.append(message)
        return taken

    def _adopt(self, records: list[Leased], n: int, defer: list[Callable[[], None]] | None = None) -> list[Message[T]]:
        """Turn leased records into held messages; keep those beyond ``n`` in the buffer.

        A body the serializer cannot decode would fail every delivery, so it is rejected to
        the dead-letter queue at once (with the error as detail) instead of being handed out.
        Storage calls this needs (that reject; giving messages back when the queue closed
        meanwhile) run at once, or, given ``defer`` (a coroutine on a storage that blocks), are
        appended to it for the caller to run off the event loop.
        """
        queue = self._queue
        limit = queue._spec.max_attempts
        if len(records) == 1:  # the common case, without the loop and the lists
            record = records[0]
            queue._channel.changed(0, record.lease_expires_at or NEVER, 1)
            if limit is not None and record.attempts >= limit:
                self._watch_last_attempts(records, limit)
            if queue._closed or self._closed:
                _now_or_later(defer, self._release_records, records)
                self._check_open()
            if queue._serializer is None:
                body: T = record.body  # type: ignore[assignment]
            else:
                try:
                    body = queue._decode(record)
                except SerializationError as error:
                    _now_or_later(defer, self._reject_undecodable, [(record, error)])
                    if self._auto_extend:
                        queue._keeper().watch(self)
                    return []
            message: Message[T] = Message(record, body, self)
            held = self._held
            held[message] = None
            if len(held) >= self._sweep_at:
                self._forget_ended()
            if queue._closed or self._closed:  # closed since the check above: close may have
                self._give_back([message], defer)  # drained _held before this message was in it
            if self._auto_extend:
                queue._keeper().watch(self)
            return [message]
        queue._channel.changed(0, records[0].lease_expires_at or NEVER, len(records))
        if limit is not None:
            self._watch_last_attempts(records, limit)
        if queue._closed or self._closed:
            _now_or_later(defer, self._release_records, records)
            self._check_open()
        held = self._held
        decode = queue._decode
        messages = []
        poisoned: list[tuple[Leased, SerializationError]] = []
        for record in records:
            try:
                body = decode(record)
            except SerializationError as error:
                poisoned.append((record, error))
                continue
            message = Message(record, body, self)
            held[message] = None
            messages.append(message)
        if poisoned:
            _now_or_later(defer, self._reject_undecodable, poisoned)
        if len(held) >= self._sweep_at:
            self._forget_ended()
        if queue._closed or self._closed:  # as in the one-record path
            self._give_back(messages, defer)
        if self._auto_extend:
            queue._keeper().watch(self)
        if len(messages) > n:
            self._buffer.extend(messages[n:])
            del messages[n:]
        return messages

    def _forget_ended(self) -> None:
        """Stop holding deliveries whose lease ended unsettled (a handler that failed without a
        settle, say): the storage made them ready again or dead, so closing has nothing to give
        back for them, and held for ever they would grow this consumer without bound. They can
        still be settled late. Run when ``_held`` doubled since the last time, so it costs O(1)
        per delivery."""
        now = self._queue._clock()
        held = self._held
        for message in list(held):
            expires = message._expires
            if expires is not None and expires <= now:
                held.pop(message, None)
        self._sweep_at = max(_SWEEP_MIN, 2 * len(held))

    def _watch_last_attempts(self, records: list[Leased], limit: int) -> None:
        """A lease at the last attempt moves its message to the dead-letter queue if it ends
        unsettled, with no call saying so: getters there sleeping past its end must look again
        then (they apply time to this queue, see :meth:`Queue._feed`)."""
        ends = [r.lease_expires_at for r in records if r.attempts >= limit and r.lease_expires_at is not None]
        if ends:
            self._queue._dead_channel().changed(0, min(ends))

    def _reject_undecodable(self, poisoned: list[tuple[Leased, SerializationError]]) -> None:
        queue = self._queue
        now = queue._clock()
        for record, error in poisoned:
            log.warning("mqlite: %s; moved to dead-letter queue %r", error, queue.dead_letter)
            queue._storage.reject(queue._name, [(record.id, record.token)], now, f"undecodable: {error}")
        queue._dead_channel().changed(len(poisoned))
        queue._channel.changed(len(poisoned), settled=True)

    def _release_records(self, records: Sequence[Leased]) -> None:
        queue = self._queue
        queue._storage.release(queue._name, [(r.id, r.token) for r in records], queue._clock())
        queue._channel.changed(len(records))

    def _wait_sync(self, n: int, block: bool, timeout: float | None) -> list[Message[T]]:
        """Lease ``n`` messages, sleeping until one is eligible, the deadline, or close."""
        channel = self._queue._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        duty = relay = False
        while True:
            try:
                taken, waiter, remaining = self._attempt(n, block, deadline, timeout, ThreadWaiter)
            except BaseException:
                if duty or relay:
                    channel.notify(channel.getters, 1, relay)  # hand on what this caller will not do
                raise
            if taken:
                if relay:  # woken for another process's change, and it brought messages: maybe more
                    channel.notify(channel.getters, 1, True)
                return taken
            if waiter is None:
                continue
            try:
                waiter.wait(remaining)
            except BaseException:
                channel.withdraw(channel.getters, waiter, pass_on=True)
                raise
            duty = channel.withdraw(channel.getters, waiter, pass_on=False) or waiter.wake_at != NEVER
            relay = waiter.relay

    def _attempt(
        self,
        n: int,
        block: bool,
        deadline: float | None,
        timeout: float | None,
        make_waiter: Callable[[object], W],
    ) -> tuple[list[Message[T]] | None, W | None, float | None]:
        """One turn of a blocking get: lease, or enlist a waiter and say how long it may sleep.

        Returns ``(messages, None, None)``, or ``(None, waiter, seconds)`` to sleep on the
        waiter, or ``(None, None, None)`` to retry at once (something changed meanwhile).
        Waiters made by ``make_waiter`` are enlisted only if the channel's epoch did not move
        since before the lease attempt (the eventcount check).
        """
        ops = self._queue._ops
        if ops is None:
            return self._attempt_now(n, block, deadline, timeout, make_waiter)
        with ops:  # from the check that the queue is open to the last storage call (see _operations)
            return self._attempt_now(n, block, deadline, timeout, make_waiter)

    def _attempt_now(
        self,
        n: int,
        block: bool,
        deadline: float | None,
        timeout: float | None,
        make_waiter: Callable[[object], W],
    ) -> tuple[list[Message[T]] | None, W | None, float | None]:
        queue = self._queue
        channel = queue._channel
        self._check_open()
        epoch = channel.epoch
        fed_at = queue._feed(queue._clock()) if channel.feeders else None
        taken = self._take(n)
        if taken:
            return taken, None, None
        if taken is not None:  # it leased only bodies it cannot decode (dead-lettered now): again
            return None, None, None
        if not block:
            raise Empty(f"no message is eligible in queue {queue.name!r}")
        remaining = None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                raise Empty(f"no message became eligible in queue {queue.name!r} within {timeout:g}s")
        wake_at = _earliest(queue._storage.next_wakeup(queue._name, queue._clock()), fed_at)
        waiter = make_waiter(self)
        with channel.mutex:
            if channel.epoch != epoch or self._closed or queue._closed:
                return None, None, None
            waiter.wake_at = NEVER if wake_at is None else wake_at
            channel.enlist(channel.getters, waiter)
        if wake_at is not None:
            until = max(wake_at - queue._clock(), 0.0)
            remaining = until if remaining is None else min(remaining, until)
        return None, waiter, remaining

    async def _wait_async(self, n: int, timeout: float | None) -> list[Message[T]]:
        """The async twin of :meth:`_wait_sync`: same algorithm, the coroutine awaits a future."""
        queue = self._queue
        channel = queue._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        duty = relay = False
        while True:
            try:
                if queue._storage.blocking_io:
                    taken, waiter, remaining = await self._attempt_off_loop(n, deadline, timeout)
                else:
                    taken, waiter, remaining = self._attempt(n, True, deadline, timeout, AsyncWaiter)
            except BaseException:
                if duty or relay:
                    channel.notify(channel.getters, 1, relay)  # hand on what this caller will not do
                raise
            if taken:
                if relay:  # woken for another process's change, and it brought messages: maybe more
                    channel.notify(channel.getters, 1, True)
                return taken
            if waiter is None:
                continue
            self._yielded = time.monotonic()
            await _sleep_on(waiter, remaining, channel, channel.getters)
            duty = channel.withdraw(channel.getters, waiter, pass_on=False) or waiter.wake_at != NEVER
            relay = waiter.relay

    async def _attempt_off_loop(
        self, n: int, deadline: float | None, timeout: float | None
    ) -> tuple[list[Message[T]] | None, AsyncWaiter | None, float | None]:
        """:meth:`_attempt` for storages that block: the storage calls run on the I/O threads."""
        with self._queue._ops or NOTHING:  # see _attempt
            return await self._attempt_off_loop_now(n, deadline, timeout)

    async def _attempt_off_loop_now(
        self, n: int, deadline: float | None, timeout: float | None
    ) -> tuple[list[Message[T]] | None, AsyncWaiter | None, float | None]:
        queue = self._queue
        channel = queue._channel
        self._check_open()
        epoch = channel.epoch
        taken = self._unbuffer(n) if self._buffer else None
        if taken and (queue._closed or self._closed):  # close may have released them meanwhile
            deferred: list[Callable[[], None]] = []
            try:
                self._give_back(taken, deferred)
            finally:
                await queue._call(_run_all, deferred)
        fed_at = None
        if not taken:
            if channel.feeders:
                fed_at = await queue._call(queue._feed, queue._clock())
            taken = await self._take_off_loop(n)
            if taken is not None and not taken:  # only undecodable bodies (dead-lettered now): again
                return None, None, None
        if taken:
            return taken, None, None
        remaining = None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                raise Empty(f"no message became eligible in queue {queue.name!r} within {timeout:g}s")
        wake_at = _earliest(await queue._call(queue._storage.next_wakeup, queue._name, queue._clock()), fed_at)
        waiter = AsyncWaiter(self)
        with channel.mutex:
            if channel.epoch != epoch or self._closed or queue._closed:
                return None, None, None
            waiter.wake_at = NEVER if wake_at is None else wake_at
            channel.enlist(channel.getters, waiter)
        if wake_at is not None:
            until = max(wake_at - queue._clock(), 0.0)
            remaining = until if remaining is None else min(remaining, until)
        return None, waiter, remaining

    async def _take_off_loop(self, n: int) -> list[Message[T]] | None:
        """Lease on the I/O thread; if cancelled meanwhile, release what it leased (no attempt)."""
        queue = self._queue
        now = queue._clock()
        records = await queue._call_landing(
            queue._storage.lease,
            (queue._name, max(n, self._prefetch), now, self._lease),
            lambda taken: self._release_records(taken) if taken else None,
        )
        if not records:
            return None
        deferred: list[Callable[[], None]] = []  # a reject or a give-back: storage calls, off the loop
        try:
            taken = self._adopt(records, n, deferred)
        except BaseException:
            if deferred:
                await queue._call(_run_all, deferred)
            raise
        if deferred:
            try:
                await queue._call(_run_all, deferred)
            except asyncio.CancelledError:  # the caller will never receive ``taken``
                await queue._call(self._unreceive, taken)  # submitted at once: runs even if cancelled again
                raise
        return taken

    def get(self, block: bool = True, timeout: float | None = None) -> Message[T]:
        """Receive one message, leasing it to this consumer.

        If ``block`` is true and ``timeout`` is None (the default), wait until a message is
        eligible. If ``timeout`` is a number of seconds, wait at most that long and raise
        :class:`Empty` if none became eligible. If ``block`` is false, return one if it is
        eligible now, else raise :class:`Empty`. Raises :class:`QueueClosed` if the queue or
        this consumer is closed, also while waiting.
        """
        if timeout is not None:
            timeout = _validate.timeout(timeout)
        if block is not True:
            _validate.flag("block", block)
        queue = self._queue
        if not (self._buffer or self._closed or queue._closed or queue._channel.feeders or queue._ops):  # fast path
            records = queue._storage.lease(queue._name, self._prefetch, queue._clock(), self._lease)
            if records:
                messages = self._adopt(records, 1)
                if messages:
                    return messages[0]
        return self._wait_sync(1, block, timeout)[0]

    def get_nowait(self) -> Message[T]:
        """Receive one message if one is eligible now, else raise :class:`Empty`."""
        return self._wait_sync(1, False, None)[0]

    def get_many(self, max_messages: int, timeout: float | None = None) -> list[Message[T]]:
        """Receive up to ``max_messages`` messages: as soon as at least one is eligible, return
        those eligible then. Return [] only when ``timeout`` seconds passed with none."""
        n = _validate.count("max_messages", max_messages)
        try:
            return self._wait_sync(n, True, _validate.timeout(timeout))
        except Empty:
            return []

    async def aget(self, timeout: float | None = None) -> Message[T]:
        """Async :meth:`get`: wait (at most ``timeout`` seconds) for one message.

        Cancelling it never loses a message and never leaves one leased.
        """
        if timeout is not None:
            timeout = _validate.timeout(timeout)
        queue = self._queue
        storage = queue._storage
        if not storage.blocking_io:
            now = time.monotonic()  # _maybe_yield, inline: saves a coroutine per call
            if now - self._yielded > YIELD_EVERY:
                self._yielded = now
                await asyncio.sleep(0)
            if not (self._buffer or self._closed or queue._closed or queue._channel.feeders):  # the fast path
                records = storage.lease(queue._name, self._prefetch, queue._clock(), self._lease)
                if records:
                    messages = self._adopt(records, 1)
                    if messages:
                        return messages[0]
        return (await self._wait_async(1, timeout))[0]

    async def _maybe_yield(self) -> None:
        """Let the loop run other tasks if this consumer's calls kept finding messages for
        over a millisecond. Called *before* taking a message: a cancellation here loses none."""
        now = time.monotonic()
        if now - self._yielded > YIELD_EVERY:
            self._yielded = now
            await asyncio.sleep(0)

    async def aget_many(self, max_messages: int, timeout: float | None = None) -> list[Message[T]]:
        """Async :meth:`get_many`."""
        n = _validate.count("max_messages", max_messages)
        try:
            if not self._queue._storage.blocking_io:
                await self._maybe_yield()
            return await self._wait_async(n, _validate.timeout(timeout))
        except Empty:
            return []

    def __iter__(self) -> Iterator[Message[T]]:
        """Receive messages, blocking for each, until the queue or this consumer is closed.

        A loop left early (``break``, an exception) gives back the prefetched messages it never
        handed out, as :meth:`close` would: their leases would otherwise run out and count as
        failed attempts of messages nobody saw. The message the loop was at stays held."""
        try:
            while True:
                try:
                    yield self.get()
                except QueueClosed:
                    return
        finally:
            if self._buffer:
                self._give_back_buffer()

    async def __aiter__(self) -> AsyncIterator[Message[T]]:
        """Receive messages, awaiting each, until the queue or this consumer is closed. A loop
        left early gives back the prefetched messages it never handed out (see :meth:`__iter__`;
        an ``async for`` loop's generator is finished when it is garbage-collected, or at once
        with ``contextlib.aclosing``)."""
        try:
            while True:
                try:
                    yield await self.aget()
                except QueueClosed:
                    return
        finally:
            if self._buffer:
                if self._queue._storage.blocking_io:
                    await self._queue._call(self._give_back_buffer)
                else:
                    self._give_back_buffer()

    def _give_back_buffer(self) -> None:
        """Release the prefetched messages not handed out yet (ready at once, no attempt
        counted). Each is taken off the buffer with ``popleft``, so a get in another thread
        either receives it or leaves it to here."""
        buffered: list[Message[T]] = []
        while True:
            try:
                buffered.append(self._buffer.popleft())
            except IndexError:
                break
        if buffered:
            with contextlib.suppress(QueueClosed), self._queue._ops or NOTHING:
                self._unreceive(buffered)

    # -- settling (called by Message) --------------------------------------------------------

    def _check_delay(self, delay: float, error: str | None) -> float:
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error must be a str or None, not {type(error).__name__}")
        return _validate.seconds("delay", delay)

    def _check_reason(self, reason: str | None) -> None:
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")

    def _settle_call(self, message: Message[T], verb: Verb, delay: float, text: str | None) -> Callable[[], Outcome]:
        queue = self._queue
        storage = queue._storage
        handles: list[Handle] = [(message.id, message._record.token)]
        name = queue._name
        clock = queue._clock
        if verb == "ack":
            return lambda: storage.ack(name, handles, clock())[0]
        if verb == "nack":
            return lambda: storage.nack(name, handles, clock(), delay, text)[0]
        if verb == "release":
            return lambda: storage.release(name, handles, clock())[0]
        return lambda: storage.reject(name, handles, clock(), text)[0]

    def _settle(self, message: Message[T], verb: Verb, delay: float, text: str | None) -> None:
        queue = self._queue
        if queue._closed:
            self._release_claimed(message)
            raise QueueClosed(f"queue {queue.name!r} is closed; message {message.id} cannot be settled")
        try:
            if verb == "ack":  # the hot path, without building a closure
                record = message._record
                outcome = queue._storage.ack(queue._name, [(record.id, record.token)], queue._clock())[0]
            else:
                outcome = self._settle_call(message, verb, delay, text)()
        except BaseException:
            message._unclaim(False)
            raise
        self._settled(message, verb, delay, outcome)

    def _ack(self, message: Message[T]) -> None:
        """``_settle(message, "ack", ...)`` and, if the storage acked it, what ``_settled`` does
        for an ack, in one frame: the per-message path of ``Message.ack``."""
        queue = self._queue
        if queue._closed:
            self._release_claimed(message)
            raise QueueClosed(f"queue {queue.name!r} is closed; message {message.id} cannot be settled")
        record = message._record
        now = queue._clock()
        try:
            outcome = queue._storage.ack(queue._name, [(record.id, record.token)], now)[0]
        except BaseException:
            message._unclaim(False)
            raise
        expires = message._expires
        if outcome == _DONE and (expires is None or expires > now):  # acked in time: no room freed
            self._held.pop(message, None)
            queue._channel.changed(0 if record.group is None else 1, settled=True)
            return
        self._settled(message, "ack", 0.0, outcome)

    async def _asettle(self, message: Message[T], verb: Verb, delay: float, text: str | None) -> None:
        queue = self._queue
        if queue._closed:
            if queue._storage.blocking_io:
                await queue._call(self._release_claimed, message)
            else:
                self._release_claimed(message)
            raise QueueClosed(f"queue {queue.name!r} is closed; message {message.id} cannot be settled")
        try:
            outcome = await queue._call_landing(
                self._settle_call(message, verb, delay, text),
                (),
                lambda landed: self._settled_after_cancel(message, verb, delay, landed),
                never_ran=lambda: message._unclaim(False),
                failed=lambda: message._unclaim(False),  # as below, for a caller cancelled meanwhile
            )
        except asyncio.CancelledError:
            raise
        except BaseException:
            message._unclaim(False)
            raise
        self._settled(message, verb, delay, outcome)

    def _settled_after_cancel(self, message: Message[T], verb: Verb, delay: float, outcome: Outcome) -> None:
        """A settle whose caller was cancelled landed anyway: account for it all the same."""
        with contextlib.suppress(LeaseLost):
            self._settled(message, verb, delay, outcome)

    def _settled(self, message: Message[T], verb: Verb, delay: float, outcome: Outcome) -> None:
        """After the storage answered: forget the message, report it, wake who may proceed."""
        record = message._record
        self._held.pop(message, None)
        queue = self._queue
        if outcome == _DONE:
            grouped = record.group is not None
            if verb == "ack":
                room = 1 if message._lease_ended(queue._clock()) else 0  # a late ack: it was back in the queue
                queue._channel.changed(1 if grouped else 0, room=room, settled=True)
            elif verb == "release":
                queue._channel.changed(1, settled=True)
            elif verb == "nack":
                limit = queue.max_attempts
                if limit is not None and message.attempts >= limit:
                    queue._dead_channel().changed(1)
                    queue._channel.changed(1 if grouped else 0, settled=True)
                elif delay > 0.0:
                    queue._channel.changed(1 if grouped else 0, queue._clock() + delay, settled=True)
                else:
                    queue._channel.changed(1, settled=True)
            else:  # reject
                queue._dead_channel().changed(1)
                room = 1 if message._lease_ended(queue._clock()) else 0
                queue._channel.changed(1 if grouped else 0, room=room, settled=True)
        elif outcome == _NOOP:
            queue._channel.changed(0, settled=True)
        else:
            message._unclaim(True)
            raise LeaseLost(
                f"message {message.id}: the lease of this delivery ended and the message was "
                "delivered again, dead-lettered or settled elsewhere"
            )

    def _extend_call(self, message: Message[T], seconds: float) -> Callable[[], tuple[Outcome, float]]:
        queue = self._queue

        def call() -> tuple[Outcome, float]:
            now = queue._clock()
            outcome = queue._storage.extend(queue._name, [(message.id, message._record.token)], now, seconds)[0]
            return outcome, now + seconds

        return call

    def _extended(self, message: Message[T], outcome: Outcome, expires: float) -> float:
        if outcome != Outcome.DONE:
            self._held.pop(message, None)
            raise LeaseLost(f"message {message.id}: the lease already ended; it cannot be extended")
        message._expires = expires
        self._queue._channel.changed(0, expires)
        return expires

    def _extend(self, message: Message[T], seconds: float) -> float:
        seconds = _validate.seconds("seconds", seconds)
        with self._queue._ops or NOTHING:
            self._queue._check_open()
            outcome, expires = self._extend_call(message, seconds)()
        return self._extended(message, outcome, expires)

    async def _aextend(self, message: Message[T], seconds: float) -> float:
        seconds = _validate.seconds("seconds", seconds)
        with self._queue._ops or NOTHING:
            self._queue._check_open()
            outcome, expires = await self._queue._call(self._extend_call(message, seconds))
        return self._extended(message, outcome, expires)

    def _renew(self) -> bool:
        """Extend every held message's lease by ``lease`` (the auto-extend keeper's tick).
        Returns whether the consumer still holds messages and wants another tick."""
        try:
            with self._queue._ops or NOTHING:  # a close meanwhile waits for it, not fails it
                return self._renew_now()
        except QueueClosed:
            return False

    def _renew_now(self) -> bool:
        queue = self._queue
        held = list(self._held)
        if not held or self._closed or queue._closed:
            return False
        now = queue._clock()
        outcomes = queue._storage.extend(queue._name, [(m.id, m._record.token) for m in held], now, self._lease)
        expires = now + self._lease
        for message, outcome in zip(held, outcomes, strict=True):
            if outcome == Outcome.DONE:
                message._expires = expires
            else:
                self._held.pop(message, None)
        queue._channel.changed(0, expires)
        return bool(self._held)

    # -- closing ----------------------------------------------------------------------------

    def _release_held(self) -> None:
        """Give back every held message (ready at once, no attempt counted). Called once the
        queue or this consumer is marked closed: each message is taken out of ``_held`` one at
        a time (``popitem``, atomic), so a get adopting a message concurrently either finds it
        taken here or gives it back itself (:meth:`_give_back`), and each is claimed under the
        claim lock, so a settle verb racing with close either settles it or leaves it to here."""
        self._buffer.clear()
        held = self._held
        pending: list[Message[T]] = []
        while held:
            try:
                message, _ = held.popitem()
            except KeyError:  # emptied meanwhile by a concurrent give-back
                break
            if message._claim_release():
                pending.append(message)
        if pending:
            queue = self._queue
            queue._storage.release(queue._name, [(m.id, m._record.token) for m in pending], queue._clock())
            queue._channel.changed(len(pending), settled=True)

    def _release_claimed(self, message: Message[T]) -> None:
        """A verb claimed ``message`` but the queue closed before the verb ran: closing skipped
        it (it was claimed), so it is released here, as closing promises, and not settled."""
        message._settled = "release"
        self._held.pop(message, None)
        self._release_quietly([(message.id, message._record.token)])

    def _give_back(self, messages: list[Message[T]], defer: list[Callable[[], None]] | None) -> None:
        """A get that adopted messages after close drained ``_held``: release those still here
        (not taken by :meth:`_release_held` meanwhile) and raise :class:`QueueClosed`."""
        held = self._held
        taken = [message for message in messages if held.pop(message, _ABSENT) is not _ABSENT]
        pending = [message for message in taken if message._claim_release()]
        if pending:
            _now_or_later(defer, self._release_quietly, [(m.id, m._record.token) for m in pending])
        self._check_open()

    def _unreceive(self, messages: list[Message[T]]) -> None:
        """Give back messages a cancelled get adopted but never returned: ready at once, no
        attempt counted (unless closing took them first)."""
        held = self._held
        pending = [m for m in messages if held.pop(m, _ABSENT) is not _ABSENT and m._claim_release()]
        if pending:
            self._release_quietly([(m.id, m._record.token) for m in pending])

    def _release_quietly(self, handles: list[tuple[int, int]]) -> None:
        """Release ``handles`` of a queue closing: a storage the queue owned may be closed already."""
        queue = self._queue
        with contextlib.suppress(Error):
            queue._storage.release(queue._name, handles, queue._clock())
            queue._channel.changed(len(handles), settled=True)

    def close(self) -> None:
        """Release every message this consumer holds and stop receiving. Idempotent."""
        if self._closed:
            return
        self._closed = True
        queue = self._queue
        try:
            with queue._ops or NOTHING:  # a close of the queue meanwhile waits for these releases
                if not queue._closed:
                    self._release_held()
        except QueueClosed:  # the queue closed its storage: it released what this consumer held
            pass
        if self._auto_extend:
            forget(queue._storage, [self])  # its keeper's thread ends now if nothing else is due
        queue._channel.close_owner(self)

    def __enter__(self) -> Consumer[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Consumer[T]:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._queue._storage.blocking_io:
            await self._queue._call(self.close)
        else:
            self.close()


def _now_or_later(defer: list[Callable[[], None]] | None, action: Callable[..., None], *args: Any) -> None:
    """Run ``action(*args)`` now, or append it to ``defer`` for the caller to run later."""
    if defer is None:
        action(*args)
    else:
        defer.append(functools.partial(action, *args))


def _earliest(first: float | None, second: float | None) -> float | None:
    """The earlier of two optional times (None: never)."""
    if first is None:
        return second
    return first if second is None or first <= second else second


def _run_all(actions: list[Callable[[], None]]) -> None:
    for action in actions:
        action()


async def _sleep_on(waiter: AsyncWaiter, timeout: float | None, channel: Channel, waiters: deque[Waiter]) -> None:
    """Await ``waiter`` for at most ``timeout`` seconds. On cancellation, withdraw it from
    ``waiters``, pass on a wake-up it may have received, and re-raise."""
    future = waiter.future
    timer = None
    if timeout is not None:
        timer = waiter.loop.call_later(timeout, _resolve, future)
    try:
        await future
    except BaseException:
        channel.withdraw(waiters, waiter, pass_on=True)
        raise
    finally:
        if timer is not None:
            timer.cancel()


_SWEEP_MIN: Final = 256
"""The fewest held deliveries at which a consumer looks for ones whose lease ended."""

_consumers: weakref.WeakSet[Consumer[Any]] = weakref.WeakSet()
"""Every consumer of this process, for :func:`_hold_nothing_in_child`."""


def _hold_nothing_in_child() -> None:
    """In a forked child: the messages a consumer holds or has prefetched are deliveries of the
    parent, which goes on settling and handing them out. The child's copy of a consumer holds
    none of them, so closing it there cannot release the parent's leases, and a get there
    cannot hand out a delivery the parent hands out too. (A message object the child was given
    still settles, as any process may settle a delivery it knows.)"""
    for consumer in list(_consumers):
        consumer._buffer = deque()
        consumer._held = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_hold_nothing_in_child)
