"""Example-based tests of the delivery rules (DESIGN.md section 2) and the settling rules of
section 1, one or more per rule, on the memory storage with a fake clock: nothing sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from _doubles import TIMEOUT, BlockingMemoryStorage, async_wait_until, start_thread, wait_until, waiting

import mqlite
from mqlite import Empty, LeaseLost, QueueClosed


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def q(clock: FakeClock) -> mqlite.Queue[object]:
    queue: mqlite.Queue[object] = mqlite.Queue("jobs", clock=clock, lease=10.0, max_attempts=3)
    yield queue
    queue.close()


def dead_queue(q: mqlite.Queue[object], clock: FakeClock) -> mqlite.Queue[object]:
    """The dead-letter queue of ``q``, opened on the same storage."""
    return mqlite.Queue(q.dead_letter, storage=q.storage, clock=clock, max_attempts=None)


def bodies(messages: list[mqlite.Message[object]]) -> list[object]:
    return [m.body for m in messages]


def drain(q: mqlite.Queue[object]) -> list[object]:
    """Get and ack everything eligible now, returning the bodies in delivery order."""
    got = []
    while True:
        try:
            msg = q.get_nowait()
        except Empty:
            return got
        got.append(msg.body)
        msg.ack()


# -- ids ---------------------------------------------------------------------------------------


def test_ids_strictly_increase_and_put_many_takes_a_consecutive_run(q: mqlite.Queue[object]) -> None:
    first = q.put("a")
    run = q.put_many(["b", "c", "d"])
    last = q.put("e")
    assert run == [first + 1, first + 2, first + 3]
    assert last == first + 4


def test_ids_are_unique_across_queues_of_one_storage(clock: FakeClock) -> None:
    storage = mqlite.MemoryStorage()
    a = mqlite.Queue("a", storage=storage, clock=clock)
    b = mqlite.Queue("b", storage=storage, clock=clock)
    ids = [a.put(1), b.put(2), a.put(3), *b.put_many([4, 5])]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_memory_storage_hands_over_the_very_object(q: mqlite.Queue[object]) -> None:
    body = {"to": "ada"}
    q.put(body)
    assert q.get().body is body


# -- rule 1: at-least-once ----------------------------------------------------------------------


def test_a_message_is_delivered_until_acked(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("once")
    q.get()  # never settled
    clock.advance(10)
    again = q.get()
    assert again.body == "once"
    assert again.attempts == 2
    again.ack()
    with pytest.raises(Empty):
        q.get_nowait()
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 0, None)


# -- rule 2: lease ------------------------------------------------------------------------------


def test_lease_is_the_queue_lease_by_default_and_the_consumer_lease_if_given(
    q: mqlite.Queue[object], clock: FakeClock
) -> None:
    q.put_many(["a", "b"])
    assert q.get().lease_expires_at == clock.now + 10.0
    with q.consumer(lease=2.5) as consumer:
        assert consumer.get().lease_expires_at == clock.now + 2.5


def test_message_is_invisible_while_leased_and_ready_at_once_when_the_lease_ends(
    q: mqlite.Queue[object], clock: FakeClock
) -> None:
    q.put("a")
    q.get()
    clock.advance(9.999)
    with pytest.raises(Empty):
        q.get_nowait()
    clock.advance(0.001)
    assert q.stats().ready == 1
    assert q.get_nowait().attempts == 2


def test_extend_moves_the_end_to_now_plus_seconds_and_returns_it(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("a")
    msg = q.get()
    clock.advance(8)
    assert msg.extend(5) == clock.now + 5
    assert msg.lease_expires_at == clock.now + 5
    clock.advance(4.9)
    with pytest.raises(Empty):
        q.get_nowait()
    assert q.peek()[0].lease_expires_at == clock.now + 0.1
    msg.ack()
    assert q.stats().in_flight == 0


def test_extend_can_shorten_the_lease(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("a")
    msg = q.get()
    msg.extend(0)
    again = q.get_nowait()
    assert again.attempts == 2


# -- rule 3: order ------------------------------------------------------------------------------


def test_fifo_without_priority_or_groups(q: mqlite.Queue[object]) -> None:
    q.put_many(range(5))
    q.put(5)
    assert drain(q) == [0, 1, 2, 3, 4, 5]


def test_highest_priority_first_then_lowest_id(q: mqlite.Queue[object]) -> None:
    q.put("p0-a")
    q.put("p5-a", priority=5)
    q.put("neg", priority=-1)
    q.put("p5-b", priority=5)
    q.put("p0-b")
    assert drain(q) == ["p5-a", "p5-b", "p0-a", "p0-b", "neg"]


def test_get_many_returns_in_delivery_order(q: mqlite.Queue[object]) -> None:
    q.put_many(["a", "b"])
    q.put("urgent", priority=1)
    assert bodies(q.get_many(10)) == ["urgent", "a", "b"]


def test_priority_does_not_reorder_inside_a_group(q: mqlite.Queue[object]) -> None:
    q.put("g-first", group="g")
    q.put("g-urgent", group="g", priority=9)
    q.put("other", priority=1)
    assert drain(q) == ["other", "g-first", "g-urgent"]


# -- rule 4: redelivery keeps position ----------------------------------------------------------


def test_nacked_message_comes_back_ahead_of_later_ones(q: mqlite.Queue[object]) -> None:
    q.put_many(["a", "b", "c"])
    first = q.get()
    first.nack()
    again = q.get()
    assert (again.id, again.body, again.attempts) == (first.id, "a", 2)


def test_expired_message_comes_back_ahead_of_later_ones(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put_many(["a", "b", "c"])
    q.get()
    clock.advance(10)
    assert drain(q) == ["a", "b", "c"]


def test_nack_delay_then_back_ahead_of_messages_still_waiting(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put_many(["a", "b", "c"])
    q.get().nack(delay=5)
    assert q.get().body == "b"
    clock.advance(5)
    assert q.get().body == "a"
    assert q.get().body == "c"


def test_released_message_keeps_its_position(q: mqlite.Queue[object]) -> None:
    q.put_many(["a", "b"])
    q.get().release()
    assert q.get().body == "a"


# -- rule 5: groups -----------------------------------------------------------------------------


def test_group_has_at_most_one_message_in_flight(q: mqlite.Queue[object]) -> None:
    q.put_many(["g1", "g2"], group="g")
    first = q.get()
    with pytest.raises(Empty):
        q.get_nowait()
    assert q.stats().ready == 1  # ready, but not eligible
    first.ack()
    assert q.get().body == "g2"


def test_group_is_delivered_in_id_order_to_several_consumers(q: mqlite.Queue[object]) -> None:
    q.put_many(["1", "2", "3"], group="customer-7")
    a, b = q.consumer(), q.consumer()
    seen = []
    for consumer in (a, b, a):
        msg = consumer.get_nowait()
        with pytest.raises(Empty):
            b.get_nowait()
        seen.append(msg.body)
        msg.ack()
    assert seen == ["1", "2", "3"]


def test_get_many_takes_at_most_one_message_per_group(q: mqlite.Queue[object]) -> None:
    q.put_many(["a1", "a2"], group="a")
    q.put_many(["b1", "b2"], group="b")
    q.put("free")
    assert bodies(q.get_many(10)) == ["a1", "b1", "free"]


def test_different_groups_proceed_in_parallel(q: mqlite.Queue[object]) -> None:
    q.put("a1", group="a")
    q.put("a2", group="a")
    q.put("b1", group="b")
    first, second = q.get(), q.get()
    assert {first.body, second.body} == {"a1", "b1"}


def test_delayed_head_blocks_its_group_only(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("g1", group="g", delay=5)
    q.put("g2", group="g")
    q.put("free")
    assert q.get().body == "free"
    with pytest.raises(Empty):
        q.get_nowait()
    clock.advance(5)
    assert drain(q) == ["g1", "g2"]


def test_failing_head_blocks_its_group_until_dead_lettered(q: mqlite.Queue[object]) -> None:
    q.put("poison", group="g")
    q.put("next", group="g")
    for attempt in (1, 2, 3):
        msg = q.get()
        assert (msg.body, msg.attempts) == ("poison", attempt)
        msg.nack(error="boom")
    assert q.get().body == "next"
    assert q.stats().dead == 1


def test_nack_delay_of_group_head_blocks_the_group_meanwhile(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put_many(["g1", "g2"], group="g")
    q.put("h1", group="h")
    q.get().nack(delay=30)  # g1
    other = q.get()
    assert other.body == "h1"
    other.ack()
    with pytest.raises(Empty):
        q.get_nowait()
    clock.advance(30)
    assert drain(q) == ["g1", "g2"]


def test_failing_head_blocks_its_group_until_acked(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put_many(["head", "tail"], group="g")
    q.get()  # head, lease expires
    clock.advance(10)
    again = q.get()
    assert again.body == "head"
    with pytest.raises(Empty):
        q.get_nowait()
    again.ack()
    assert q.get().body == "tail"


def test_rejected_head_unblocks_its_group(q: mqlite.Queue[object]) -> None:
    q.put_many(["head", "tail"], group="g")
    q.get().reject("bad")
    assert q.get().body == "tail"


def test_group_that_gets_a_new_message_after_emptying(q: mqlite.Queue[object]) -> None:
    q.put("one", group="g")
    q.get().ack()
    q.put("two", group="g")
    assert q.get().body == "two"


# -- rule 6: attempts, release, max_attempts, reject, redrive -----------------------------------


def test_attempts_count_deliveries(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("a")
    first = q.get()
    assert first.attempts == 1
    first.nack()
    second = q.get()
    assert second.attempts == 2
    clock.advance(10)  # expiry counts too
    assert q.get().attempts == 3


def test_release_takes_the_delivery_off_the_count(q: mqlite.Queue[object]) -> None:
    q.put("a")
    for _ in range(5):
        msg = q.get()
        assert msg.attempts == 1
        msg.release()
    assert q.stats().dead == 0
    assert q.peek()[0].attempts == 0


def test_nth_failed_attempt_dead_letters_with_headers(q: mqlite.Queue[object], clock: FakeClock) -> None:
    mid = q.put("poison", headers={"trace": "t-1"}, priority=2)
    for _ in range(3):
        q.get().nack(error="ValueError: bad")
    with pytest.raises(Empty):
        q.get_nowait()
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 1, None)
    dead = dead_queue(q, clock)
    assert dead.name == "jobs.dead"
    letter = dead.get()
    assert (letter.id, letter.body, letter.priority, letter.attempts) == (mid, "poison", 2, 1)
    assert dict(letter.headers) == {
        "trace": "t-1",
        "x-death-reason": "max_attempts",
        "x-death-queue": "jobs",
        "x-death-attempts": "3",
        "x-death-detail": "ValueError: bad",
    }


def test_expiry_of_the_last_attempt_dead_letters_with_lease_expired(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("slow")
    for _ in range(3):
        q.get()
        clock.advance(10)
    assert q.stats().dead == 1
    letter = dead_queue(q, clock).peek()[0]
    assert letter.headers["x-death-reason"] == "max_attempts"
    assert letter.headers["x-death-detail"] == "lease expired"
    assert letter.headers["x-death-attempts"] == "3"


def test_nack_without_error_leaves_no_detail(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("x")
    for _ in range(3):
        q.get().nack()
    assert "x-death-detail" not in dead_queue(q, clock).peek()[0].headers


def test_max_attempts_none_never_dead_letters(clock: FakeClock) -> None:
    q = mqlite.Queue("forever", clock=clock, max_attempts=None)
    q.put("x")
    for attempt in range(1, 51):
        msg = q.get()
        assert msg.attempts == attempt
        msg.nack()
    assert q.stats().dead == 0


def test_custom_dead_letter_queue_name(clock: FakeClock) -> None:
    q = mqlite.Queue("in", clock=clock, max_attempts=1, dead_letter="graveyard")
    q.put("x")
    q.get().nack()
    assert q.dead_letter == "graveyard"
    assert mqlite.Queue("graveyard", storage=q.storage, clock=clock).get().body == "x"


def test_reject_dead_letters_at_once_with_the_reason(q: mqlite.Queue[object], clock: FakeClock) -> None:
    mid = q.put("poison", group="g")
    q.get().reject("cannot parse")
    letter = dead_queue(q, clock).get()
    assert letter.id == mid
    assert letter.group == "g"
    assert dict(letter.headers) == {
        "x-death-reason": "rejected",
        "x-death-queue": "jobs",
        "x-death-attempts": "1",
        "x-death-detail": "cannot parse",
    }


def test_reject_without_reason(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("poison")
    q.get().reject()
    headers = dead_queue(q, clock).peek()[0].headers
    assert headers["x-death-reason"] == "rejected"
    assert "x-death-detail" not in headers


def test_with_message_acks_on_success_and_nacks_with_the_error_on_exception(clock: FakeClock) -> None:
    q = mqlite.Queue("w", clock=clock, max_attempts=1)
    q.put_many(["fine", "broken"])
    with q.get() as msg:
        assert msg.body == "fine"
    with pytest.raises(KeyError), q.get():
        raise KeyError("missing")
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 1, None)
    letter = dead_queue(q, clock).peek()[0]
    assert letter.body == "broken"
    assert letter.headers["x-death-detail"] == "KeyError: 'missing'"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_with_message_releases_when_the_worker_is_stopped(clock: FakeClock, stop: type[BaseException]) -> None:
    q = mqlite.Queue("w", clock=clock, max_attempts=1)
    q.put("job")
    with pytest.raises(stop), q.get():
        raise stop()
    assert q.stats() == mqlite.QueueStats(1, 0, 0, 0, 0.0)  # no attempt counted: not dead-lettered
    assert q.get().attempts == 1


def test_async_with_message_releases_when_the_task_is_cancelled(clock: FakeClock) -> None:
    q = mqlite.Queue("w", clock=clock, max_attempts=1)
    q.put("job")

    async def main() -> None:
        entered = asyncio.Event()

        async def worker() -> None:
            async with await q.aget():
                entered.set()
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.ensure_future(worker())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert q.stats().dead == 0
    assert q.get().attempts == 1


@pytest.mark.parametrize("asynchronous", [False, True])
def test_with_message_reraises_the_blocks_error_when_the_nack_finds_the_lease_lost(
    clock: FakeClock, asynchronous: bool, caplog: pytest.LogCaptureFixture
) -> None:
    q = mqlite.Queue("w", clock=clock, lease=10)
    q.put("job")

    def redeliver() -> mqlite.Message[object]:
        clock.advance(11)
        return q.get()  # the same message, delivered again: the first delivery's nack is refused

    if asynchronous:

        async def main() -> None:
            async with await q.aget():
                redeliver()
                raise ValueError("the real error")

        with pytest.raises(ValueError, match="the real error"):
            asyncio.run(main())
    else:

        def work() -> None:
            with q.get():
                redeliver()
                raise ValueError("the real error")

        with pytest.raises(ValueError, match="the real error"):
            work()
    assert "settling it on the way out of `with` failed" in caplog.text
    assert q.stats().in_flight == 1  # the new delivery is untouched


def test_with_message_leaves_an_explicitly_settled_message_alone(q: mqlite.Queue[object]) -> None:
    q.put("a")
    with q.get() as msg:
        msg.release()
    again = q.get()
    assert again.attempts == 1


def test_redrive_returns_dead_letters_under_their_ids_with_attempts_reset(
    q: mqlite.Queue[object], clock: FakeClock
) -> None:
    ids = q.put_many(["a", "b", "c"], headers={"keep": "me"})
    for _ in range(3):
        q.get().reject("no")
    assert q.stats().dead == 3
    assert q.redrive(max_messages=2) == 2
    assert q.stats().dead == 1
    assert q.redrive() == 1
    assert q.redrive() == 0
    assert q.stats() == mqlite.QueueStats(3, 0, 0, 0, 0.0)
    redriven = q.get_many(3)
    assert [m.id for m in redriven] == ids
    assert [m.attempts for m in redriven] == [1, 1, 1]
    assert all(dict(m.headers) == {"keep": "me"} for m in redriven)
    assert dead_queue(q, clock).qsize() == 0


def test_redrive_skips_dead_letters_in_flight_and_from_other_queues(clock: FakeClock) -> None:
    storage = mqlite.MemoryStorage()
    a = mqlite.Queue("a", storage=storage, clock=clock, dead_letter="dlq")
    b = mqlite.Queue("b", storage=storage, clock=clock, dead_letter="dlq")
    a.put_many(["a1", "a2"])
    b.put("b1")
    for queue in (a, a, b):
        queue.get().reject()
    dlq = mqlite.Queue("dlq", storage=storage, clock=clock)
    held = dlq.get()  # a1, in flight in the dead-letter queue
    assert held.body == "a1"
    assert a.redrive() == 1  # a2 only
    assert a.get().body == "a2"
    assert bodies(dlq.peek(5)) == ["a1", "b1"]
    held.ack()
    assert a.stats().dead == 0
    assert b.stats().dead == 1


def test_dead_letters_do_not_expire(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("x")
    q.get().reject()
    clock.advance(10 * 365 * 86400)
    assert q.stats().dead == 1
    assert dead_queue(q, clock).qsize() == 1


# -- rule 7: delays -----------------------------------------------------------------------------


def test_delayed_message_is_not_eligible_before_its_time(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("later", delay=5)
    q.put("now")
    assert q.stats().delayed == 1
    assert q.qsize() == 2
    assert q.get().body == "now"
    clock.advance(4.99)
    with pytest.raises(Empty):
        q.get_nowait()
    clock.advance(0.01)
    assert q.get_nowait().body == "later"


def test_delayed_messages_keep_id_order_once_due(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("a", delay=3)
    q.put("b", delay=1)
    q.put("c")
    clock.advance(3)
    assert drain(q) == ["a", "b", "c"]


def test_nack_delay(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("a")
    q.get().nack(delay=2)
    assert q.stats().delayed == 1
    with pytest.raises(Empty):
        q.get_nowait()
    clock.advance(2)
    assert q.get().attempts == 2


def test_blocked_get_wakes_when_a_delay_ends_on_the_real_clock() -> None:
    """No put wakes this getter: only the timer armed for the delay's end can (early delivery
    is ruled out with the fake clock in ``test_delay``; no duration is asserted here)."""
    q = mqlite.Queue("real")
    q.put("soon", delay=0.05)
    assert q.get(timeout=30).body == "soon"


# -- rule 8: dedup ------------------------------------------------------------------------------


def test_dedup_within_window_returns_the_first_id_and_enqueues_nothing(
    q: mqlite.Queue[object], clock: FakeClock
) -> None:
    first = q.put("a", dedup_key="order-1")
    clock.advance(299)
    assert q.put("a again", dedup_key="order-1") == first
    assert q.qsize() == 1


def test_dedup_holds_even_after_the_first_message_was_acked(q: mqlite.Queue[object]) -> None:
    first = q.put("a", dedup_key="k")
    q.get().ack()
    assert q.put("a", dedup_key="k") == first
    assert q.qsize() == 0


def test_dedup_window_counts_from_the_first_put(q: mqlite.Queue[object], clock: FakeClock) -> None:
    first = q.put("a", dedup_key="k")
    clock.advance(200)
    assert q.put("dup", dedup_key="k") == first  # does not extend the window
    clock.advance(100)
    second = q.put("b", dedup_key="k")
    assert second > first
    assert q.qsize() == 2
    clock.advance(299)
    assert q.put("c", dedup_key="k") == second


def test_dedup_keys_are_per_queue_and_distinct_keys_do_not_collide(clock: FakeClock) -> None:
    storage = mqlite.MemoryStorage()
    a = mqlite.Queue("a", storage=storage, clock=clock)
    b = mqlite.Queue("b", storage=storage, clock=clock)
    assert a.put(1, dedup_key="k") != b.put(2, dedup_key="k")
    assert a.put(3, dedup_key="k2") != a.put(4, dedup_key="k3")


def test_dedup_window_setting(clock: FakeClock) -> None:
    q = mqlite.Queue("short", clock=clock, dedup_window=1.0)
    first = q.put("a", dedup_key="k")
    clock.advance(1.0)
    assert q.put("a", dedup_key="k") != first


def test_put_many_dedup_key_names_the_batch(q: mqlite.Queue[object], clock: FakeClock) -> None:
    first = q.put_many(["a", "b"], dedup_key="batch-1")
    assert q.put_many(["a", "b"], dedup_key="batch-1") == first  # the retry enqueues nothing
    q.get().ack()
    clock.advance(299)
    longer = q.put_many(["a", "b", "c"], dedup_key="batch-1")  # only the new tail is put
    assert longer[:2] == first
    assert longer[2] > first[1]
    assert q.qsize() == 2
    assert q.put("a", dedup_key="batch-1") not in longer  # a single put's key is another key
    assert q.put_many(["x", "y"], dedup_key="batch-2") != first
    clock.advance(1)  # 300 s after the batch's first put: a new batch under the same key
    again = q.put_many(["a", "b"], dedup_key="batch-1")
    assert again[0] > longer[2]
    assert again[1] == again[0] + 1
    assert q.qsize() == 7


def test_put_many_dedup_key_is_all_or_nothing_with_maxsize(clock: FakeClock) -> None:
    q: mqlite.Queue[str] = mqlite.Queue("small", clock=clock, maxsize=3)
    first = q.put_many(["a", "b"], dedup_key="k")
    assert q.put_many(["a", "b"], block=False, dedup_key="k") == first  # no room needed
    with pytest.raises(mqlite.Full):
        q.put_many(["c", "d"], block=False, dedup_key="other")
    assert q.put_many(["a", "b", "c"], block=False, dedup_key="k")[:2] == first
    assert q.qsize() == 3


def test_aput_many_dedup_key_names_the_batch(q: mqlite.Queue[object]) -> None:
    async def main() -> tuple[list[int], list[int]]:
        return await q.aput_many(["a", "b"], dedup_key="b1"), await q.aput_many(["a", "b"], dedup_key="b1")

    first, retry = asyncio.run(main())
    assert retry == first
    assert q.qsize() == 2


def _bounded(kind: str, tmp_path: Path, clock: FakeClock, maxsize: int) -> mqlite.Queue[str]:
    storage: mqlite.storage.Storage
    if kind == "sqlite":
        storage = mqlite.SQLiteStorage(tmp_path / "q.db")
    elif kind == "file":
        storage = mqlite.FileStorage(tmp_path / "q")
    else:
        storage = mqlite.MemoryStorage()
    return mqlite.Queue("bounded", storage, clock=clock, maxsize=maxsize)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "file"])
def test_a_keyed_retry_needs_room_for_its_new_messages_only(kind: str, tmp_path: Path, clock: FakeClock) -> None:
    q = _bounded(kind, tmp_path, clock, maxsize=2)
    first = q.put_many(["a", "b"], dedup_key="k")
    for _ in range(2):
        q.get().ack()
    longer = q.put_many(["a", "b", "c"], dedup_key="k", block=False)  # 3 > maxsize, 1 new
    assert longer[:2] == first
    with pytest.raises(ValueError, match="3 messages can never fit"):  # 3 new: never, said at once
        q.put_many(["x", "y", "z"], dedup_key="other", timeout=TIMEOUT)
    assert [m.body for m in q.peek(5)] == ["c"]
    q.close()
    q.storage.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "file"])
def test_a_blocked_keyed_retry_is_woken_by_room_for_its_new_messages(
    kind: str, tmp_path: Path, clock: FakeClock
) -> None:
    """The room a getter makes goes to the first putter it fits: a keyed retry whose one new
    message fits is woken, even behind a putter that needs more (it waits for room for its
    new messages, not for the whole batch)."""
    q = _bounded(kind, tmp_path, clock, maxsize=3)
    first = q.put_many(["a", "b"], dedup_key="k")
    for _ in range(2):
        q.get().ack()
    q.put_many(["p1", "p2", "p3"])  # full
    plain = start_thread(q.put_many, ["c1", "c2"])  # needs 2 places
    wait_until(lambda: waiting(q, "putters") == 1, what="the plain put_many to block")
    retry = start_thread(lambda: q.put_many(["a", "b", "c"], dedup_key="k"))  # needs 1
    wait_until(lambda: waiting(q, "putters") == 2, what="the retry to block")
    q.get().ack()  # one place
    ids = retry.finish()
    assert ids[:2] == first
    assert waiting(q, "putters") == 1  # the plain one still waits, for 2 places
    q.get().ack()
    q.get().ack()
    plain.finish()
    assert q.qsize() == 3
    q.close()
    q.storage.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_blocked_keyed_aput_many_is_woken_by_room_for_its_new_messages(
    kind: str, tmp_path: Path, clock: FakeClock
) -> None:
    q = _bounded(kind, tmp_path, clock, maxsize=3)
    first = q.put_many(["a", "b"], dedup_key="k")
    for _ in range(2):
        q.get().ack()
    q.put_many(["p1", "p2", "p3"])

    async def main() -> list[int]:
        plain = asyncio.create_task(q.aput_many(["c1", "c2"]))
        await async_wait_until(lambda: waiting(q, "putters") == 1)
        retry = asyncio.create_task(q.aput_many(["a", "b", "c"], dedup_key="k"))
        await async_wait_until(lambda: waiting(q, "putters") == 2)
        await (await q.aget()).aack()
        ids = await asyncio.wait_for(retry, TIMEOUT)
        for _ in range(2):
            await (await q.aget()).aack()
        await asyncio.wait_for(plain, TIMEOUT)
        return ids

    assert asyncio.run(main())[:2] == first
    q.close()
    q.storage.close()


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_put_many_dedup_key_survives_reopening(kind: str, tmp_path: Path, clock: FakeClock) -> None:
    def open_queue() -> mqlite.Queue[str]:
        storage = mqlite.SQLiteStorage(tmp_path / "q.db") if kind == "sqlite" else mqlite.FileStorage(tmp_path / "q")
        return mqlite.Queue("exports", storage, clock=clock)

    q = open_queue()
    first = q.put_many(["a", "b"], dedup_key="export-1")
    q.put("c", dedup_key="export-1")
    q.close()
    q.storage.close()
    q = open_queue()
    try:
        assert q.put_many(["a", "b"], dedup_key="export-1") == first
        assert [m.body for m in q.peek(10)] == ["a", "b", "c"]
    finally:
        q.close()
        q.storage.close()


# -- settling rules: while the lease runs --------------------------------------------------------

VERBS = ["ack", "nack", "release", "reject"]


def settle(msg: mqlite.Message[object], verb: str) -> None:
    """Call one settle verb (or ``extend``) on ``msg``."""
    if verb == "extend":
        msg.extend(10)
    else:
        getattr(msg, verb)()


@pytest.mark.parametrize("verb", VERBS)
def test_repeating_the_verb_that_settled_a_delivery_is_a_noop(
    q: mqlite.Queue[object], clock: FakeClock, verb: str
) -> None:
    q.put("a")
    msg = q.get()
    settle(msg, verb)
    before = (q.stats(), dead_queue(q, clock).stats(), [(m.id, m.attempts) for m in q.peek(5)])
    settle(msg, verb)
    assert (q.stats(), dead_queue(q, clock).stats(), [(m.id, m.attempts) for m in q.peek(5)]) == before


@pytest.mark.parametrize(
    ("verb", "other"), [(verb, other) for verb in VERBS for other in [*VERBS, "extend"] if other != verb]
)
def test_any_other_verb_after_a_settle_raises_lease_lost(
    q: mqlite.Queue[object], clock: FakeClock, verb: str, other: str
) -> None:
    q.put("a")
    msg = q.get()
    settle(msg, verb)
    before = (q.stats(), [(m.id, m.attempts) for m in q.peek(5)])
    with pytest.raises(LeaseLost):
        settle(msg, other)
    assert (q.stats(), [(m.id, m.attempts) for m in q.peek(5)]) == before


def test_extend_works_many_times_while_the_lease_runs(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("a")
    msg = q.get()
    for _ in range(5):
        clock.advance(9)
        msg.extend(10)
    assert q.stats().in_flight == 1
    msg.ack()


# -- settling rules: after the lease ended, before a new delivery -------------------------------


@pytest.fixture
def expired(q: mqlite.Queue[object], clock: FakeClock) -> mqlite.Message[object]:
    q.put("a")
    msg = q.get()
    clock.advance(10)
    return msg


def test_expired_delivery_counts_as_a_failed_attempt_at_once(
    q: mqlite.Queue[object], expired: mqlite.Message[object]
) -> None:
    assert q.stats().ready == 1
    assert q.peek()[0].attempts == 1


def test_late_ack_deletes_the_message(q: mqlite.Queue[object], expired: mqlite.Message[object]) -> None:
    expired.ack()
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 0, None)
    expired.ack()  # same verb again: no-op


def test_late_reject_dead_letters_the_message(
    q: mqlite.Queue[object], clock: FakeClock, expired: mqlite.Message[object]
) -> None:
    expired.reject("late")
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 1, None)
    assert dead_queue(q, clock).peek()[0].headers["x-death-detail"] == "late"


@pytest.mark.parametrize("verb", ["nack", "release"])
def test_late_nack_and_release_are_noops(q: mqlite.Queue[object], expired: mqlite.Message[object], verb: str) -> None:
    before = q.stats()
    settle(expired, verb)
    assert q.stats() == before
    again = q.get()
    assert again.attempts == 2  # counted once, by the expiry; not again, not taken back


def test_late_extend_raises_lease_lost(q: mqlite.Queue[object], expired: mqlite.Message[object]) -> None:
    with pytest.raises(LeaseLost):
        expired.extend(10)
    assert q.stats().ready == 1
    expired.ack()  # still allowed: nobody received it again
    assert q.qsize() == 0


@pytest.mark.parametrize("verb", ["ack", "reject", "ack_many"])
def test_a_late_settle_frees_room_and_wakes_a_blocked_putter(clock: FakeClock, verb: str) -> None:
    q = mqlite.Queue("bounded", clock=clock, lease=10, maxsize=1)
    q.put("a")
    old = q.get()
    clock.advance(11)  # the lease ended: "a" is ready again and fills the queue
    assert q.full()
    putter = start_thread(q.put, "b")  # no timeout: only a wake-up lets it finish
    wait_until(lambda: waiting(q, "putters") == 1, what="the putter to block")
    if verb == "ack_many":
        q.ack_many([old])
    else:
        settle(old, verb)
    putter.finish()
    assert bodies(q.get_many(5)) == ["b"]


def test_a_redrive_frees_room_in_a_bounded_dead_letter_queue(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("a")
    q.get().reject()
    dead = mqlite.Queue(q.dead_letter, storage=q.storage, clock=clock, maxsize=1)
    putter = start_thread(dead.put, "by hand")
    wait_until(lambda: waiting(dead, "putters") == 1, what="the putter to block")
    assert q.redrive() == 1
    putter.finish()
    assert dead.qsize() == 1


def test_a_duplicate_put_needs_no_room(clock: FakeClock) -> None:
    q = mqlite.Queue("bounded", clock=clock, lease=10, maxsize=1)
    assert q.put("a", dedup_key="k") == 1
    q.get()
    q.put("b")
    clock.advance(11)  # "a" is back: two waiting under maxsize 1
    assert q.qsize() == 2
    assert q.put_nowait("a again", dedup_key="k") == 1  # enqueues nothing, so it is not Full


def test_a_death_by_lease_end_shows_in_the_dead_letter_queue_at_once(clock: FakeClock) -> None:
    q = mqlite.Queue("src", clock=clock, lease=10, max_attempts=1)
    dead = mqlite.Queue(q.dead_letter, storage=q.storage, clock=clock)
    q.put("poison")
    q.get()
    clock.advance(11)  # the last lease ended: dead at that moment, though nobody called q
    assert dead.qsize() == 1
    assert dead.stats().ready == 1
    assert [m.body for m in dead.peek()] == ["poison"]


def test_every_call_on_a_dead_letter_queue_sees_deaths_by_lease_end(clock: FakeClock) -> None:
    """Found by tests/test_front_machine.py: purge, put under maxsize, join and get's first try
    on a dead-letter queue also apply what time did to the queues that feed it."""

    def dead_after_a_lease_end(maxsize: int = 0) -> mqlite.Queue[object]:
        q = mqlite.Queue("src", clock=clock, lease=1.0, max_attempts=1)
        q.put("first")
        q.put("second")
        q.get()
        q.get().reject("poison")  # 2 is dead at once; 1 still leased
        clock.advance(1.0)  # 1's only attempt ended: dead too, though nobody called q
        return mqlite.Queue(q.dead_letter, storage=q.storage, clock=clock, max_attempts=None, maxsize=maxsize)

    assert dead_after_a_lease_end().get(block=False).id == 1  # the lowest id first
    assert dead_after_a_lease_end().purge() == 2
    assert not dead_after_a_lease_end().join(timeout=0)
    with pytest.raises(mqlite.Full):
        dead_after_a_lease_end(maxsize=2).put_nowait("by hand")


@pytest.mark.parametrize("leased_first", [True, False])
def test_a_blocked_dead_letter_getter_wakes_when_a_last_lease_ends(leased_first: bool) -> None:
    """A monitor blocked on the dead-letter queue (``for msg in dead:``) must receive a message
    whose last lease ended, whether that lease was taken before it slept or after."""
    q = mqlite.Queue("src", lease=0.2, max_attempts=1)
    dead = mqlite.Queue(q.dead_letter, storage=q.storage)
    q.put("poison")
    if leased_first:
        q.get()
    monitor = start_thread(dead.get)  # no timeout: only a wake-up ends it
    wait_until(lambda: waiting(dead) == 1, what="the monitor to block")
    if not leased_first:
        q.get()  # the last attempt's lease starts while the monitor sleeps with no timer
    letter = monitor.finish()
    assert (letter.body, letter.headers["x-death-detail"]) == ("poison", "lease expired")
    q.close()


def test_a_blocked_async_dead_letter_getter_wakes_when_a_last_lease_ends() -> None:
    storage = BlockingMemoryStorage()
    q = mqlite.Queue("src", storage=storage, lease=0.2, max_attempts=1)
    dead = mqlite.Queue(q.dead_letter, storage=storage)
    q.put("poison")

    async def monitor() -> str:
        getter = asyncio.create_task(dead.aget())
        await async_wait_until(lambda: waiting(dead) == 1, what="the monitor to block")
        q.get()
        return (await asyncio.wait_for(getter, TIMEOUT)).body  # type: ignore[no-any-return]

    assert asyncio.run(monitor()) == "poison"
    q.close()


def test_late_ack_of_a_group_head_unblocks_the_group(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put_many(["head", "tail"], group="g")
    old = q.get()
    clock.advance(10)
    old.ack()
    assert q.get().body == "tail"


# -- settling rules: after the message moved on -------------------------------------------------


@pytest.mark.parametrize("verb", [*VERBS, "extend"])
def test_every_verb_of_an_old_delivery_raises_after_redelivery(
    q: mqlite.Queue[object], clock: FakeClock, verb: str
) -> None:
    q.put("a")
    old = q.get()
    clock.advance(10)
    new = q.get()
    before = (q.stats(), dead_queue(q, clock).stats())
    with pytest.raises(LeaseLost):
        settle(old, verb)
    assert (q.stats(), dead_queue(q, clock).stats()) == before
    new.ack()  # the new delivery is unaffected


@pytest.mark.parametrize("verb", [*VERBS, "extend"])
def test_every_verb_of_an_old_delivery_raises_after_it_was_settled_through_another(
    q: mqlite.Queue[object], clock: FakeClock, verb: str
) -> None:
    q.put("a")
    old = q.get()
    clock.advance(10)
    q.get().ack()
    with pytest.raises(LeaseLost):
        settle(old, verb)
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 0, None)


@pytest.mark.parametrize("verb", [*VERBS, "extend"])
def test_every_verb_of_an_old_delivery_raises_after_it_was_dead_lettered_by_expiry(clock: FakeClock, verb: str) -> None:
    q = mqlite.Queue("once", clock=clock, lease=10.0, max_attempts=1)
    q.put("a")
    old = q.get()
    clock.advance(10)
    assert q.stats().dead == 1
    with pytest.raises(LeaseLost):
        settle(old, verb)
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 1, None)


def test_lease_lost_is_sticky(q: mqlite.Queue[object], clock: FakeClock) -> None:
    q.put("a")
    old = q.get()
    clock.advance(10)
    q.get()
    with pytest.raises(LeaseLost):
        old.ack()
    with pytest.raises(LeaseLost):
        old.ack()


# -- peek ---------------------------------------------------------------------------------------


def test_peek_shows_unsettled_messages_in_delivery_order_without_leasing(
    q: mqlite.Queue[object], clock: FakeClock
) -> None:
    q.put("a")
    q.put("b", delay=60)
    q.put("c", priority=3)
    q.put("d", group="g")
    held = q.get()  # c
    stats = q.stats()
    peeked = q.peek(10)
    assert bodies(peeked) == ["c", "a", "b", "d"]
    assert peeked[0].lease_expires_at == held.lease_expires_at
    assert [m.lease_expires_at for m in peeked[1:]] == [None, None, None]
    assert [m.attempts for m in peeked] == [1, 0, 0, 0]
    assert q.stats() == stats
    assert bodies(q.peek()) == ["c"]  # n defaults to 1
    assert q.peek(0) == []


@pytest.mark.parametrize("verb", [*VERBS, "extend"])
def test_peeked_message_verbs_raise_lease_lost(q: mqlite.Queue[object], verb: str) -> None:
    q.put("a")
    peeked = q.peek()[0]
    with pytest.raises(LeaseLost):
        settle(peeked, verb)
    assert q.stats().ready == 1


# -- purge, stats, qsize, join ------------------------------------------------------------------


def test_purge_deletes_ready_and_delayed_but_not_in_flight(q: mqlite.Queue[object]) -> None:
    q.put_many(["a", "b"])
    q.put("c", delay=60)
    held = q.get()
    assert q.purge() == 2
    assert q.stats() == mqlite.QueueStats(0, 0, 1, 0, None)
    held.ack()
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 0, None)
    assert q.purge() == 0


def test_purge_leaves_dead_letters(q: mqlite.Queue[object]) -> None:
    q.put("x")
    q.get().reject()
    assert q.purge() == 0
    assert q.stats().dead == 1


def test_stats_counts_each_state_and_the_oldest_ready_age(q: mqlite.Queue[object], clock: FakeClock) -> None:
    assert q.stats() == mqlite.QueueStats(0, 0, 0, 0, None)
    q.put("old")
    clock.advance(7)
    q.put("young")
    q.put("later", delay=100)
    q.put("dead")
    q.put("flying")
    q.get().ack()  # old
    q.get()  # young, in flight
    q.get().reject()  # dead
    clock.advance(3)
    assert q.stats() == mqlite.QueueStats(ready=1, delayed=1, in_flight=1, dead=1, oldest_ready_age=3.0)


def test_qsize_counts_ready_and_delayed_not_in_flight(q: mqlite.Queue[object]) -> None:
    assert (q.qsize(), len(q), q.empty(), q.full()) == (0, 0, True, False)
    q.put("a")
    q.put("b", delay=5)
    assert (q.qsize(), len(q), q.empty()) == (2, 2, False)
    q.get()
    assert q.qsize() == 1


def test_full_follows_qsize_and_maxsize(clock: FakeClock) -> None:
    q = mqlite.Queue("bounded", clock=clock, maxsize=2)
    q.put_many([1, 2])
    assert q.full()
    with pytest.raises(mqlite.Full):
        q.put_nowait(3)
    q.get()  # in flight: no longer counts
    assert not q.full()
    q.put_nowait(3)
    with pytest.raises(mqlite.Full):
        q.put_many([4, 5], block=False)
    assert q.qsize() == 2


def test_put_many_waits_for_room_for_all_of_it() -> None:
    q = mqlite.Queue("room", maxsize=3)
    q.put_many([1, 2])
    putter = start_thread(q.put_many, [3, 4])
    wait_until(lambda: waiting(q, "putters") == 1, what="the putter to block")
    assert q.qsize() == 2  # one place free is not enough
    q.get().ack()
    assert len(putter.finish()) == 2
    assert q.qsize() == 3


def test_join_returns_true_when_settled_and_false_on_timeout(q: mqlite.Queue[object]) -> None:
    assert q.join(timeout=0) is True
    q.put("a")
    assert q.join(timeout=0.01) is False
    msg = q.get()
    assert q.join(timeout=0.01) is False  # in flight still counts
    joiner = start_thread(q.join, 30)
    wait_until(lambda: waiting(q, "joiners") == 1, what="the joiner to block")
    msg.ack()
    assert joiner.finish() is True


# -- rule 9: close ------------------------------------------------------------------------------


def test_close_wakes_blocked_getters_and_putters_with_queue_closed() -> None:
    q = mqlite.Queue("closing", maxsize=1)
    q.put("fill", delay=60)  # counts towards maxsize, is not eligible
    outcomes: list[str] = []

    def blocked(call: Callable[[], object]) -> None:
        try:
            call()
        except QueueClosed:
            outcomes.append("closed")

    threads = [
        start_thread(blocked, lambda: q.get(timeout=30)),
        start_thread(blocked, lambda: q.consumer().get(timeout=30)),
        start_thread(blocked, lambda: q.put("more", timeout=30)),
        start_thread(blocked, lambda: q.join(timeout=30)),
    ]
    wait_until(
        lambda: (waiting(q, "getters"), waiting(q, "putters"), waiting(q, "joiners")) == (2, 1, 1),
        what="every caller to block",
    )
    q.close()
    for thread in threads:
        thread.finish()
    assert outcomes == ["closed"] * 4


def test_close_wakes_an_async_getter() -> None:
    q = mqlite.Queue("closing-async")

    async def main() -> None:
        getter = asyncio.ensure_future(q.aget(timeout=30))
        await async_wait_until(lambda: waiting(q) == 1, what="the getter to block")
        q.close()
        with pytest.raises(QueueClosed):
            await getter

    asyncio.run(main())


AFTER_CLOSE: dict[str, Callable[[mqlite.Queue[object]], object]] = {
    "put": lambda q: q.put(1),
    "put_nowait": lambda q: q.put_nowait(1),
    "put_many": lambda q: q.put_many([1]),
    "get": lambda q: q.get(),
    "get_nowait": lambda q: q.get_nowait(),
    "get_many": lambda q: q.get_many(2),
    "qsize": lambda q: q.qsize(),
    "len": len,
    "empty": lambda q: q.empty(),
    "full": lambda q: q.full(),
    "stats": lambda q: q.stats(),
    "peek": lambda q: q.peek(),
    "purge": lambda q: q.purge(),
    "redrive": lambda q: q.redrive(),
    "join": lambda q: q.join(),
    "consumer": lambda q: q.consumer(),
    "producer": lambda q: q.producer(),
}


@pytest.mark.parametrize("method", sorted(AFTER_CLOSE))
def test_every_method_but_close_raises_after_close(q: mqlite.Queue[object], method: str) -> None:
    q.close()
    q.close()  # idempotent
    with pytest.raises(QueueClosed):
        AFTER_CLOSE[method](q)


def test_iteration_ends_when_the_queue_closes(q: mqlite.Queue[object]) -> None:
    q.put("a")
    got = []
    for msg in q:
        got.append(msg.body)
        msg.ack()
        q.close()
    assert got == ["a"]


@pytest.mark.parametrize("verb", [*VERBS, "extend"])
def test_settling_on_a_closed_queue_raises_queue_closed(clock: FakeClock, verb: str) -> None:
    q = mqlite.Queue("closing", clock=clock)
    q.put("a")
    msg = q.get()
    q.close()
    with pytest.raises(QueueClosed):
        settle(msg, verb)


def test_close_releases_held_leases_without_counting_an_attempt(clock: FakeClock) -> None:
    storage = mqlite.MemoryStorage()
    q = mqlite.Queue("jobs", storage=storage, clock=clock)
    q.put_many(["a", "b"])
    q.get()
    q.consumer(prefetch=1).get()
    q.close()
    other = mqlite.Queue("jobs", storage=storage, clock=clock)
    assert other.stats() == mqlite.QueueStats(2, 0, 0, 0, 0.0)
    assert [m.attempts for m in other.get_many(2)] == [1, 1]


def test_close_keeps_a_user_storage_open_and_closes_its_own() -> None:
    storage = mqlite.MemoryStorage()
    mine = mqlite.Queue("a", storage=storage)
    mine.put(1)
    mine.close()
    assert mqlite.Queue("a", storage=storage).qsize() == 1
    owned = mqlite.Queue("b")
    owned.close()
    with pytest.raises(mqlite.StorageError):
        owned.storage.counts("b", 0.0)


def test_consumer_close_releases_what_it_holds(q: mqlite.Queue[object]) -> None:
    q.put_many(["a", "b", "c"])
    with q.consumer(prefetch=3) as consumer:
        msg = consumer.get()
        assert consumer.held == 3
        assert q.stats().in_flight == 3
    assert q.stats().ready == 3
    assert [m.attempts for m in q.peek(3)] == [0, 0, 0]
    with pytest.raises(LeaseLost):  # released with the consumer: the delivery is over
        msg.ack()
    with pytest.raises(QueueClosed):
        consumer.get_nowait()


# -- rule 10: blocking --------------------------------------------------------------------------


def test_blocked_get_wakes_on_a_put_from_another_thread() -> None:
    q = mqlite.Queue("wake")
    getter = start_thread(q.get, True, 30)
    wait_until(lambda: waiting(q) == 1, what="the getter to block")
    q.put("hello")
    assert getter.finish().body == "hello"


def test_get_timeout_raises_empty_and_get_many_returns_empty_list() -> None:
    q = mqlite.Queue("empty")
    with pytest.raises(Empty):
        q.get(timeout=0.01)
    with pytest.raises(Empty):
        q.get(block=False)
    assert q.get_many(5, timeout=0.01) == []


def test_cancelled_aget_leases_nothing() -> None:
    q = mqlite.Queue("cancel")

    async def main() -> None:
        getter = asyncio.ensure_future(q.aget())
        await async_wait_until(lambda: waiting(q) == 1, what="the getter to block")
        getter.cancel()
        q.put("kept")
        with pytest.raises(asyncio.CancelledError):
            await getter
        msg = await q.aget(timeout=1)
        assert (msg.body, msg.attempts) == ("kept", 1)

    asyncio.run(main())
