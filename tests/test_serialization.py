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
