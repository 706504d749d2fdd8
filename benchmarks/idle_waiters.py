"""What waiting costs: CPU used by callers blocked on an empty SQLite queue.

    python benchmarks/idle_waiters.py [--waiters 1 10 50] [--seconds 3] [--repeat 3]

For each count of waiters, as threads blocked in ``get`` and as coroutines of one event loop
blocked in ``aget``, measures the process's CPU time (user + system) over ``--seconds`` of
idleness and prints it as a percentage of one core (median of ``--repeat`` runs). The queue's
storage polls for other processes' commits while anyone waits (``poll_interval``, 50 ms); the
figure should not grow with the number of waiters. The same runs on a ``MemoryStorage`` give
the floor: waiters there sleep without any timer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import tempfile
import threading
import time

import mqlite
from mqlite._waiting import Channel


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _idle(storage: mqlite.storage.Storage, waiters: int, how: str, seconds: float) -> float:
    """Percent of one core used while ``waiters`` callers wait ``seconds`` on an empty queue."""
    q: mqlite.Queue[bytes] = mqlite.Queue("idle", storage)
    channel = q._channel
    try:
        if how == "threads":
            threads = [threading.Thread(target=_get_until_closed, args=(q,)) for _ in range(waiters)]
            for thread in threads:
                thread.start()
            _wait_for_getters(channel, waiters)
            time.sleep(0.2)  # past the first looks' quick backoff
            began, cpu = time.monotonic(), _cpu()
            time.sleep(seconds)
            used = _cpu() - cpu
            elapsed = time.monotonic() - began
            q.close()
            for thread in threads:
                thread.join()
        else:

            async def main() -> tuple[float, float]:
                tasks = [asyncio.create_task(_aget_until_closed(q)) for _ in range(waiters)]
                await asyncio.to_thread(_wait_for_getters, channel, waiters)
                await asyncio.sleep(0.2)
                began, cpu = time.monotonic(), _cpu()
                await asyncio.sleep(seconds)
                result = _cpu() - cpu, time.monotonic() - began
                q.close()
                await asyncio.gather(*tasks)
                return result

            used, elapsed = asyncio.run(main())
    finally:
        q.close()
    return 100.0 * used / elapsed


def _wait_for_getters(channel: Channel, waiters: int) -> None:
    while len(channel.getters) < waiters:
        time.sleep(0.001)


def _get_until_closed(q: mqlite.Queue[bytes]) -> None:
    with contextlib.suppress(mqlite.QueueClosed):
        q.get()


async def _aget_until_closed(q: mqlite.Queue[bytes]) -> None:
    with contextlib.suppress(mqlite.QueueClosed):
        await q.aget()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiters", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| storage | waiters | threads: % of a core | coroutines: % of a core |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(dir=os.environ.get("MQLITE_BENCH_DIR")) as directory:
        for kind in ("SQLite", "memory"):
            for waiters in args.waiters:
                row = []
                for how in ("threads", "coroutines"):
                    figures = []
                    for run in range(args.repeat):
                        if kind == "SQLite":
                            path = os.path.join(directory, f"idle-{waiters}-{how}-{run}.db")
                            with mqlite.SQLiteStorage(path) as storage:
                                figures.append(_idle(storage, waiters, how, args.seconds))
                        else:
                            figures.append(_idle(mqlite.MemoryStorage(), waiters, how, args.seconds))
                    row.append(f"{statistics.median(figures):.1f}")
                print(f"| {kind} | {waiters} | {row[0]} | {row[1]} |")


if __name__ == "__main__":
    main()
