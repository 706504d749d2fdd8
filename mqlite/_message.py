"""``Message``: an immutable view of one delivery, with the verbs that settle it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, final

from typing_extensions import TypeVar

from ._errors import Error, LeaseLost
from ._operations import NOTHING

if TYPE_CHECKING:
    from ._consumer import Consumer
    from .storage.base import Leased

__all__ = ["Message"]

T = TypeVar("T", default=Any)  # a Queue made without a type is a Queue[Any], as DESIGN.md writes it

Verb = Literal["ack", "nack", "release", "reject"]

log = logging.getLogger("mqlite")

_claim_lock = threading.Lock()


def _new_claim_lock() -> None:
    """In a forked child: a claim lock held by a parent's thread at the fork would stay held."""
    global _claim_lock
    _claim_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_claim_lock)
_LOST = "lost"


@final
class Message(Generic[T]):
    """One delivery of a message: its body and metadata, and the verbs that settle it.

    Settle each delivery exactly once: ``ack`` (done), ``nack`` (failed attempt, retried),
    ``release`` (given back, not counted), ``reject`` (poison, dead-lettered); ``extend`` keeps
    the lease longer. Repeating the verb that settled it does nothing; any other verb then
    raises :class:`LeaseLost`. ``with msg:`` acks on a clean exit, nacks on an exception, and
    releases on KeyboardInterrupt, SystemExit or a cancelled task (a stop, not a failure).

    Messages are made by ``get`` and ``peek``; a peeked message's verbs raise ``LeaseLost``.
    """

    __slots__ = ("_body", "_consumer", "_expires", "_record", "_settled")

    def __init__(self, record: Leased, body: T, consumer: Consumer[T] | None) -> None:
        self._record = record
        self._body = body
        self._consumer = consumer
        self._expires = record.lease_expires_at
        self._settled: str | None = None

    @property
    def id(self) -> int:
        """The message id: unique in its storage, increasing with put order."""
        return self._record.id

    @property
    def body(self) -> T:
        """The body, as the producer put it (decoded by the queue's serializer)."""
        return self._body

    @property
    def attempts(self) -> int:
        """How many times the message was delivered, this delivery included (1 the first time)."""
        return self._record.attempts

    @property
    def enqueued_at(self) -> float:
        """When the message was put, in the queue clock's seconds."""
        return self._record.enqueued_at

    @property
    def priority(self) -> int:
        """The priority it was put with (higher is delivered first)."""
        return self._record.priority

    @property
    def group(self) -> str | None:
        """Its ordering group, or None."""
        return self._record.group

    @property
    def headers(self) -> Mapping[str, str]:
        """Its headers (read-only). Dead letters carry ``x-death-*`` headers saying why."""
        headers = self._record.headers
        return headers if isinstance(headers, MappingProxyType) else MappingProxyType(dict(headers))

    @property
    def lease_expires_at(self) -> float | None:
        """When this delivery's lease ends (queue clock). For a message from ``peek()``: when its
        current lease ends if it is in flight, else None."""
        return self._expires

    def __repr__(self) -> str:
        state = f" {self._settled}" if self._settled else ""
        return f"<Message id={self.id} attempts={self.attempts}{state} body={self._body!r:.60}>"

    # -- settling ---------------------------------------------------------------------------

    def _claim(self, verb: Verb) -> bool:
        """Mark this delivery settled by ``verb``; False if it already was by the same verb."""
        if self._consumer is None:
            raise LeaseLost(f"message {self.id} came from peek() and holds no lease")
        self._consumer._queue._check_open()
        with _claim_lock:
            settled = self._settled
            if settled is None:
                self._settled = verb
                return True
        if settled == verb:
            return False
        if settled == _LOST:
            raise LeaseLost(f"message {self.id}: this delivery lost its lease")
        raise LeaseLost(f"message {self.id} was already settled with {settled}()")

    def _claim_release(self) -> bool:
        """Claim this delivery for the release that closing does; False if a verb claimed it
        first (that verb then settles it, or gives it back if the queue closed meanwhile)."""
        with _claim_lock:
            if self._settled is None:
                self._settled = "release"
                return True
            return False

    def _lease_ended(self, now: float) -> bool:
        """Whether this delivery's lease ended by ``now``: then the storage had made the message
        ready again, so settling it (a late ack or reject) frees a place under maxsize."""
        expires = self._expires
        return expires is not None and expires <= now

    def _claim_lost(self) -> bool:
        """Mark a prefetched delivery whose lease ended before it was handed out as lost;
        False if closing claimed it first (to release it)."""
        with _claim_lock:
            if self._settled is None:
                self._settled = _LOST
                return True
            return False

    def _unclaim(self, lost: bool) -> None:
        """The storage refused (lost) or failed: record it, or let the verb be retried."""
        self._settled = _LOST if lost else None

    def _consumer_or_lost(self) -> Consumer[T]:
        if self._consumer is None:
            raise LeaseLost(f"message {self.id} came from peek() and holds no lease")
        return self._consumer

    def ack(self) -> None:
        """Done: delete the message. Works after the lease ended, until it is delivered again."""
        consumer = self._consumer
        if consumer is not None and consumer._queue._ops is not None:
            with consumer._queue._ops:  # claimed and settled within one operation (see _operations)
                if self._claim("ack"):
                    consumer._ack(self)
            return
        if consumer is not None and not consumer._queue._closed:
            lock = _claim_lock  # acquire/release: half the cost of ``with`` on the per-message path
            lock.acquire()
            try:
                settled = self._settled
                if settled is None:
                    self._settled = "ack"
            finally:
                lock.release()
            if settled is None:
                consumer._ack(self)
                return
        if self._claim("ack") and consumer is not None:  # peeked, repeated, or raced with a failed settle
            consumer._ack(self)

    def nack(self, delay: float = 0.0, *, error: str | None = None) -> None:
        """Failed attempt: ready again after ``delay`` seconds, or dead-lettered if this was
        attempt ``max_attempts``; ``error`` is kept as the dead letter's detail."""
        consumer = self._consumer_or_lost()
        delay = consumer._check_delay(delay, error)
        with consumer._queue._ops or NOTHING:
            if self._claim("nack"):
                consumer._settle(self, "nack", delay, error)

    def release(self) -> None:
        """Give the message back, ready at once, without counting this delivery as an attempt."""
        consumer = self._consumer
        with NOTHING if consumer is None else consumer._queue._ops or NOTHING:
            if self._claim("release"):
                self._consumer_or_lost()._settle(self, "release", 0.0, None)

    def reject(self, reason: str | None = None) -> None:
        """Poison: move the message to the dead-letter queue now, with ``reason`` in its headers."""
        consumer = self._consumer_or_lost()
        consumer._check_reason(reason)
        with consumer._queue._ops or NOTHING:
            if self._claim("reject"):
                consumer._settle(self, "reject", 0.0, reason)

    def extend(self, seconds: float) -> float:
        """Keep the lease until now + ``seconds``; return the new end. Raises LeaseLost if the
        lease already ended or the delivery was settled."""
        consumer = self._consumer_or_lost()
        consumer._queue._check_open()
        if self._settled is not None:
            consumer._queue._check_open()  # released by a close that began meanwhile: say so
            raise LeaseLost(f"message {self.id} was already settled with {self._settled}()")
        return consumer._extend(self, seconds)

    async def aack(self) -> None:
        """Async :meth:`ack`."""
        consumer = self._consumer
        if consumer is not None and not consumer._queue._storage.blocking_io:
            self.ack()  # microseconds: no reason to leave the loop
            return
        with NOTHING if consumer is None else consumer._queue._ops or NOTHING:
            if self._claim("ack"):
                await self._consumer_or_lost()._asettle(self, "ack", 0.0, None)

    async def anack(self, delay: float = 0.0, *, error: str | None = None) -> None:
        """Async :meth:`nack`."""
        consumer = self._consumer_or_lost()
        delay = consumer._check_delay(delay, error)
        with consumer._queue._ops or NOTHING:
            if self._claim("nack"):
                await consumer._asettle(self, "nack", delay, error)

    async def arelease(self) -> None:
        """Async :meth:`release`."""
        consumer = self._consumer
        with NOTHING if consumer is None else consumer._queue._ops or NOTHING:
            if self._claim("release"):
                await self._consumer_or_lost()._asettle(self, "release", 0.0, None)

    async def areject(self, reason: str | None = None) -> None:
        """Async :meth:`reject`."""
        consumer = self._consumer_or_lost()
        consumer._check_reason(reason)
        with consumer._queue._ops or NOTHING:
            if self._claim("reject"):
                await consumer._asettle(self, "reject", 0.0, reason)

    async def aextend(self, seconds: float) -> float:
        """Async :meth:`extend`."""
        consumer = self._consumer_or_lost()
        consumer._queue._check_open()
        if self._settled is not None:
            consumer._queue._check_open()  # released by a close that began meanwhile: say so
            raise LeaseLost(f"message {self.id} was already settled with {self._settled}()")
        return await consumer._aextend(self, seconds)

    # -- context managers -------------------------------------------------------------------

    def __enter__(self) -> Message[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        """Ack on a clean exit. On an exception, nack with its text; on a stop that is not the
        message's fault (KeyboardInterrupt, SystemExit, a cancelled task), release it, so no
        attempt is counted. A settle failing while the block's exception propagates is logged,
        not raised in its place."""
        if self._settled is not None:
            return
        if error is None:
            self.ack()
            return
        try:
            if isinstance(error, Exception):
                self.nack(error=_describe(error))
            else:
                self.release()
        except Error as failure:
            _log_exit_failure(self, failure, error)

    async def __aenter__(self) -> Message[T]:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Async :meth:`__exit__`: the same rules with the async verbs."""
        if self._settled is not None:
            return
        if error is None:
            await self.aack()
            return
        try:
            if isinstance(error, Exception):
                await self.anack(error=_describe(error))
            else:
                await self.arelease()
        except Error as failure:
            _log_exit_failure(self, failure, error)


def _describe(error: BaseException) -> str:
    return f"{type(error).__qualname__}: {error}"[:1000]


def _log_exit_failure(message: Message[T], failure: Error, error: BaseException) -> None:
    log.warning(
        "mqlite: message %d: settling it on the way out of `with` failed (%s); re-raising the block's %s",
        message.id,
        failure,
        type(error).__qualname__,
    )
