"""CPU time per message of mqlite's single-message paths, for before/after comparisons.

    python benchmarks/cpu_per_message.py W1|W1-storage|W4|W5|W5f [--n 100000] [--repeat 5]

Wall-clock on a shared machine moves by more than a front optimization; ``time.process_time``
of this process does not count other processes' work. Compare two versions by running this
script interleaved with ``PYTHONPATH`` pointing at an export of the other version
(``git archive <commit> mqlite | tar -x -C /tmp/before``).

- W1: put N, then get + ack N (``Queue.put``, ``Queue.get``, ``Message.ack``), as the bench.
- W1-storage: the same through ``MemoryStorage.put`` / ``lease`` / ``ack`` directly: the
  storage's share of W1 (the rest is the front).
- W4: one ``aput`` coroutine, one ``aget`` + ``aack`` coroutine, as the bench.
- W5: SQLite ``durability="normal"``, put / get / ack one at a time with the RAW serializer.
- W5f: the same on the file log (``FileStorage``, ``durability="normal"``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import mqlite
from mqlite.serializers import RAW
from mqlite.storage.base import Envelope, Storage
from mqlite.storage.file import FileStorage
from mqlite.storage.sqlite import SQLiteStorage


def w1(n: int) -> float:
    """CPU seconds for W1 with ``n`` messages."""
    q: mqlite.Queue[bytes] = mqlite.Queue("bench")
    bodies = [b"x%d" % i for i in range(n)]
    put, get = q.put, q.get
    out: list[bytes] = []
    began = time.process_time()
    for body in bodies:
        put(body)
    for _ in range(n):
        message = get()
        message.ack()
        out.append(message.body)
    elapsed = time.process_time() - began
    assert out == bodies
    q.close()
    return elapsed


def w1_storage(n: int) -> float:
    """CPU seconds for W1's storage calls alone, made directly on the memory storage."""
    q: mqlite.Queue[bytes] = mqlite.Queue("bench")
    storage = q.storage
    bodies = [b"x%d" % i for i in range(n)]
    clock = time.time
    out: list[object] = []
    began = time.process_time()
    for body in bodies:
        storage.put("bench", [Envelope(body)], clock(), 0)
    for _ in range(n):
        record = storage.lease("bench", 1, clock(), 30.0)[0]
        storage.ack("bench", [(record.id, record.token)], clock())
        out.append(record.body)
    elapsed = time.process_time() - began
    assert out == bodies
    q.close()
    return elapsed


def w4(n: int) -> float:
    """CPU seconds for W4 with ``n`` messages."""

    async def main() -> float:
        q: mqlite.Queue[bytes] = mqlite.Queue("bench")
        bodies = [b"x%d" % i for i in range(n)]
        out: list[bytes] = []

        async def produce() -> None:
            for body in bodies:
                await q.aput(body)

        async def consume() -> None:
            for _ in range(n):
                message = await q.aget()
                await message.aack()
                out.append(message.body)

        began = time.process_time()
        await asyncio.gather(produce(), consume())
        elapsed = time.process_time() - began
        assert out == bodies
        q.close()
        return elapsed

    return asyncio.run(main())


def w5(n: int) -> float:
    """CPU seconds for SQLite W5 ``durability="normal"`` with ``n`` messages."""
    return _one_at_a_time(n, lambda directory: SQLiteStorage(os.path.join(directory, "mqlite.db"), durability="normal"))


def w5f(n: int) -> float:
    """CPU seconds for file-log W5f ``durability="normal"`` with ``n`` messages."""
    return _one_at_a_time(n, lambda directory: FileStorage(os.path.join(directory, "log"), durability="normal"))


def _one_at_a_time(n: int, open_storage: Callable[[str], Storage]) -> float:
    """put / get / ack ``n`` times through ``Queue`` on a storage opened in a temporary directory."""
    directory = tempfile.mkdtemp(prefix="mqlite-cpu-")
    try:
        storage = open_storage(directory)
        q: mqlite.Queue[bytes] = mqlite.Queue("bench", storage, serializer=RAW, lease=300.0)
        body = b"x" * 64
        put, get = q.put, q.get
        began = time.process_time()
        for _ in range(n):
            put(body)
            get().ack()
        elapsed = time.process_time() - began
        q.close()
        storage.close()
        return elapsed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


WORKLOADS: dict[str, Callable[[int], float]] = {
    "W1": w1,
    "W1-storage": w1_storage,
    "W4": w4,
    "W5": w5,
    "W5f": w5f,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    run = WORKLOADS[args.workload]
    run(min(args.n, 2_000))  # warm up
    figures = sorted(run(args.n) / args.n * 1e6 for _ in range(args.repeat))
    print(f"{args.workload}: CPU us per message min {figures[0]:.2f} median {figures[len(figures) // 2]:.2f}")


if __name__ == "__main__":
    main()
