"""A user's program: ``mypy --strict`` must accept it as written (tests/test_typing.py)."""

from __future__ import annotations

import asyncio
from typing import Any, assert_type

import mqlite

anything = mqlite.Queue("jobs")  # no annotation needed: a Queue[Any]
assert_type(anything, mqlite.Queue[Any])
anything.put({"to": "ada@example.com"})

emails: mqlite.Queue[dict[str, str]] = mqlite.Queue("emails")
emails.put({"to": "ada@example.com"})
msg = emails.get()
assert_type(msg, mqlite.Message[dict[str, str]])
assert_type(msg.body, dict[str, str])
assert_type(emails.get_many(10), list[mqlite.Message[dict[str, str]]])
assert_type(emails.peek(1), list[mqlite.Message[dict[str, str]]])
msg.ack()

producer = emails.producer(priority=5)
assert_type(producer, mqlite.Producer[dict[str, str]])
producer.put({"to": "bob@example.com"})

with emails.consumer(prefetch=2) as consumer:
    assert_type(consumer, mqlite.Consumer[dict[str, str]])
    for delivered in consumer:
        assert_type(delivered, mqlite.Message[dict[str, str]])
        with delivered as held:
            assert_type(held.body, dict[str, str])
        break


async def work() -> None:
    got = await emails.aget()
    assert_type(got, mqlite.Message[dict[str, str]])
    async with got as held:
        assert_type(held.body, dict[str, str])
    async for more in emails.consumer():
        assert_type(more.body, dict[str, str])
        await more.aack()


if __name__ == "__main__":
    asyncio.run(work())
