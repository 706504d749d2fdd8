"""The conformance state machine: any storage against the reference model, step by step.

Hypothesis drives a storage under test and a :class:`ReferenceModel` through the same calls of
the :class:`~mqlite.storage.Storage` interface, with a :class:`FakeClock`, and compares every
answer and every observable (counts, stats, peek, next_wakeup of every queue) after each step.
When they differ, hypothesis shrinks the run to a short program that shows the difference.
"""

from __future__ import annotations

import unittest
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from hypothesis import settings as Settings, strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from ..storage.base import Envelope, Handle, Leased, Outcome, QueueSpec, Storage
from ._clock import FakeClock
from ._model import ReferenceModel

__all__ = ["StorageConformance", "make_conformance_test"]

SOURCES = ("a", "b")
"""The queues the machine opens at the start."""
NAMES = ("a", "a", "a", "b", "b", "a.dead", "b.dead", "dlq")
"""Where producers and consumers call, weighted towards the two main queues."""
DEDUP_WINDOW = {"b": 5.0}
"""Per-queue dedup window (fixed per name; 300 elsewhere), so windows also run out."""

_max_attempts = st.sampled_from([None, 1, 2, 3])
_pre = st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.5, 2.0, 10.0])
_lease = st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
_delay = st.sampled_from([0.0, 0.0, 0.0, 0.5, 2.0, 10.0])
_text = st.sampled_from([None, "boom", "bad input"])
_envelope_options = st.tuples(
    st.sampled_from([0, 0, 0, 0, 1, 2, -1, -3]),  # priority
    st.sampled_from([None, None, None, "g1", "g2"]),  # group
    st.sampled_from([None, None, None, "k1", "k2", "k3"]),  # dedup key
    st.sampled_from([None, None, {"h": "1"}, {"h": "2", "trace": "t"}]),  # headers
    _delay,
)


_verbs = st.sampled_from(["ack", "ack", "nack", "nack", "release", "reject", "extend"])


def _call(
    verb: str, storage: Storage, queue: str, handles: list[Handle], now: float, amount: float, text: str | None
) -> list[Outcome]:
    """Call settle verb ``verb``; ``amount`` is the nack delay or the extend seconds."""
    if verb == "ack":
        return storage.ack(queue, handles, now)
    if verb == "nack":
        return storage.nack(queue, handles, now, amount, text)
    if verb == "release":
        return storage.release(queue, handles, now)
    if verb == "reject":
        return storage.reject(queue, handles, now, text)
    if verb == "extend":
        return storage.extend(queue, handles, now, amount)
    raise ValueError(f"verb must be ack, nack, release, reject or extend, not {verb!r}")


@dataclass(frozen=True)
class Held:
    """One delivery as both sides know it: the storage's handle and the model's."""

    queue: str
    model_id: int
    storage_id: int
    model_token: int
    storage_token: int

    @property
    def model_handle(self) -> Handle:
        """The handle to present to the model."""
        return (self.model_id, self.model_token)

    @property
    def storage_handle(self) -> Handle:
        """The handle to present to the storage under test."""
        return (self.storage_id, self.storage_token)


class StorageConformance(RuleBasedStateMachine):
    """Checks a storage against the delivery rules (``docs/semantics.md``) by running it beside :class:`ReferenceModel`.

    Subclass it and set ``storage_factory`` (a callable returning a new, empty storage), or use
    :func:`make_conformance_test`. For a persistent storage set ``reopen_storage`` too: a
    callable that receives the closed storage and returns a new one over the same data; the
    machine then also closes and reopens the storage at random points and expects nothing to
    change. Set ``time_per_queue = False`` if your storage applies time to every queue at each
    call (rather than only to the queue named, as the memory storage does): the machine then moves
    the clock only between calls and lets every queue catch up in dead-letter order.

    Example (in a test module)::

        from mqlite.testing import StorageConformance

        class MyStorageConformance(StorageConformance):
            storage_factory = staticmethod(lambda: MyStorage(tempfile.mkdtemp()))
            reopen_storage = staticmethod(lambda old: MyStorage(old.path))

        TestMyStorage = MyStorageConformance.TestCase
        TestMyStorage.settings = hypothesis.settings(stateful_step_count=50, deadline=None)

    Ids are compared through a map (a storage may number its ids differently, as long as they
    increase and are consecutive within a batch), and so are tokens (never assumed equal).
    """

    storage_factory: ClassVar[Callable[[], Storage] | None] = None
    """Makes the storage under test (empty). Required."""
    reopen_storage: ClassVar[Callable[[Storage], Storage] | None] = None
    """Given the closed storage, opens it again from the same place. None: not persistent."""
    time_per_queue: ClassVar[bool] = True
    """Whether a call applies time only to the queue(s) it names (memory and index storages)."""

    deliveries = Bundle("deliveries")

    def __init__(self) -> None:
        super().__init__()
        factory = type(self).storage_factory
        if factory is None:
            raise TypeError(f"{type(self).__name__}.storage_factory is not set: it must make the storage to test")
        self.storage: Storage = factory()
        self.model = ReferenceModel()
        self.clock = FakeClock()
        self.specs: dict[str, QueueSpec] = {}
        self.id_map: dict[int, int] = {}  # model id -> storage id
        self.last_storage_id: int | None = None
        self.bodies = 0

    def teardown(self) -> None:
        """Close the storage (subclasses may also delete its files)."""
        self.storage.close()

    # -- helpers -------------------------------------------------------------------------------

    def _tick(self, dt: float) -> float:
        """Move the clock by ``dt`` (when this storage allows moving it mid-run); return now."""
        if dt and type(self).time_per_queue:
            self.clock.advance(dt)
        return self.clock()

    def _open(self, spec: QueueSpec) -> None:
        self.specs[spec.name] = spec
        self.model.open_queue(spec)
        self.storage.open_queue(spec)

    def _sid(self, model_id: int) -> int:
        return self.id_map[model_id]

    def _same_records(self, what: str, got: Sequence[Leased], want: Sequence[Leased], *, peeked: bool) -> None:
        mapped = [self._expected(record) for record in want]
        actual = [self._comparable(record) for record in got]
        assert actual == mapped, f"{what}:\n  storage {actual}\n  model   {mapped}"
        for record in got:
            assert type(record.enqueued_at) is float, f"{what}: enqueued_at {record.enqueued_at!r} is not a float"
            if peeked:
                assert record.token == 0, f"{what}: a peeked record has token {record.token}, not 0"
            else:
                assert record.token != 0, f"{what}: a delivery has token 0, which means 'no delivery'"

    def _expected(self, record: Leased) -> tuple[Any, ...]:
        return (self._sid(record.id), *self._comparable(record)[1:])

    @staticmethod
    def _comparable(record: Leased) -> tuple[Any, ...]:
        return (
            record.id,
            record.body,
            record.attempts,
            record.enqueued_at,
            record.priority,
            record.group,
            dict(record.headers),
            record.lease_expires_at,
        )

    def _settle(self, verb: str, held: list[Held], amount: float, text: str | None, dt: float) -> None:
        queue = held[0].queue
        batch = [h for h in held if h.queue == queue]
        now = self._tick(dt)
        if verb == "extend":
            amount = amount or 1.0
        want = _call(verb, self.model, queue, [h.model_handle for h in batch], now, amount, text)
        got = _call(verb, self.storage, queue, [h.storage_handle for h in batch], now, amount, text)
        handles = [h.storage_handle for h in batch]
        assert list(got) == want, f"{verb} {handles} on {queue!r} at {now}: storage {got}, model {want}"

    # -- rules ---------------------------------------------------------------------------------

    @initialize(
        a=_max_attempts,
        b=_max_attempts,
        b_dead_letter=st.sampled_from(["", "dlq"]),
        dead=st.sampled_from([None, None, 1, 2]),
    )
    def open_queues(self, a: int | None, b: int | None, b_dead_letter: str, dead: int | None) -> None:
        """Open the two main queues; b may share the dead-letter queue ``dlq``, and dead letters
        may die again (a dead-letter queue with max_attempts has a dead-letter queue too)."""
        self._open(QueueSpec("a", a))
        self._open(QueueSpec("b", b, b_dead_letter, DEDUP_WINDOW.get("b", 300.0)))
        if dead is not None:
            self._open(QueueSpec(b_dead_letter or "b.dead", dead))

    @rule(
        queue=st.sampled_from(NAMES),
        options=st.lists(_envelope_options, min_size=2, max_size=5),
        maxsize=st.sampled_from([0, 0, 0, 0, 0, 2, 5, 10]),
        dt=_pre,
    )
    def put_many(self, queue: str, options: list[tuple[Any, ...]], maxsize: int, dt: float) -> None:
        """Put a batch (``put_many``), all or nothing, maybe bounded by ``maxsize``."""
        envelopes = []
        for priority, group, dedup_key, headers, delay in options:
            self.bodies += 1
            envelopes.append(Envelope(b"m%d" % self.bodies, priority, group, dedup_key, headers, delay))
        self._put(queue, envelopes, maxsize, self._tick(dt))

    @rule(
        queue=st.sampled_from(NAMES),
        option=_envelope_options,
        edge=st.sampled_from([None, None, None, -0.5, 0.0, 0.5]),
        dt=_pre,
    )
    def put_one(self, queue: str, option: tuple[Any, ...], edge: float | None, dt: float) -> None:
        """Put one message. With ``edge`` and a dedup key seen before, first move the clock to
        just before, exactly at, or just after the end of that key's dedup window."""
        priority, group, dedup_key, headers, delay = option
        known = self.model.queues.get(queue)
        first = known.dedup.get(dedup_key) if known is not None and dedup_key is not None else None
        if edge is not None and first is not None and known is not None and type(self).time_per_queue:
            edge_time = first[1] + known.spec.dedup_window + edge
            if edge_time > self.clock():
                self.clock.set(edge_time)
        self.bodies += 1
        envelope = Envelope(b"m%d" % self.bodies, priority, group, dedup_key, headers, delay)
        self._put(queue, [envelope], 0, self._tick(dt))

    def _put(self, queue: str, envelopes: list[Envelope], maxsize: int, now: float) -> None:
        if type(self.storage).count_new is not Storage.count_new:  # the default is all of them
            counted = self.storage.count_new(queue, envelopes, now)
            expected = self.model.count_new(queue, envelopes, now)
            assert counted == expected, f"count_new({envelopes}) on {queue!r}: storage {counted}, model {expected}"
        want = self.model.put(queue, envelopes, now, maxsize)
        got = self.storage.put(queue, envelopes, now, maxsize)
        what = f"put {envelopes} to {queue!r} (maxsize {maxsize})"
        if want is None or got is None:
            assert got is None, f"{what}: storage {got}, model {want}"
            assert want is None, f"{what}: storage {got}, model {want}"
            return
        assert len(got) == len(want), f"{what}: storage returned {got}, model {want}"
        fresh: list[int] = []
        for model_id, storage_id in zip(want, got, strict=True):
            if model_id in self.id_map:
                earlier = self.id_map[model_id]
                assert storage_id == earlier, f"{what}: a duplicate got id {storage_id}, not {earlier}"
            else:
                self.id_map[model_id] = storage_id
                fresh.append(storage_id)
        if fresh:
            assert fresh == list(range(fresh[0], fresh[0] + len(fresh))), f"{what}: new ids {fresh} are not consecutive"
            assert self.last_storage_id is None or fresh[0] > self.last_storage_id, (
                f"{what}: new id {fresh[0]} is not above the last id {self.last_storage_id}"
            )
            self.last_storage_id = fresh[-1]

    @rule(target=deliveries, queue=st.sampled_from(NAMES), n=st.integers(1, 3), seconds=_lease, dt=_pre)
    def lease(self, queue: str, n: int, seconds: float, dt: float) -> Any:
        """Lease up to n messages; every delivery joins the pool of handles."""
        now = self._tick(dt)
        want = self.model.lease(queue, n, now, seconds)
        got = self.storage.lease(queue, n, now, seconds)
        self._same_records(f"lease({queue!r}, {n}, lease={seconds}) at {now}", got, want, peeked=False)
        return multiple(*(Held(queue, m.id, s.id, m.token, s.token) for m, s in zip(want, got, strict=True)))

    @rule(
        target=deliveries,
        queue=st.sampled_from(NAMES),
        n=st.integers(1, 3),
        seconds=_lease,
        verb=_verbs,
        amount=_delay,
        text=_text,
        when=st.sampled_from(["now", "now", "half", "expiry", "late"]),
    )
    def process(self, queue: str, n: int, seconds: float, verb: str, amount: float, text: str | None, when: str) -> Any:
        """Lease, then settle what was leased with one verb (the common path): at once, halfway
        through the lease, exactly when it ends, or after it ended."""
        held = self.lease(queue, n, seconds, 0.0)
        if held.values:
            dt = {"now": 0.0, "half": seconds / 2, "expiry": seconds, "late": seconds + 1.0}[when]
            self._settle(verb, list(held.values), amount, text, dt)
        return held

    @rule(held=st.lists(deliveries, min_size=1, max_size=3), verb=_verbs, amount=_delay, text=_text, dt=_pre)
    def settle(self, held: list[Held], verb: str, amount: float, text: str | None, dt: float) -> None:
        """Settle held deliveries: on time, late, twice, or after another delivery took over.
        ``amount`` is the nack delay or the extend seconds; ``text`` the error or reason."""
        self._settle(verb, held, amount, text, dt)

    @rule(
        seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0, 1000.0, None, None]),
        queue=st.sampled_from(NAMES),
    )
    def advance(self, seconds: float | None, queue: str) -> None:
        """Let time pass: delays run out, leases end, dedup windows close. With ``seconds=None``,
        move exactly to the queue's next delay or lease end (the boundary case)."""
        if seconds is not None:
            self.clock.advance(seconds)
            return
        wakeup = self.model.next_wakeup(queue, self.clock())
        if wakeup is not None:
            self.clock.set(wakeup)

    @rule(
        action=st.sampled_from(["redrive", "redrive", "purge", "open"]),
        queue=st.sampled_from(NAMES),
        max_messages=st.sampled_from([None, 1, 2, 5]),
        max_attempts=_max_attempts,
        shared=st.booleans(),
        dt=_pre,
    )
    def manage(
        self, action: str, queue: str, max_messages: int | None, max_attempts: int | None, shared: bool, dt: float
    ) -> None:
        """Administration: redrive dead letters back to ``queue``, purge it, or (re)declare it with
        new settings (dead-letter queues too; a or b may share the dead-letter queue ``dlq``)."""
        if action == "open":
            dead_letter = "dlq" if shared and queue in SOURCES else ""
            self._open(QueueSpec(queue, max_attempts, dead_letter, DEDUP_WINDOW.get(queue, 300.0)))
            return
        now = self._tick(dt)
        if action == "redrive":
            want = self.model.redrive(queue, now, max_messages)
            got = self.storage.redrive(queue, now, max_messages)
        else:
            want = self.model.purge(queue, now)
            got = self.storage.purge(queue, now)
        assert got == want, f"{action}({queue!r}) at {now}: storage {got}, model {want}"

    @rule(queue=st.sampled_from(NAMES), n=st.integers(1, 4), verb=_verbs, dt=_pre)
    def peek(self, queue: str, n: int, verb: str, dt: float) -> None:
        """Peek at the first n messages after a possible clock move (observing counts, stats and
        next_wakeup first); a peeked record's token 0 then settles nothing."""
        now = self._tick(dt)
        self._observe(queue, now)
        got, want = self.storage.peek(queue, n, now), self.model.peek(queue, n, now)
        self._same_records(f"peek({queue!r}, {n}) at {now}", got, want, peeked=True)
        for record in got:
            outcome = _call(verb, self.storage, queue, [(record.id, record.token)], now, 1.0, None)
            assert outcome == [Outcome.LOST], f"{verb} of peeked message {record.id} in {queue!r}: {outcome}"

    @precondition(lambda self: type(self).reopen_storage is not None)
    @rule()
    def reopen(self) -> None:
        """Close the storage and open it again from the same place: nothing may change."""
        reopen = type(self).reopen_storage
        assert reopen is not None
        self.storage.close()
        self.storage = reopen(self.storage)
        for spec in self.specs.values():
            self.storage.open_queue(spec)

    # -- the comparison after every step -------------------------------------------------------

    def _observe(self, queue: str, now: float) -> None:
        for call in ("counts", "stats", "next_wakeup"):
            want = getattr(self.model, call)(queue, now)
            got = getattr(self.storage, call)(queue, now)
            assert got == want, f"{call}({queue!r}) at {now}: storage {got}, model {want}"

    @invariant()
    def same_observables(self) -> None:
        """Every queue the model knows looks the same on both sides (dead-letter queues last)."""
        now = self.clock()
        for queue in self.model.queue_names():
            self._observe(queue, now)
            self._same_records(
                f"peek({queue!r}) at {now}",
                self.storage.peek(queue, 1000, now),
                self.model.peek(queue, 1000, now),
                peeked=True,
            )


def make_conformance_test(
    storage_factory: Callable[[], Storage],
    *,
    persistent: bool = False,
    reopen: Callable[[Storage], Storage] | None = None,
    time_per_queue: bool = True,
    settings: Settings | None = None,
) -> type[unittest.TestCase]:
    """Build a test case that runs :class:`StorageConformance` on a storage.

    ``storage_factory()`` must return a new, empty storage. For a persistent storage pass
    ``persistent=True`` and ``reopen(closed_storage)`` returning the storage opened again from
    the same place. ``settings`` (hypothesis) default to the active profile with 50 steps per
    run and no deadline. Assign the result to a ``Test*`` name in a test module::

        from mqlite import MemoryStorage
        from mqlite.testing import make_conformance_test

        TestMemoryStorage = make_conformance_test(MemoryStorage)
    """
    if persistent and reopen is None:
        raise ValueError("reopen is required with persistent=True: it opens the closed storage again")
    if reopen is not None and not persistent:
        raise ValueError("reopen is given but persistent is False; pass persistent=True to test reopening")
    name = getattr(storage_factory, "__name__", "Storage")
    machine = type(
        f"{name}Conformance",
        (StorageConformance,),
        {
            "storage_factory": staticmethod(storage_factory),
            "reopen_storage": staticmethod(reopen) if reopen is not None else None,
            "time_per_queue": time_per_queue,
        },
    )
    test: type[unittest.TestCase] = machine.TestCase  # type: ignore[attr-defined]
    test.settings = settings if settings is not None else Settings(stateful_step_count=50, deadline=None)  # type: ignore[attr-defined]
    return test
