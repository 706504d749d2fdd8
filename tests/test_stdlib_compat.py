"""What users of ``queue.Queue`` and ``asyncio.Queue`` expect, checked on ``mqlite.Queue``.

Ported ideas from CPython's ``Lib/test/test_queue.py`` (``BlockingTestMixin``,
``BaseQueueTestMixin``) and ``Lib/test/test_asyncio/test_queues.py``.
"""

from __future__ import annotations

import asyncio
import math
import queue as stdlib_queue
import threading

import pytest
from _doubles import TIMEOUT, async_test, async_wait_until, start_thread, wait_until, waiting

import mqlite


@pytest.fixture
def q():
    queue = mqlite.Queue("compat")
    yield queue
    queue.close()


# -- exceptions the standard library's users already catch -----------------------------------


def test_empty_is_catchable_as_queue_empty_and_asyncio_queue_empty(q):
    with pytest.raises(stdlib_queue.Empty):
        q.get_nowait()
    with pytest.raises(asyncio.QueueEmpty):
        q.get(block=False)
    with pytest.raises(mqlite.Empty):
        q.get(timeout=0.01)
    assert issubclass(mqlite.Empty, mqlite.Error)


def test_full_is_catchable_as_queue_full_and_asyncio_queue_full():
    with mqlite.Queue("bounded", maxsize=1) as q:
        q.put_nowait("a")
        with pytest.raises(stdlib_queue.Full):
            q.put_nowait("b")
        with pytest.raises(asyncio.QueueFull):
            q.put("b", block=False)
        with pytest.raises(mqlite.Full):
            q.put("b", timeout=0.01)
        assert q.qsize() == 1
        assert issubclass(mqlite.Full, mqlite.Error)


@async_test
async def test_async_get_timeout_raises_empty(q):
    with pytest.raises(asyncio.QueueEmpty):
        await q.aget(timeout=0.01)


@async_test
async def test_async_put_timeout_raises_full():
    with mqlite.Queue("bounded", maxsize=1) as q:
        await q.aput("a")
        with pytest.raises(asyncio.QueueFull):
            await q.aput("b", timeout=0.01)
        assert q.qsize() == 1


# -- get ----------------------------------------------------------------------------------------


def test_get_block_false_and_timeout(q):
    with pytest.raises(stdlib_queue.Empty):
        q.get(block=False)
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.01)
    with pytest.raises(stdlib_queue.Empty):
        q.get(True, 0.01)
    with pytest.raises(stdlib_queue.Empty):
        q.get(False, 10)  # block=False ignores the timeout, as in the standard library
    q.put("x")
    assert q.get(block=False).body == "x"


def test_get_in_fifo_order(q):
    bodies = [111, 333, 222]
    for body in bodies:
        q.put(body)
    got = []
    while not q.empty():
        message = q.get_nowait()
        got.append(message.body)
        message.ack()
    assert got == bodies


def test_blocked_get_proceeds_after_put_in_another_thread(q):
    """BlockingTestMixin.do_blocking_test: the blocked call returns once another thread acts."""
    getter = start_thread(q.get, True, TIMEOUT)
    wait_until(lambda: waiting(q) == 1, what="the getter to block")
    assert getter.is_alive()
    q.put("wake")
    assert getter.finish().body == "wake"


def test_put_nowait_and_qsize_empty_full_len():
    with mqlite.Queue("sizes", maxsize=3) as q:
        assert q.maxsize == 3
        assert q.qsize() == 0
        assert len(q) == 0
        assert q.empty()
        assert not q.full()
        q.put_nowait(1)
        q.put(2, delay=60)  # delayed messages count, as they wait to be delivered
        assert q.qsize() == 2
        assert len(q) == 2
        assert not q.empty()
        assert not q.full()
        q.put_nowait(3)
        assert q.full()
        with pytest.raises(mqlite.Full):
            q.put_nowait(4)
        message = q.get_nowait()  # a message that was got no longer counts
        assert q.qsize() == 2
        assert not q.full()
        stats = q.stats()
        assert (stats.ready, stats.delayed, stats.in_flight) == (1, 1, 1)
        message.ack()
        assert q.qsize() == 2


def test_unbounded_queue_is_never_full(q):
    q.put_many(range(1000))
    assert not q.full()
    assert q.qsize() == 1000


# -- maxsize backpressure -----------------------------------------------------------------------


def test_blocked_put_proceeds_after_get_in_another_thread():
    with mqlite.Queue("bounded", maxsize=2) as q:
        q.put("a")
        q.put("b")
        putter = start_thread(q.put, "c", name="putter")
        wait_until(lambda: waiting(q, "putters") == 1, what="the putter to block")
        assert putter.is_alive()
        assert q.qsize() == 2
        got = start_thread(q.get, True, TIMEOUT).finish()
        assert got.body == "a"
        message_id = putter.finish()
        assert q.qsize() == 2
        assert [m.body for m in q.peek(3)] == ["a", "b", "c"]  # "a" is in flight, unsettled
        assert message_id == got.id + 2


def test_put_many_larger_than_free_room_waits_for_room_for_all():
    with mqlite.Queue("bounded", maxsize=3) as q:
        q.put_many(["a", "b"])
        putter = start_thread(lambda: q.put_many(["c", "d"], timeout=TIMEOUT), name="put_many")
        wait_until(lambda: waiting(q, "putters") == 1, what="put_many to block")
        first = q.get_nowait()  # room for one: not enough, nothing enqueued yet
        assert q.qsize() == 1
        assert [m.body for m in q.peek(10)] == ["a", "b"]
        assert putter.is_alive()
        second = q.get_nowait()  # room for two: put_many proceeds with both
        ids = putter.finish()
        assert ids == [second.id + 1, second.id + 2]
        assert q.qsize() == 2
        first.ack()
        second.ack()
        assert [q.get_nowait().body for _ in range(2)] == ["c", "d"]


def test_put_many_without_room_for_all_raises_full_and_enqueues_none():
    with mqlite.Queue("bounded", maxsize=3) as q:
        q.put_many(["a", "b"])
        with pytest.raises(mqlite.Full):
            q.put_many(["c", "d"], block=False)
        with pytest.raises(mqlite.Full):
            q.put_many(["c", "d"], timeout=0.01)
        assert q.qsize() == 2
        assert [m.body for m in q.peek(10)] == ["a", "b"]
        assert q.put_many(["c"], block=False) == [3]


def test_put_many_larger_than_maxsize_is_refused():
    with mqlite.Queue("bounded", maxsize=2) as q, pytest.raises(ValueError, match="maxsize"):
        q.put_many([1, 2, 3])


def test_putter_needing_little_room_is_not_starved_by_one_needing_more():
    """Room freed for one message must reach the putter that can use it.

    maxsize 3, full. Putter A (put_many of 2) blocks first, putter B (put of 1) second. One get
    frees one place: A cannot use it and sleeps again; B must not stay asleep while the queue
    has room for it (``put`` blocks only while ``qsize() >= maxsize``).
    """
    with mqlite.Queue("bounded", maxsize=3) as q:
        q.put_many([1, 2, 3])
        big = start_thread(lambda: q.put_many(["a1", "a2"], timeout=TIMEOUT), name="big")
        wait_until(lambda: waiting(q, "putters") == 1, what="put_many to block")
        small = start_thread(q.put, "b", name="small")  # no timeout: its final retry would hide the bug
        wait_until(lambda: waiting(q, "putters") == 2, what="put to block")
        q.get_nowait()  # qsize 2: room for "b"
        small.finish()  # fails if it sleeps through the room made for it
        assert q.qsize() == 3
        q.get_nowait()
        q.get_nowait()  # qsize 1: room for both of "big"
        big.finish()
        assert q.qsize() == 3


@async_test
async def test_async_put_waits_for_room_and_proceeds_after_get():
    with mqlite.Queue("bounded", maxsize=1) as q:
        await q.aput("a")
        putter = asyncio.create_task(q.aput("b"))
        await async_wait_until(lambda: waiting(q, "putters") == 1, what="aput to block")
        assert not putter.done()
        message = await q.aget()
        assert await asyncio.wait_for(putter, TIMEOUT) == message.id + 1
        assert q.qsize() == 1


# -- join ---------------------------------------------------------------------------------------


def test_join_returns_after_every_message_is_acked(q):
    """BaseQueueTestMixin.queue_join_test: join waits for in-flight messages too."""
    q.put_many(range(5))
    messages = [q.get_nowait() for _ in range(5)]
    assert q.qsize() == 0  # nothing waits to be delivered, but five are in flight
    joined = threading.Event()
    joiner = start_thread(lambda: joined.set() if q.join(TIMEOUT) else None, name="joiner")
    wait_until(lambda: waiting(q, "joiners") == 1, what="join to block")
    for message in messages[:-1]:
        message.ack()
        assert not joined.is_set()
    assert q.join(timeout=0) is False
    messages[-1].ack()
    joiner.finish()
    assert joined.is_set()
    assert q.join(timeout=0) is True


def test_join_counts_delayed_and_nacked_messages(q):
    q.put("later", delay=60)
    assert q.join(timeout=0.01) is False
    assert q.purge() == 1
    assert q.join(timeout=0) is True
    q.put("retry")
    q.get_nowait().nack()
    assert q.join(timeout=0.01) is False
    q.get_nowait().ack()
    assert q.join() is True


def test_join_timeout_returns_false(q):
    q.put("never acked")
    assert q.join(timeout=0.05) is False
    assert q.join(timeout=0) is False
    q.get_nowait().ack()
    assert q.join(timeout=0.05) is True


def test_join_on_an_empty_queue_returns_at_once(q):
    assert q.join() is True
    assert q.join(timeout=0) is True


@async_test
async def test_ajoin_waits_for_acks_and_times_out(q):
    await q.aput_many(["a", "b"])
    assert await q.ajoin(timeout=0.01) is False
    first = await q.aget()
    second = await q.aget()
    joiner = asyncio.create_task(q.ajoin(timeout=TIMEOUT))
    await first.aack()
    await asyncio.sleep(0)
    assert not joiner.done()
    await second.aack()
    assert await asyncio.wait_for(joiner, TIMEOUT) is True


# -- argument checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, math.inf])
def test_bad_timeouts_raise_value_error_naming_timeout(q, bad):
    q.put("kept")
    for call in (
        lambda: q.get(timeout=bad),
        lambda: q.get_many(2, timeout=bad),
        lambda: q.put("x", timeout=bad),
        lambda: q.put_many(["x"], timeout=bad),
        lambda: q.join(timeout=bad),
    ):
        with pytest.raises(ValueError, match="timeout"):
            call()
    assert q.qsize() == 1  # nothing was put or leased by the refused calls
    assert q.stats().in_flight == 0


@pytest.mark.parametrize("bad", [-1, math.nan])
@async_test
async def test_bad_async_timeouts_raise_value_error_naming_timeout(q, bad):
    with pytest.raises(ValueError, match="timeout"):
        await q.aget(timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        await q.aput("x", timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        await q.ajoin(timeout=bad)
    assert q.qsize() == 0


CENTURIES = 1e10  # finite seconds, beyond what a lock can wait (threading.TIMEOUT_MAX)


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (lambda q: q.get(timeout=CENTURIES), "getters"),
        (lambda q: q.get_many(1, timeout=CENTURIES), "getters"),
        (lambda q: q.join(timeout=CENTURIES), "joiners"),
        (lambda q: q.put("b", timeout=CENTURIES), "putters"),
        (lambda q: q.get(), "getters"),  # sleeping until a message delayed for centuries is due
    ],
    ids=["get", "get_many", "join", "put", "get until a far delay"],
)
def test_timeouts_and_delays_of_centuries_wait_instead_of_overflowing(call, kind):
    """Delays and timeouts are any finite number of seconds; sleeping that long used to raise
    OverflowError from the lock at once."""
    q: mqlite.Queue[str] = mqlite.Queue("far", maxsize=1)
    q.put("a", delay=CENTURIES)
    caller = start_thread(call, q)
    wait_until(lambda: waiting(q, kind) == 1, what="the caller to wait")
    q.close()
    with pytest.raises(mqlite.QueueClosed):
        caller.finish()


def test_zero_timeout_is_a_non_blocking_attempt(q):
    with pytest.raises(mqlite.Empty):
        q.get(timeout=0)
    q.put("x")
    assert q.get(timeout=0).body == "x"
