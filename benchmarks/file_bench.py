"""FileStorage workloads W5f-W8f of issue 4, with the peers' real durability stated.

    python benchmarks/file_bench.py [--quick]

Peers: persist-queue's file ``Queue(autosave=True)`` (fsyncs once per chunk of 100 puts; a power
loss can lose up to 100 messages and its metadata), queuelib ``FifoDiskQueue`` (never fsyncs,
writes its index only at close: a killed process loses every message). Both read/write on the
caller's thread; mqlite is called at the storage level (no serializer) so the figures compare
storage engines, and through ``Queue`` for W5f.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time

from mqlite import Queue
from mqlite.storage import Envelope, QueueSpec
from mqlite.storage.file import FileStorage

BODY = b'{"order": 123456, "payload": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
QUICK = "--quick" in sys.argv


def fresh() -> str:
    return tempfile.mkdtemp(prefix="mqbench-", dir=os.environ.get("MQBENCH_DIR"))


def fdatasync_rate(n: int = 200) -> float:
    directory = fresh()
    fd = os.open(os.path.join(directory, "f"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    started = time.perf_counter()
    for _ in range(n):
        os.write(fd, BODY)
        os.fdatasync(fd)
    elapsed = time.perf_counter() - started
    os.close(fd)
    shutil.rmtree(directory)
    return n / elapsed


def w5_mqlite(durability: str, n: int) -> float:
    directory = fresh()
    storage = FileStorage(directory, durability=durability)  # type: ignore[arg-type]
    storage.open_queue(QueueSpec("q"))
    started = time.perf_counter()
    for _ in range(n):
        now = time.time()
        storage.put("q", [Envelope(BODY)], now)
        [message] = storage.lease("q", 1, now, 30.0)
        storage.ack("q", [(message.id, message.token)], now)
    elapsed = time.perf_counter() - started
    storage.close()
    shutil.rmtree(directory)
    return n / elapsed


def w5_queue(durability: str, n: int) -> float:
    directory = fresh()
    q: Queue[bytes] = Queue("q", storage=f"file://{directory}?durability={durability}")
    started = time.perf_counter()
    for _ in range(n):
        q.put("x" * 60)
        q.get().ack()
    elapsed = time.perf_counter() - started
    q.close()
    shutil.rmtree(directory)
    return n / elapsed


def w5_persistqueue(n: int) -> float:
    import persistqueue

    directory = fresh()
    q = persistqueue.Queue(os.path.join(directory, "q"), autosave=True)
    started = time.perf_counter()
    for _ in range(n):
        q.put(BODY)
        q.get()
        q.task_done()
    elapsed = time.perf_counter() - started
    shutil.rmtree(directory)
    return n / elapsed


def w5_queuelib(n: int) -> float:
    from queuelib import FifoDiskQueue

    directory = fresh()
    q = FifoDiskQueue(os.path.join(directory, "q"))
    started = time.perf_counter()
    for _ in range(n):
        q.push(BODY)
        q.pop()
    elapsed = time.perf_counter() - started
    q.close()
    shutil.rmtree(directory)
    return n / elapsed


def w6(n: int = 10_000) -> tuple[float, float]:
    """Batch put of n messages + drain in batches, full durability; and the raw append rate of
    the same body bytes with one fsync."""
    directory = fresh()
    storage = FileStorage(directory)
    storage.open_queue(QueueSpec("q"))
    now = time.time()
    started = time.perf_counter()
    storage.put("q", [Envelope(BODY)] * n, now)
    while taken := storage.lease("q", 500, now, 30.0):
        storage.ack("q", [(m.id, m.token) for m in taken], now)
    ours = n / (time.perf_counter() - started)
    storage.close()
    shutil.rmtree(directory)
    directory = fresh()
    started = time.perf_counter()
    fd = os.open(os.path.join(directory, "raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, BODY * n)
    os.fdatasync(fd)
    os.close(fd)
    raw = n / (time.perf_counter() - started)
    shutil.rmtree(directory)
    return ours, raw


def w7(threads: int, per_thread: int) -> float:
    directory = fresh()
    storage = FileStorage(directory)
    storage.open_queue(QueueSpec("q"))
    gate = threading.Barrier(threads + 1)

    def produce() -> None:
        gate.wait()
        for _ in range(per_thread):
            storage.put("q", [Envelope(BODY)], time.time())

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for worker in workers:
        worker.start()
    gate.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    storage.close()
    shutil.rmtree(directory)
    return threads * per_thread / elapsed


def w8(n: int) -> tuple[float, float]:
    """Reopen time for n live messages: from the op log (after a crash-free close), and from a snapshot."""
    directory = fresh()
    storage = FileStorage(directory, durability="normal")
    storage.open_queue(QueueSpec("q"))
    now = time.time()
    for i in range(n):
        storage.put("q", [Envelope(BODY)], now + i * 1e-6)
    storage.close()
    started = time.perf_counter()
    storage = FileStorage(directory)
    from_log = time.perf_counter() - started
    storage.compact()
    storage.close()
    started = time.perf_counter()
    storage = FileStorage(directory)
    from_snapshot = time.perf_counter() - started
    assert storage.counts("q", now + 10)[0] == n
    storage.close()
    shutil.rmtree(directory)
    return from_log, from_snapshot


def main() -> None:
    scale = 0.1 if QUICK else 1.0
    rate = fdatasync_rate()
    print(f"machine: fdatasync rate {rate:,.0f}/s; python {sys.version.split()[0]}; body {len(BODY)} bytes")
    n_full, n_normal = int(2000 * scale), int(20000 * scale)
    full = w5_mqlite("full", n_full)
    pq = w5_persistqueue(n_full)
    print(f"W5f full   mqlite {full:,.0f} msg/s  persist-queue(autosave, fsync per 100 puts) {pq:,.0f} msg/s")
    print(f"           ratio {full / pq:.2f}x; {full / (rate / 2):.0%} of fdatasync rate / 2")
    print(f"W5f full   through Queue (JSON): {w5_queue('full', n_full):,.0f} msg/s")
    normal = w5_mqlite("normal", n_normal)
    ql = w5_queuelib(n_normal)
    print(f"W5f normal mqlite {normal:,.0f} msg/s  queuelib FifoDiskQueue (never fsyncs) {ql:,.0f} msg/s")
    print(f"           ratio {normal / ql:.2f}x; through Queue (JSON): {w5_queue('normal', n_normal):,.0f} msg/s")
    ours, raw = w6()
    print(f"W6f batch put+drain 10,000 {ours:,.0f} msg/s; raw append+1 fsync {raw:,.0f} msg/s; {ours / raw:.0%}")
    one = w7(1, int(1000 * scale))
    eight = w7(8, int(1000 * scale))
    print(f"W7f full, 1 producer {one:,.0f} msg/s; 8 producers {eight:,.0f} msg/s; {eight / one:.1f}x")
    from_log, from_snapshot = w8(int(1_000_000 * scale))
    print(f"W8f reopen {int(1_000_000 * scale):,} live: op log {from_log:.2f} s, snapshot {from_snapshot:.2f} s")


if __name__ == "__main__":
    main()
