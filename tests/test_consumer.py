"""Consumer handles: prefetch, close (release without counting an attempt), ``with`` /
``async with``, iteration until close, and ``auto_extend``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import sys
import threading

import pytest
from _doubles import (
    TIMEOUT,
    BlockingMemoryStorage,
    LoopThread,
    async_test,
    async_wait_until,
    start_thread,
    wait_until,
    waiting,
)

import mqlite
from mqlite._keeper import keeper
from mqlite.testing import FakeClock


@pytest.fixture
def q():
    queue = mqlite.Queue("work")
    yield queue
    queue.close()


# -- prefetch -----------------------------------------------------------------------------------


def test_prefetch_leases_several_and_hands_them_out_one_by_one():
    storage = BlockingMemoryStorage()
    with mqlite.Queue("work", storage=storage) as q:
        ids = q.put_many(["a", "b", "c", "d", "e"])
        consumer = q.consumer(prefetch=3)
        first = consumer.get(timeout=TIMEOUT)
        assert (first.id, first.body) == (ids[0], "a")
        assert storage.calls["lease"] == 1
        assert consumer.held == 3
        stats = q.stats()
        assert (stats.ready, stats.in_flight) == (2, 3)
        assert q.qsize() == 2

        other = q.get_nowait()  # the prefetched ones are leased: another consumer gets "d"
        assert other.body == "d"

        second = consumer.get_nowait()
        third = consumer.get(timeout=TIMEOUT)
        assert [second.body, third.body] == ["b", "c"]
        assert storage.calls["lease"] == 2  # handed out from the buffer, no storage call
        fourth = consumer.get(timeout=TIMEOUT)
        assert fourth.body == "e"
        assert all(m.attempts == 1 for m in (first, second, third, fourth, other))
        for message in (first, second, third, fourth, other):
            message.ack()
        assert consumer.held == 0
        assert q.join(timeout=0)


def test_get_many_with_prefetch_returns_what_is_there():
    with mqlite.Queue("work") as q:
        q.put_many(range(4))
        consumer = q.consumer(prefetch=3)
        batch = consumer.get_many(2, timeout=TIMEOUT)
        assert [m.body for m in batch] == [0, 1]
        assert consumer.held == 3
        assert [m.body for m in consumer.get_many(5, timeout=TIMEOUT)] == [2]
        assert [m.body for m in consumer.get_many(5, timeout=TIMEOUT)] == [3]
        assert consumer.get_many(5, timeout=0.01) == []


@async_test
async def test_async_prefetch_hands_out_one_by_one():
    with mqlite.Queue("work") as q:
        await q.aput_many(["a", "b", "c"])
        consumer = q.consumer(prefetch=2)
        first = await consumer.aget(timeout=TIMEOUT)
        assert consumer.held == 2
        second = await consumer.aget(timeout=TIMEOUT)
        third = await consumer.aget(timeout=TIMEOUT)
        assert [first.body, second.body, third.body] == ["a", "b", "c"]
        for message in (first, second, third):
            await message.aack()
        assert await q.ajoin(timeout=0)


@pytest.mark.parametrize("storage_kind", ["memory", "blocking"])
def test_a_prefetched_message_whose_lease_ended_is_never_handed_out(storage_kind):
    clock = FakeClock(1000.0)
    storage = mqlite.MemoryStorage() if storage_kind == "memory" else BlockingMemoryStorage()
    with mqlite.Queue("work", storage=storage, clock=clock, lease=10) as q:
        q.put_many(["a", "b", "c"])
        consumer = q.consumer(prefetch=2)
        assert consumer.get().body == "a"  # "b" waits in the buffer, its lease running
        clock.advance(11)  # both leases end: "a" and "b" are ready again, attempt 1 counted
        other = q.get_many(5)
        assert [m.body for m in other] == ["a", "b", "c"]  # another worker has them now
        with pytest.raises(mqlite.Empty):
            consumer.get_nowait()  # not the stale "b"
        assert consumer.held == 1  # only "a"'s old delivery, which the user still has

        async def aget():
            return await consumer.aget(timeout=0)

        for message in other:
            message.release()
        assert consumer.get().body == "a"  # attempt 2; "b" buffered, attempt 2
        clock.advance(11)
        fresh = asyncio.run(aget())  # the coroutine skips the stale "b" the same way
        assert (fresh.body, fresh.attempts) == ("a", 3)


def test_a_stale_buffered_group_head_does_not_break_group_order():
    clock = FakeClock(1000.0)
    with mqlite.Queue("work", clock=clock, lease=10) as q:
        q.put("x")
        q.put_many(["g1", "g2"], group="G")
        consumer = q.consumer(prefetch=2)
        consumer.get()  # "x"; "g1" buffered
        clock.advance(11)
        processed = []
        worker = q.consumer()
        while (batch := worker.get_many(1, timeout=0)) != []:
            processed.append(batch[0].body)
            batch[0].ack()
        with pytest.raises(mqlite.Empty):
            processed.append(consumer.get_nowait().body)
        assert [body for body in processed if body.startswith("g")] == ["g1", "g2"]


def test_a_buffered_message_dead_lettered_by_its_lease_is_not_handed_out():
    clock = FakeClock(1000.0)
    with mqlite.Queue("work", clock=clock, lease=10, max_attempts=1) as q:
        q.put_many(["a", "b"])
        consumer = q.consumer(prefetch=2)
        consumer.get()
        clock.advance(11)
        assert q.stats().dead == 2
        with pytest.raises(mqlite.Empty):
            consumer.get_nowait()


def test_one_prefetching_consumer_shared_by_threads_hands_out_every_message_once():
    with mqlite.Queue("work", max_attempts=None) as q:
        consumer = q.consumer(prefetch=3)
        total = 6_000
        got: list[list[int]] = [[] for _ in range(3)]

        def work(mine: list[int]) -> None:
            while batch := consumer.get_many(2, timeout=0.5):
                for message in batch:
                    mine.append(message.body)
                    message.ack()

        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible: between two pops
        try:
            workers = [start_thread(work, mine) for mine in got]
            for first in range(0, total, 100):
                q.put_many(range(first, first + 100))
            for worker in workers:
                worker.finish()
        finally:
            sys.setswitchinterval(switch)
        received = sorted(body for mine in got for body in mine)
        assert received == list(range(total))
        assert q.stats().in_flight == 0


def test_a_buffer_emptied_by_another_thread_mid_take_is_not_an_error():
    """The interleaving the stress test above hopes for, made certain: another thread takes a
    buffered message between this thread's two pops."""

    class Contended(collections.deque):
        def popleft(self):
            if len(self) == 2:
                stolen.append(super().popleft())  # the other thread's pop
            return super().popleft()

    stolen: list[mqlite.Message[int]] = []
    with mqlite.Queue("work") as q:
        q.put_many(range(4))
        consumer = q.consumer(prefetch=3)
        assert consumer.get().body == 0
        consumer._buffer = Contended(consumer._buffer)
        assert [m.body for m in consumer.get_many(2)] == [2]
        assert [m.body for m in stolen] == [1]


# -- one delivery is not another -----------------------------------------------------------------


@pytest.mark.parametrize("verb", ["ack", "nack", "release", "reject", "extend", "ack_many"])
def test_a_refused_verb_of_an_old_delivery_leaves_the_new_one_held(verb):
    clock = FakeClock(1000.0)
    storage = mqlite.MemoryStorage()
    q = mqlite.Queue("work", storage=storage, clock=clock, lease=10)
    q.put("a")
    consumer = q.consumer()
    old = consumer.get()
    clock.advance(11)
    new = consumer.get()  # the same message, delivered again to the same consumer
    special = {"extend": lambda: old.extend(5), "ack_many": lambda: q.ack_many([old])}
    stale = special[verb] if verb in special else getattr(old, verb)
    with pytest.raises(mqlite.LeaseLost):
        stale()
    assert consumer.held == 1
    assert consumer._renew()  # auto_extend's tick still renews the new delivery
    assert new.lease_expires_at == clock() + 10
    q.close()  # and close releases it, no attempt counted
    again = mqlite.Queue("work", storage=storage, clock=clock)
    assert (again.stats().in_flight, again.peek()[0].attempts) == (0, 1)


# -- close releases without counting an attempt ---------------------------------------------------


def test_consumer_close_releases_held_and_prefetched_without_counting_an_attempt(q):
    q.put_many(["a", "b", "c", "d"])
    consumer = q.consumer(prefetch=3)
    received = consumer.get(timeout=TIMEOUT)
    assert q.stats().in_flight == 3
    consumer.close()
    stats = q.stats()
    assert (stats.ready, stats.in_flight) == (4, 0)
    again = [q.get_nowait() for _ in range(4)]
    assert [m.body for m in again] == ["a", "b", "c", "d"]
    assert [m.attempts for m in again] == [1, 1, 1, 1]
    # The old delivery was released by close: repeating release is a no-op, ack is refused.
    received.release()
    with pytest.raises(mqlite.LeaseLost):
        received.ack()
    with pytest.raises(mqlite.QueueClosed):
        consumer.get_nowait()
    consumer.close()  # idempotent
    for message in again:
        message.ack()


def test_consumer_close_does_not_touch_other_consumers_or_the_queue(q):
    q.put_many(["a", "b"])
    mine = q.consumer()
    theirs = q.consumer()
    kept = theirs.get_nowait()
    mine.get_nowait()
    mine.close()
    assert not q.closed
    assert theirs.held == 1
    again = q.get_nowait()
    assert (again.body, again.attempts) == ("b", 1)
    kept.ack()
    again.ack()


def test_consumer_close_from_another_thread_wakes_its_blocked_get(q):
    consumer = q.consumer()
    bystander = q.consumer()
    blocked = start_thread(consumer.get, True, TIMEOUT, name="blocked")
    other = start_thread(bystander.get, True, TIMEOUT, name="bystander")
    wait_until(lambda: waiting(q) == 2, what="both getters to block")
    consumer.close()
    with pytest.raises(mqlite.QueueClosed):
        blocked.finish()
    assert other.is_alive()  # only the closed consumer's waiter was woken
    q.put("for the bystander")
    assert other.finish().body == "for the bystander"


def test_queue_close_releases_what_its_consumers_hold():
    storage = mqlite.MemoryStorage()
    q = mqlite.Queue("work", storage=storage)
    q.put_many(["a", "b", "c"])
    consumer = q.consumer(prefetch=2)
    consumer.get_nowait()
    q.get_nowait()
    assert q.stats().in_flight == 3
    q.close()
    with mqlite.Queue("work", storage=storage) as again:
        assert again.stats().in_flight == 0
        assert [(m.body, m.attempts) for m in again.get_many(3)] == [("a", 1), ("b", 1), ("c", 1)]


# -- with / async with ------------------------------------------------------------------------------


def test_with_consumer_releases_on_exit(q):
    q.put_many(["a", "b"])
    with q.consumer(prefetch=2) as consumer:
        message = consumer.get(timeout=TIMEOUT)
        assert message.body == "a"
    assert q.stats().in_flight == 0
    with pytest.raises(mqlite.QueueClosed):
        consumer.get_nowait()
    assert [(m.body, m.attempts) for m in q.get_many(2)] == [("a", 1), ("b", 1)]


def test_with_consumer_releases_on_exception(q):
    q.put("a")

    def fail_inside() -> None:
        with q.consumer() as consumer:
            consumer.get_nowait()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert (q.get_nowait().attempts, q.stats().in_flight) == (1, 1)


def test_acked_messages_stay_acked_when_the_consumer_closes(q):
    q.put_many(["a", "b"])
    with q.consumer() as consumer:
        consumer.get_nowait().ack()
        with consumer.get_nowait():
            pass  # acked on a clean exit
    assert q.join(timeout=0)


@pytest.mark.parametrize("storage_kind", ["memory", "blocking"])
@async_test
async def test_async_with_consumer_releases_on_exit(storage_kind):
    storage = mqlite.MemoryStorage() if storage_kind == "memory" else BlockingMemoryStorage()
    async with mqlite.Queue("work", storage=storage) as q:
        await q.aput_many(["a", "b"])
        async with q.consumer(prefetch=2) as consumer:
            message = await consumer.aget(timeout=TIMEOUT)
            assert message.body == "a"
            assert q.stats().in_flight == 2
        assert q.stats().in_flight == 0
        with pytest.raises(mqlite.QueueClosed):
            await consumer.aget(timeout=0)
        again = await q.aget_many(2)
        assert [(m.body, m.attempts) for m in again] == [("a", 1), ("b", 1)]
        for message in again:
            await message.aack()


# -- iteration ------------------------------------------------------------------------------------


def test_for_msg_in_consumer_ends_when_the_queue_is_closed(q):
    consumer = q.consumer()
    got: list[object] = []
    three = threading.Event()

    def consume() -> None:
        for message in consumer:
            got.append(message.body)
            message.ack()
            if len(got) == 3:
                three.set()

    worker = start_thread(consume, name="iterating")
    q.put_many([1, 2, 3])
    assert three.wait(TIMEOUT)
    wait_until(lambda: waiting(q) == 1, what="the iterator to block again")
    q.close()
    worker.finish()
    assert got == [1, 2, 3]


def test_for_msg_in_consumer_ends_when_the_consumer_is_closed(q):
    consumer = q.consumer()
    got: list[object] = []
    worker = start_thread(lambda: got.extend(m.body for m in consumer), name="iterating")
    q.put("one")
    wait_until(lambda: got == ["one"] and waiting(q) == 1, what="the first message and a blocked get")
    consumer.close()
    worker.finish()
    assert not q.closed
    # The message it received and never settled went back, not counted.
    assert (q.get_nowait().attempts, q.stats().in_flight) == (1, 1)


def test_for_msg_in_queue_ends_at_close(q):
    q.put_many(["a", "b"])
    got = []
    for message in q:
        got.append(message.body)
        message.ack()
        if len(got) == 2:
            q.close()
    assert got == ["a", "b"]


def test_async_for_ends_when_closed_from_another_thread(q):
    consumer = q.consumer()
    got: list[object] = []

    async def consume() -> None:
        async for message in consumer:
            got.append(message.body)
            await message.aack()

    with LoopThread() as loop:
        future = loop.submit(consume())
        q.put_many(["x", "y"])
        wait_until(lambda: len(got) == 2 and waiting(q) == 1, what="two messages and a blocked aget")
        q.close()
        future.result(TIMEOUT)
    assert got == ["x", "y"]


@async_test
async def test_async_for_on_queue_ends_when_consumer_closes_in_loop():
    async with mqlite.Queue("work") as q:
        consumer = q.consumer()
        await q.aput("only")
        got = []

        async def consume() -> None:
            async for message in consumer:
                got.append(message.body)
                await message.aack()

        task = asyncio.create_task(consume())
        await async_wait_until(lambda: bool(got) and waiting(q) == 1, what="a message and a blocked aget")
        consumer.close()
        await asyncio.wait_for(task, TIMEOUT)
        assert got == ["only"]


def _prefetching(storage_kind: str, tmp_path, clock: FakeClock) -> mqlite.Queue[str]:
    storage = mqlite.SQLiteStorage(tmp_path / "q.db") if storage_kind == "sqlite" else mqlite.MemoryStorage()
    q: mqlite.Queue[str] = mqlite.Queue("work", storage, clock=clock, lease=10.0, max_attempts=1)
    q.put_many([f"m{n}" for n in range(6)])
    return q


@pytest.mark.parametrize("storage_kind", ["memory", "sqlite"])
def test_leaving_a_loop_early_gives_back_the_prefetched_messages_it_never_handed_out(storage_kind, tmp_path):
    """Left with ``break`` or an exception, the loop's prefetched messages go back at once,
    with no attempt counted: left leased, their leases would run out and count as failed
    attempts, dead-lettering (here, with max_attempts=1) messages nobody ever saw."""
    clock = FakeClock()
    q = _prefetching(storage_kind, tmp_path, clock)
    consumer = q.consumer(prefetch=4)
    for msg in consumer:
        kept = msg
        break
    assert (kept.body, consumer.held, q.stats().in_flight, q.stats().ready) == ("m0", 1, 1, 5)

    def handle_one() -> None:
        for msg in consumer:
            msg.ack()
            raise KeyError("the handler failed")

    with pytest.raises(KeyError):
        handle_one()
    assert (consumer.held, q.stats().in_flight, q.stats().ready) == (1, 1, 4)
    clock.advance(60)  # every lease still running would end now
    assert q.stats().dead == 1  # only m0, which the first loop handed out and nobody settled
    assert [q.get().body for _ in range(4)] == ["m2", "m3", "m4", "m5"]
    q.close()
    q.storage.close()


@pytest.mark.parametrize("storage_kind", ["memory", "sqlite"])
@async_test
async def test_leaving_an_async_loop_early_gives_back_the_prefetched_messages(storage_kind, tmp_path):
    clock = FakeClock()
    q = _prefetching(storage_kind, tmp_path, clock)
    consumer = q.consumer(prefetch=4)
    async with contextlib.aclosing(consumer.__aiter__()) as messages:
        async for msg in messages:
            await msg.aack()
            break
    assert (consumer.held, q.stats().in_flight, q.stats().ready) == (0, 0, 5)
    assert (await q.aget()).attempts == 1
    await q.aclose()
    q.storage.close()


def test_deliveries_whose_lease_ended_unsettled_are_not_held_for_ever():
    """A worker whose handler sometimes fails without settling must not grow without bound:
    a delivery whose lease ended is forgotten by its consumer (it can still be settled late)."""
    clock = FakeClock()
    q = mqlite.Queue("work", clock=clock, lease=1.0, max_attempts=None)
    q.put_many(range(5))
    consumer = q.consumer()
    for _ in range(3000):
        consumer.get()  # abandoned: the handler crashed before settling
        clock.advance(2)  # its lease ends; the message is ready again
    assert consumer.held <= 512
    consumer.close()
    assert q.stats().in_flight == 0
    q.get_many(5)  # drained: all five in flight for a second
    clock.advance(2)
    late = q.consumer()
    msg = late.get()
    clock.advance(2)
    late._forget_ended()  # as a later receive would, past the threshold
    assert late.held == 0
    msg.ack()  # a late settle still works: nobody received it again
    assert q.stats().ready == 4


# -- auto_extend ----------------------------------------------------------------------------------


def test_auto_extend_keeps_a_message_leased_past_its_lease():
    """Leases run on a fake clock, the keeper renews on real time (every lease / 3): each round
    waits for a renewal, then moves the clock most of a lease on, so the message is held for
    four leases and the test cannot fail because the keeper thread was slow."""
    clock = FakeClock()
    with mqlite.Queue("work", clock=clock) as q:
        q.put("long job")
        holder = q.consumer(lease=0.3, auto_extend=True)
        rival = q.consumer(lease=0.3)
        message = holder.get(timeout=TIMEOUT)
        started = clock()
        for _ in range(4):
            renewal = clock() + 0.3  # what a renewal at the clock's current reading gives
            wait_until(lambda due=renewal: (message.lease_expires_at or 0.0) >= due, what="a renewal")
            clock.advance(0.25)  # less than a lease after the renewal: still held
            with pytest.raises(mqlite.Empty):
                rival.get_nowait()
        assert clock() - started > 3 * 0.3
        message.ack()  # still the holder of the lease: no LeaseLost
        assert q.join(timeout=0)
        holder.close()
        rival.close()


def _count_renewals(monkeypatch: pytest.MonkeyPatch, consumer: mqlite.Consumer[object]) -> list[int]:
    """Count the keeper's renewals of ``consumer`` (the list's length)."""
    real_renew = mqlite.Consumer._renew
    renewals: list[int] = []

    def counting(self: mqlite.Consumer[object]) -> bool:
        if self is consumer:
            renewals.append(1)
        return real_renew(self)

    monkeypatch.setattr(mqlite.Consumer, "_renew", counting)
    return renewals


def test_a_lease_of_centuries_with_auto_extend_leaves_the_keeper_renewing_the_others(monkeypatch):
    """A lease longer than a thread can sleep (threading.TIMEOUT_MAX) made the keeper's wait
    raise OverflowError: the thread died and no consumer of the process was renewed again."""
    clock = FakeClock()
    with mqlite.Queue("work", clock=clock) as q:
        q.put_many(["long", "short"])
        hog = q.consumer(lease=1e11, auto_extend=True)
        held = hog.get_nowait()
        worker = q.consumer(lease=0.3, auto_extend=True)
        renewals = _count_renewals(monkeypatch, worker)
        message = worker.get_nowait()
        wait_until(lambda: len(renewals) >= 3, what="three renewals of the short lease")
        message.ack()
        held.ack()
        hog.close()
        worker.close()


def test_a_storage_that_stalls_delays_only_the_renewals_of_its_own_consumers(tmp_path, monkeypatch):
    """Another connection holds an SQLite file's write lock, so the renewal of a consumer of it
    waits (up to busy_timeout); the consumers of the process's other storages must still be
    renewed meanwhile, or their messages would be delivered again while they work on them."""
    path = str(tmp_path / "a.db")
    clock = FakeClock()
    with mqlite.SQLiteStorage(path, busy_timeout=TIMEOUT * 3) as stalled_storage:
        stalled: mqlite.Queue[str] = mqlite.Queue("a", stalled_storage, clock=clock)
        other: mqlite.Queue[str] = mqlite.Queue("b", clock=clock)
        stalled.put("a")
        other.put("b")
        on_stalled = stalled.consumer(lease=0.3, auto_extend=True)
        on_other = other.consumer(lease=0.3, auto_extend=True)
        held_stalled = on_stalled.get_nowait()
        locked, stuck = threading.Event(), threading.Event()
        real_extend = stalled_storage.extend

        def extend(*args: object) -> object:
            if locked.is_set():
                stuck.set()
            return real_extend(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(stalled_storage, "extend", extend)
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # another process writing the file for a while
        locked.set()
        try:
            assert stuck.wait(TIMEOUT), "no renewal of the stalled consumer started"
            renewals = _count_renewals(monkeypatch, on_other)
            held_other = on_other.get_nowait()
            wait_until(lambda: len(renewals) >= 3, what="renewals on the storage that does not stall")
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        held_other.ack()
        held_stalled.ack()
        on_stalled.close()
        on_other.close()
        stalled.close()
        other.close()


def test_a_message_got_while_the_keeper_finds_the_consumer_empty_is_still_renewed(monkeypatch):
    """The keeper renews, finds nothing held and is about to stop watching the consumer; just
    then the consumer gets a new message, whose watch() sees it still watched and schedules
    nothing. The keeper must notice the new message and keep renewing."""
    clock = FakeClock()
    with mqlite.Queue("work", clock=clock) as q:
        q.put_many(["first", "second"])
        consumer = q.consumer(lease=0.3, auto_extend=True)
        real_renew = mqlite.Consumer._renew
        raced: list[mqlite.Message[object]] = []

        def renew_then_race(self: mqlite.Consumer[object]) -> bool:
            if self is not consumer or raced:
                return real_renew(self)
            first.ack()
            again = real_renew(self)  # nothing held: False
            raced.append(self.get_nowait())  # held again; its watch() schedules nothing
            return again

        monkeypatch.setattr(mqlite.Consumer, "_renew", renew_then_race)
        first = consumer.get_nowait()
        wait_until(lambda: bool(raced), what="the keeper's racing renewal")
        due = keeper(q.storage)._due
        wait_until(lambda: any(ref() is consumer for _, _, ref in due), what="the keeper to keep renewing")
        raced[0].ack()
        consumer.close()


def test_without_auto_extend_the_lease_ends_and_the_message_comes_back(q):
    q.put("short job")
    holder = q.consumer(lease=0.2)
    message = holder.get(timeout=TIMEOUT)
    again = q.get(timeout=TIMEOUT)  # blocks until the lease ends, then gets it again
    assert (again.id, again.attempts) == (message.id, 2)
    with pytest.raises(mqlite.LeaseLost):
        message.ack()
    again.ack()


def test_auto_extend_stops_after_settle_and_close():
    """On a fake clock that never moves, no lease can end by itself: "b" comes back only
    because close released it, and the keeper stops watching the closed consumer."""
    clock = FakeClock()
    with mqlite.Queue("work", clock=clock) as q:
        q.put_many(["a", "b"])
        holder = q.consumer(lease=0.3, auto_extend=True, prefetch=2)
        first = holder.get(timeout=TIMEOUT)
        first.ack()
        holder.close()  # releases "b" at once, not counted, and stops renewing
        again = q.get_nowait()
        assert (again.body, again.attempts) == ("b", 1)
        wait_until(lambda: holder not in keeper(q.storage)._watched, what="the keeper to drop the closed consumer")
        again.ack()


@pytest.mark.parametrize("closing", ["consumer", "queue"])
def test_the_lease_keeper_thread_ends_when_its_consumers_close(closing):
    """A queue per request with an auto-extending consumer: once closed, its storage's keeper
    thread ends at once, not after lease / 3 (10 s by default; 20 minutes for a 1-hour lease)."""
    q = mqlite.Queue("work", lease=3600.0)
    q.put("job")
    consumer = q.consumer(auto_extend=True)
    consumer.get()
    found = keeper(q.storage)
    assert found._thread is not None
    assert found._thread.is_alive()
    if closing == "consumer":
        consumer.close()
    else:
        q.close()
    wait_until(lambda: found._thread is None, what="the keeper thread to end")
    q.close()
