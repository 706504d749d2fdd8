"""What SQLite's page size does to mqlite: single-message calls against batch puts.

    python benchmarks/sqlite_page_size.py [--sizes 4096 2048 1024] [--n 2000] [--batch 10000] [--body 64] [--repeat 3]

mqlite creates its database files with SQLite's default page size (4096 bytes). A WAL commit
writes every page the transaction changed as a whole frame, so a smaller page writes fewer
bytes per small transaction, while a batch of rows spreads over more pages. This script puts a
number on that trade-off on this machine: for each page size it creates an empty database with
that page size (``PRAGMA page_size`` before the first write; mqlite then creates its schema in
the file and keeps the size), and runs, interleaved size by size in each repetition:

* W5 normal / full: ``put``, ``get``, ``ack`` one message at a time;
* W6 put_many: one ``put_many`` of ``--batch`` messages, ``durability="full"``;

with bodies of ``--body`` bytes (64 by default, as in ``python -m mqlite bench``).

It prints the median rate of each, and its ratio to the first size given. The figures behind
"Tried: smaller SQLite pages" in docs/performance.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable

import mqlite
from mqlite.serializers import RAW

Workload = Callable[[str, int, int], float]


def _create(path: str, page_size: int) -> None:
    """An empty SQLite file in WAL mode whose pages are ``page_size`` bytes, with incremental
    auto-vacuum as mqlite sets it on the files it creates (it can no longer once the header
    is written)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")  # writes the header: the page size is fixed now
        assert conn.execute("PRAGMA page_size").fetchone()[0] == page_size
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    finally:
        conn.close()


def _one_at_a_time(durability: str) -> Workload:
    def run(path: str, n: int, size: int) -> float:
        storage = mqlite.SQLiteStorage(path, durability=durability)
        q: mqlite.Queue[bytes] = mqlite.Queue("bench", storage, serializer=RAW, lease=300.0)
        bodies = [os.urandom(size) for _ in range(n)]
        try:
            began = time.perf_counter()
            for body in bodies:
                q.put(body)
                msg = q.get()
                msg.ack()
            elapsed = time.perf_counter() - began
        finally:
            q.close()
            storage.close()
        return n / elapsed

    return run


def _put_many(path: str, n: int, size: int) -> float:
    storage = mqlite.SQLiteStorage(path, durability="full")
    q: mqlite.Queue[bytes] = mqlite.Queue("bench", storage, serializer=RAW, lease=300.0)
    bodies = [os.urandom(size) for _ in range(n)]
    try:
        q.put(b"warm-up")  # the queue's row and the schema exist before the clock starts
        began = time.perf_counter()
        q.put_many(bodies)
        elapsed = time.perf_counter() - began
        if len(q) != n + 1:
            raise AssertionError(f"put_many stored {len(q) - 1} of {n} messages")
    finally:
        q.close()
        storage.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 2048, 1024])
    parser.add_argument("--n", type=int, default=2000, help="messages of the one-at-a-time runs")
    parser.add_argument("--batch", type=int, default=10_000, help="messages of the put_many run")
    parser.add_argument("--body", type=int, default=64, help="bytes per body")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workloads: dict[str, tuple[Workload, int]] = {
        "W5 normal put / get / ack": (_one_at_a_time("normal"), args.n),
        "W5 full put / get / ack": (_one_at_a_time("full"), args.n),
        "W6 full put_many": (_put_many, args.batch),
    }
    rates: dict[tuple[str, int], list[float]] = {}
    root = tempfile.mkdtemp(prefix="mqlite-pages-", dir=os.environ.get("MQLITE_BENCH_DIR"))
    try:
        for _ in range(args.repeat):
            for name, (workload, n) in workloads.items():
                for size in args.sizes:
                    directory = tempfile.mkdtemp(dir=root)
                    path = os.path.join(directory, "q.db")
                    _create(path, size)
                    rates.setdefault((name, size), []).append(workload(path, n, args.body))
                    shutil.rmtree(directory)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.body}-byte bodies; medians of {args.repeat} interleaved repetitions;", end=" ")
    print(f"ratio to page size {args.sizes[0]}\n")
    print("| workload | page size | msg/s | ratio |")
    print("| --- | --- | --- | --- |")
    for name in workloads:
        first = statistics.median(rates[(name, args.sizes[0])])
        for size in args.sizes:
            rate = statistics.median(rates[(name, size)])
            print(f"| {name} | {size} | {rate:,.0f} | {rate / first:.2f}x |")


if __name__ == "__main__":
    main()
