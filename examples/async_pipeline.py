"""An asyncio pipeline: stages connected by queues, several workers per stage.

download -> resize -> publish. Each stage reads from its inbox queue and puts its result in the
next stage's inbox, then acks the message it handled, so a crash between the two could only
repeat work, never lose it (at-least-once). Bounded queues (``maxsize``) give back-pressure:
a fast stage waits for a slow one instead of piling up work.

Run it: ``python examples/async_pipeline.py``
"""

from __future__ import annotations

import asyncio
import random

import mqlite

storage = mqlite.MemoryStorage()  # one storage, three queues
downloads: mqlite.Queue[str] = mqlite.Queue("downloads", storage=storage)
resizes: mqlite.Queue[dict[str, object]] = mqlite.Queue("resizes", storage=storage, maxsize=4)
publishes: mqlite.Queue[dict[str, object]] = mqlite.Queue("publishes", storage=storage, maxsize=4)
published: list[str] = []


async def download(worker: str) -> None:
    async for msg in downloads:  # until the queue is closed
        await asyncio.sleep(random.uniform(0.001, 0.01))  # pretend to fetch msg.body
        await resizes.aput({"url": msg.body, "size": len(msg.body) * 1000})
        await msg.aack()


async def resize(worker: str) -> None:
    async for msg in resizes:
        async with msg:  # ack on success, nack on an exception
            await asyncio.sleep(random.uniform(0.001, 0.01))
            await publishes.aput({**msg.body, "size": int(msg.body["size"]) // 4})


async def publish(worker: str) -> None:
    async for msg in publishes:
        async with msg:
            published.append(str(msg.body["url"]))
            print(f"{worker} published {msg.body['url']} ({msg.body['size']} bytes)", flush=True)


async def main() -> None:
    random.seed(1)
    workers = [
        *(asyncio.create_task(download(f"download-{i}")) for i in range(3)),
        *(asyncio.create_task(resize(f"resize-{i}")) for i in range(2)),
        asyncio.create_task(publish("publish-0")),
    ]
    urls = [f"https://example.com/photo-{n}.jpg" for n in range(12)]
    await downloads.aput_many(urls)
    print(f"pipeline started with {len(urls)} photos", flush=True)

    for stage in (downloads, resizes, publishes):  # wait until each stage is drained
        await stage.ajoin(timeout=4)
        print(f"stage {stage.name!r} done", flush=True)
    for stage in (downloads, resizes, publishes):
        stage.close()  # the workers' loops end
    await asyncio.gather(*workers)
    print(f"all {len(published)} photos published: {sorted(published) == sorted(urls)}")


if __name__ == "__main__":
    asyncio.run(main())
