"""The storage interface: the small set of atomic state transitions every storage implements.

The front (``mqlite.Queue`` and its handles) does the waiting, the wake-ups, serialization and
argument checking; a storage only keeps the state of section 2 of the design and moves
messages between states, one atomic call at a time. A storage never looks at a clock (every
call receives ``now`` from the queue's clock, so tests can use a fake one) and never knows about
threads or asyncio. It must be safe to call from many threads at once.

Ids, attempts and lease tokens are the storage's to define, so an SQL storage can choose and
lease eligible messages in one statement. The conformance state machine in
:mod:`mqlite.testing` checks any implementation against the reference model.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Self

__all__ = [
    "DEATH_ATTEMPTS",
    "DEATH_DETAIL",
    "DEATH_HEADERS",
    "DEATH_QUEUE",
    "DEATH_REASON",
    "Envelope",
    "Handle",
    "Leased",
    "Outcome",
    "QueueSpec",
    "QueueStats",
    "Storage",
]

DEATH_REASON = "x-death-reason"
"""Header on a dead letter: ``"rejected"`` or ``"max_attempts"``."""
DEATH_QUEUE = "x-death-queue"
"""Header on a dead letter: the queue it died in, where ``redrive`` returns it."""
DEATH_DETAIL = "x-death-detail"
"""Header on a dead letter: the reason given to ``reject``, the error given to the last ``nack``,
or ``"lease expired"``; absent when none is known."""
DEATH_ATTEMPTS = "x-death-attempts"
"""Header on a dead letter: how many deliveries it had, as a decimal string."""
DEATH_HEADERS = (DEATH_REASON, DEATH_QUEUE, DEATH_DETAIL, DEATH_ATTEMPTS)


class QueueSpec(NamedTuple):
    """The per-queue settings a storage needs to apply the rules on its own.

    A lease can end while nobody calls in, and the storage applies the consequence (ready
    again, or dead-lettered after ``max_attempts``) at its next call, so it must know them.
    """

    name: str
    max_attempts: int | None = 10
    dead_letter: str = ""
    dedup_window: float = 300.0

    @property
    def dead_letter_queue(self) -> str:
        """The dead-letter queue's name (``name + ".dead"`` unless set)."""
        return self.dead_letter or self.name + ".dead"


class Envelope(NamedTuple):
    """One message to put: body (bytes for storages that require bytes) and options."""

    body: object
    priority: int = 0
    group: str | None = None
    dedup_key: str | None = None
    headers: Mapping[str, str] | None = None
    delay: float = 0.0


class Leased(NamedTuple):
    """One stored message as a storage reports it: a delivery from ``lease`` or a ``peek``.

    ``token`` identifies the delivery (0 for a peek); settle calls must present it.
    ``lease_expires_at`` is ``None`` unless the message is in flight.
    """

    id: int
    token: int
    body: object
    attempts: int
    enqueued_at: float
    priority: int
    group: str | None
    headers: Mapping[str, str]
    lease_expires_at: float | None


Handle = tuple[int, int]
"""``(message id, lease token)``: what a settle call names."""


class Outcome(enum.IntEnum):
    """What a settle call did to one message."""

    DONE = 0
    """The transition happened."""
    NOOP = 1
    """Nothing to do: the lease had ended and the message is already back (nack, release)."""
    LOST = 2
    """This delivery no longer owns the message; nothing changed."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of one queue's counts.

    ``dead`` counts the messages in its dead-letter queue that died in this queue.
    ``oldest_ready_age`` is the age in seconds of the oldest ready message, or ``None``.
    """

    ready: int
    delayed: int
    in_flight: int
    dead: int
    oldest_ready_age: float | None


LIMIT_MAX = 2**31 - 1
"""The largest count a storage needs to honour as such (``n`` of lease and peek, redrive's
``max_messages``, ``max_attempts``): the front refuses larger ones, and storages that store or
bind them treat a larger one, from a direct caller, as this (no queue holds that many)."""


class Storage(abc.ABC):
    """Base class of every storage: atomic state transitions on named queues.

    One storage holds many queues. Every method takes the queue's name (or its
    :class:`QueueSpec`) and ``now``, the caller's clock reading, and first applies what time has
    done: delayed messages whose time came are ready, leases that ended are failed attempts
    (ready again at once, or dead-lettered at ``max_attempts``).

    Eligibility and order (the heart of the contract): a message is *eligible* when it is ready
    and, if it has a group, it is the lowest-id unsettled message of its group and no message of
    the group is in flight. ``lease`` takes eligible messages by highest priority, then lowest id.

    Subclasses implement every abstract method; each must be atomic (all or nothing) and safe to
    call from several threads at once.
    """

    blocking_io: ClassVar[bool] = True
    """Whether calls may block on I/O. False lets async methods call in directly on the loop."""

    requires_bytes: ClassVar[bool] = True
    """Whether bodies must be bytes. False lets queues keep objects by reference."""

    @abc.abstractmethod
    def open_queue(self, spec: QueueSpec) -> None:
        """Declare a queue and its settings; later calls name it by ``spec.name``.

        Opening again with other settings replaces them. A queue never opened (a dead-letter
        queue reached only through dead-lettering) behaves as ``QueueSpec(name, None)``.
        """

    @abc.abstractmethod
    def put(self, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int = 0) -> list[int] | None:
        """Store a batch atomically and return one id per envelope, in order.

        New messages get consecutive ids, higher than any id the storage gave before. An
        envelope whose ``dedup_key`` was put in this queue less than ``dedup_window`` seconds
        before ``now`` (counting from that first put) stores nothing and returns the first id.
        With ``maxsize`` > 0, if the batch has new messages and the queue's ready + delayed count
        plus those would exceed it, store nothing and return ``None`` (a batch of duplicates
        only needs no room).
        """

    def count_new(self, queue: str, envelopes: Sequence[Envelope], now: float) -> int:
        """How many of ``envelopes`` a :meth:`put` at ``now`` would store: all but those whose
        ``dedup_key`` is in the queue's window (or repeats a key earlier in the batch).

        The front asks only when a batch with dedup keys found no room, to wait for room for
        its new messages alone. Optional: the default, ``len(envelopes)``, makes such a batch
        wait for room for all of it, never wrongly, sometimes longer than needed."""
        return len(envelopes)

    @abc.abstractmethod
    def lease(self, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        """Take up to ``n`` eligible messages in delivery order and lease them until now + lease.

        Each delivery increments ``attempts`` and gets a new token. Returns [] if none is
        eligible. Taking a grouped message makes the rest of its group ineligible, so a batch
        holds at most one message per group.
        """

    @abc.abstractmethod
    def ack(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        """Delete messages: DONE while the delivery holds the lease, or after it ended and
        before the message was delivered again; otherwise LOST."""

    @abc.abstractmethod
    def nack(self, queue: str, handles: Sequence[Handle], now: float, delay: float, error: str | None) -> list[Outcome]:
        """Fail the attempts: ready again at now + delay, or dead-lettered (``max_attempts``)
        with ``error`` as detail. NOOP if the lease already ended and the message is back;
        LOST if it was delivered again, dead-lettered or settled."""

    @abc.abstractmethod
    def release(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        """Give messages back, ready at once, taking this delivery off ``attempts``.
        NOOP if the lease already ended and the message is back; otherwise as ``nack``."""

    @abc.abstractmethod
    def reject(self, queue: str, handles: Sequence[Handle], now: float, reason: str | None) -> list[Outcome]:
        """Dead-letter messages at once (reason ``rejected``, ``reason`` as detail): allowed
        while the lease runs and after it ended until the message is delivered again."""

    @abc.abstractmethod
    def extend(self, queue: str, handles: Sequence[Handle], now: float, seconds: float) -> list[Outcome]:
        """Move the lease's end to now + seconds; LOST unless the lease is still running."""

    @abc.abstractmethod
    def redrive(self, queue: str, now: float, max_messages: int | None) -> int:
        """Move up to ``max_messages`` (None: all) dead letters that died in ``queue`` back to it,
        in id order, under their ids, ready, with ``attempts`` reset and death headers removed.
        Dead letters in flight in the dead-letter queue stay. Returns how many moved."""

    @abc.abstractmethod
    def purge(self, queue: str, now: float) -> int:
        """Delete every ready and delayed message (not those in flight); return how many."""

    @abc.abstractmethod
    def peek(self, queue: str, n: int, now: float) -> list[Leased]:
        """Up to ``n`` unsettled messages (ready, delayed, in flight) by priority then id,
        changing nothing. Tokens are 0."""

    @abc.abstractmethod
    def counts(self, queue: str, now: float) -> tuple[int, int, int]:
        """``(ready, delayed, in_flight)``, cheaply: what qsize, empty, full and join need."""

    @abc.abstractmethod
    def stats(self, queue: str, now: float) -> QueueStats:
        """The queue's :class:`QueueStats`."""

    @abc.abstractmethod
    def next_wakeup(self, queue: str, now: float) -> float | None:
        """The earliest time after ``now`` at which time alone changes the queue (a delay or
        a lease ends), or None. Blocked callers sleep until then."""

    def watch(self, changed: Callable[[], None], waiting: Callable[[], bool]) -> Callable[[], None] | None:
        """Subscribe to changes that other processes make (the front calls this once per
        storage and process); return a function to call whenever a caller starts waiting, or
        None if nothing but this process's own calls changes the storage (the default).

        A storage shared by processes must, while ``waiting()`` is true, follow every change
        made elsewhere by a call of ``changed()`` (from any thread, holding no lock of its
        own); without that, a caller blocked here would not wake for a message put elsewhere.
        Looking periodically, that means comparing each look with the one before, and counting
        the first look after a pause (nobody waited) as a change.
        """
        return None

    def close(self) -> None:  # noqa: B027 - closing is optional for storages holding nothing
        """Release what the storage holds (connections, files, locks). Idempotent."""

    def __enter__(self) -> Self:
        """``with SQLiteStorage(path) as store:``: the storage, closed when the block ends."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
