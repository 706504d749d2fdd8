"""One queue, many threads and many event loops at once (DESIGN §2.1, §2.3, §2.5, §2.10).

Every event loop runs in a thread of its own; the queue is shared by plain threads and by
coroutines of all the loops. Nothing here sleeps to synchronize: threads meet on Events and
futures, and every blocking call has a generous bound so a lost wake-up fails instead of
hanging. Ported ideas: janus ``tests/test_mixed.py``.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

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


@pytest.fixture(params=["memory", "blocking"])
def storage(request):
    """The in-memory storage, called inline by coroutines, and the same behind a storage that
    declares blocking I/O, so coroutines call it on the front's I/O threads."""
    return mqlite.MemoryStorage() if request.param == "memory" else BlockingMemoryStorage()


class Ledger:
    """What consumers saw, recorded under a lock, checked at the end.

    A handler calls :meth:`begin` when it starts on a message and :meth:`end` just before it
    settles it. A group is *active* between the two: seeing a second message of an active group
    is a violation of group exclusivity.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.violations: list[str] = []
        self.order: dict[str, list[int]] = collections.defaultdict(list)
        self.delivered: collections.Counter[int] = collections.Counter()
        self.acked: collections.Counter[int] = collections.Counter()
        self.attempts: list[int] = []
        self.done = threading.Event()

    def begin(self, message: mqlite.Message[Any]) -> None:
        with self.lock:
            self.delivered[message.id] += 1
            self.attempts.append(message.attempts)
            group = message.group
            if group is not None:
                if group in self.active:
                    self.violations.append(f"two messages of group {group} in flight (second: {message.id})")
                self.active.add(group)
                self.order[group].append(message.body[1])

    def end(self, message: mqlite.Message[Any]) -> None:
        with self.lock:
            if message.group is not None:
                self.active.discard(message.group)

    def acked_one(self, message: mqlite.Message[Any]) -> None:
        with self.lock:
            self.acked[message.id] += 1
            if sum(self.acked.values()) == self.total:
                self.done.set()


# -- the big one: many producers and consumers, threads and coroutines of three loops ------------


PER_PRODUCER = 120


def _options(producer: int, seq: int) -> dict[str, Any]:
    """Every third message of a producer is in that producer's own group (so group order is the
    producer's put order); priorities vary on the others."""
    if seq % 3 == 0:
        return {"group": f"g{producer}"}
    return {"priority": seq % 4}


def test_many_threads_and_loops_on_one_queue_deliver_everything_exactly_once(storage):
    q: mqlite.Queue[tuple[int, int]] = mqlite.Queue("busy", storage=storage)
    thread_producers = 3
    loop_producers = 4  # two per loop, two loops
    total = (thread_producers + loop_producers) * PER_PRODUCER
    ledger = Ledger(total)
    put_ids: dict[int, int] = {}
    put_lock = threading.Lock()
    start = threading.Barrier(thread_producers + 1)

    def record_put(message_id: int, producer: int, seq: int) -> None:
        with put_lock:
            put_ids[message_id] = producer * 10_000 + seq

    def produce_in_thread(producer: int) -> None:
        start.wait(TIMEOUT)
        for seq in range(PER_PRODUCER):
            record_put(q.put((producer, seq), **_options(producer, seq)), producer, seq)

    async def produce_in_loop(producer: int) -> None:
        for seq in range(PER_PRODUCER):
            record_put(await q.aput((producer, seq), **_options(producer, seq)), producer, seq)
            if seq % 10 == 0:
                await asyncio.sleep(0)

    def consume_in_thread(get: Callable[[], list[mqlite.Message[Any]]]) -> None:
        while True:
            try:
                batch = get()
            except mqlite.QueueClosed:
                return
            for message in batch:
                ledger.begin(message)
                ledger.end(message)
                message.ack()
                ledger.acked_one(message)

    async def consume_in_loop(consumer: mqlite.Consumer[Any]) -> None:
        async for message in consumer:
            ledger.begin(message)
            await asyncio.sleep(0)  # let other coroutines of this loop run while it is held
            ledger.end(message)
            await message.aack()
            ledger.acked_one(message)

    async def consume_many_in_loop() -> None:
        while True:
            try:
                batch = await q.aget_many(3)
            except mqlite.QueueClosed:
                return
            for message in batch:
                ledger.begin(message)
                ledger.end(message)
                await message.aack()
                ledger.acked_one(message)

    prefetching = q.consumer(prefetch=3)
    consumers = [
        start_thread(consume_in_thread, lambda: [q.get()], name="get"),
        start_thread(consume_in_thread, lambda: [q.get()], name="get-2"),
        start_thread(consume_in_thread, lambda: [prefetching.get()], name="prefetch"),
        start_thread(consume_in_thread, lambda: q.get_many(4), name="get_many"),
    ]
    with LoopThread("loop-a") as a, LoopThread("loop-b") as b:
        async_consumers = [
            a.submit(consume_in_loop(q.consumer())),
            a.submit(consume_in_loop(q.consumer(prefetch=2))),
            b.submit(consume_in_loop(q.consumer())),
            b.submit(consume_many_in_loop()),
        ]
        producers = [start_thread(produce_in_thread, p, name=f"producer-{p}") for p in range(thread_producers)]
        async_producers = [
            loop.submit(produce_in_loop(p))
            for loop, p in zip((a, a, b, b), range(thread_producers, thread_producers + loop_producers), strict=True)
        ]
        start.wait(TIMEOUT)
        try:
            for thread in producers:
                thread.finish(2 * TIMEOUT)
            for future in async_producers:
                future.result(2 * TIMEOUT)
            assert ledger.done.wait(2 * TIMEOUT), f"only {sum(ledger.acked.values())} of {total} acked"
            assert q.join(timeout=TIMEOUT)
        finally:
            q.close()
            for thread in consumers:
                thread.finish()
            for future in async_consumers:
                future.result(TIMEOUT)

    assert ledger.violations == []
    assert len(put_ids) == total  # every put got its own id
    assert set(ledger.acked) == set(put_ids)
    assert set(ledger.acked.values()) == {1}  # acked exactly once
    assert set(ledger.delivered.values()) == {1}  # nothing redelivered, nothing duplicated
    assert set(ledger.attempts) == {1}
    for group, seqs in ledger.order.items():
        assert seqs == sorted(seqs), f"group {group} delivered out of order"
        assert len(seqs) == PER_PRODUCER // 3
    with mqlite.Queue("busy", storage=storage) as again:
        stats = again.stats()
        assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def test_groups_stay_exclusive_and_ordered_under_redelivery(storage):
    """Consumers in threads and two loops nack every first attempt: the group still delivers one
    message at a time, in id order, each message retried before the next of its group."""
    q: mqlite.Queue[tuple[str, int]] = mqlite.Queue("grouped", storage=storage)
    groups = ["red", "green", "blue"]
    per_group = 30
    for seq in range(per_group):
        for group in groups:
            q.put((group, seq), group=group)
    total = len(groups) * per_group
    ledger = Ledger(total)
    history: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)

    def handle(message: mqlite.Message[tuple[str, int]]) -> bool:
        """True to ack, False to nack (first attempts only)."""
        ledger.begin(message)
        with ledger.lock:
            history[message.group or ""].append((message.body[1], message.attempts))
        ledger.end(message)
        return message.attempts > 1

    def in_thread() -> None:
        for message in q:
            if handle(message):
                message.ack()
                ledger.acked_one(message)
            else:
                message.nack()

    async def in_loop() -> None:
        async for message in q:
            if handle(message):
                await message.aack()
                ledger.acked_one(message)
            else:
                await message.anack()

    threads = [start_thread(in_thread, name=f"consumer-{i}") for i in range(3)]
    with LoopThread("a") as a, LoopThread("b") as b:
        futures = [loop.submit(in_loop()) for loop in (a, a, b, b)]
        try:
            assert ledger.done.wait(2 * TIMEOUT), f"only {sum(ledger.acked.values())} of {total} acked"
        finally:
            q.close()
            for thread in threads:
                thread.finish()
            for future in futures:
                future.result(TIMEOUT)
    assert ledger.violations == []
    for group in groups:
        expected = [(seq, attempt) for seq in range(per_group) for attempt in (1, 2)]
        assert history[group] == expected


def test_priorities_are_respected_by_each_concurrent_consumer(storage):
    """With everything put before consumers start, each consumer (thread or coroutine) sees
    priorities never rising, and ids rising within a priority."""
    q: mqlite.Queue[int] = mqlite.Queue("ranked", storage=storage)
    for i in range(150):
        q.put(i, priority=(i * 7) % 5)
    total = 150
    ledger = Ledger(total)
    seen: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)

    def take(name: str, message: mqlite.Message[int]) -> None:
        seen[name].append((message.priority, message.id))

    def in_thread(name: str, consumer: mqlite.Consumer[int]) -> None:
        for message in consumer:
            take(name, message)
            message.ack()
            ledger.acked_one(message)

    async def in_loop(name: str, consumer: mqlite.Consumer[int]) -> None:
        async for message in consumer:
            take(name, message)
            await message.aack()
            ledger.acked_one(message)

    threads = [start_thread(in_thread, f"thread-{i}", q.consumer()) for i in range(3)]
    with LoopThread("a") as a, LoopThread("b") as b:
        futures = [
            loop.submit(in_loop(f"{name}-{i}", q.consumer())) for name, loop in (("a", a), ("b", b)) for i in range(2)
        ]
        try:
            assert ledger.done.wait(2 * TIMEOUT)
        finally:
            q.close()
            for thread in threads:
                thread.finish()
            for future in futures:
                future.result(TIMEOUT)
    assert sum(len(v) for v in seen.values()) == total
    for name, deliveries in seen.items():
        keys = [(-priority, message_id) for priority, message_id in deliveries]
        assert keys == sorted(keys), f"consumer {name} received out of priority order"


# -- mixed directions (janus tests/test_mixed.py) --------------------------------------------------


def test_sync_put_async_get(storage):
    q: mqlite.Queue[int] = mqlite.Queue("mixed", storage=storage)

    async def consume() -> list[int]:
        got = []
        for _ in range(100):
            message = await q.aget(timeout=TIMEOUT)
            got.append(message.body)
            await message.aack()
        return got

    with LoopThread() as loop:
        future = loop.submit(consume())
        producer = start_thread(lambda: [q.put(i) for i in range(100)], name="producer")
        assert future.result(2 * TIMEOUT) == list(range(100))
        producer.finish()
    assert q.join(timeout=0)
    q.close()


def test_async_put_sync_get(storage):
    q: mqlite.Queue[int] = mqlite.Queue("mixed", storage=storage)

    async def produce() -> None:
        for i in range(100):
            await q.aput(i)

    with LoopThread() as loop:
        future = loop.submit(produce())
        got = []
        for _ in range(100):
            message = q.get(timeout=TIMEOUT)
            got.append(message.body)
            message.ack()
        future.result(TIMEOUT)
    assert got == list(range(100))
    assert q.join(timeout=0)
    q.close()


def test_sync_join_while_coroutines_ack(storage):
    q: mqlite.Queue[int] = mqlite.Queue("mixed", storage=storage)
    q.put_many(range(60))

    async def consume(consumer: mqlite.Consumer[int]) -> int:
        acked = 0
        async for message in consumer:
            await asyncio.sleep(0)
            await message.aack()
            acked += 1
        return acked

    with LoopThread("a") as a, LoopThread("b") as b:
        futures = [loop.submit(consume(q.consumer())) for loop in (a, b)]
        assert q.join(timeout=2 * TIMEOUT)
        stats = q.stats()
        assert (stats.ready, stats.in_flight) == (0, 0)
        q.close()
        assert sum(future.result(TIMEOUT) for future in futures) == 60


def test_async_join_while_threads_ack(storage):
    q: mqlite.Queue[int] = mqlite.Queue("mixed", storage=storage)

    def consume() -> int:
        acked = 0
        for message in q:
            message.ack()
            acked += 1
        return acked

    with LoopThread("a") as a, LoopThread("b") as b:
        a.submit(q.aput_many(range(60))).result(TIMEOUT)
        joined = [loop.submit(q.ajoin(timeout=2 * TIMEOUT)) for loop in (a, b)]
        wait_until(lambda: waiting(q, "joiners") == 2, what="both joiners to wait")
        threads = [start_thread(consume, name=f"consumer-{i}") for i in range(3)]  # only now
        assert [future.result(3 * TIMEOUT) for future in joined] == [True, True]
    q.close()
    assert sum(thread.finish() for thread in threads) == 60


def test_queue_made_in_one_loop_works_in_another_loop():
    """janus ``test_get_loop_different_loop``: janus refuses a second loop; mqlite binds nothing
    to a loop, so a queue made and used in one loop keeps working in others, in turn or at once."""

    async def make() -> mqlite.Queue[str]:
        q: mqlite.Queue[str] = mqlite.Queue("roaming")
        await q.aput("from the first loop")
        first = await q.aget(timeout=TIMEOUT)
        await first.aack()
        await q.aput("for the second loop")
        return q

    q = asyncio.run(make())  # that loop is now closed

    async def use_again() -> str:
        message = await q.aget(timeout=TIMEOUT)
        await message.aack()
        return message.body

    assert asyncio.run(use_again()) == "for the second loop"

    with LoopThread("a") as a, LoopThread("b") as b:
        # Each loop waits for what the other one puts.
        got_a = a.submit(q.aget(timeout=TIMEOUT))
        got_b = b.submit(q.aget(timeout=TIMEOUT))
        wait_until(lambda: waiting(q) == 2, what="one blocked aget per loop")
        a.run(q.aput("ping"))
        b.run(q.aput("pong"))
        bodies = {got_a.result(TIMEOUT).body, got_b.result(TIMEOUT).body}
    assert bodies == {"ping", "pong"}
    q.close()


def test_put_many_wakes_getters_in_every_loop_and_thread(storage):
    q: mqlite.Queue[int] = mqlite.Queue("fanout", storage=storage)
    threads = [start_thread(q.get, name=f"thread-{i}") for i in range(3)]
    with LoopThread("a") as a, LoopThread("b") as b:
        futures = [loop.submit(q.aget()) for loop in (a, a, b, b)]
        wait_until(lambda: waiting(q) == 7, what="seven blocked getters")
        start_thread(q.put_many, range(7)).finish()
        bodies = sorted([t.finish().body for t in threads] + [f.result(TIMEOUT).body for f in futures])
    assert bodies == list(range(7))
    q.close()


# -- blocked getters wake when time alone makes a message eligible -----------------------------------


def test_blocked_get_wakes_when_a_lease_ends(storage):
    q: mqlite.Queue[str] = mqlite.Queue("leases", storage=storage, lease=0.2)
    q.put("abandoned")
    first = q.get_nowait()  # leased for 0.2 s and never settled
    # No timeout: a getter that slept through the lease's end must show as a hung thread.
    getter = start_thread(q.get, name="getter")
    try:
        again = getter.finish()
    finally:
        q.close()
    assert (again.id, again.body, again.attempts) == (first.id, "abandoned", 2)


def test_blocked_aget_in_another_loop_wakes_when_a_lease_ends(storage):
    q: mqlite.Queue[str] = mqlite.Queue("leases", storage=storage)
    q.put("abandoned")
    holder = q.consumer(lease=0.2)
    first = holder.get_nowait()
    with LoopThread() as loop:
        future = loop.submit(q.aget())
        try:
            again = future.result(TIMEOUT)
        finally:
            q.close()
    assert (again.id, again.attempts) == (first.id, 2)


def test_blocked_get_wakes_when_a_delay_ends(storage):
    q: mqlite.Queue[str] = mqlite.Queue("delays", storage=storage)
    getter = start_thread(q.get, name="getter")
    wait_until(lambda: waiting(q) == 1, what="the getter to block")
    q.put("soon", delay=0.2)
    try:
        message = getter.finish()
    finally:
        q.close()
    assert (message.body, message.attempts) == ("soon", 1)


def test_a_sooner_delay_wakes_a_getter_sleeping_on_a_later_one(storage):
    """The getter sleeps until the far message's time; a nearer one put meanwhile must make it
    wake at the nearer time, not the far one."""
    q: mqlite.Queue[str] = mqlite.Queue("delays", storage=storage)
    q.put("far", delay=300)
    getter = start_thread(q.get, name="getter")
    wait_until(lambda: waiting(q) == 1, what="the getter to block")
    q.put("near", delay=0.2)
    try:
        message = getter.finish()
    finally:
        q.close()
    assert message.body == "near"


def test_a_getter_that_times_out_hands_its_timer_to_one_still_waiting(storage):
    """Two getters wait; a delayed put makes the first one the timer's holder (it sleeps until
    the message is due), but its own timeout comes first. Leaving, it must hand the timer on:
    the other getter, which has no timeout, would otherwise sleep past the due time forever."""
    q: mqlite.Queue[str] = mqlite.Queue("delays", storage=storage)
    impatient = start_thread(q.get, True, 0.3, name="impatient")
    wait_until(lambda: waiting(q) == 1, what="the impatient getter to block")
    patient = start_thread(q.get, name="patient")
    wait_until(lambda: waiting(q) == 2, what="both getters to block")
    q.put("later", delay=1.0)  # wakes the first getter to take the timer
    with pytest.raises(mqlite.Empty):
        impatient.finish()
    try:
        message = patient.finish()
    finally:
        q.close()
    assert message.body == "later"


@async_test
async def test_an_async_getter_that_times_out_hands_its_timer_on():
    q: mqlite.Queue[str] = mqlite.Queue("delays")
    impatient = asyncio.ensure_future(q.aget(timeout=0.3))
    await async_wait_until(lambda: waiting(q) == 1, what="the impatient getter to block")
    patient = asyncio.ensure_future(q.aget())
    await async_wait_until(lambda: waiting(q) == 2, what="both getters to block")
    q.put("later", delay=1.0)
    with pytest.raises(mqlite.Empty):
        await impatient
    message = await asyncio.wait_for(patient, TIMEOUT)
    assert message.body == "later"
    q.close()


@pytest.mark.parametrize("how", ["cancelled", "its loop ended"])
def test_a_coroutine_that_leaves_while_holding_the_timer_hands_it_on(storage, how):
    """A delayed put wakes the first of two waiting coroutines to hold the timer; it sleeps on
    it again, and is cancelled there (a task.cancel(), an asyncio.timeout(), or its event loop
    ending). Nobody had woken it, but it held the only timer: leaving, it must hand the timer
    on, or the other coroutine (in another loop here) sleeps past the due time forever."""
    q: mqlite.Queue[str] = mqlite.Queue("delays", storage=storage)
    loop = LoopThread()
    first = loop.submit(q.aget())
    wait_until(lambda: waiting(q) == 1, what="the first coroutine to block")
    second = LoopThread()
    patient = second.submit(q.aget())
    wait_until(lambda: waiting(q) == 2, what="both coroutines to block")
    untimed = {id(w) for w in q._channel.getters}
    q.put("later", delay=0.3)  # wakes the first to take the timer; it sleeps on it again
    wait_until(
        lambda: any(id(w) not in untimed and w.wake_at < float("inf") for w in q._channel.getters),
        what="the first coroutine asleep on the timer",
    )
    if how == "cancelled":
        first.cancel()
    else:
        loop.close()  # cancels what still runs on it
    try:
        message = patient.result(TIMEOUT)
    finally:
        q.close()
        loop.close()
        second.close()
    assert message.body == "later"


def test_join_returns_when_a_lease_ends_into_the_dead_letter_queue(storage):
    """The only message is leased and never settled; with max_attempts=1 its lease's end
    dead-letters it and the queue is settled. No call announces that (the storage applies it
    lazily), so the joiner must wake at the lease's end by itself, though the lease was taken
    after it went to sleep."""
    q: mqlite.Queue[str] = mqlite.Queue("joins", storage=storage, max_attempts=1)
    q.put("doomed")
    joiner = start_thread(q.join, name="joiner")
    wait_until(lambda: waiting(q, "joiners") == 1, what="the joiner to block")
    q.consumer(lease=0.3).get_nowait()  # leased after the joiner slept; never settled
    try:
        assert joiner.finish() is True
    finally:
        q.close()
    assert q.storage.stats(q.name, time.time()).dead == 1


@async_test
async def test_ajoin_returns_when_a_lease_ends():
    q: mqlite.Queue[str] = mqlite.Queue("joins", max_attempts=1)
    q.put("doomed")
    joiner = asyncio.ensure_future(q.ajoin())
    await async_wait_until(lambda: waiting(q, "joiners") == 1, what="the joiner to block")
    q.consumer(lease=0.3).get_nowait()
    assert await asyncio.wait_for(joiner, TIMEOUT) is True
    q.close()


def test_a_delay_wakes_getters_of_threads_and_loops(storage):
    q: mqlite.Queue[str] = mqlite.Queue("delays", storage=storage)
    q.put("far", delay=300)
    getter = start_thread(q.get, name="getter")
    with LoopThread() as loop:
        future = loop.submit(q.aget())
        wait_until(lambda: waiting(q) == 2, what="two blocked getters")
        q.put_many(["one", "two"], delay=0.2)
        try:
            bodies = {getter.finish().body, future.result(TIMEOUT).body}
        finally:
            q.close()
    assert bodies == {"one", "two"}


@async_test
async def test_a_nack_with_delay_wakes_an_async_getter_when_it_ends():
    q: mqlite.Queue[str] = mqlite.Queue("delays")
    q.put("retry me")
    first = await q.aget()
    waiter = asyncio.create_task(q.aget())
    await async_wait_until(lambda: waiting(q) == 1, what="a blocked aget")
    await first.anack(delay=0.2)
    again = await asyncio.wait_for(waiter, TIMEOUT)
    assert (again.id, again.attempts) == (first.id, 2)
    q.close()


def test_a_release_in_one_loop_wakes_a_getter_in_another(storage):
    q: mqlite.Queue[str] = mqlite.Queue("handoff", storage=storage)
    q.put("hot potato")
    with LoopThread("a") as a, LoopThread("b") as b:
        held = a.run(q.aget(timeout=TIMEOUT))
        future = b.submit(q.aget())
        wait_until(lambda: waiting(q) == 1, what="a blocked aget")
        a.run(held.arelease())
        again = future.result(TIMEOUT)
    assert (again.body, again.attempts) == ("hot potato", 1)
    q.close()


def test_an_ack_in_a_thread_unblocks_the_next_message_of_its_group_in_a_loop(storage):
    q: mqlite.Queue[int] = mqlite.Queue("grouped", storage=storage)
    q.put_many([1, 2], group="g")
    first = q.get_nowait()
    with pytest.raises(mqlite.Empty):
        q.get_nowait()  # the group is busy
    with LoopThread() as loop:
        future = loop.submit(q.aget())
        wait_until(lambda: waiting(q) == 1, what="a blocked aget")
        first.ack()
        second = future.result(TIMEOUT)
    assert second.body == 2
    q.close()


def test_coroutines_on_one_storage_go_on_while_another_storage_is_stalled(tmp_path):
    """Another process holds an SQLite file's write lock, and eight coroutines' puts to it wait
    on I/O threads (up to busy_timeout). A coroutine getting from a different storage must not
    queue behind them: each storage runs its calls on threads of its own."""
    path = str(tmp_path / "a.db")
    with (
        mqlite.SQLiteStorage(path, busy_timeout=TIMEOUT * 2) as stalled_storage,
        mqlite.FileStorage(str(tmp_path / "log")) as other_storage,
    ):
        stalled: mqlite.Queue[int] = mqlite.Queue("a", stalled_storage)
        other: mqlite.Queue[str] = mqlite.Queue("b", other_storage)
        other.put("ready")
        inside = threading.Semaphore(0)
        real_put = stalled_storage.put

        def put(*args: Any) -> Any:
            inside.release()
            return real_put(*args)

        stalled_storage.put = put  # type: ignore[method-assign]
        writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        writer.execute("BEGIN IMMEDIATE")  # another process writing the file for a while

        async def main() -> str:
            puts = [asyncio.ensure_future(stalled.aput(i)) for i in range(8)]
            for _ in range(8):  # every I/O thread a shared pool would have is taken
                assert await asyncio.to_thread(inside.acquire, True, TIMEOUT)
            message = await asyncio.wait_for(other.aget(), TIMEOUT)
            await message.aack()
            writer.execute("ROLLBACK")
            await asyncio.wait_for(asyncio.gather(*puts), TIMEOUT * 3)
            return message.body

        try:
            assert asyncio.run(main()) == "ready"
        finally:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            writer.close()
            assert stalled.qsize() == 8
            stalled.close()
            other.close()


def test_a_queue_per_tenant_leaves_no_state_behind_per_name():
    """A process that opens and closes a queue per tenant on one storage, all feeding one
    dead-letter queue: the waiting channels of closed queues go with them, and the shared
    dead-letter queue stops applying time to queues nobody has open (each get of it once asked
    the storage about every tenant ever opened)."""
    from mqlite._waiting import _channels

    storage = mqlite.MemoryStorage()
    dead = mqlite.Queue("graveyard", storage, max_attempts=None)
    for tenant in range(2000):
        with mqlite.Queue(f"tenant-{tenant}", storage, dead_letter="graveyard") as q:
            q.put(tenant)
            q.get().ack()
    gc.collect()
    assert len(_channels[storage]) <= 2  # the dead-letter queue's (and none per tenant)
    assert dead._channel.feeders == {}
    with (
        mqlite.Queue("tenant-0", storage, dead_letter="graveyard"),
        mqlite.Queue("tenant-0", storage, dead_letter="graveyard"),
    ):
        assert dead._channel.feeders == {"tenant-0": 2}
    assert dead._channel.feeders == {}
    dead.close()
