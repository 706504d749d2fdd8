"""A hypothesis state machine for the front: Queue, Consumer and Message against the reference model.

The storage machine (``mqlite.testing``) proves storages keep the delivery rules; this one drives
what the front adds on top of a storage - prefetch buffers, each delivery's settle state, held
counts, maxsize and dedup at put, ``consumer.close()``, a dead-letter queue's view of deaths by
lease end - through the public API only, single-threaded, on one ``MemoryStorage`` (and the
same machine on an ``SQLiteStorage`` and a ``FileStorage``) and a ``FakeClock``. Every front
call is mirrored as the storage calls it stands for on a :class:`ReferenceModel` (the oracle);
the front's own bookkeeping (a consumer's buffer, each delivery's settled state) is mirrored
here in a few lines. Time is applied to every queue of
the model at every step, as the contract says: a lease that ends unsettled fails at that
moment, whoever calls next. Independent checks on top: no two live deliveries of one id or one
group, batches in priority-then-id order, Full exactly at qsize() >= maxsize, nothing lost.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule

import mqlite
from mqlite.storage import Envelope, Leased, Outcome, QueueSpec
from mqlite.testing import FakeClock, ReferenceModel

LOST = "lost"  # a delivery's settled state once the front found its lease lost
FAR = 10_000.0  # seconds: past every delay, lease and extension the machine makes

_priority = st.sampled_from([0, 0, 0, 1, 2, -1])
_group = st.sampled_from([None, None, "g1", "g2"])
_delay = st.sampled_from([0.0, 0.0, 0.0, 0.5, 3.0])
_dedup_key = st.sampled_from([None, None, "k1", "k2"])
_headers = st.sampled_from([None, None, {"h": "1"}])
_front_index = st.integers(0, 2)  # an index into the fronts, the dead-letter queue last (taken modulo)
_max_attempts = st.sampled_from([None, 1, 2, 3])
_maxsize = st.sampled_from([0, 0, 2, 3])
_queue_lease = st.sampled_from([1.0, 5.0, 30.0])
_window = st.sampled_from([300.0, 5.0])
_consumer_lease = st.sampled_from([None, 0.5, 2.0, 10.0])
_get_how = st.sampled_from(["get_nowait", "get_nowait", "get(block=False)", "get(timeout=0)", "get_many"])
_verb = st.sampled_from(["ack", "ack", "nack", "release", "reject", "extend"])
_amount = st.sampled_from([0.0, 0.0, 0.5, 5.0, 60.0])  # a nack delay, or extend seconds


@dataclass(eq=False)
class Front:
    """One ``Queue`` object and the settings the model needs to mirror it."""

    queue: mqlite.Queue[str]
    name: str
    maxsize: int
    lease: float
    window: float

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} maxsize={self.maxsize} lease={self.lease:g}>"


@dataclass(eq=False)
class Taker:
    """Who gets messages: a ``Consumer``, or a ``Queue``'s own get methods (``consumer`` None)."""

    front: Front
    consumer: mqlite.Consumer[str] | None
    prefetch: int
    lease: float
    buffer: deque[Delivery] = field(default_factory=deque)  # leased, not yet handed out
    deliveries: list[Delivery] = field(default_factory=list)
    closed: bool = False

    def __repr__(self) -> str:
        if self.consumer is None:
            return f"<{self.front.name!r} itself>"
        return f"<consumer of {self.front.name!r} prefetch={self.prefetch} lease={self.lease:g}>"


@dataclass(eq=False)
class Delivery:
    """One delivery as the model knows it, and the ``Message`` the front handed out for it."""

    taker: Taker
    record: Leased  # the model's record (model token, attempts, headers, ...)
    expires: float
    message: mqlite.Message[str] | None = None  # None while it waits in a prefetch buffer
    settled: str | None = None  # None, the verb that settled it, or LOST
    held: bool = True  # counted by consumer.held

    @property
    def id(self) -> int:
        return self.record.id

    def __repr__(self) -> str:
        return f"<delivery {self.id}#{self.record.token}>"


class FrontMachine(RuleBasedStateMachine):
    """One or two source queues and their dead-letter queue, as ``Queue`` objects on one storage."""

    takers = Bundle("takers")
    deliveries = Bundle("deliveries")

    def make_storage(self) -> mqlite.storage.Storage:
        """The storage the fronts share (the subclasses below run the machine on the others)."""
        return mqlite.MemoryStorage()

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.storage = self.make_storage()
        self.model = ReferenceModel()
        self.fronts: list[Front] = []
        self.all_takers: list[Taker] = []
        self.bodies: dict[int, str] = {}
        self.dedup: dict[tuple[str, str], tuple[int, float]] = {}  # (queue, key) -> (id, first put)
        self.put_ids: set[int] = set()
        self.acked: set[int] = set()
        self.purged: set[int] = set()
        self.serial = 0
        self.handed = 0  # deliveries handed out so far (the deliveries bundle's size)

    # -- helpers ---------------------------------------------------------------------------

    def _front(self, index: int) -> Front:
        return self.fronts[index % len(self.fronts)]

    def _now(self) -> float:
        """The time, after applying it to every queue of the model (sources before their
        dead-letter queues): what the contract promises whoever calls."""
        now = self.clock()
        for name in self.model.queue_names():
            self.model.counts(name, now)
        return now

    def _body(self) -> str:
        self.serial += 1
        return f"m{self.serial}"

    def _qsize(self, name: str, now: float) -> int:
        ready, delayed, _ = self.model.counts(name, now)
        return ready + delayed

    def _added(self, front: Front, ids: list[int], bodies: list[str], key: str | None, now: float) -> None:
        for mid, body in zip(ids, bodies, strict=True):
            assert mid not in self.put_ids, f"put returned id {mid} twice"
            self.put_ids.add(mid)
            self.bodies[mid] = body
        if key is not None:
            self.dedup[front.name, key] = (ids[0], now)

    def _gone(self, mid: int) -> None:
        assert mid not in self.acked, f"message {mid} was acked twice"
        self.acked.add(mid)

    def _same_message(self, message: mqlite.Message[str], record: Leased, expires: float | None) -> None:
        got = (
            message.id,
            message.body,
            message.attempts,
            message.enqueued_at,
            message.priority,
            message.group,
            dict(message.headers),
            message.lease_expires_at,
        )
        want = (
            record.id,
            self.bodies[record.id],
            record.attempts,
            record.enqueued_at,
            record.priority,
            record.group,
            dict(record.headers),
            expires,
        )
        assert got == want, f"front {got}\n model {want}"

    def _take(self, taker: Taker, n: int, now: float) -> list[Delivery]:
        """What a get of up to ``n`` messages hands out: live buffered deliveries first (one
        whose lease ended is failed by the storage and dropped, never handed out), else a new
        lease of max(n, prefetch) messages whose surplus waits in the buffer."""
        taken: list[Delivery] = []
        while taker.buffer and len(taken) < n:
            delivery = taker.buffer.popleft()
            if delivery.expires <= now:
                event("get: a prefetched delivery expired in the buffer")
                delivery.settled, delivery.held = LOST, False
                continue
            taken.append(delivery)
        if taken:
            event("get: handed out from the prefetch buffer")
            return taken
        records = self.model.lease(taker.front.name, max(n, taker.prefetch), now, taker.lease)
        order = [(-r.priority, r.id) for r in records]
        assert order == sorted(order), f"one lease is not in priority-then-id order: {records}"
        fresh = [Delivery(taker, r, now + taker.lease) for r in records]
        taker.deliveries += fresh
        taker.buffer.extend(fresh[n:])
        return fresh[:n]

    def _settle_model(self, delivery: Delivery, verb: str, amount: float, now: float) -> str:
        """What a settle verb of ``delivery`` must do, per the settling rules of DESIGN.md:
        "ok" or "LeaseLost"; updates the model and the delivery's state."""
        name = delivery.taker.front.name
        handles = [(delivery.id, delivery.record.token)]
        if verb == "extend":
            if delivery.settled is not None:
                return "LeaseLost"
            if self.model.extend(name, handles, now, amount)[0] == Outcome.DONE:
                delivery.expires = now + amount
                return "ok"
            delivery.held = False
            return "LeaseLost"
        if delivery.settled == verb:
            return "ok"  # repeating the verb that settled it: a no-op
        if delivery.settled is not None:
            return "LeaseLost"
        if verb == "ack":
            outcome = self.model.ack(name, handles, now)[0]
        elif verb == "nack":
            outcome = self.model.nack(name, handles, now, amount, "boom")[0]
        elif verb == "release":
            outcome = self.model.release(name, handles, now)[0]
        else:
            outcome = self.model.reject(name, handles, now, "poison")[0]
        delivery.held = False
        if outcome == Outcome.LOST:
            delivery.settled = LOST
            return "LeaseLost"
        delivery.settled = verb
        if verb == "ack" and outcome == Outcome.DONE:
            self._gone(delivery.id)
        return "ok"

    def _put_one(
        self,
        front: Front,
        how: str,
        priority: int,
        group: str | None,
        delay: float,
        dedup_key: str | None,
        headers: dict[str, str] | None,
    ) -> None:
        """Put one message. Under maxsize, Full comes exactly when a new message finds
        qsize() >= maxsize; a duplicate (its key put within the window) returns the earlier
        id, enqueues nothing and never raises Full, even if the earlier message is gone."""
        now = self._now()
        first = self.dedup.get((front.name, dedup_key)) if dedup_key is not None else None
        earlier = first[0] if first is not None and now < first[1] + front.window else None
        full = earlier is None and front.maxsize > 0 and self._qsize(front.name, now) >= front.maxsize
        body = self._body()
        envelope = Envelope(body, priority, group, dedup_key, headers, delay)
        want = self.model.put(front.name, [envelope], now, front.maxsize)
        assert (want is None) == full, f"the model itself disagrees: put {want}, full={full}"
        queue = front.queue
        options: dict[str, Any] = {
            "delay": delay,
            "priority": priority,
            "group": group,
            "dedup_key": dedup_key,
            "headers": headers,
        }
        if how == "put" and front.maxsize:
            how = "put_nowait"  # a blocking put may wait for room: forever, if the front is wrong
        calls: dict[str, Callable[[], int]] = {
            "put": lambda: queue.put(body, **options),
            "put_nowait": lambda: queue.put_nowait(body, **options),
            "put(timeout=0)": lambda: queue.put(body, timeout=0, **options),
        }
        event("put: Full" if want is None else "put: a duplicate" if earlier is not None else "put: new")
        if want is None:
            with pytest.raises(mqlite.Full):
                calls[how]()
            return
        got = calls[how]()
        assert got == want[0], f"{how} returned id {got}, the model {want[0]}"
        if earlier is not None:
            assert got == earlier, f"a duplicate of {dedup_key!r} got id {got}, not {earlier}"
        else:
            self._added(front, [got], [body], dedup_key, now)

    def _put_many(self, front: Front, how: str, n: int, priority: int, group: str | None, delay: float) -> None:
        """Put a batch under consecutive ids, all or nothing: Full (nothing enqueued) when
        it does not fit under maxsize, ValueError when it never could."""
        now = self._now()
        bodies = [self._body() for _ in range(n)]
        queue = front.queue
        options: dict[str, Any] = {"delay": delay, "priority": priority, "group": group}
        if front.maxsize and n > front.maxsize:
            with pytest.raises(ValueError, match="maxsize"):
                queue.put_many(bodies, block=False, **options)
            return
        full = front.maxsize > 0 and self._qsize(front.name, now) + n > front.maxsize
        envelopes = [Envelope(body, priority, group, None, None, delay) for body in bodies]
        want = self.model.put(front.name, envelopes, now, front.maxsize)
        assert (want is None) == full, f"the model itself disagrees: put {want}, full={full}"
        if how == "put_many" and front.maxsize:
            how = "put_many(block=False)"  # a blocking put may wait for room: forever, if the front is wrong
        calls: dict[str, Callable[[], list[int]]] = {
            "put_many": lambda: queue.put_many(bodies, **options),
            "put_many(block=False)": lambda: queue.put_many(bodies, block=False, **options),
            "put_many(timeout=0)": lambda: queue.put_many(bodies, timeout=0, **options),
        }
        if want is None:
            with pytest.raises(mqlite.Full):
                calls[how]()
            return
        got = calls[how]()
        assert got == want, f"{how} returned ids {got}, the model {want}"
        self._added(front, got, bodies, None, now)

    def _get(self, taker: Taker, how: str, n: int) -> list[Delivery]:
        """Receive without waiting, from a queue or a consumer. What comes out is what the
        model leases (priority, then id, among eligible messages; group heads only), or
        what is still live in the consumer's prefetch buffer; each is live when handed out."""
        now = self._now()
        source: Any = taker.front.queue if taker.consumer is None else taker.consumer
        if how != "get_many":
            n = 1
        calls: dict[str, Callable[[], list[mqlite.Message[str]]]] = {
            "get_nowait": lambda: [source.get_nowait()],
            "get(block=False)": lambda: [source.get(block=False)],
            "get(timeout=0)": lambda: [source.get(timeout=0)],
            "get_many": lambda: source.get_many(n, timeout=0),
        }
        if taker.closed:
            with pytest.raises(mqlite.QueueClosed):
                calls[how]()
            return []
        expected = self._take(taker, n, now)
        if how == "get_many" or expected:
            got = calls[how]()  # get_many(timeout=0) returns [] when nothing is eligible
        else:
            with pytest.raises(mqlite.Empty):
                calls[how]()
            got = []
        assert [m.id for m in got] == [d.id for d in expected], (
            f"{taker!r}.{how} at {now} handed out {[m.id for m in got]}, expected {[d.id for d in expected]}"
        )
        for delivery, message in zip(expected, got, strict=True):
            self._same_message(message, delivery.record, delivery.expires)
            expires = message.lease_expires_at
            assert expires is not None
            assert expires > now, f"message {message.id} handed out with its lease over"
            assert message.id not in self.acked | self.purged, f"message {message.id} came back after it was gone"
            delivery.message = message
            self.handed += 1
            if taker.front is self.fronts[-1]:
                event("get: a dead letter")
        return expected

    def _settle(self, delivery: Delivery, verb: str, amount: float) -> None:
        """Settle a delivery, current or stale, once or again: ack, nack (``amount`` = delay),
        release, reject or extend (``amount`` = seconds). LeaseLost exactly when the settling
        rules say so; a refused verb changes nothing."""
        now = self._now()
        want = self._settle_model(delivery, verb, amount, now)
        message = delivery.message
        assert message is not None
        result = None
        try:
            if verb == "ack":
                message.ack()
            elif verb == "nack":
                message.nack(amount, error="boom")
            elif verb == "release":
                message.release()
            elif verb == "reject":
                message.reject("poison")
            else:
                result = message.extend(amount)
            got = "ok"
        except mqlite.LeaseLost:
            got = "LeaseLost"
        assert got == want, f"{verb} of {delivery!r} at {now}: {got}, expected {want}"
        event(f"settle: {verb} -> {got}")
        if verb == "extend" and got == "ok":
            assert result == message.lease_expires_at == now + amount

    # -- rules -----------------------------------------------------------------------------

    @initialize(
        target=takers,
        layout=st.sampled_from(["one", "two fronts of one queue", "two queues"]),
        attempts=st.tuples(_max_attempts, _max_attempts),
        maxsizes=st.tuples(_maxsize, _maxsize, st.sampled_from([0, 0, 2])),
        leases=st.tuples(_queue_lease, _queue_lease),
        windows=st.tuples(_window, _window),
        prefetch=st.integers(2, 3),
        lease=_consumer_lease,
        seed=st.lists(st.tuples(_priority, _group, _delay), min_size=2, max_size=8),
    )
    def open_queues(
        self,
        layout: str,
        attempts: tuple[int | None, int | None],
        maxsizes: tuple[int, int, int],
        leases: tuple[float, float],
        windows: tuple[float, float],
        prefetch: int,
        lease: float | None,
        seed: list[tuple[int, str | None, float]],
    ) -> Any:
        """Open queue a (once, or as two Queue objects with their own maxsize and lease), or a
        and b sharing the dead-letter queue dlq; then the dead-letter queue as a Queue. Put a
        few messages and open one consumer of a, so that every run has something to do."""
        names = {"one": ["a"], "two fronts of one queue": ["a", "a"], "two queues": ["a", "b"]}[layout]
        dead = "dlq" if layout == "two queues" else "a.dead"
        for i, name in enumerate(names):
            j = 0 if name == "a" else 1  # the queue's own settings: two fronts of a share them
            queue: mqlite.Queue[str] = mqlite.Queue(
                name,
                self.storage,
                maxsize=maxsizes[i],
                lease=leases[i],
                max_attempts=attempts[j],
                dead_letter=None if dead == name + ".dead" else dead,
                dedup_window=windows[j],
                clock=self.clock,
            )
            self.model.open_queue(QueueSpec(name, attempts[j], dead, windows[j]))
            self.fronts.append(Front(queue, name, maxsizes[i], leases[i], windows[j]))
        dead_queue: mqlite.Queue[str] = mqlite.Queue(
            dead, self.storage, maxsize=maxsizes[2], lease=10.0, max_attempts=None, clock=self.clock
        )
        self.model.open_queue(QueueSpec(dead, None, dead + ".dead", 300.0))
        self.fronts.append(Front(dead_queue, dead, maxsizes[2], 10.0, 300.0))
        for i, (priority, group, delay) in enumerate(seed):
            self._put_one(self.fronts[i % (len(self.fronts) - 1)], "put_nowait", priority, group, delay, None, None)
        self.all_takers = [Taker(front, None, 1, front.lease) for front in self.fronts]
        return multiple(*self.all_takers, self.open_consumer(0, prefetch, lease))

    @precondition(lambda self: len(self.all_takers) < len(self.fronts) + 4)
    @rule(target=takers, f=_front_index, prefetch=st.integers(1, 3), lease=_consumer_lease)
    def open_consumer(self, f: int, prefetch: int, lease: float | None) -> Taker:
        """A consumer with its own prefetch and lease (None: the queue's)."""
        front = self._front(f)
        consumer = front.queue.consumer(lease=lease, prefetch=prefetch)
        assert consumer.held == 0
        taker = Taker(front, consumer, prefetch, front.lease if lease is None else lease)
        self.all_takers.append(taker)
        return taker

    @rule(
        f=_front_index,
        how=st.sampled_from(
            [
                "put",
                "put_nowait",
                "put_nowait",
                "put(timeout=0)",
                "put_many",
                "put_many(block=False)",
                "put_many(timeout=0)",
            ]
        ),
        n=st.integers(1, 4),
        priority=_priority,
        group=_group,
        delay=_delay,
        dedup_key=_dedup_key,
        headers=_headers,
    )
    def produce(
        self,
        f: int,
        how: str,
        n: int,
        priority: int,
        group: str | None,
        delay: float,
        dedup_key: str | None,
        headers: dict[str, str] | None,
    ) -> None:
        """Put one message (with a dedup key, sometimes) or a batch of ``n``."""
        front = self._front(f)
        if how.startswith("put_many"):
            self._put_many(front, how, n, priority, group, delay)
        else:
            self._put_one(front, how, priority, group, delay, dedup_key, headers)

    @rule(target=deliveries, taker=takers, how=_get_how, n=st.integers(1, 3))
    def get(self, taker: Taker, how: str, n: int) -> Any:
        """Receive up to n messages without waiting and keep them: they may be settled later,
        on time or stale, or never."""
        return multiple(*self._get(taker, how, n))

    @rule(
        target=deliveries,
        taker=takers,
        how=_get_how,
        n=st.integers(1, 3),
        when=st.sampled_from(["now", "half", "lease", "late"]),
        verb=st.sampled_from(["ack", "ack", "nack", "release", "reject", "extend", "leave"]),
        amount=_amount,
    )
    def work(self, taker: Taker, how: str, n: int, when: str, verb: str, amount: float) -> Any:
        """The common path: receive, work for a while (none, half the lease, exactly the
        lease, past it), then settle what was received with one verb, or leave it."""
        received = self._get(taker, how, n)
        if received:
            self.clock.advance(
                {"now": 0.0, "half": taker.lease / 2, "lease": taker.lease, "late": taker.lease + 1}[when]
            )
            if verb != "leave":
                for delivery in received:
                    self._settle(delivery, verb, amount)
        return multiple(*received)

    @rule(delivery=deliveries, verb=_verb, amount=_amount)
    def settle(self, delivery: Delivery, verb: str, amount: float) -> None:
        """Settle any delivery ever handed out: current or stale, once or again."""
        self._settle(delivery, verb, amount)

    @precondition(lambda self: self.handed > 0)
    @rule(f=_front_index, batch=st.lists(deliveries, min_size=1, max_size=4))
    def ack_many(self, f: int, batch: list[Delivery]) -> None:
        """``Queue.ack_many``: a message of another Queue object (ValueError) or one settled
        with another verb (LeaseLost) refuses the whole batch; acked ones are skipped; lost
        leases are reported together after the others were acked."""
        front = self._front(f)
        now = self._now()
        claimed: list[Delivery] = []
        refused: type[Exception] | None = None
        for delivery in batch:
            if delivery.taker.front is not front:
                refused = ValueError
            elif delivery.settled == "ack":
                continue
            elif delivery.settled is not None:
                refused = mqlite.LeaseLost
            else:
                delivery.settled = "ack"
                claimed.append(delivery)
                continue
            break
        messages = [d.message for d in batch]
        if refused is not None:
            for delivery in claimed:
                delivery.settled = None
            match = "another queue" if refused is ValueError else "already settled|lease"
            with pytest.raises(refused, match=match):
                front.queue.ack_many(messages)
            return
        lost = False
        if claimed:
            outcomes = self.model.ack(front.name, [(d.id, d.record.token) for d in claimed], now)
            for delivery, outcome in zip(claimed, outcomes, strict=True):
                delivery.held = False
                if outcome == Outcome.LOST:
                    delivery.settled, lost = LOST, True
                else:
                    self._gone(delivery.id)
        if lost:
            with pytest.raises(mqlite.LeaseLost, match="the others were acked"):
                front.queue.ack_many(messages)
        else:
            front.queue.ack_many(messages)

    @rule(taker=takers, look=st.booleans())
    def close_consumer(self, taker: Taker, look: bool) -> None:
        """``consumer.close()`` gives back every message it holds, prefetched ones too: ready
        at once, no attempt counted (their later deliveries show the attempts); idempotent."""
        if taker.consumer is None:
            return
        now = self._now()
        if not taker.closed:
            taker.closed = True
            taker.buffer.clear()
            handles = []
            for delivery in taker.deliveries:
                if delivery.held:
                    delivery.held = False
                    if delivery.settled is None:
                        delivery.settled = "release"
                        handles.append((delivery.id, delivery.record.token))
            if handles:
                self.model.release(taker.front.name, handles, now)
        taker.consumer.close()
        assert taker.consumer.held == 0
        if look:
            assert taker.front.queue.stats() == self.model.stats(taker.front.name, now)

    @rule(seconds=st.sampled_from([0.25, 1.0, 3.0, 10.0, 31.0, 400.0, None, None]))
    def advance(self, seconds: float | None) -> None:
        """Let time pass: delays run out, leases end (failing their attempt), dedup windows
        close. None: move exactly to the next delay or lease end of any queue."""
        if seconds is not None:
            self.clock.advance(seconds)
            return
        now = self._now()
        ends = [self.model.next_wakeup(name, now) for name in self.model.queue_names()]
        soonest = min((end for end in ends if end is not None), default=None)
        if soonest is not None and soonest > now:
            self.clock.set(soonest)

    @rule(
        f=_front_index,
        action=st.sampled_from(["redrive", "redrive", "purge"]),
        max_messages=st.sampled_from([None, 1, 2]),
    )
    def manage(self, f: int, action: str, max_messages: int | None) -> None:
        """Redrive this queue's dead letters back (under their ids, attempts reset), or purge
        every ready and delayed message (not those in flight); both say how many."""
        front = self._front(f)
        now = self._now()
        if action == "redrive":
            want = self.model.redrive(front.name, now, max_messages)
            assert front.queue.redrive(max_messages) == want, f"redrive({max_messages}) of {front.name!r} at {now}"
            return
        doomed = {r.id for r in self.model.peek(front.name, 10**9, now) if r.lease_expires_at is None}
        want = self.model.purge(front.name, now)
        assert len(doomed) == want
        assert front.queue.purge() == want, f"purge of {front.name!r} at {now}: expected {want} ({sorted(doomed)})"
        self.purged |= doomed

    @rule(f=_front_index, n=st.integers(1, 5), verb=st.sampled_from(["ack", "nack", "release", "reject", "extend"]))
    def peek(self, f: int, n: int, verb: str) -> None:
        """Peek shows unsettled messages in delivery order, leasing nothing; a peeked
        message's verbs raise LeaseLost."""
        front = self._front(f)
        now = self._now()
        got = front.queue.peek(n)
        want = self.model.peek(front.name, n, now)
        assert [m.id for m in got] == [r.id for r in want], f"peek({n}) of {front.name!r} at {now}"
        for message, record in zip(got, want, strict=True):
            self._same_message(message, record, record.lease_expires_at)
            call = (lambda m=message: m.extend(1.0)) if verb == "extend" else getattr(message, verb)
            with pytest.raises(mqlite.LeaseLost, match="peek"):
                call()

    @rule(f=_front_index, first=st.sampled_from(["qsize", "stats", "full"]))
    def observe(self, f: int, first: str) -> None:
        """qsize(), len(), empty(), full() and stats() of one queue, the first of them called
        before anything else looked: a lease that ended counts as failed (ready again, or
        dead) though nobody called the source queue since, on the dead-letter queue too."""
        front = self._front(f)
        now = self._now()
        queue = front.queue
        size = self._qsize(front.name, now)
        full = front.maxsize > 0 and size >= front.maxsize
        if first == "full":
            assert queue.full() == full
        elif first == "qsize":
            assert queue.qsize() == size
        stats = self.model.stats(front.name, now)
        if front is self.fronts[-1]:
            event(f"observe: dead-letter queue first by {first}, {'some' if size else 'none'} waiting")
        assert queue.stats() == stats, f"stats of {front.name!r} at {now}: {queue.stats()}, expected {stats}"
        assert queue.qsize() == len(queue) == stats.ready + stats.delayed == size
        assert queue.empty() == (size == 0)
        assert queue.full() == full

    # -- invariants (reading only the front's bookkeeping: no storage call moves time) -------

    @invariant()
    def held_counts(self) -> None:
        """``consumer.held``: received or prefetched and not settled; a refused verb of an old
        delivery never drops the current one."""
        for taker in self.all_takers:
            if taker.consumer is not None:
                want = sum(d.held for d in taker.deliveries)
                assert taker.consumer.held == want, f"{taker!r} holds {taker.consumer.held}, expected {want}"

    @invariant()
    def one_live_delivery(self) -> None:
        """No two live handed-out deliveries of one message, nor of one group of a queue."""
        now = self.clock()
        live = [
            d
            for taker in self.all_takers
            for d in taker.deliveries
            if d.message is not None and d.settled is None and (d.message.lease_expires_at or 0.0) > now
        ]
        twice = [mid for mid, count in Counter(d.id for d in live).items() if count > 1]
        assert not twice, f"messages {twice} have two live deliveries at {now}"
        groups = Counter((d.taker.front.name, d.record.group) for d in live if d.record.group is not None)
        crowded = [group for group, count in groups.items() if count > 1]
        assert not crowded, f"groups {crowded} have two live deliveries at {now}"

    # -- the end: nothing lost -------------------------------------------------------------

    def teardown(self) -> None:
        """Drain everything (after every lease and delay ended) and account for every put id
        exactly once: acked during the run, purged, or drained now (dead letters included).
        Skipped when a step already failed, so that failure is the one reported."""
        try:
            if sys.exc_info()[0] is None and self.fronts:
                self._drain()
        finally:
            for front in self.fronts:
                front.queue.close()
            self.storage.close()
            self.cleanup()

    def cleanup(self) -> None:
        """Remove what the storage left on disk (none for memory)."""

    def _drain(self) -> None:
        self.clock.advance(FAR)
        dead = self.fronts[-1]
        last: mqlite.Queue[str] = mqlite.Queue(dead.name + ".dead", self.storage, max_attempts=None, clock=self.clock)
        queues = [*{front.name: front.queue for front in self.fronts[:-1]}.values(), dead.queue, last]
        drained: list[int] = []
        try:
            for queue in queues:  # sources first: their expired last attempts die on the way
                with queue.consumer(lease=FAR, prefetch=2) as consumer:
                    while batch := consumer.get_many(5, timeout=0):
                        for message in batch:
                            assert message.body == self.bodies[message.id]
                            message.ack()
                            drained.append(message.id)
            for queue in queues:
                stats = queue.stats()
                assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0), f"{queue!r}: {stats}"
        finally:
            last.close()
        again = [mid for mid, count in Counter(drained).items() if count > 1]
        assert not again, f"messages {again} were drained twice"
        ended = set(drained)
        assert not self.acked & self.purged, f"acked and purged: {sorted(self.acked & self.purged)}"
        assert not self.acked & ended, f"acked, then drained: {sorted(self.acked & ended)}"
        assert not self.purged & ended, f"purged, then drained: {sorted(self.purged & ended)}"
        ended |= self.acked | self.purged
        assert ended == self.put_ids, f"lost {sorted(self.put_ids - ended)}, unknown {sorted(ended - self.put_ids)}"


TestFrontMachine = FrontMachine.TestCase
TestFrontMachine.settings = settings(stateful_step_count=50, deadline=None)


class _OnDisk(FrontMachine):
    """The same machine on a persistent storage: serialized bodies, its own caches and
    records under the front (one process: no cross-process polling)."""

    directory: tempfile.TemporaryDirectory[str]

    def cleanup(self) -> None:
        self.directory.cleanup()


class SQLiteFrontMachine(_OnDisk):
    def make_storage(self) -> mqlite.storage.Storage:
        self.directory = tempfile.TemporaryDirectory(prefix="mqlite-front-")
        return mqlite.SQLiteStorage(f"{self.directory.name}/q.db", durability="normal", poll_interval=None)


class FileFrontMachine(_OnDisk):
    def make_storage(self) -> mqlite.storage.Storage:
        self.directory = tempfile.TemporaryDirectory(prefix="mqlite-front-")
        return mqlite.FileStorage(f"{self.directory.name}/log", durability="normal")


TestSQLiteFrontMachine = SQLiteFrontMachine.TestCase
TestSQLiteFrontMachine.settings = settings(stateful_step_count=50, deadline=None)
TestFileFrontMachine = FileFrontMachine.TestCase
TestFileFrontMachine.settings = settings(stateful_step_count=50, deadline=None)
