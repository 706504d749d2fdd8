"""Queue.ack_many / aack_many: many acks in one storage call, with Message.ack's rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import mqlite
from mqlite.testing import FakeClock


@pytest.fixture(params=["memory", "sqlite"])
def q(request: pytest.FixtureRequest, tmp_path: Path) -> mqlite.Queue[int]:
    storage: mqlite.Storage = (
        mqlite.MemoryStorage() if request.param == "memory" else mqlite.SQLiteStorage(tmp_path / "q.db")
    )
    queue: mqlite.Queue[int] = mqlite.Queue("jobs", storage=storage, clock=FakeClock(), lease=10)
    yield queue
    queue.close()
    storage.close()


def test_ack_many_acks_every_message(q: mqlite.Queue[int]) -> None:
    q.put_many(range(5))
    q.ack_many(q.get_many(5, timeout=0))
    assert q.stats().in_flight == 0
    assert q.join(timeout=0)


def test_ack_many_skips_messages_acked_already(q: mqlite.Queue[int]) -> None:
    q.put_many(range(3))
    messages = q.get_many(3, timeout=0)
    messages[0].ack()
    q.ack_many(messages)
    messages[1].ack()  # repeating the verb stays a no-op
    assert q.join(timeout=0)


def test_ack_many_refuses_all_if_one_was_settled_otherwise(q: mqlite.Queue[int]) -> None:
    q.put_many(range(3))
    messages = q.get_many(3, timeout=0)
    messages[2].release()
    with pytest.raises(mqlite.LeaseLost, match="release"):
        q.ack_many(messages)
    assert q.stats().in_flight == 2  # nothing was acked
    q.ack_many(messages[:2])
    assert q.stats().in_flight == 0


def test_ack_many_reports_lost_leases_after_acking_the_rest(q: mqlite.Queue[int]) -> None:
    clock = q._clock
    assert isinstance(clock, FakeClock)
    q.put_many(range(2))
    first = q.get_many(1, timeout=0)
    clock.advance(10)  # first's lease ends ...
    again = q.get(timeout=0)  # ... and it is delivered again
    second = q.get(timeout=0)
    with pytest.raises(mqlite.LeaseLost, match=str(first[0].id)):
        q.ack_many([first[0], second])
    assert (again.id, q.stats().in_flight) == (first[0].id, 1)
    again.ack()


def test_ack_many_wakes_the_next_message_of_each_group(q: mqlite.Queue[int]) -> None:
    q.put(1, group="a")
    q.put(2, group="a")
    q.put(3, group="b")
    q.put(4, group="b")
    heads = q.get_many(5, timeout=0)
    assert sorted(m.body for m in heads) == [1, 3]
    q.ack_many(heads)
    assert sorted(m.body for m in q.get_many(5, timeout=0)) == [2, 4]


def test_ack_many_refuses_messages_of_another_queue(q: mqlite.Queue[int]) -> None:
    other: mqlite.Queue[int] = mqlite.Queue("other", storage=q.storage, clock=FakeClock())
    other.put(1)
    with pytest.raises(ValueError, match="another queue"):
        q.ack_many([other.get(timeout=0)])


def test_aack_many(q: mqlite.Queue[int]) -> None:
    async def main() -> None:
        await q.aput_many(range(4))
        await q.aack_many(await q.aget_many(4, timeout=0))
        assert await q.ajoin(timeout=0)

    asyncio.run(main())
