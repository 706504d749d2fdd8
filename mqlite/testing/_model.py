"""``ReferenceModel``: the delivery rules (``docs/semantics.md``) written as plainly as possible.

This is the oracle of the conformance suite. It is a complete :class:`~mqlite.storage.Storage`
(so it can even back a ``Queue``), but it is written for obviousness, not speed: each queue is a
plain dict of message records, every question is answered by scanning it, and time is applied
at the start of each call exactly as :class:`~mqlite.storage.Storage` describes. It shares no
code with the real index.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, final

from ..storage.base import (
    DEATH_ATTEMPTS,
    DEATH_DETAIL,
    DEATH_HEADERS,
    DEATH_QUEUE,
    DEATH_REASON,
    Envelope,
    Handle,
    Leased,
    Outcome,
    QueueSpec,
    QueueStats,
    Storage,
)

__all__ = ["ReferenceModel"]

READY = "ready"
DELAYED = "delayed"
IN_FLIGHT = "in_flight"


@dataclass
class _Message:
    """One unsettled message in one queue."""

    id: int
    body: object
    priority: int
    group: str | None
    headers: dict[str, str]
    enqueued_at: float
    state: str = READY
    ready_at: float = 0.0  # when state is DELAYED
    expires_at: float = 0.0  # when state is IN_FLIGHT
    attempts: int = 0
    delivery: int = 0  # the token of the last delivery; 0 = never delivered in this queue

    def record(self, token: int) -> Leased:
        return Leased(
            self.id,
            token,
            self.body,
            self.attempts,
            self.enqueued_at,
            self.priority,
            self.group,
            dict(self.headers),
            self.expires_at if self.state == IN_FLIGHT else None,
        )


@dataclass
class _Queue:
    """One queue: its settings, its unsettled messages and the dedup keys it saw."""

    spec: QueueSpec
    messages: dict[int, _Message] = field(default_factory=dict)
    dedup: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (id, first put at)

    def count(self, state: str) -> int:
        return sum(1 for m in self.messages.values() if m.state == state)


@final
class ReferenceModel(Storage):
    """The reference model of the delivery rules (``docs/semantics.md``): an obviously correct, slow storage.

    The conformance state machine runs it side by side with the storage under test and
    compares every answer. Rules, as the :class:`~mqlite.storage.Storage` docstrings state them:

    * Each call on a queue first applies time to that queue only: delayed messages with
      ``ready_at <= now`` are ready; a lease with ``expires_at <= now`` is a failed attempt
      (ready again, or dead-lettered with reason ``max_attempts`` and detail ``lease expired``
      once ``attempts >= max_attempts``). ``redrive`` applies time to the queue, then to its
      dead-letter queue.
    * Ids are unique across the storage and never reused; a dead letter keeps its id, with
      ``attempts`` reset to 0 in the dead-letter queue and ``x-death-*`` headers added.
    * A handle ``(id, token)`` is valid while the message is in this queue and its last
      delivery has that token. While the lease runs every verb is DONE. Once the lease ended
      (expired, nacked or released) and before the message is delivered again, dead-lettered or
      deleted: ack and reject are DONE, nack and release are NOOP, extend is LOST. Any other
      handle is LOST.
    * Tokens are the model's own delivery numbers (1, 2, ...); another storage's tokens differ,
      so compare deliveries, not token values.
    """

    blocking_io: ClassVar[bool] = False
    requires_bytes: ClassVar[bool] = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.queues: dict[str, _Queue] = {}
        self.last_id = 0
        self.last_token = 0

    def __repr__(self) -> str:
        return f"<ReferenceModel queues={sorted(self.queues)}>"

    # -- helpers ------------------------------------------------------------------------------

    def _queue(self, name: str) -> _Queue:
        if name not in self.queues:
            self.queues[name] = _Queue(QueueSpec(name, None))
        return self.queues[name]

    def _touch(self, name: str, now: float) -> _Queue:
        """The queue ``name`` after applying what time did to it."""
        queue = self._queue(name)
        for message in sorted(queue.messages.values(), key=lambda m: m.id):
            if message.state == DELAYED and message.ready_at <= now:
                message.state = READY
        for message in sorted(queue.messages.values(), key=lambda m: m.id):
            if message.state == IN_FLIGHT and message.expires_at <= now:
                self._fail(queue, message, 0.0, "lease expired", now)
        return queue

    def _fail(self, queue: _Queue, message: _Message, delay: float, error: str | None, now: float) -> None:
        """A delivery failed: dead at max_attempts, else ready again (after ``delay``)."""
        limit = queue.spec.max_attempts
        if limit is not None and message.attempts >= limit:
            self._kill(queue, message, "max_attempts", error)
        elif delay > 0:
            message.state = DELAYED
            message.ready_at = now + delay
        else:
            message.state = READY

    def _kill(self, queue: _Queue, message: _Message, reason: str, detail: str | None) -> None:
        """Move ``message`` to the dead-letter queue of ``queue`` under its id."""
        del queue.messages[message.id]
        headers = dict(message.headers)
        headers[DEATH_REASON] = reason
        headers[DEATH_QUEUE] = queue.spec.name
        headers[DEATH_ATTEMPTS] = str(message.attempts)
        if detail is None:
            headers.pop(DEATH_DETAIL, None)
        else:
            headers[DEATH_DETAIL] = detail
        dead = self._queue(queue.spec.dead_letter_queue)
        dead.messages[message.id] = _Message(
            message.id, message.body, message.priority, message.group, headers, message.enqueued_at
        )

    @staticmethod
    def _eligible(queue: _Queue, message: _Message) -> bool:
        if message.state != READY:
            return False
        if message.group is None:
            return True
        same_group = [m for m in queue.messages.values() if m.group == message.group]
        if any(m.state == IN_FLIGHT for m in same_group):
            return False
        return min(m.id for m in same_group) == message.id

    def _settle(self, queue: _Queue, handle: Handle) -> tuple[_Message | None, bool]:
        """The message a handle still owns (or None), and whether its lease is running."""
        mid, token = handle
        message = queue.messages.get(mid)
        if message is None or token == 0 or message.delivery != token:
            return None, False
        return message, message.state == IN_FLIGHT

    # -- the Storage interface ----------------------------------------------------------------

    def open_queue(self, spec: QueueSpec) -> None:
        with self._lock:
            self._queue(spec.name).spec = spec

    @staticmethod
    def _plan(q: _Queue | None, envelopes: Sequence[Envelope], now: float) -> list[int | None]:
        """For each envelope, which earlier id it repeats: None for a new message, else the
        earlier id, or ``-1 - position`` of the batch's first envelope with its key."""
        seen = {} if q is None else {k: mid for k, (mid, first) in q.dedup.items() if now < first + q.spec.dedup_window}
        plan: list[int | None] = []
        batch: dict[str, int] = {}
        for position, envelope in enumerate(envelopes):
            key = envelope.dedup_key
            if key is not None and key in seen:
                plan.append(seen[key])
            elif key is not None and key in batch:
                plan.append(-1 - batch[key])
            else:
                plan.append(None)
                if key is not None:
                    batch[key] = position
        return plan

    def count_new(self, queue: str, envelopes: Sequence[Envelope], now: float) -> int:
        with self._lock:
            return self._plan(self.queues.get(queue), envelopes, now).count(None)

    def put(self, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int = 0) -> list[int] | None:
        with self._lock:
            q = self._touch(queue, now)
            plan = self._plan(q, envelopes, now)
            fresh = plan.count(None)
            if maxsize > 0 and fresh and q.count(READY) + q.count(DELAYED) + fresh > maxsize:
                return None
            ids: list[int] = []
            for envelope, earlier in zip(envelopes, plan, strict=True):
                if earlier is not None:
                    ids.append(earlier if earlier >= 0 else ids[-1 - earlier])
                    continue
                self.last_id += 1
                message = _Message(
                    self.last_id,
                    envelope.body,
                    envelope.priority,
                    envelope.group,
                    dict(envelope.headers or {}),
                    now,
                )
                if envelope.delay > 0:
                    message.state = DELAYED
                    message.ready_at = now + envelope.delay
                q.messages[message.id] = message
                if envelope.dedup_key is not None:
                    q.dedup[envelope.dedup_key] = (message.id, now)
                ids.append(message.id)
            return ids

    def lease(self, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        with self._lock:
            q = self._touch(queue, now)
            taken: list[Leased] = []
            while len(taken) < n:
                eligible = [m for m in q.messages.values() if self._eligible(q, m)]
                if not eligible:
                    break
                message = min(eligible, key=lambda m: (-m.priority, m.id))
                self.last_token += 1
                message.state = IN_FLIGHT
                message.attempts += 1
                message.delivery = self.last_token
                message.expires_at = now + lease
                taken.append(message.record(self.last_token))
            return taken

    def ack(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        with self._lock:
            q = self._touch(queue, now)
            outcomes = []
            for handle in handles:
                message, _running = self._settle(q, handle)
                if message is None:
                    outcomes.append(Outcome.LOST)
                else:
                    del q.messages[message.id]
                    outcomes.append(Outcome.DONE)
            return outcomes

    def nack(self, queue: str, handles: Sequence[Handle], now: float, delay: float, error: str | None) -> list[Outcome]:
        with self._lock:
            q = self._touch(queue, now)
            outcomes = []
            for handle in handles:
                message, running = self._settle(q, handle)
                if message is None:
                    outcomes.append(Outcome.LOST)
                elif not running:
                    outcomes.append(Outcome.NOOP)
                else:
                    self._fail(q, message, delay, error, now)
                    outcomes.append(Outcome.DONE)
            return outcomes

    def release(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        with self._lock:
            q = self._touch(queue, now)
            outcomes = []
            for handle in handles:
                message, running = self._settle(q, handle)
                if message is None:
                    outcomes.append(Outcome.LOST)
                elif not running:
                    outcomes.append(Outcome.NOOP)
                else:
                    message.attempts -= 1
                    message.state = READY
                    outcomes.append(Outcome.DONE)
            return outcomes

    def reject(self, queue: str, handles: Sequence[Handle], now: float, reason: str | None) -> list[Outcome]:
        with self._lock:
            q = self._touch(queue, now)
            outcomes = []
            for handle in handles:
                message, _running = self._settle(q, handle)
                if message is None:
                    outcomes.append(Outcome.LOST)
                else:
                    self._kill(q, message, "rejected", reason)
                    outcomes.append(Outcome.DONE)
            return outcomes

    def extend(self, queue: str, handles: Sequence[Handle], now: float, seconds: float) -> list[Outcome]:
        with self._lock:
            q = self._touch(queue, now)
            outcomes = []
            for handle in handles:
                message, running = self._settle(q, handle)
                if message is None or not running:
                    outcomes.append(Outcome.LOST)
                else:
                    message.expires_at = now + seconds
                    outcomes.append(Outcome.DONE)
            return outcomes

    def redrive(self, queue: str, now: float, max_messages: int | None) -> int:
        with self._lock:
            q = self._touch(queue, now)
            dead = self._touch(q.spec.dead_letter_queue, now)
            movable = sorted(
                mid
                for mid, m in dead.messages.items()
                if m.state != IN_FLIGHT and m.headers.get(DEATH_QUEUE) == q.spec.name
            )
            if max_messages is not None:
                movable = movable[:max_messages]
            for mid in movable:
                old = dead.messages.pop(mid)
                headers = {k: v for k, v in old.headers.items() if k not in DEATH_HEADERS}
                q.messages[mid] = _Message(mid, old.body, old.priority, old.group, headers, old.enqueued_at)
            return len(movable)

    def purge(self, queue: str, now: float) -> int:
        with self._lock:
            q = self._touch(queue, now)
            doomed = [mid for mid, m in q.messages.items() if m.state != IN_FLIGHT]
            for mid in doomed:
                del q.messages[mid]
            return len(doomed)

    def peek(self, queue: str, n: int, now: float) -> list[Leased]:
        with self._lock:
            q = self._touch(queue, now)
            ordered = sorted(q.messages.values(), key=lambda m: (-m.priority, m.id))
            return [m.record(0) for m in ordered[:n]]

    def counts(self, queue: str, now: float) -> tuple[int, int, int]:
        with self._lock:
            q = self._touch(queue, now)
            return q.count(READY), q.count(DELAYED), q.count(IN_FLIGHT)

    def stats(self, queue: str, now: float) -> QueueStats:
        with self._lock:
            q = self._touch(queue, now)
            ready = [m.enqueued_at for m in q.messages.values() if m.state == READY]
            dead = self.queues.get(q.spec.dead_letter_queue)
            messages = dead.messages.values() if dead is not None else ()
            died_here = [m for m in messages if m.headers.get(DEATH_QUEUE) == q.spec.name]
            return QueueStats(
                q.count(READY),
                q.count(DELAYED),
                q.count(IN_FLIGHT),
                len(died_here),
                max(0.0, now - min(ready)) if ready else None,
            )

    def next_wakeup(self, queue: str, now: float) -> float | None:
        with self._lock:
            q = self._touch(queue, now)
            times = [m.ready_at for m in q.messages.values() if m.state == DELAYED]
            times += [m.expires_at for m in q.messages.values() if m.state == IN_FLIGHT]
            return min(times) if times else None

    # -- for the state machine ------------------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Every queue the model knows, each after every queue that dead-letters into it."""
        with self._lock:
            remaining = sorted(self.queues)
            order: list[str] = []
            while remaining:
                targets = {self.queues[name].spec.dead_letter_queue for name in remaining}
                sources = [name for name in remaining if name not in targets] or remaining[:1]
                order += sources
                remaining = [name for name in remaining if name not in sources]
            return order
