"""The SQLite workloads of ``python -m mqlite bench`` (W5, W6, W7 of issue 3).

Every run works in a fresh temporary directory (``$MQLITE_BENCH_DIR`` or the system's temp
directory; put it on the disk you care about) that is deleted afterwards. Peers run with the
settings their source hard-codes, stated in each label:

* persist-queue ``SQLiteAckQueue`` (1.1): WAL, SQLite's default ``synchronous`` (FULL), and with
  ``auto_commit=True`` (forced for ack queues) one commit per ``put``, ``get`` and ``ack``;
  pickles its items.
* litequeue ``LiteQueue`` (0.9): WAL, ``synchronous=NORMAL``, autocommit ``put`` and ``done``,
  ``pop`` as ``BEGIN IMMEDIATE`` + ``UPDATE ... RETURNING``; text bodies only; no blocking get
  (consumers poll). It has no batch put: its batch is puts inside its own ``transaction()``.

Bodies are the bench's 64-byte ``bytes``; mqlite queues use the RAW serializer (bytes as is).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .._queue import Queue
from ..serializers import RAW
from .sqlite import SQLiteStorage

if TYPE_CHECKING:
    from .._bench import Check

Result = tuple[float, "Check"]
Runner = Callable[[int], Result]


def bodies(producer: int, count: int) -> list[bytes]:
    from .._bench import make_bodies

    return make_bodies(producer, count)


def verify(sent: list[list[bytes]], received: list[list[bytes]]) -> Check:
    from .._bench import verify as check

    return check(sent, received)


def clean() -> Check:
    from .._bench import Check

    return Check()


W6_MESSAGES = 10_000
W7_PRODUCERS = 8
W7_CONSUMERS = 2


@contextmanager
def _directory() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="mqlite-bench-", dir=os.environ.get("MQLITE_BENCH_DIR"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _queue(directory: str, durability: str) -> Queue[bytes]:
    storage = SQLiteStorage(os.path.join(directory, "mqlite.db"), durability=durability)
    return Queue("bench", storage, serializer=RAW, lease=300.0)


# -- W5: one message at a time -----------------------------------------------------------------


def w5_raw_limit(n: int) -> Result:
    """The machine's limit for two synced commits per message: raw one-row WAL FULL commits."""
    with _directory() as directory:
        conn = sqlite3.connect(os.path.join(directory, "raw.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (body BLOB)")
        body = b"x" * 64
        began = time.perf_counter()
        for _ in range(2 * n):
            conn.execute("INSERT INTO t VALUES (?)", (body,))
        elapsed = time.perf_counter() - began
        conn.close()
    return elapsed, clean()


def w5_raw_floor(n: int) -> Result:
    """The floor of mqlite's own way, without mqlite: raw sqlite3 on a table with one index,
    three transactions a message (insert, claim the head, delete) committed with
    ``synchronous=NORMAL``, and the WAL fdatasync'ed after the insert and the delete, as
    ``durability="full"`` does. What the disk allows any code that keeps these promises."""
    with _directory() as directory:
        path = os.path.join(directory, "floor.db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, state INTEGER, deadline REAL, body BLOB)")
        conn.execute("CREATE INDEX m_order ON m (state, deadline)")
        conn.execute("INSERT INTO m (state, deadline, body) VALUES (9, 0, x'')")  # the WAL exists now
        wal = os.open(path + "-wal", os.O_RDONLY)
        body = b"x" * 64
        claim = (
            "UPDATE m SET state = 1, deadline = ?"
            " WHERE id = (SELECT id FROM m WHERE state = 0 ORDER BY deadline, id LIMIT 1) RETURNING id"
        )
        began = time.perf_counter()
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO m (state, deadline, body) VALUES (0, 0, ?)", (body,))
            conn.execute("COMMIT")
            os.fdatasync(wal)
            conn.execute("BEGIN IMMEDIATE")
            [(mid,)] = conn.execute(claim, (time.time() + 300,)).fetchall()
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM m WHERE id = ?", (mid,))
            conn.execute("COMMIT")
            os.fdatasync(wal)
        elapsed = time.perf_counter() - began
        os.close(wal)
        conn.close()
    return elapsed, clean()


def w5_mqlite(durability: str) -> Runner:
    def run(n: int) -> Result:
        sent = bodies(0, n)
        got: list[bytes] = []
        with _directory() as directory:
            q = _queue(directory, durability)
            put, get = q.put, q.get
            began = time.perf_counter()
            for body in sent:
                put(body)
                msg = get()
                got.append(msg.body)
                msg.ack()
            elapsed = time.perf_counter() - began
            q.close()
            q.storage.close()
        return elapsed, verify([sent], [got])

    return run


def w5_persist_queue(n: int) -> Result:
    persistqueue = importlib.import_module("persistqueue")

    sent = bodies(0, n)
    got: list[bytes] = []
    with _directory() as directory:
        q = persistqueue.SQLiteAckQueue(os.path.join(directory, "pq"), multithreading=True)
        began = time.perf_counter()
        for body in sent:
            q.put(body)
            item = q.get()
            got.append(item)
            q.ack(item)
        elapsed = time.perf_counter() - began
    return elapsed, verify([sent], [got])


def w5_litequeue(n: int) -> Result:
    litequeue = importlib.import_module("litequeue")

    sent = bodies(0, n)
    got: list[bytes] = []
    with _directory() as directory:
        q = litequeue.LiteQueue(os.path.join(directory, "lq.db"))
        began = time.perf_counter()
        for body in sent:
            q.put(body.decode())
            msg = q.pop()
            got.append(msg.data.encode())
            q.done(msg.message_id)
        elapsed = time.perf_counter() - began
        q.close()
    return elapsed, verify([sent], [got])


# -- W6: 10,000 messages in batches -----------------------------------------------------------


def w6_raw_executemany(n: int) -> Result:
    """Raw ``executemany`` of n rows in one WAL FULL transaction: the ceiling for put_many."""
    sent = bodies(0, n)
    with _directory() as directory:
        conn = sqlite3.connect(os.path.join(directory, "raw.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t (body) VALUES (?)", [(body,) for body in sent])
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - began
        got = [row[0] for row in conn.execute("SELECT body FROM t ORDER BY id")]
        conn.close()
    return elapsed, verify([sent], [got])


def w6_mqlite_put_many(n: int) -> Result:
    sent = bodies(0, n)
    with _directory() as directory:
        q = _queue(directory, "full")
        began = time.perf_counter()
        q.put_many(sent)
        elapsed = time.perf_counter() - began
        got = [m.body for m in q.peek(n)]
        q.close()
        q.storage.close()
    return elapsed, verify([sent], [got])


def w6_litequeue_batch(n: int) -> Result:
    litequeue = importlib.import_module("litequeue")

    sent = bodies(0, n)
    with _directory() as directory:
        q = litequeue.LiteQueue(os.path.join(directory, "lq.db"))
        began = time.perf_counter()
        with q.transaction():
            for body in sent:
                q.put(body.decode())
        elapsed = time.perf_counter() - began
        got = [row[0].encode() for row in q.conn.execute(f"SELECT data FROM {q.table} ORDER BY rowid")]
        q.close()
    return elapsed, verify([sent], [got])


def w6_drain_persist_queue(n: int) -> Result:
    persistqueue = importlib.import_module("persistqueue")

    sent = bodies(0, n)
    got: list[bytes] = []
    with _directory() as directory:
        q = persistqueue.SQLiteAckQueue(os.path.join(directory, "pq"), multithreading=True)
        for body in sent:
            q.put(body)
        began = time.perf_counter()
        for _ in range(n):
            item = q.get()
            got.append(item)
            q.ack(item)
        elapsed = time.perf_counter() - began
    return elapsed, verify([sent], [got])


def w6_drain_mqlite(batch: int, per_message_ack: bool) -> Runner:
    """Drain a prefilled queue with get_many(batch): acking each message (one synced commit
    each), or each batch with one ``Queue.ack_many`` (one synced commit per batch)."""

    def run(n: int) -> Result:
        sent = bodies(0, n)
        got: list[bytes] = []
        with _directory() as directory:
            q = _queue(directory, "full")
            q.put_many(sent)
            began = time.perf_counter()
            if per_message_ack:
                while len(got) < n:
                    for msg in q.get_many(batch, timeout=10):
                        got.append(msg.body)
                        msg.ack()
            else:
                while len(got) < n:
                    messages = q.get_many(batch, timeout=10)
                    q.ack_many(messages)
                    got.extend(msg.body for msg in messages)
            elapsed = time.perf_counter() - began
            q.close()
            q.storage.close()
        return elapsed, verify([sent], [got])

    return run


# -- W7: 8 producer threads, 2 consumer threads ------------------------------------------------


def _threads(
    n: int,
    make_put: Callable[[], Callable[[bytes], object]],
    make_get: Callable[[], Callable[[], list[bytes]]],
) -> Result:
    """Producers put n messages in all, then each consumer receives until everything arrived
    (``get`` returns the bodies received by one call, [] if none came in time)."""
    per = n // W7_PRODUCERS
    sent = [bodies(p, per) for p in range(W7_PRODUCERS)]
    received: list[list[bytes]] = [[] for _ in range(W7_CONSUMERS)]
    total = per * W7_PRODUCERS
    count = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(W7_PRODUCERS + W7_CONSUMERS + 1)

    def produce(number: int) -> None:
        try:
            put = make_put()
            start.wait()
            for body in sent[number]:
                put(body)
        except BaseException as error:
            errors.append(error)

    def consume(number: int) -> None:
        try:
            get = make_get()
            mine = received[number]
            start.wait()
            while True:
                with lock:
                    if count[0] >= total:
                        return
                got = get()
                if not got:
                    continue
                mine.extend(got)
                with lock:
                    count[0] += len(got)
        except BaseException as error:
            errors.append(error)
            with lock:
                count[0] = total

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(W7_PRODUCERS)]
    threads += [threading.Thread(target=consume, args=(c,)) for c in range(W7_CONSUMERS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    check = verify(sent, received)
    if errors:
        check.error = f"{type(errors[0]).__name__}: {errors[0]}"
    return elapsed, check


def w7_mqlite(prefetch: int = 1, batch: int = 0) -> Runner:
    """Consumers get and ack one message at a time; with ``prefetch`` > 1 each consumer leases
    that many at once (``q.consumer(prefetch=...)``) and still acks each one; with ``batch``,
    each consumer takes ``get_many(batch)`` and settles them with one ``ack_many``."""

    def run(n: int) -> Result:
        return _w7_mqlite(n, prefetch, batch)

    return run


def _w7_mqlite(n: int, prefetch: int, batch: int) -> Result:
    with _directory() as directory:
        q = _queue(directory, "full")

        def make_get() -> Callable[[], list[bytes]]:
            consumer = q.consumer(prefetch=prefetch)

            def get() -> list[bytes]:
                if batch:
                    messages = consumer.get_many(batch, timeout=0.05)
                    q.ack_many(messages)
                    return [msg.body for msg in messages]
                try:
                    msg = consumer.get(timeout=0.05)
                except Exception:
                    return []
                msg.ack()
                return [msg.body]

            return get

        try:
            return _threads(n, lambda: q.put, make_get)
        finally:
            q.close()
            q.storage.close()


def w7_litequeue(n: int) -> Result:
    litequeue = importlib.import_module("litequeue")

    with _directory() as directory:
        path = os.path.join(directory, "lq.db")
        litequeue.LiteQueue(path).close()

        def make_put() -> Callable[[bytes], object]:
            q = litequeue.LiteQueue(path, timeout=60)
            return lambda body: q.put(body.decode())

        def make_get() -> Callable[[], list[bytes]]:
            q = litequeue.LiteQueue(path, timeout=60)

            def get() -> list[bytes]:
                msg = q.pop()
                if msg is None:
                    time.sleep(0.0005)  # litequeue has no blocking get: consumers poll
                    return []
                q.done(msg.message_id)
                return [bytes(msg.data.encode())]

            return get

        return _threads(n, make_put, make_get)
