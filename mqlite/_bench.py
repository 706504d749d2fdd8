"""``python -m mqlite bench``: throughput against the standard library and peer libraries.

Every workload runs in this one process, implementations interleaved repetition by repetition
(rep 1: stdlib, mqlite, peers; rep 2: ...), so slow drift of the machine hits all of them alike.
Every run accounts for every message: the consumers record what they received and the run is
checked afterwards for lost, duplicated and out-of-order messages (order is checked per
consumer and per producer, the only order a FIFO queue promises with many threads).

Bodies are 64-byte ``bytes`` objects numbered by producer and sequence; the memory storage keeps
them by reference, like ``queue.Queue``. Peers come from the optional extra ``bench``
(``pip install mqlite[bench]``); a peer that is not importable is skipped with a note.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import importlib
import platform
import queue as stdqueue
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import mqlite

__all__ = ["Settings", "main", "run"]

BODY_SIZE = 64
STOP = b""  # the sentinel that tells a consumer to stop; never counted as a message
TIMEOUT = 120.0  # seconds a single run may take before it is declared hung


@dataclass(frozen=True)
class Settings:
    """How much work each run does."""

    n: int = 200_000  # messages per run for the one-thread workloads (W1, W4)
    n_threads: int = 100_000  # messages per run for the thread hand-off workloads (W2, W3)
    repeat: int = 5
    memory_n: int = 1_000_000
    batch: int = 100  # put_many / get_many size of the batch variant
    sqlite: bool = False  # include the SQLite workloads W5-W7 (the command line does)
    file: bool = False  # include the file-log workloads W5f-W8f (the command line does)
    reopen_n: int = 1_000_000  # live messages in the log W8f reopens

    @classmethod
    def quick(cls) -> Settings:
        return cls(n=20_000, n_threads=20_000, repeat=3, memory_n=100_000, reopen_n=100_000)


# -- bodies and accounting --------------------------------------------------------------------


def make_bodies(producer: int, count: int, size: int = BODY_SIZE) -> list[bytes]:
    """``count`` distinct bodies of ``size`` bytes: producer number, sequence, padding."""
    return [(b"%02d:%010d:" % (producer, i)).ljust(size, b".") for i in range(count)]


def _decode(body: bytes) -> tuple[int, int]:
    return int(body[:2]), int(body[3:13])


@dataclass
class Check:
    """What one run delivered, compared with what it put."""

    received: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    error: str | None = None

    def add(self, other: Check) -> None:
        self.received += other.received
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.out_of_order += other.out_of_order
        self.error = self.error or other.error

    @property
    def clean(self) -> bool:
        return self.error is None and not (self.lost or self.duplicated or self.out_of_order)


def verify(sent: Sequence[Sequence[bytes]], received: Sequence[Sequence[bytes]]) -> Check:
    """Compare what producers sent with what each consumer received, in receive order."""
    check = Check()
    expected = {body for bodies in sent for body in bodies}
    seen: set[bytes] = set()
    for got in received:
        last: dict[int, int] = {}
        for body in got:
            check.received += 1
            if body in seen:
                check.duplicated += 1
                continue
            seen.add(body)
            if body not in expected:
                check.error = f"received a body nobody sent: {body[:20]!r}"
                continue
            producer, seq = _decode(body)
            if seq < last.get(producer, -1):
                check.out_of_order += 1
            last[producer] = seq
    check.lost = len(expected - seen)
    return check


# -- implementations: each returns (seconds, Check) -------------------------------------------

Runner = Callable[[int], tuple[float, Check]]
Receive = Callable[[], Awaitable[bytes]]
ThreadSide = tuple[Callable[[bytes], object], Receive, Callable[[], object]]
AsyncSide = tuple[Callable[[bytes], Awaitable[object]], Receive, Callable[[], object]]


def _threads(
    producers: list[Callable[[], None]], consumers: list[Callable[[], None]], before_stop: Callable[[], object]
) -> tuple[float, str | None]:
    """Start producer and consumer threads together; after the producers finish, call
    ``before_stop`` (it sends one STOP per consumer); time until every consumer finished."""
    start = threading.Barrier(len(producers) + len(consumers) + 1)

    def gated(work: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            start.wait()
            work()

        return body

    made = [threading.Thread(target=gated(w), daemon=True) for w in producers]
    taken = [threading.Thread(target=gated(w), daemon=True) for w in consumers]
    for thread in made + taken:
        thread.start()
    start.wait()
    began = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    for thread in made:
        thread.join(max(deadline - time.monotonic(), 0.0))
    before_stop()
    for thread in taken:
        thread.join(max(deadline - time.monotonic(), 0.0))
    elapsed = time.perf_counter() - began
    if any(thread.is_alive() for thread in made + taken):
        return elapsed, f"hung: still running after {TIMEOUT:g}s"
    return elapsed, None


def _handoff(
    n: int,
    n_producers: int,
    n_consumers: int,
    put: Callable[[bytes], object],
    consume: Callable[[list[bytes]], None],
    stop: Callable[[], object],
) -> tuple[float, Check]:
    share = n // n_producers
    sent = [make_bodies(p, share) for p in range(n_producers)]
    received: list[list[bytes]] = [[] for _ in range(n_consumers)]

    def producer(bodies: list[bytes]) -> Callable[[], None]:
        def work() -> None:
            for body in bodies:
                put(body)

        return work

    def consumer(out: list[bytes]) -> Callable[[], None]:
        return lambda: consume(out)

    def stops() -> None:
        for _ in range(n_consumers):
            stop()

    elapsed, error = _threads([producer(b) for b in sent], [consumer(r) for r in received], stops)
    check = verify(sent, received)
    check.error = error
    return elapsed, check


def _stdlib_handoff(n_producers: int, n_consumers: int) -> Runner:
    def run(n: int) -> tuple[float, Check]:
        q: stdqueue.Queue[bytes] = stdqueue.Queue()

        def consume(out: list[bytes]) -> None:
            get, done, append = q.get, q.task_done, out.append
            while True:
                body = get()
                done()
                if body == STOP:
                    return
                append(body)

        return _handoff(n, n_producers, n_consumers, q.put, consume, lambda: q.put(STOP))

    return run


def _mqlite_handoff(n_producers: int, n_consumers: int) -> Runner:
    def run(n: int) -> tuple[float, Check]:
        q: mqlite.Queue[bytes] = mqlite.Queue("bench")

        def consume(out: list[bytes]) -> None:
            get, append = q.get, out.append
            while True:
                message = get()
                message.ack()
                body = message.body
                if body == STOP:
                    return
                append(body)

        try:
            return _handoff(n, n_producers, n_consumers, q.put, consume, lambda: q.put(STOP))
        finally:
            q.close()

    return run


def w1_stdlib(n: int) -> tuple[float, Check]:
    bodies = make_bodies(0, n)
    out: list[bytes] = []
    q: stdqueue.Queue[bytes] = stdqueue.Queue()
    put, get, done, append = q.put, q.get, q.task_done, out.append
    began = time.perf_counter()
    for body in bodies:
        put(body)
    for _ in range(n):
        append(get())
        done()
    elapsed = time.perf_counter() - began
    return elapsed, verify([bodies], [out])


def w1_mqlite(n: int) -> tuple[float, Check]:
    bodies = make_bodies(0, n)
    out: list[bytes] = []
    q: mqlite.Queue[bytes] = mqlite.Queue("bench")
    put, get, append = q.put, q.get, out.append
    began = time.perf_counter()
    for body in bodies:
        put(body)
    for _ in range(n):
        message = get()
        message.ack()
        append(message.body)
    elapsed = time.perf_counter() - began
    q.close()
    return elapsed, verify([bodies], [out])


def _w1_mqlite_batch(batch: int) -> Runner:
    def run(n: int) -> tuple[float, Check]:
        bodies = make_bodies(0, n)
        out: list[bytes] = []
        q: mqlite.Queue[bytes] = mqlite.Queue("bench")
        append = out.append
        began = time.perf_counter()
        for i in range(0, n, batch):
            q.put_many(bodies[i : i + batch])
        left = n
        while left:
            messages = q.get_many(min(batch, left))
            for message in messages:
                message.ack()
                append(message.body)
            left -= len(messages)
        elapsed = time.perf_counter() - began
        q.close()
        return elapsed, verify([bodies], [out])

    return run


def _run_loop(main: Callable[[], Coroutine[Any, Any, float]]) -> tuple[float, str | None]:
    async def guarded() -> float:
        return await asyncio.wait_for(main(), TIMEOUT)

    try:
        return asyncio.run(guarded()), None
    except TimeoutError:
        return TIMEOUT, f"hung: still running after {TIMEOUT:g}s"


def _thread_to_async(
    n: int,
    setup: Callable[[], ThreadSide],
) -> tuple[float, Check]:
    """W3 skeleton: ``setup()`` runs on the loop and returns (put from a thread, async receive
    returning one body, cleanup)."""
    bodies = make_bodies(0, n)
    out: list[bytes] = []

    async def main() -> float:
        put, receive, cleanup = setup()

        def produce() -> None:
            for body in bodies:
                put(body)
            put(STOP)

        thread = threading.Thread(target=produce, daemon=True)
        began = time.perf_counter()
        thread.start()
        append = out.append
        while True:
            body = await receive()
            if body == STOP:
                break
            append(body)
        elapsed = time.perf_counter() - began
        await asyncio.to_thread(thread.join)
        cleanup()
        return elapsed

    elapsed, error = _run_loop(main)
    check = verify([bodies], [out])
    check.error = error
    return elapsed, check


def w3_mqlite(n: int) -> tuple[float, Check]:
    def setup() -> ThreadSide:
        q: mqlite.Queue[bytes] = mqlite.Queue("bench")
        aget = q.aget

        async def receive() -> bytes:
            message = await aget()
            await message.aack()
            return message.body

        return q.put, receive, q.close

    return _thread_to_async(n, setup)


def _w3_mixed_peer(module: str) -> Callable[[int], tuple[float, Check]]:
    """W3 for janus or culsans, which share one API: ``sync_q.put`` / ``await async_q.get``."""

    def run(n: int) -> tuple[float, Check]:
        peer = importlib.import_module(module)

        def setup() -> ThreadSide:
            q = peer.Queue()
            async_q = q.async_q

            async def receive() -> bytes:
                body: bytes = await async_q.get()
                async_q.task_done()
                return body

            return q.sync_q.put, receive, q.close

        return _thread_to_async(n, setup)

    return run


w3_janus = _w3_mixed_peer("janus")
w3_culsans = _w3_mixed_peer("culsans")


def _async_to_async(
    n: int,
    setup: Callable[[], AsyncSide],
) -> tuple[float, Check]:
    """W4 skeleton: one producer coroutine, one consumer coroutine, on one loop."""
    bodies = make_bodies(0, n)
    out: list[bytes] = []

    async def main() -> float:
        put, receive, cleanup = setup()

        async def produce() -> None:
            for body in bodies:
                await put(body)
            await put(STOP)

        async def consume() -> None:
            append = out.append
            while True:
                body = await receive()
                if body == STOP:
                    return
                append(body)

        began = time.perf_counter()
        await asyncio.gather(produce(), consume())
        elapsed = time.perf_counter() - began
        cleanup()
        return elapsed

    elapsed, error = _run_loop(main)
    check = verify([bodies], [out])
    check.error = error
    return elapsed, check


def w4_asyncio(n: int) -> tuple[float, Check]:
    def setup() -> AsyncSide:
        q: asyncio.Queue[bytes] = asyncio.Queue()

        async def receive() -> bytes:
            body = await q.get()
            q.task_done()
            return body

        return q.put, receive, lambda: None

    return _async_to_async(n, setup)


def w4_mqlite(n: int) -> tuple[float, Check]:
    def setup() -> AsyncSide:
        q: mqlite.Queue[bytes] = mqlite.Queue("bench")
        aget = q.aget

        async def receive() -> bytes:
            message = await aget()
            await message.aack()
            return message.body

        return q.aput, receive, q.close

    return _async_to_async(n, setup)


def _w4_mixed(module: str) -> Runner:
    def run(n: int) -> tuple[float, Check]:
        peer = importlib.import_module(module)

        def setup() -> AsyncSide:
            q = peer.Queue()
            async_q = q.async_q

            async def receive() -> bytes:
                body: bytes = await async_q.get()
                async_q.task_done()
                return body

            return async_q.put, receive, q.close

        return _async_to_async(n, setup)

    return run


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    label: str
    run: Runner
    needs: str | None = None  # a peer module that must be importable
    baseline: bool = False


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    impls: tuple[Impl, ...]
    threads: bool  # sizes from Settings.n_threads instead of Settings.n
    size: int = 0  # messages per run if set (the SQLite workloads), instead of Settings.n*
    repeat: int = 0  # at most this many repetitions if set (W8f: each run reopens 1M messages)


@dataclass(frozen=True)
class Target:
    """A goal for one row: at least ``minimum`` times the ``versus`` row's rate in the same
    workload; or, when ``seconds`` is set, at most ``seconds`` per run of ``per`` messages
    (the run's time scaled linearly from the row's N, for reopen times)."""

    workload: str
    impl: str
    versus: str = ""
    minimum: float = 0.0
    seconds: float | None = None
    per: int = 1_000_000
    shown: str = ""  # how the table names ``versus`` (default: its first word)


def workloads(settings: Settings) -> list[Workload]:
    return [
        Workload(
            "W1",
            "one thread: put N, then get + ack N",
            (
                Impl("queue.Queue put / get + task_done", w1_stdlib, baseline=True),
                Impl("mqlite put / get + ack", w1_mqlite),
                Impl(f"mqlite put_many / get_many({settings.batch}) + ack", _w1_mqlite_batch(settings.batch)),
            ),
            threads=False,
        ),
        Workload(
            "W2-1x1",
            "threads: 1 producer -> 1 consumer",
            (
                Impl("queue.Queue put / get + task_done", _stdlib_handoff(1, 1), baseline=True),
                Impl("mqlite put / get + ack", _mqlite_handoff(1, 1)),
            ),
            threads=True,
        ),
        Workload(
            "W2-4x4",
            "threads: 4 producers -> 4 consumers",
            (
                Impl("queue.Queue put / get + task_done", _stdlib_handoff(4, 4), baseline=True),
                Impl("mqlite put / get + ack", _mqlite_handoff(4, 4)),
            ),
            threads=True,
        ),
        Workload(
            "W3",
            "thread producer -> asyncio consumer",
            (
                Impl("janus sync_q.put / await async_q.get + task_done", w3_janus, needs="janus", baseline=True),
                Impl("mqlite put / await aget + await aack", w3_mqlite),
                Impl("culsans sync_q.put / await async_q.get + task_done", w3_culsans, needs="culsans"),
            ),
            threads=True,
        ),
        Workload(
            "W4",
            "asyncio producer -> asyncio consumer",
            (
                Impl("asyncio.Queue await put / await get + task_done", w4_asyncio, baseline=True),
                Impl("mqlite await aput / await aget + await aack", w4_mqlite),
                Impl("janus async_q both sides", _w4_mixed("janus"), needs="janus"),
                Impl("culsans async_q both sides", _w4_mixed("culsans"), needs="culsans"),
            ),
            threads=False,
        ),
        *(_sqlite_workloads(settings) if settings.sqlite else []),
        *(_file_workloads(settings) if settings.file else []),
    ]


def _sqlite_workloads(settings: Settings) -> list[Workload]:
    """Issue 3's SQLite workloads; the runners and the peers' settings are in
    :mod:`mqlite.storage._sqlite_bench`."""
    from .storage import _sqlite_bench as sq

    pq = "persist-queue SQLiteAckQueue (WAL, sync FULL, commit per call)"
    lq = "litequeue (WAL, sync NORMAL)"
    return [
        Workload(
            "W5",
            "SQLite, one thread, one message at a time: put, get, ack",
            (
                Impl(f"{pq} put / get / ack", sq.w5_persist_queue, needs="persistqueue", baseline=True),
                Impl(f"{lq} put / pop / done", sq.w5_litequeue, needs="litequeue"),
                Impl("mqlite SQLite full put / get / ack", sq.w5_mqlite("full")),
                Impl("mqlite SQLite normal put / get / ack", sq.w5_mqlite("normal")),
                Impl("machine limit: raw sqlite3 WAL FULL one-row commits / 2", sq.w5_raw_limit),
                Impl("floor: raw sqlite3, mqlite's 3 transactions with put and ack synced", sq.w5_raw_floor),
            ),
            threads=False,
            size=max(200, settings.n // 100),
        ),
        Workload(
            "W6-put",
            f"SQLite, {sq.W6_MESSAGES:,} messages put in one batch",
            (
                Impl("raw sqlite3 executemany, WAL FULL, one transaction", sq.w6_raw_executemany, baseline=True),
                Impl("mqlite SQLite full put_many", sq.w6_mqlite_put_many),
                Impl(f"{lq} puts in one transaction()", sq.w6_litequeue_batch, needs="litequeue"),
            ),
            threads=False,
            size=sq.W6_MESSAGES,
        ),
        Workload(
            "W6-drain",
            f"SQLite, drain {sq.W6_MESSAGES:,} prefilled messages",
            (
                Impl(f"{pq} get / ack", sq.w6_drain_persist_queue, needs="persistqueue", baseline=True),
                Impl(
                    f"mqlite SQLite full get_many({settings.batch}) + ack each",
                    sq.w6_drain_mqlite(settings.batch, True),
                ),
                Impl(
                    f"mqlite SQLite full get_many({settings.batch}) + ack_many",
                    sq.w6_drain_mqlite(settings.batch, False),
                ),
            ),
            threads=False,
            size=sq.W6_MESSAGES,
        ),
        Workload(
            "W7",
            f"SQLite, {sq.W7_PRODUCERS} producer threads -> {sq.W7_CONSUMERS} consumer threads",
            (
                Impl(f"{lq} put / pop (polled) / done", sq.w7_litequeue, needs="litequeue", baseline=True),
                Impl("mqlite SQLite full put / get / ack", sq.w7_mqlite()),
                Impl("mqlite SQLite full put / get (prefetch 16) / ack", sq.w7_mqlite(16)),
                Impl("mqlite SQLite full put / get_many(100) / ack_many", sq.w7_mqlite(batch=100)),
            ),
            threads=True,
            size=max(sq.W7_PRODUCERS * 100, settings.n_threads // 20),
        ),
    ]


def _file_workloads(settings: Settings) -> list[Workload]:
    """Issue 4's file-log workloads; the runners and the peers' real durability are in
    :mod:`mqlite.storage._file_bench`."""
    from .storage import _file_bench as fb

    return [
        Workload(
            "W5f",
            "file log, one thread, one message at a time: put, get, ack",
            (
                Impl(f"{PQ_FILE} put / get / task_done", fb.w5_persist_queue, needs="persistqueue", baseline=True),
                Impl(f"{QUEUELIB} push / pop", fb.w5_queuelib, needs="queuelib"),
                Impl(W5F_FULL, fb.w5_mqlite("full")),
                Impl(W5F_NORMAL, fb.w5_mqlite("normal")),
                Impl("machine limit: raw os.write + os.fdatasync rate / 2 (appending)", fb.w5_machine_limit(False)),
                Impl("machine limit: the same over pre-zeroed blocks", fb.w5_machine_limit(True)),
            ),
            threads=False,
            size=max(200, settings.n // 100),
        ),
        Workload(
            "W6f",
            f"file log, {fb.W6_MESSAGES:,} messages: one put_many, then drain",
            (
                Impl(W6F_RAW, fb.w6_raw_append, baseline=True),
                Impl(W6F_FULL, fb.w6_mqlite("full", fb.W6_BATCH)),
                Impl("mqlite file normal put_many + drain as above", fb.w6_mqlite("normal", fb.W6_BATCH)),
                Impl("mqlite file full put_many alone (drain untimed)", fb.w6_mqlite("full", fb.W6_BATCH, False)),
            ),
            threads=False,
            size=fb.W6_MESSAGES,
        ),
        Workload(
            "W7f",
            f"file log, full: {fb.W7_PRODUCERS} producer threads put (group commit) vs one",
            (
                Impl(W7F_ONE, fb.w7_mqlite(1), baseline=True),
                Impl(W7F_MANY, fb.w7_mqlite(fb.W7_PRODUCERS)),
            ),
            threads=True,
            size=max(fb.W7_PRODUCERS * 100, settings.n_threads // 20),
        ),
        Workload(
            "W8f",
            f"file log: reopen with {settings.reopen_n:,} live messages (msg/s = N / seconds)",
            (
                Impl("raw read of the same log files (page cache; the I/O floor)", fb.w8_raw_read),
                Impl(W8F_LOG, fb.w8_reopen(False)),
                Impl(W8F_SNAPSHOT, fb.w8_reopen(True)),
            ),
            threads=False,
            size=settings.reopen_n,
            repeat=3,
        ),
    ]


PQ_FILE = "persist-queue file Queue(autosave=True) (fsync per 100 puts)"
QUEUELIB = "queuelib FifoDiskQueue (never fsyncs; index written at close)"
W5F_FULL = "mqlite file full put / get / ack"
W5F_NORMAL = "mqlite file normal put / get / ack"
W6F_RAW = "raw: the same bytes in one os.write + one os.fdatasync"
W6F_FULL = "mqlite file full put_many + get_many(100) + ack_many"
W7F_ONE = "mqlite file full put, 1 producer thread"
W7F_MANY = "mqlite file full put, 8 producer threads"
W8F_LOG = "mqlite FileStorage() replaying the log of puts"
W8F_SNAPSHOT = "mqlite FileStorage() from a compact() snapshot"

TARGETS = (
    Target("W1", "mqlite put / get + ack", "queue.Queue put / get + task_done", 1.0),
    Target("W2-1x1", "mqlite put / get + ack", "queue.Queue put / get + task_done", 1.0),
    Target("W2-4x4", "mqlite put / get + ack", "queue.Queue put / get + task_done", 1.0),
    Target("W3", "mqlite put / await aget + await aack", "janus sync_q.put / await async_q.get + task_done", 2.0),
    Target("W4", "mqlite await aput / await aget + await aack", "asyncio.Queue await put / await get + task_done", 0.5),
    Target("W4", "mqlite await aput / await aget + await aack", "culsans async_q both sides", 2.0),
    Target(
        "W5",
        "mqlite SQLite full put / get / ack",
        "persist-queue SQLiteAckQueue (WAL, sync FULL, commit per call) put / get / ack",
        1.5,
    ),
    Target("W5", "mqlite SQLite normal put / get / ack", "litequeue (WAL, sync NORMAL) put / pop / done", 2.0),
    Target("W6-put", "mqlite SQLite full put_many", "raw sqlite3 executemany, WAL FULL, one transaction", 0.5),
    Target("W6-put", "mqlite SQLite full put_many", "litequeue (WAL, sync NORMAL) puts in one transaction()", 2.5),
    Target("W7", "mqlite SQLite full put / get / ack", "litequeue (WAL, sync NORMAL) put / pop (polled) / done", 3.0),
    Target("W5f", W5F_FULL, f"{PQ_FILE} put / get / task_done", 1.5),
    Target("W5f", W5F_NORMAL, f"{QUEUELIB} push / pop", 0.5),
    Target("W6f", W6F_FULL, W6F_RAW, 0.5, shown="raw"),
    Target("W7f", W7F_MANY, W7F_ONE, 4.0, shown="1 producer"),
    Target("W8f", W8F_LOG, seconds=2.0),
    Target("W8f", W8F_SNAPSHOT, seconds=2.0),
)


@dataclass
class Row:
    workload: Workload
    impl: Impl
    n: int
    rates: list[float] = field(default_factory=list)
    check: Check = field(default_factory=Check)
    skipped: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


@dataclass
class Memory:
    n: int
    body_size: int
    per_message: dict[str, float]


@dataclass
class Report:
    settings: Settings
    rows: list[Row]
    memory: Memory | None
    notes: list[str]
    seconds: float

    @property
    def clean(self) -> bool:
        return all(row.check.clean for row in self.rows if row.skipped is None)

    def row(self, workload: str, impl: str) -> Row | None:
        for row in self.rows:
            if row.workload.name == workload and row.impl.label == impl:
                return row
        return None


def _importable(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as error:
        return f"{module} is not importable ({type(error).__name__}: {error}); pip install 'mqlite[bench]'"
    return None


# -- memory -----------------------------------------------------------------------------------


def _traced(fill: Callable[[list[bytes]], object], bodies: list[bytes]) -> float:
    """Bytes allocated per message by ``fill(bodies)`` and still alive after it (bodies, made
    beforehand, are not counted)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = fill(bodies)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return (after - before) / len(bodies)


def measure_memory(n: int, body_size: int = 100) -> Memory:
    bodies = make_bodies(0, n, body_size)

    def fill_mqlite(items: list[bytes]) -> object:
        q: mqlite.Queue[bytes] = mqlite.Queue("memory")
        put = q.put
        for body in items:
            put(body)
        if q.qsize() != len(items):
            raise RuntimeError(f"mqlite holds {q.qsize()} of {len(items)} messages")
        return q

    def fill_stdlib(items: list[bytes]) -> object:
        q: stdqueue.Queue[bytes] = stdqueue.Queue()
        put = q.put
        for body in items:
            put(body)
        return q

    def fill_deque(items: list[bytes]) -> object:
        d: collections.deque[bytes] = collections.deque()
        append = d.append
        for body in items:
            append(body)
        return d

    return Memory(
        n,
        body_size,
        {
            "mqlite.Queue (memory storage)": _traced(fill_mqlite, bodies),
            "queue.Queue": _traced(fill_stdlib, bodies),
            "collections.deque": _traced(fill_deque, bodies),
        },
    )


# -- running ----------------------------------------------------------------------------------


def run(
    settings: Settings,
    only: Sequence[str] | None = None,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the workloads (those named in ``only``, else all) and return the report."""
    began = time.perf_counter()
    chosen = workloads(settings)
    if only:
        wanted = {name.upper() for name in only}
        chosen = [w for w in chosen if w.name.upper() in wanted or w.name.split("-")[0].upper() in wanted]
    notes: list[str] = []
    rows: list[Row] = []
    for workload in chosen:
        for impl in workload.impls:
            row = Row(workload, impl, workload.size or (settings.n_threads if workload.threads else settings.n))
            if impl.needs is not None:
                row.skipped = _importable(impl.needs)
                if row.skipped and row.skipped not in notes:
                    notes.append(row.skipped)
            rows.append(row)
    for workload in chosen:
        if 0 < workload.repeat < settings.repeat:
            notes.append(f"{workload.name}: median of {workload.repeat} repetitions, not {settings.repeat}")
    for rep in range(settings.repeat):
        for row in rows:
            if row.skipped is not None or 0 < row.workload.repeat <= rep:
                continue
            gc.collect()
            try:
                elapsed, check = row.impl.run(row.n)
            except Exception as error:
                elapsed, check = 0.0, Check(lost=row.n, error=f"{type(error).__name__}: {error}")
            row.check.add(check)
            if check.error is None and elapsed > 0:
                row.rates.append(row.n / elapsed)
            if progress is not None:
                rate = f"{row.n / elapsed:>12,.0f} msg/s" if elapsed > 0 else "failed"
                progress(f"rep {rep + 1}/{settings.repeat} {row.workload.name:7} {row.impl.label:55} {rate}")
    mem = None
    if memory and (not only or "MEMORY" in {name.upper() for name in only}):
        if progress is not None:
            progress(f"memory: {settings.memory_n:,} queued messages of 100 bytes under tracemalloc")
        mem = measure_memory(settings.memory_n)
    return Report(settings, rows, mem, notes, time.perf_counter() - began)


# -- reporting --------------------------------------------------------------------------------


def _ratio(report: Report, row: Row) -> float | None:
    for other in report.rows:
        if other.workload is row.workload and other.impl.baseline and other.rates and row.rates:
            return row.median / other.median
    return None


def target_results(report: Report) -> list[tuple[Target, float | None, str]]:
    """Each target whose rows ran, with the measured ratio (or, for a ``seconds`` target, the
    seconds per ``target.per`` messages) and PASS / MISS / n/a."""
    results: list[tuple[Target, float | None, str]] = []
    for target in TARGETS:
        mine = report.row(target.workload, target.impl)
        if target.seconds is not None and mine is not None:
            if not mine.rates:
                results.append((target, None, "n/a"))
                continue
            seconds = target.per / mine.median
            results.append((target, seconds, "PASS" if seconds <= target.seconds else "MISS"))
            continue
        theirs = report.row(target.workload, target.versus)
        if mine is None or theirs is None:
            continue
        if not (mine.rates and theirs.rates):
            results.append((target, None, "n/a"))
            continue
        ratio = mine.median / theirs.median
        results.append((target, ratio, "PASS" if ratio >= target.minimum else "MISS"))
    return results


def _versus(label: str) -> str:
    return label.split(" ")[0]


def tables(report: Report) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    head = ["workload", "implementation", "N", "median msg/s", "min-max msg/s", "vs baseline",
            "lost", "dup", "out-of-order", "target"]  # fmt: skip
    targets: dict[tuple[str, str], list[str]] = {(t.workload, t.impl): [] for t in TARGETS}
    for target, ratio, verdict in target_results(report):
        if target.seconds is not None:
            shown = "n/a" if ratio is None else f"{ratio:.2f} s"
            goal = f"{shown} per {target.per:,} <= {target.seconds:g} s"
            row = report.row(target.workload, target.impl)
            if ratio is not None and row is not None and row.n != target.per:
                goal += f"; scaled from N = {row.n:,}"
        else:
            shown = "n/a" if ratio is None else f"{ratio:.2f}x"
            goal = f"{shown} >= {target.minimum:g}x {target.shown or _versus(target.versus)}"
        targets[(target.workload, target.impl)].append(f"{verdict} ({goal})")
    body: list[list[str]] = []
    for row in report.rows:
        if row.skipped is not None:
            body.append([row.workload.name, row.impl.label, f"{row.n:,}", "skipped", "", "", "", "", "", ""])
            continue
        ratio = _ratio(report, row)
        check = row.check
        spread = f"{min(row.rates):,.0f}-{max(row.rates):,.0f}" if row.rates else ""
        body.append(
            [
                row.workload.name,
                row.impl.label,
                f"{row.n:,}",
                f"{row.median:,.0f}" if row.rates else "FAILED",
                spread,
                "baseline" if row.impl.baseline else ("" if ratio is None else f"{ratio:.2f}x"),
                str(check.lost),
                str(check.duplicated),
                str(check.out_of_order),
                "; ".join(targets.get((row.workload.name, row.impl.label), [])),
            ]
        )
    mem_head = ["container", "bytes per message beyond the body", "target"]
    mem_body: list[list[str]] = []
    if report.memory is not None:
        for name, value in report.memory.per_message.items():
            goal = ""
            if name.startswith("mqlite"):
                goal = f"{'PASS' if value <= 200 else 'MISS'} (<= 200)"
            mem_body.append([name, f"{value:.1f}", goal])
    return head, body, mem_head, mem_body


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines)


def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(lines)


def environment() -> str:
    import os

    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}) on {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPUs; mqlite {getattr(mqlite, '__version__', '?')}"
    )


def _description(report: Report) -> list[str]:
    s = report.settings
    return [
        f"{environment()}.",
        f"N = {s.n:,} (W1, W4) / {s.n_threads:,} (W2, W3) messages of {BODY_SIZE} bytes per run; "
        f"median of {s.repeat} repetitions, implementations interleaved in each repetition; "
        f"total {report.seconds:.0f}s.",
        "lost / dup / out-of-order: summed over all repetitions, counted by checking every received body.",
    ]


def render_text(report: Report) -> str:
    head, body, mem_head, mem_body = tables(report)
    parts = [*_description(report), "", _text_table(head, body)]
    if mem_body and report.memory is not None:
        parts += ["", f"Memory: {report.memory.n:,} queued messages of {report.memory.body_size} bytes (tracemalloc)"]
        parts += [_text_table(mem_head, mem_body)]
    parts += [f"note: {note}" for note in report.notes]
    return "\n".join(parts)


def render_markdown(report: Report) -> str:
    head, body, mem_head, mem_body = tables(report)
    parts = [*(line + "  " for line in _description(report)), "", _md_table(head, body)]
    if mem_body and report.memory is not None:
        parts += [
            "",
            f"Memory: {report.memory.n:,} queued messages of {report.memory.body_size} bytes (tracemalloc)",
            "",
        ]
        parts += [_md_table(mem_head, mem_body)]
    parts += [f"\nNote: {note}" for note in report.notes]
    return "\n".join(parts) + "\n"


def main(quick: bool = False, repeat: int | None = None, only: str | None = None, markdown: str | None = None) -> int:
    """Entry point of ``python -m mqlite bench``; returns 1 if any message was lost,
    duplicated or reordered (never because of speed)."""
    settings = Settings.quick() if quick else Settings()
    if repeat is not None:
        if repeat < 1:
            raise SystemExit("--repeat must be at least 1")
        settings = dataclasses.replace(settings, repeat=repeat)
    names = [name.strip() for name in only.split(",") if name.strip()] if only else None
    settings = dataclasses.replace(settings, sqlite=True, file=True)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run(settings, names, progress=progress)
    print(render_text(report))
    if markdown:
        with open(markdown, "w", encoding="utf-8") as file:
            file.write(render_markdown(report))
    return 0 if report.clean else 1
