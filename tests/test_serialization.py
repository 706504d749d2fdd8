"""Bodies through serializers: what a queue does with bodies it cannot decode."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from _doubles import BlockingMemoryStorage

import mqlite
from mqlite.storage import DEATH_DETAIL, DEATH_REASON
from mqlite.testing import FakeClock


class Fussy:
    """JSON, except that it refuses to decode the body ``"poison"`` (as a body written by an
    older producer with another format would be refused)."""

    def dumps(self, obj: object, /) -> bytes:
        return mqlite.serializers.JSON.dumps(obj)

    def loads(self, data: bytes, /) -> object:
        if data == b'"poison"':
            raise ValueError("unknown format")
        return mqlite.serializers.JSON.loads(data)


def test_an_undecodable_body_goes_to_the_dead_letter_queue_and_the_next_is_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = mqlite.MemoryStorage()
    q: mqlite.Queue[object] = mqlite.Queue("jobs", storage=storage, serializer=Fussy(), clock=FakeClock())
    q.put_many(["poison", "fine"])
    with caplog.at_level(logging.WARNING, logger="mqlite"):
        msg = q.get(timeout=0)
    assert msg.body == "fine"
    assert "cannot be decoded" in caplog.text
    dead: mqlite.Queue[bytes] = mqlite.Queue("jobs.dead", storage=storage, serializer=mqlite.serializers.RAW)
    (letter,) = dead.peek(5)
    assert letter.body == b'"poison"'  # kept byte for byte, for a human to look at
    assert letter.headers[DEATH_REASON] == "rejected"
    assert letter.headers[DEATH_DETAIL].startswith("undecodable:")
    assert q.stats().dead == 1


@pytest.mark.parametrize("storage_kind", ["memory", "blocking"])
@pytest.mark.parametrize("how", ["get_nowait", "aget(timeout=0)", "get_many(timeout=0)"])
def test_a_get_that_does_not_wait_skips_an_undecodable_body_to_the_next(storage_kind: str, how: str) -> None:
    """Dead-lettering an undecodable body is not an empty queue: a get that does not wait
    looks again at once, instead of raising Empty while another message is ready."""
    storage = mqlite.MemoryStorage() if storage_kind == "memory" else BlockingMemoryStorage()
    q: mqlite.Queue[object] = mqlite.Queue("jobs", storage=storage, serializer=Fussy(), clock=FakeClock())
    q.put_many(["poison", "poison", "fine"], group="g" if how == "get_nowait" else None)
    if how == "get_nowait":
        body = q.get_nowait().body
    elif how == "get_many(timeout=0)":
        [msg] = q.get_many(5, timeout=0)
        body = msg.body
    else:

        async def main() -> object:
            return (await q.aget(timeout=0)).body

        body = asyncio.run(main())
    assert body == "fine"
    assert q.stats().dead == 2
    q.close()


def test_undecodable_bodies_in_a_prefetched_batch_are_skipped() -> None:
    q: mqlite.Queue[object] = mqlite.Queue("jobs", serializer=Fussy(), clock=FakeClock())
    q.put_many(["a", "poison", "b"])
    consumer = q.consumer(prefetch=3)
    assert [consumer.get(timeout=0).body for _ in range(2)] == ["a", "b"]
    assert q.stats().dead == 1


def test_an_async_get_rejects_an_undecodable_body_off_the_event_loop() -> None:
    """On a storage that may block, the reject of an undecodable body is a storage call like
    any other: it must run on mqlite's I/O threads, not on the loop."""
    storage = BlockingMemoryStorage()
    threads: list[str] = []
    storage.hooks["reject"] = lambda *args: threads.append(threading.current_thread().name)
    q: mqlite.Queue[object] = mqlite.Queue("jobs", storage=storage, serializer=Fussy(), clock=FakeClock())
    q.put_many(["poison", "fine"])

    async def main() -> object:
        msg = await q.aget(timeout=5)
        await msg.aack()
        return msg.body

    assert asyncio.run(main()) == "fine"
    assert q.stats().dead == 1
    assert threads
    assert all(name.startswith("mqlite-io") for name in threads), threads
    q.close()
