"""The conformance state machine on MemoryStorage, and unit tests of the kit itself."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import settings

from mqlite import MemoryStorage
from mqlite.storage import (
    DEATH_ATTEMPTS,
    DEATH_DETAIL,
    DEATH_QUEUE,
    DEATH_REASON,
    Envelope,
    Outcome,
    QueueSpec,
    Storage,
)
from mqlite.testing import FakeClock, ReferenceModel, StorageConformance, make_conformance_test

TestMemoryStorageConformance = make_conformance_test(
    MemoryStorage, settings=settings(stateful_step_count=50, deadline=None)
)


# -- FakeClock ---------------------------------------------------------------------------------


def test_fake_clock_starts_fixed_and_advances():
    clock = FakeClock()
    assert clock() == 1_000_000.0
    assert clock.advance(2.5) == 1_000_002.5
    assert clock() == clock.now == 1_000_002.5
    assert FakeClock(10)() == 10.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_fake_clock_rejects_bad_steps(bad):
    clock = FakeClock()
    with pytest.raises(ValueError, match="seconds"):
        clock.advance(bad)
    assert clock() == 1_000_000.0


def test_fake_clock_set_is_monotone():
    clock = FakeClock()
    assert clock.set(1_000_010.0) == 1_000_010.0
    clock.set(1_000_010.0)
    with pytest.raises(ValueError, match="monotone"):
        clock.set(5.0)
    with pytest.raises(ValueError, match="finite"):
        clock.set(math.nan)
    with pytest.raises(TypeError):
        clock.advance("1")  # type: ignore[arg-type]


def test_fake_clock_is_thread_safe():
    clock = FakeClock(0.0)

    def step():
        for _ in range(1000):
            clock.advance(1.0)

    threads = [threading.Thread(target=step) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock() == 4000.0


# -- the reference model -----------------------------------------------------------------------

T0 = 1_000_000.0


def test_model_fifo_priority_and_groups():
    model = ReferenceModel()
    model.open_queue(QueueSpec("q", 3))
    ids = model.put(
        "q",
        [Envelope(b"a", group="g"), Envelope(b"b", group="g", priority=9), Envelope(b"c"), Envelope(b"d", priority=1)],
        T0,
    )
    assert ids == [1, 2, 3, 4]
    taken = model.lease("q", 10, T0, 5.0)
    # d first (priority 1), then a (head of g; b waits for it despite priority 9), then c.
    assert [m.id for m in taken] == [4, 1, 3]
    assert all(m.attempts == 1 and m.lease_expires_at == T0 + 5.0 for m in taken)
    assert model.ack("q", [(1, taken[1].token)], T0) == [Outcome.DONE]
    assert [m.id for m in model.lease("q", 10, T0, 5.0)] == [2]


def test_model_lease_expiry_late_settles_and_dead_letter():
    model = ReferenceModel()
    model.open_queue(QueueSpec("q", 2))
    [mid] = model.put("q", [Envelope(b"x", headers={"h": "1"})], T0) or []
    [first] = model.lease("q", 1, T0, 10.0)
    # The lease ends at T0 + 10 exactly: a failed attempt, the message is ready again.
    assert model.counts("q", T0 + 10.0) == (1, 0, 0)
    assert model.extend("q", [(mid, first.token)], T0 + 10.0, 5.0) == [Outcome.LOST]
    assert model.nack("q", [(mid, first.token)], T0 + 10.0, 0.0, None) == [Outcome.NOOP]
    [second] = model.lease("q", 1, T0 + 10.0, 10.0)
    assert second.attempts == 2
    assert model.ack("q", [(mid, first.token)], T0 + 10.0) == [Outcome.LOST]
    assert model.counts("q", T0 + 20.0) == (0, 0, 0)
    # Attempt 2 of 2 expired: dead, same id, attempts reset, headers say why.
    [dead] = model.peek("q.dead", 5, T0 + 20.0)
    assert (dead.id, dead.attempts, dead.token) == (mid, 0, 0)
    assert dict(dead.headers) == {
        "h": "1",
        DEATH_REASON: "max_attempts",
        DEATH_QUEUE: "q",
        DEATH_ATTEMPTS: "2",
        DEATH_DETAIL: "lease expired",
    }
    assert model.stats("q", T0 + 20.0).dead == 1
    assert model.reject("q", [(mid, second.token)], T0 + 20.0, None) == [Outcome.LOST]
    assert model.redrive("q", T0 + 20.0, None) == 1
    [back] = model.peek("q", 5, T0 + 20.0)
    assert (back.id, back.attempts, dict(back.headers)) == (mid, 0, {"h": "1"})


def test_model_late_ack_and_reject_after_expiry():
    model = ReferenceModel()
    ids = model.put("q", [Envelope(b"x"), Envelope(b"y")], T0) or []
    leased = model.lease("q", 2, T0, 1.0)
    handles = [(m.id, m.token) for m in leased]
    assert model.ack("q", handles[:1], T0 + 5.0) == [Outcome.DONE]
    assert model.reject("q", handles[1:], T0 + 5.0, "nope") == [Outcome.DONE]
    assert model.counts("q", T0 + 5.0) == (0, 0, 0)
    [dead] = model.peek("q.dead", 5, T0 + 5.0)
    assert (dead.id, dead.headers[DEATH_REASON], dead.headers[DEATH_DETAIL]) == (ids[1], "rejected", "nope")
    assert model.ack("q", handles[:1], T0 + 5.0) == [Outcome.LOST]


def test_model_release_nack_delay_dedup_and_maxsize():
    model = ReferenceModel()
    model.open_queue(QueueSpec("q", None, dedup_window=10.0))
    assert model.put("q", [Envelope(b"a", dedup_key="k"), Envelope(b"b", dedup_key="k")], T0) == [1, 1]
    assert model.put("q", [Envelope(b"c", dedup_key="k")], T0 + 9.5) == [1]
    assert model.put("q", [Envelope(b"d", dedup_key="k")], T0 + 10.0) == [2]
    assert model.put("q", [Envelope(b"e")], T0 + 10.0, maxsize=2) is None
    [m] = model.lease("q", 1, T0 + 10.0, 30.0)
    assert model.release("q", [(m.id, m.token)], T0 + 10.0) == [Outcome.DONE]
    assert model.release("q", [(m.id, m.token)], T0 + 10.0) == [Outcome.NOOP]
    [m] = model.lease("q", 1, T0 + 10.0, 30.0)
    assert m.attempts == 1
    assert model.nack("q", [(m.id, m.token)], T0 + 10.0, 4.0, "err") == [Outcome.DONE]
    assert model.counts("q", T0 + 10.0) == (1, 1, 0)
    assert model.next_wakeup("q", T0 + 10.0) == T0 + 14.0
    assert [x.id for x in model.lease("q", 5, T0 + 10.0, 30.0)] == [2]
    assert model.purge("q", T0 + 10.0) == 1
    assert model.stats("q", T0 + 10.0).in_flight == 1


def test_model_queue_names_put_dead_letter_queues_last():
    model = ReferenceModel()
    model.open_queue(QueueSpec("z", 1, "a"))
    model.open_queue(QueueSpec("a", 1))
    assert model.queue_names() == ["z", "a"]


# -- counterexamples the state machine found, kept as plain regression tests -------------------


class _Machine(StorageConformance):
    """The memory-storage machine, for replaying shrunk programs step by step."""

    storage_factory = MemoryStorage


def _replay(*steps):
    """Run ``(rule name, arguments)`` steps, checking every observable after each, as hypothesis does."""
    state = _Machine()
    try:
        for name, arguments in steps:
            getattr(state, name)(**arguments)
            state.same_observables()
    finally:
        state.teardown()


def test_regression_dead_letter_dying_again_leaves_stats_dead():
    """A dead letter from b that died again in its dead-letter queue (lease expired at
    max_attempts=1 there) went on counting in ``stats('b').dead``; the index now forgets it."""
    _replay(
        ("open_queues", {"a": None, "b": None, "b_dead_letter": "dlq", "dead": 1}),
        ("put_one", {"dt": 0.0, "edge": None, "option": (0, None, None, None, 0.0), "queue": "b"}),
        (
            "process",
            {"amount": 0.0, "when": "now", "n": 1, "queue": "b", "seconds": 0.5, "text": None, "verb": "reject"},
        ),
        ("lease", {"dt": 0.0, "n": 1, "queue": "dlq", "seconds": 0.5}),
        ("advance", {"seconds": 0.5, "queue": "a"}),
        ("advance", {"seconds": 0.5, "queue": "a"}),
    )


class _Reopenable(Storage):
    """A memory storage that 'persists' across close/reopen, to exercise the kit's reopen rule."""

    blocking_io = False
    requires_bytes = False

    def __init__(self, inner=None):
        self.inner = inner if inner is not None else MemoryStorage()
        self.closed = False

    def __getattribute__(self, name):
        if name in _STORAGE_CALLS:
            assert not object.__getattribute__(self, "closed"), f"{name} called on a closed storage"
            return getattr(object.__getattribute__(self, "inner"), name)
        return object.__getattribute__(self, name)

    def close(self):
        self.closed = True


_STORAGE_CALLS = set(Storage.__abstractmethods__)
for _name in _STORAGE_CALLS:  # satisfy the ABC; __getattribute__ routes the calls to ``inner``
    setattr(_Reopenable, _name, lambda self, *args: None)
_Reopenable.__abstractmethods__ = frozenset()

TestReopenableConformance = make_conformance_test(
    _Reopenable,
    persistent=True,
    reopen=lambda old: _Reopenable(old.inner),
    settings=settings(max_examples=50, stateful_step_count=50, deadline=None),
)


def test_make_conformance_test_checks_its_arguments():
    with pytest.raises(ValueError, match="reopen"):
        make_conformance_test(MemoryStorage, persistent=True)
    with pytest.raises(ValueError, match="persistent"):
        make_conformance_test(MemoryStorage, reopen=lambda old: old)
