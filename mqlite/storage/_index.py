"""The in-memory index of queue state, shared by the memory storage and the file storage.

It implements section 2 of the design with heaps and lazy deletion, so every transition costs
O(log n) and the common FIFO path (priority 0, no group, no delay) costs a heap push and pop of
plain ints. It is not thread-safe: its owner holds a lock around every call.

Invariants, per queue:

* ``entries`` holds every unsettled message (ready, delayed, in flight) by id.
* Every eligible message has its id in ``eligible[priority]``. That heap may also hold stale
  ids and, for a group's head, duplicates (pushed again when its group changes); ``lease``
  validates each id it pops and drops the stale ones, and the duplicates of an id sit together
  at the top once it is the smallest, so the next lease drains them.
* ``delayed`` holds ``(ready_at, id)`` for delayed messages and ``in_flight`` holds
  ``(expires_at, id, token)`` for leases, both with lazy deletion: an item is live only if it
  still matches the entry.
* A group's ``ids`` heap holds the ids of its unsettled messages (plus stale ones, skipped when
  found at the top); ``busy`` is the id of its message in flight, if any.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from .base import (
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
)

READY: Final = 0
DELAYED: Final = 1
IN_FLIGHT: Final = 2

_EMPTY_HEADERS: Mapping[str, str] = {}
_NO_EXPIRY = float("inf")
_DONE: Final = Outcome.DONE  # a module global: reading an enum member off its class costs 50 ns
_tuple_new = tuple.__new__  # builds a Leased without the namedtuple's Python-level __new__ frame
_heappop = heapq.heappop
_heappush = heapq.heappush


class Entry:
    """One unsettled message, kept under its id in ``QueueIndex.entries`` (so it does not store
    the id itself). ``deadline`` is ready_at when delayed, expires_at in flight. ``meta`` is None
    for a plain message (priority 0, no group, no headers), else ``(priority, group, headers)``:
    one slot instead of three, 16 bytes less per message."""

    __slots__ = ("attempts", "body", "deadline", "enqueued_at", "meta", "state", "token")

    def __init__(
        self,
        body: object,
        priority: int,
        group: str | None,
        headers: Mapping[str, str],
        enqueued_at: float,
        state: int,
        deadline: float,
        attempts: int = 0,
        token: int = 0,
    ) -> None:
        self.body = body
        self.meta: tuple[int, str | None, Mapping[str, str]] | None = (
            None if not priority and group is None and not headers else (priority, group, headers)
        )
        self.enqueued_at = enqueued_at
        self.state = state
        self.deadline = deadline
        self.attempts = attempts
        self.token = token

    @property
    def priority(self) -> int:
        meta = self.meta
        return 0 if meta is None else meta[0]

    @property
    def group(self) -> str | None:
        meta = self.meta
        return None if meta is None else meta[1]

    @property
    def headers(self) -> Mapping[str, str]:
        meta = self.meta
        return _EMPTY_HEADERS if meta is None else meta[2]

    def view(self, mid: int, token: int, lease_expires_at: float | None) -> Leased:
        """This message, whose id is ``mid``, as a :class:`Leased` record."""
        meta = self.meta
        if meta is None:
            priority, group, headers = 0, None, _EMPTY_HEADERS
        else:
            priority, group, headers = meta
        return Leased(
            mid, token, self.body, self.attempts, self.enqueued_at, priority, group, headers, lease_expires_at
        )


class _Group:
    __slots__ = ("busy", "ids")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.busy = 0


class QueueIndex:
    """The state of one queue."""

    def __init__(self, spec: QueueSpec) -> None:
        self.spec = spec
        self.entries: dict[int, Entry] = {}
        self.eligible: dict[int, list[int]] = {}
        self.levels: list[int] = []  # priorities with an eligible heap, highest first
        self.delayed: list[tuple[float, int]] = []
        self.in_flight: list[tuple[float, int, int]] = []
        self.groups: dict[str, _Group] = {}
        self.dedup: dict[str, tuple[int, float]] = {}
        self.dedup_order: deque[tuple[float, str]] = deque()
        self.dead_by_source: dict[str, int] = {}
        self.n_ready = 0
        self.n_delayed = 0
        self.n_in_flight = 0

    # -- eligibility -------------------------------------------------------------------------

    def _push_eligible(self, mid: int, priority: int) -> None:
        heap = self.eligible.get(priority)
        if heap is None:
            heap = self.eligible[priority] = []
            self.levels.append(priority)
            self.levels.sort(reverse=True)
        heapq.heappush(heap, mid)

    def _group_head(self, group: _Group) -> Entry | None:
        ids = group.ids
        entries = self.entries
        while ids:
            entry = entries.get(ids[0])
            if entry is not None:
                return entry
            heapq.heappop(ids)
        return None

    def _refresh_group(self, name: str) -> None:
        """After a change in group ``name``: make its head eligible, or forget an empty group."""
        group = self.groups.get(name)
        if group is None or group.busy:
            return
        head = self._group_head(group)
        if head is None:
            del self.groups[name]
        elif head.state == READY:
            self._push_eligible(group.ids[0], head.priority)

    def _became_ready(self, mid: int, entry: Entry) -> None:
        if entry.group is None:
            self._push_eligible(mid, entry.priority)
        else:
            self._refresh_group(entry.group)

    def _is_eligible(self, entry: Entry) -> bool:
        if entry.state != READY:
            return False
        if entry.group is None:
            return True
        group = self.groups[entry.group]
        return not group.busy and self._group_head(group) is entry

    # -- time --------------------------------------------------------------------------------

    def advance(self, now: float, storage: Index) -> None:
        """Apply what time did: due delays become ready, ended leases fail their attempt."""
        delayed = self.delayed
        entries = self.entries
        while delayed and delayed[0][0] <= now:
            ready_at, mid = heapq.heappop(delayed)
            entry = entries.get(mid)
            if entry is not None and entry.state == DELAYED and entry.deadline == ready_at:
                entry.state = READY
                self.n_delayed -= 1
                self.n_ready += 1
                self._became_ready(mid, entry)
        in_flight = self.in_flight
        while in_flight and in_flight[0][0] <= now:
            expires_at, mid, token = heapq.heappop(in_flight)
            entry = entries.get(mid)
            if entry is not None and entry.state == IN_FLIGHT and entry.token == token and entry.deadline == expires_at:
                self._fail_attempt(mid, entry, now, 0.0, "lease expired", storage)

    def next_wakeup(self) -> float | None:
        """The earliest live delay or lease end, dropping stale heap items on the way."""
        entries = self.entries
        delayed = self.delayed
        while delayed:
            ready_at, mid = delayed[0]
            entry = entries.get(mid)
            if entry is not None and entry.state == DELAYED and entry.deadline == ready_at:
                break
            heapq.heappop(delayed)
        self._trim_in_flight()
        in_flight = self.in_flight
        first = min(delayed[0][0] if delayed else _NO_EXPIRY, in_flight[0][0] if in_flight else _NO_EXPIRY)
        return None if first == _NO_EXPIRY else first

    # -- transitions -------------------------------------------------------------------------

    def duplicates(self, envelopes: Sequence[Envelope], now: float) -> dict[int, int] | None:
        """The envelopes a put at ``now`` would not store, by position: the id their dedup key
        names, or, for a key repeated within the batch, ``-1 - position`` of its first envelope
        (None if there are none). Reads the window as it is at ``now``, changing nothing."""
        dedup = self.dedup
        window = self.spec.dedup_window
        duplicates: dict[int, int] | None = None
        batch_keys: dict[str, int] | None = None
        for position, envelope in enumerate(envelopes):
            key = envelope.dedup_key
            if key is None:
                continue
            seen = dedup.get(key)
            if seen is not None and now < seen[1] + window:
                earlier: int | None = seen[0]
            else:
                if batch_keys is None:
                    batch_keys = {}
                earlier = None
                if key in batch_keys:
                    earlier = -1 - batch_keys[key]  # a position in this batch, resolved by put
                else:
                    batch_keys[key] = position
            if earlier is not None:
                if duplicates is None:
                    duplicates = {}
                duplicates[position] = earlier
        return duplicates

    def put(self, envelopes: Sequence[Envelope], now: float, maxsize: int, storage: Index) -> list[int] | None:
        """See :meth:`Storage.put`; ids come from ``storage.take_ids``. The plain single put
        never gets here: :meth:`Index.put` does it inline, saving a call per message."""
        window = self.spec.dedup_window
        dedup = self.dedup
        if dedup:
            order = self.dedup_order
            while order and order[0][0] + window <= now:
                first_at, old_key = order.popleft()
                seen = dedup.get(old_key)
                if seen is not None and seen[1] == first_at:
                    del dedup[old_key]
        duplicates = self.duplicates(envelopes, now)
        fresh = len(envelopes) - (len(duplicates) if duplicates else 0)
        if maxsize and fresh and self.n_ready + self.n_delayed + fresh > maxsize:
            return None
        next_id = storage.take_ids(fresh)
        ids: list[int] = []
        entries = self.entries
        for position, envelope in enumerate(envelopes):
            if duplicates is not None and position in duplicates:
                first = duplicates[position]
                ids.append(first if first >= 0 else ids[-1 - first])
                continue
            mid = next_id
            next_id += 1
            ids.append(mid)
            delay = envelope.delay
            headers = envelope.headers or _EMPTY_HEADERS
            if delay > 0.0:
                ready_at = now + delay
                entry = Entry(envelope.body, envelope.priority, envelope.group, headers, now, DELAYED, ready_at)
                entries[mid] = entry
                heapq.heappush(self.delayed, (ready_at, mid))
                self.n_delayed += 1
            else:
                entry = Entry(envelope.body, envelope.priority, envelope.group, headers, now, READY, now)
                entries[mid] = entry
                self.n_ready += 1
            if envelope.dedup_key is not None:
                dedup[envelope.dedup_key] = (mid, now)
                self.dedup_order.append((now, envelope.dedup_key))
            group_name = envelope.group
            if group_name is None:
                if delay <= 0.0:
                    self._push_eligible(mid, envelope.priority)
            else:
                group = self.groups.get(group_name)
                if group is None:
                    group = self.groups[group_name] = _Group()
                heapq.heappush(group.ids, mid)
                if delay <= 0.0 and not group.busy and self._group_head(group) is entry:
                    self._push_eligible(mid, envelope.priority)
        return ids

    def lease(self, n: int, now: float, lease: float, token: int) -> list[Leased]:
        """See :meth:`Storage.lease`; tokens are ``token``, ``token + 1``, ... The lease of one
        plain ready head is done inline by :meth:`Index.lease`, saving a call per message."""
        taken: list[Leased] = []
        expires_at = now + lease
        entries = self.entries
        levels = self.levels
        while levels and len(taken) < n:
            priority = levels[0]
            heap = self.eligible[priority]
            while heap and len(taken) < n:
                mid = heapq.heappop(heap)
                entry = entries.get(mid)
                if entry is None:
                    continue
                meta = entry.meta
                group = None if meta is None else meta[1]
                if group is None:
                    if entry.state != READY:
                        continue
                elif not self._is_eligible(entry):
                    continue
                entry.state = IN_FLIGHT
                entry.attempts += 1
                entry.token = token
                entry.deadline = expires_at
                if group is not None:
                    self.groups[group].busy = mid
                heapq.heappush(self.in_flight, (expires_at, mid, token))
                taken.append(entry.view(mid, token, expires_at))
                token += 1
            if not heap:
                del self.eligible[priority]
                levels.pop(0)
        self.n_ready -= len(taken)
        self.n_in_flight += len(taken)
        return taken

    def _leave_flight(self, entry: Entry) -> None:
        self.n_in_flight -= 1
        if entry.group is not None:
            self.groups[entry.group].busy = 0

    def _fail_attempt(
        self, mid: int, entry: Entry, now: float, delay: float, error: str | None, storage: Index
    ) -> None:
        """An in-flight delivery failed: ready again after ``delay`` or dead at max_attempts."""
        self._leave_flight(entry)
        limit = self.spec.max_attempts
        if limit is not None and entry.attempts >= limit:
            self._kill(mid, entry, "max_attempts", error, storage)
            return
        self._requeue(mid, entry, now, delay)

    def _requeue(self, mid: int, entry: Entry, now: float, delay: float) -> None:
        if delay > 0.0:
            entry.state = DELAYED
            entry.deadline = now + delay
            heapq.heappush(self.delayed, (entry.deadline, mid))
            self.n_delayed += 1
            if entry.group is not None:
                self._refresh_group(entry.group)
        else:
            entry.state = READY
            entry.deadline = now
            self.n_ready += 1
            self._became_ready(mid, entry)

    def _remove(self, mid: int, entry: Entry) -> None:
        """Forget a settled message (the caller already left its state's count)."""
        del self.entries[mid]
        if entry.group is not None:
            self._refresh_group(entry.group)

    def _kill(self, mid: int, entry: Entry, reason: str, detail: str | None, storage: Index) -> None:
        """Move a message that left flight to the dead-letter queue, keeping its id."""
        self._remove(mid, entry)
        source = entry.headers.get(DEATH_QUEUE)
        if source is not None:  # a dead letter dying again: it no longer counts as dead here
            self._forget_dead(source)
        headers = dict(entry.headers)
        headers[DEATH_REASON] = reason
        headers[DEATH_QUEUE] = self.spec.name
        headers[DEATH_ATTEMPTS] = str(entry.attempts)
        if detail is not None:
            headers[DEATH_DETAIL] = detail
        else:
            headers.pop(DEATH_DETAIL, None)
        dead = storage.queue(self.spec.dead_letter_queue)
        dead.adopt(mid, entry, headers, attempts=0)
        dead.dead_by_source[self.spec.name] = dead.dead_by_source.get(self.spec.name, 0) + 1

    def adopt(self, mid: int, old: Entry, headers: Mapping[str, str], attempts: int) -> None:
        """Take in message ``mid`` from another queue under its id, ready at once."""
        entry = Entry(old.body, old.priority, old.group, headers, old.enqueued_at, READY, old.enqueued_at, attempts)
        self.entries[mid] = entry
        self.n_ready += 1
        if entry.group is not None:
            group = self.groups.get(entry.group)
            if group is None:
                group = self.groups[entry.group] = _Group()
            heapq.heappush(group.ids, mid)
        self._became_ready(mid, entry)

    def settle(
        self,
        handles: Sequence[Handle],
        apply: Callable[[int, Entry, bool], Outcome],
    ) -> list[Outcome]:
        """Run ``apply(id, entry, lease_running)`` for each handle still owning its message."""
        outcomes: list[Outcome] = []
        entries = self.entries
        for mid, token in handles:
            entry = entries.get(mid)
            if entry is None or entry.token != token or token == 0:
                outcomes.append(Outcome.LOST)
            else:
                outcomes.append(apply(mid, entry, entry.state == IN_FLIGHT))
        return outcomes

    def ack_one(self, mid: int, entry: Entry, running: bool) -> Outcome:
        """Ack: allowed while running and after expiry until the next delivery."""
        if running:
            self._leave_flight(entry)
        elif entry.state == READY:
            self.n_ready -= 1
        else:
            self.n_delayed -= 1
        self._remove(mid, entry)
        if running:
            self._trim_in_flight()
        return Outcome.DONE

    def _trim_in_flight(self) -> None:
        """Drop settled leases from the top of the in-flight heap, so it holds about as many
        items as there are messages in flight instead of every lease of the last ``lease``
        seconds (FIFO consumers ack the oldest lease first, which is the top)."""
        in_flight = self.in_flight
        entries = self.entries
        while in_flight:
            expires_at, mid, token = in_flight[0]
            entry = entries.get(mid)
            if entry is not None and entry.state == IN_FLIGHT and entry.token == token and entry.deadline == expires_at:
                return
            heapq.heappop(in_flight)

    def reject_one(self, mid: int, entry: Entry, reason: str | None, storage: Index) -> Outcome:
        """Reject: like ack, but the message goes to the dead-letter queue."""
        if entry.state == IN_FLIGHT:
            self._leave_flight(entry)
        elif entry.state == READY:
            self.n_ready -= 1
        else:
            self.n_delayed -= 1
        self._kill(mid, entry, "rejected", reason, storage)
        return Outcome.DONE

    def redrive_from(self, dead: QueueIndex, max_messages: int | None) -> list[int]:
        """Move dead letters that died here back from ``dead``; see :meth:`Storage.redrive`.
        Returns the ids moved."""
        name = self.spec.name
        movable = sorted(
            mid
            for mid, entry in dead.entries.items()
            if entry.state != IN_FLIGHT and entry.headers.get(DEATH_QUEUE) == name
        )
        if max_messages is not None:
            movable = movable[:max_messages]
        return self.move_back(dead, movable)

    def move_back(self, dead: QueueIndex, movable: Sequence[int]) -> list[int]:
        """Move the dead letters ``movable`` (ids in ``dead``, not in flight) back here."""
        name = self.spec.name
        for mid in movable:
            entry = dead.entries[mid]
            if entry.state == READY:
                dead.n_ready -= 1
            else:
                dead.n_delayed -= 1
            dead._remove(mid, entry)
            headers = {k: v for k, v in entry.headers.items() if k not in DEATH_HEADERS}
            self.adopt(mid, entry, headers or _EMPTY_HEADERS, attempts=0)
        if movable:
            left = dead.dead_by_source.get(name, 0) - len(movable)
            if left > 0:
                dead.dead_by_source[name] = left
            else:
                dead.dead_by_source.pop(name, None)
        return list(movable)

    def purge(self) -> int:
        """Delete every ready and delayed message."""
        doomed = [(mid, entry) for mid, entry in self.entries.items() if entry.state != IN_FLIGHT]
        for mid, entry in doomed:
            del self.entries[mid]
            source = entry.headers.get(DEATH_QUEUE)
            if source is not None:
                self._forget_dead(source)
        self.n_ready = self.n_delayed = 0
        self.eligible.clear()
        self.levels.clear()
        for name in list(self.groups):
            self._refresh_group(name)
        return len(doomed)

    def _forget_dead(self, source: str) -> None:
        """A dead letter from ``source`` left this dead-letter queue (acked or purged)."""
        left = self.dead_by_source.get(source, 0) - 1
        if left > 0:
            self.dead_by_source[source] = left
        else:
            self.dead_by_source.pop(source, None)

    def peek(self, n: int) -> list[Leased]:
        """See :meth:`Storage.peek`."""
        chosen = heapq.nsmallest(n, self.entries.items(), key=lambda item: (-item[1].priority, item[0]))
        return [e.view(mid, 0, e.deadline if e.state == IN_FLIGHT else None) for mid, e in chosen]

    def stats(self, now: float, storage: Index) -> QueueStats:
        """See :meth:`Storage.stats`."""
        oldest: float | None = None
        for entry in self.entries.values():
            if entry.state == READY and (oldest is None or entry.enqueued_at < oldest):
                oldest = entry.enqueued_at
        dead_queue = storage.queues.get(self.spec.dead_letter_queue)
        dead = dead_queue.dead_by_source.get(self.spec.name, 0) if dead_queue is not None else 0
        return QueueStats(
            self.n_ready,
            self.n_delayed,
            self.n_in_flight,
            dead,
            None if oldest is None else max(0.0, now - oldest),
        )


class Index:
    """Every queue of one storage, the id counter and the token counter.

    Ids are unique across the storage (not only per queue) so a dead letter can keep its id in
    its dead-letter queue and return under it.
    """

    def __init__(self) -> None:
        self.queues: dict[str, QueueIndex] = {}
        self.last_id = 0
        self.last_token = 0

    def take_ids(self, count: int) -> int:
        """Reserve ``count`` consecutive ids and return the first."""
        first = self.last_id + 1
        self.last_id += count
        return first

    def queue(self, name: str) -> QueueIndex:
        """The index of queue ``name``, created with default settings if new."""
        index = self.queues.get(name)
        if index is None:
            index = self.queues[name] = QueueIndex(QueueSpec(name, None))
        return index

    def open_queue(self, spec: QueueSpec) -> None:
        """Declare ``spec.name`` with its settings."""
        self.queue(spec.name).spec = spec

    def touch(self, name: str, now: float) -> QueueIndex:
        """The index of queue ``name`` after applying what time did."""
        index = self.queues.get(name)
        if index is None:
            index = self.queue(name)
        if (index.delayed and index.delayed[0][0] <= now) or (index.in_flight and index.in_flight[0][0] <= now):
            index.advance(now, self)
        return index

    # -- the Storage operations, applied to the index -------------------------------------------

    # put, lease and ack test inline what touch would do (a known queue with nothing due):
    # they run once per message, and the call to touch was a tenth of their cost

    def put(self, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int) -> list[int] | None:
        index = self.queues.get(queue)
        if (
            index is None
            or (index.delayed and index.delayed[0][0] <= now)
            or (index.in_flight and index.in_flight[0][0] <= now)
        ):
            index = self.touch(queue, now)
        if len(envelopes) == 1 and not index.dedup:
            envelope = envelopes[0]
            if envelope.dedup_key is None and envelope.group is None and envelope.delay <= 0.0:
                # the common put: one ready message, no group, no dedup bookkeeping to do
                if maxsize and index.n_ready + index.n_delayed >= maxsize:
                    return None
                mid = self.last_id = self.last_id + 1  # take_ids(1), inline
                priority = envelope.priority
                index.entries[mid] = Entry(
                    envelope.body, priority, None, envelope.headers or _EMPTY_HEADERS, now, READY, now
                )
                index.n_ready += 1
                heap = index.eligible.get(priority)
                if heap is None:
                    index._push_eligible(mid, priority)
                else:
                    _heappush(heap, mid)
                return [mid]
        return index.put(envelopes, now, maxsize, self)

    def count_new(self, queue: str, envelopes: Sequence[Envelope], now: float) -> int:
        """See :meth:`Storage.count_new` (the dedup window depends on ``now`` alone: no time
        needs applying first)."""
        index = self.queues.get(queue)
        if index is None:  # no key seen yet: only keys repeated within the batch are duplicates
            keys = [envelope.dedup_key for envelope in envelopes if envelope.dedup_key is not None]
            return len(envelopes) - (len(keys) - len(set(keys)))
        duplicates = index.duplicates(envelopes, now)
        return len(envelopes) - (len(duplicates) if duplicates else 0)

    def lease(self, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        index = self.queues.get(queue)
        if (
            index is None
            or (index.delayed and index.delayed[0][0] <= now)
            or (index.in_flight and index.in_flight[0][0] <= now)
        ):
            index = self.touch(queue, now)
        token = self.last_token + 1
        if n == 1 and index.levels:
            # the common lease: one message, the head of the top heap plain (no group, priority
            # 0, no headers) and ready; anything else (stale id, group head) takes the loop below
            priority = index.levels[0]
            heap = index.eligible[priority]
            mid = heap[0]
            entry = index.entries.get(mid)
            if entry is not None and entry.meta is None and entry.state == READY:
                _heappop(heap)
                if not heap:
                    del index.eligible[priority]
                    index.levels.pop(0)
                expires_at = now + lease
                entry.state = IN_FLIGHT
                attempts = entry.attempts = entry.attempts + 1
                entry.token = token
                entry.deadline = expires_at
                _heappush(index.in_flight, (expires_at, mid, token))
                index.n_ready -= 1
                index.n_in_flight += 1
                record: Leased = _tuple_new(
                    Leased,
                    (mid, token, entry.body, attempts, entry.enqueued_at, 0, None, _EMPTY_HEADERS, expires_at),
                )
                self.last_token = token
                return [record]
        taken = index.lease(n, now, lease, token)
        self.last_token += len(taken)
        return taken

    def ack(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        index = self.queues.get(queue)
        if (
            index is None
            or (index.delayed and index.delayed[0][0] <= now)
            or (index.in_flight and index.in_flight[0][0] <= now)
        ):
            index = self.touch(queue, now)
        if len(handles) == 1:  # the common case: one plain message, its lease running
            mid, token = handles[0]
            entry = index.entries.get(mid)
            if (
                entry is not None
                and token
                and entry.token == token
                and entry.state == IN_FLIGHT
                and (entry.meta is None or (entry.meta[1] is None and not entry.meta[2]))
            ):
                index.n_in_flight -= 1
                entries = index.entries
                del entries[mid]
                in_flight = index.in_flight  # _trim_in_flight, inline
                while in_flight:
                    expires_at, top, top_token = in_flight[0]
                    entry = entries.get(top)
                    if (
                        entry is not None
                        and entry.state == IN_FLIGHT
                        and entry.token == top_token
                        and entry.deadline == expires_at
                    ):
                        break
                    _heappop(in_flight)
                return [_DONE]

        def apply(mid: int, entry: Entry, running: bool) -> Outcome:
            source = entry.headers.get(DEATH_QUEUE) if entry.headers else None
            outcome = index.ack_one(mid, entry, running)
            if source is not None:
                index._forget_dead(source)
            return outcome

        return index.settle(handles, apply)

    def nack(self, queue: str, handles: Sequence[Handle], now: float, delay: float, error: str | None) -> list[Outcome]:
        index = self.touch(queue, now)

        def apply(mid: int, entry: Entry, running: bool) -> Outcome:
            if not running:
                return Outcome.NOOP
            index._fail_attempt(mid, entry, now, delay, error, self)
            return Outcome.DONE

        return index.settle(handles, apply)

    def release(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        index = self.touch(queue, now)

        def apply(mid: int, entry: Entry, running: bool) -> Outcome:
            if not running:
                return Outcome.NOOP
            index._leave_flight(entry)
            entry.attempts -= 1
            index._requeue(mid, entry, now, 0.0)
            return Outcome.DONE

        return index.settle(handles, apply)

    def reject(self, queue: str, handles: Sequence[Handle], now: float, reason: str | None) -> list[Outcome]:
        index = self.touch(queue, now)

        def apply(mid: int, entry: Entry, running: bool) -> Outcome:
            return index.reject_one(mid, entry, reason, self)  # _kill forgets a dead letter's old death

        return index.settle(handles, apply)

    def extend(self, queue: str, handles: Sequence[Handle], now: float, seconds: float) -> list[Outcome]:
        index = self.touch(queue, now)

        def apply(mid: int, entry: Entry, running: bool) -> Outcome:
            if not running:
                return Outcome.LOST
            entry.deadline = now + seconds
            heapq.heappush(index.in_flight, (entry.deadline, mid, entry.token))
            return Outcome.DONE

        return index.settle(handles, apply)

    def redrive(self, queue: str, now: float, max_messages: int | None) -> int:
        return len(self.redrive_moving(queue, now, max_messages))

    def redrive_moving(self, queue: str, now: float, max_messages: int | None) -> list[int]:
        """:meth:`redrive`, returning the ids moved (the file log records them)."""
        index = self.touch(queue, now)
        dead = self.touch(index.spec.dead_letter_queue, now)
        return index.redrive_from(dead, max_messages)

    # -- replaying a log by id (FileStorage) ----------------------------------------------------

    def lease_ids(self, queue: str, ids: Sequence[int], now: float, lease: float, first_token: int) -> list[int]:
        """Lease exactly the messages ``ids`` (tokens ``first_token``, ``first_token + 1``, ...),
        as a ``lease`` call that returned them did; return the ids this index does not hold
        (the replayer decides whether that is allowed). A known id must be ready."""
        index = self.touch(queue, now)
        entries = index.entries
        expires_at = now + lease
        unknown: list[int] = []
        token = first_token
        for mid in ids:
            entry = entries.get(mid)
            if entry is None:
                unknown.append(mid)
            else:
                if entry.state != READY:
                    raise ValueError(f"message {mid} is not ready to be leased")
                entry.state = IN_FLIGHT
                entry.attempts += 1
                entry.token = token
                entry.deadline = expires_at
                if entry.group is not None:
                    index.groups[entry.group].busy = mid
                heapq.heappush(index.in_flight, (expires_at, mid, token))
                index.n_ready -= 1
                index.n_in_flight += 1
            token += 1  # the eligible heaps keep the id: a later lease skips it while it is not ready
        self.last_token = max(self.last_token, first_token + len(ids) - 1)
        return unknown

    def redrive_ids(self, queue: str, ids: Sequence[int], now: float) -> list[int]:
        """Move exactly the dead letters ``ids`` back to ``queue``, as a ``redrive`` that moved
        them did; return the ids the dead-letter queue does not hold."""
        index = self.touch(queue, now)
        dead = self.touch(index.spec.dead_letter_queue, now)
        known = [mid for mid in ids if mid in dead.entries]
        unknown = [mid for mid in ids if mid not in dead.entries]
        for mid in known:
            if dead.entries[mid].state == IN_FLIGHT or dead.entries[mid].headers.get(DEATH_QUEUE) != queue:
                raise ValueError(f"message {mid} is not a dead letter of {queue!r} to move")
        index.move_back(dead, known)
        return unknown

    def recount_dead(self) -> None:
        """Set every queue's count of dead letters per source from the messages it holds: a log
        replayed from after deleted segments skips settles of messages it never saw."""
        for queue in self.queues.values():
            counts: dict[str, int] = {}
            for entry in queue.entries.values():
                source = entry.headers.get(DEATH_QUEUE) if entry.headers else None
                if source is not None:
                    counts[source] = counts.get(source, 0) + 1
            queue.dead_by_source = counts

    def min_live_id(self) -> int | None:
        """The smallest id of a message held in any queue (None if none is)."""
        return min((min(queue.entries) for queue in self.queues.values() if queue.entries), default=None)

    def purge(self, queue: str, now: float) -> int:
        return self.touch(queue, now).purge()

    def peek(self, queue: str, n: int, now: float) -> list[Leased]:
        return self.touch(queue, now).peek(n)

    def counts(self, queue: str, now: float) -> tuple[int, int, int]:
        index = self.touch(queue, now)
        return index.n_ready, index.n_delayed, index.n_in_flight

    def stats(self, queue: str, now: float) -> QueueStats:
        return self.touch(queue, now).stats(now, self)

    def next_wakeup(self, queue: str, now: float) -> float | None:
        return self.touch(queue, now).next_wakeup()
