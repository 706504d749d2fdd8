"""``python -m mqlite demo``: producers and consumers in threads and coroutines on one queue."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter

from ._queue import Queue


def run(messages_per_producer: int = 5, seed: int = 7) -> Counter[str]:
    """Run the demo and return how many messages each consumer acked.

    Two producer threads and two producer coroutines put orders (some in ordering groups, some
    urgent); with the default 5 messages each, the fourth order of each producer thread is
    flaky and the third of the first coroutine is poison. Two consumer threads and two consumer
    coroutines (in another thread's event loop) take them, ack them, nack each flaky one once,
    and reject the poison one, which lands in the dead-letter queue. Everything printed is what
    actually flowed.
    """
    rng = random.Random(seed)
    orders: Queue[dict[str, object]] = Queue("orders", lease=5.0, max_attempts=3)
    acked: Counter[str] = Counter()
    print_lock = threading.Lock()
    started = time.monotonic()

    def say(who: str, text: str) -> None:
        with print_lock:
            print(f"{time.monotonic() - started:6.3f}s  {who:<10} {text}", flush=True)

    def handle(msg_body: dict[str, object], attempts: int) -> str:
        if msg_body.get("poison"):
            return "reject"
        if msg_body.get("flaky") and attempts == 1:
            return "nack"
        return "ack"

    def thread_producer(index: int) -> None:
        for n in range(messages_per_producer):
            group = f"customer-{rng.randrange(3)}" if n % 2 else None
            body: dict[str, object] = {"order": f"T{index}-{n}", "flaky": n == 3}
            mid = orders.put(body, group=group, priority=1 if n == 0 else 0)
            say(f"thread-p{index}", f"put #{mid} {body['order']}" + (f" group={group}" if group else ""))

    async def async_producer(index: int) -> None:
        for n in range(messages_per_producer):
            body: dict[str, object] = {"order": f"A{index}-{n}", "poison": index == 0 and n == 2}
            mid = await orders.aput(body)
            say(f"async-p{index}", f"put #{mid} {body['order']}")
            await asyncio.sleep(0)

    def thread_consumer(index: int) -> None:
        who = f"thread-c{index}"
        with orders.consumer() as consumer:
            for msg in consumer:
                verdict = handle(msg.body, msg.attempts)
                if verdict == "ack":
                    msg.ack()
                    acked[who] += 1
                elif verdict == "nack":
                    msg.nack()
                else:
                    msg.reject("poison order")
                say(who, f"{verdict} #{msg.id} {msg.body['order']} (attempt {msg.attempts})")

    async def async_consumer(index: int) -> None:
        who = f"async-c{index}"
        async with orders.consumer() as consumer:
            async for msg in consumer:
                verdict = handle(msg.body, msg.attempts)
                if verdict == "ack":
                    await msg.aack()
                    acked[who] += 1
                elif verdict == "nack":
                    await msg.anack()
                else:
                    await msg.areject("poison order")
                say(who, f"{verdict} #{msg.id} {msg.body['order']} (attempt {msg.attempts})")

    async_producers_done = threading.Event()

    async def async_producers() -> None:
        await asyncio.gather(async_producer(0), async_producer(1))
        async_producers_done.set()

    async def async_side() -> None:
        await asyncio.gather(async_producers(), async_consumer(0), async_consumer(1))

    consumers = [threading.Thread(target=thread_consumer, args=(i,)) for i in range(2)]
    consumers.append(threading.Thread(target=lambda: asyncio.run(async_side())))
    producers = [threading.Thread(target=thread_producer, args=(i,)) for i in range(2)]
    for thread in consumers + producers:
        thread.start()
    orders.put_many([{"order": f"B-{n}"} for n in range(3)])
    say("main", "put a batch of 3")
    for thread in producers:
        thread.join()
    async_producers_done.wait()
    say("main", "every producer is done; waiting until every message is settled")
    orders.join()
    stats = orders.stats()
    dead = Queue[dict[str, object]]("orders.dead", storage=orders.storage)
    for letter in dead.peek(10):
        say("main", f"dead letter #{letter.id} {letter.body['order']}: {dict(letter.headers)}")
    say("main", f"stats {stats}; closing")
    orders.close()
    for thread in consumers:
        thread.join()
    say("main", f"acked per consumer: {dict(sorted(acked.items()))}")
    return acked
