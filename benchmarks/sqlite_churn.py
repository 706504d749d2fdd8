"""Space reclaim of SQLiteStorage: churn 1,000,000 messages through one queue and report the
database + WAL size against the peak live size (issue 3, point 6).

    python benchmarks/sqlite_churn.py [messages] [live]

Keeps about ``live`` messages queued (a backlog), putting and acking in batches of 1,000 until
``messages`` went through, then drains; prints file sizes as it goes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from mqlite.storage import Envelope, QueueSpec
from mqlite.storage.sqlite import SQLiteStorage


def sizes(path: str) -> tuple[int, int]:
    wal = path + "-wal"
    return os.path.getsize(path), os.path.getsize(wal) if os.path.exists(wal) else 0


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    live = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    directory = tempfile.mkdtemp(prefix="mqlite-churn-", dir=os.environ.get("MQLITE_BENCH_DIR"))
    path = os.path.join(directory, "churn.db")
    storage = SQLiteStorage(path, durability="normal")
    storage.open_queue(QueueSpec("q", None))
    body = b"x" * 100
    batch = [Envelope(body)] * 1000
    put = acked = 0
    peak_file = 0
    began = time.perf_counter()
    while acked < total:
        if put < total and put - acked < live:
            storage.put("q", batch, time.time())
            put += len(batch)
        else:
            leased = storage.lease("q", 1000, time.time(), 60.0)
            storage.ack("q", [(m.id, m.token) for m in leased], time.time())
            acked += len(leased)
        db, wal = sizes(path)
        peak_file = max(peak_file, db + wal)
        if (put + acked) % 200_000 == 0:
            print(
                f"put {put:>9,} acked {acked:>9,} live {put - acked:>7,}"
                f"  db {db / 2**20:6.1f} MiB  wal {wal / 2**20:5.1f} MiB"
            )
    db, wal = sizes(path)
    live_bytes = live * len(body)
    print(f"done in {time.perf_counter() - began:.0f}s: {total:,} messages of {len(body)} bytes, peak live {live:,}")
    print(f"peak db+wal {peak_file / 2**20:.1f} MiB = {peak_file / live_bytes:.1f}x the peak live bodies")
    print(f"after draining: db {db / 2**20:.1f} MiB, wal {wal / 2**20:.1f} MiB")
    storage.close()
    print(f"after close: db {os.path.getsize(path) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
