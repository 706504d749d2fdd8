"""SQLiteStorage across processes: producers and consumers on one file, SIGKILL at random
moments, fork, and a blocked get woken by another process's put."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

import mqlite
from mqlite.storage.sqlite import SQLiteStorage

SPAWN = multiprocessing.get_context("spawn")
PRODUCERS = 3
CONSUMERS = 3
PER_PRODUCER = 150
GROUPS = 4


# -- 3 producers, 3 consumers, one file --------------------------------------------------------


def _produce(path: str, number: int) -> None:
    with SQLiteStorage(path, durability="normal") as storage, mqlite.Queue("jobs", storage, lease=60.0) as q:
        for i in range(PER_PRODUCER):
            group = f"g{i % GROUPS}" if i % 3 == 0 else None
            q.put([number, i, group], group=group)


def _consume(path: str, done: Any, holders: Any, sequence: Any, results: Any) -> None:
    """Receive until every message was acked; for grouped messages, check that nobody else holds
    the group (a shared flag per group) and note the order in which the group was served."""
    expected = PRODUCERS * PER_PRODUCER
    acked: list[int] = []
    grouped: list[tuple[str, int, int]] = []
    violations = 0
    with SQLiteStorage(path, durability="normal") as storage, mqlite.Queue("jobs", storage, lease=60.0) as q:
        while done.value < expected:
            try:
                msg = q.get(timeout=0.5)
            except mqlite.Empty:
                continue
            group = msg.group
            if group is not None:
                flag = holders[int(group[1:])]
                with flag.get_lock():
                    if flag.value:
                        violations += 1
                    flag.value = 1
                with sequence.get_lock():
                    sequence.value += 1
                    grouped.append((group, sequence.value, msg.id))
                with flag.get_lock():
                    flag.value = 0
            msg.ack()
            acked.append(msg.id)
            with done.get_lock():
                done.value += 1
    results.put((acked, grouped, violations))


def test_three_producers_three_consumers_exactly_once_and_groups_exclusive(tmp_path):
    path = str(tmp_path / "shared.db")
    SQLiteStorage(path).close()
    done = SPAWN.Value("i", 0)
    sequence = SPAWN.Value("i", 0)
    holders = [SPAWN.Value("i", 0) for _ in range(GROUPS)]
    results = SPAWN.Queue()
    consumers = [
        SPAWN.Process(target=_consume, args=(path, done, holders, sequence, results)) for _ in range(CONSUMERS)
    ]
    producers = [SPAWN.Process(target=_produce, args=(path, n)) for n in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    outcomes = [results.get(timeout=120) for _ in consumers]
    for process in consumers + producers:
        process.join(timeout=60)
        assert process.exitcode == 0
    acked = [mid for ids, _, _ in outcomes for mid in ids]
    assert len(acked) == len(set(acked)) == PRODUCERS * PER_PRODUCER
    assert sum(violations for _, _, violations in outcomes) == 0
    served: dict[str, list[tuple[int, int]]] = {}
    for _, grouped, _ in outcomes:
        for group, seq, mid in grouped:
            served.setdefault(group, []).append((seq, mid))
    for group, items in served.items():
        ids = [mid for _, mid in sorted(items)]
        assert ids == sorted(ids), f"group {group} was served out of id order"
    with SQLiteStorage(path) as storage, mqlite.Queue("jobs", storage) as q:
        assert q.stats() == mqlite.QueueStats(0, 0, 0, 0, None)


# -- SIGKILL at random moments -----------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, random, sys, threading, time
    from mqlite.storage import Envelope, QueueSpec
    from mqlite.storage.sqlite import SQLiteStorage

    path, durability, seed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    storage = SQLiteStorage(path, durability=durability)
    storage.open_queue(QueueSpec("q", None))
    out = sys.stdout.fileno()

    def note(line):
        os.write(out, (line + "\\n").encode())  # one write: lines of threads never mix

    def work(thread):
        rng = random.Random(seed * 100 + thread)
        n = 0
        while True:
            n += 1
            bodies = [b"%d-%d-%d-%d" % (seed, thread, n, i) for i in range(rng.choice([1, 1, 1, 3]))]
            note("p " + " ".join(body.decode() for body in bodies))
            ids = storage.put("q", [Envelope(body) for body in bodies], time.time())
            note("P " + " ".join("%d:%s" % (mid, body.decode()) for mid, body in zip(ids, bodies)))
            if rng.random() < 0.7:
                leased = storage.lease("q", rng.randint(1, 4), time.time(), 600.0)
                if leased:
                    note("L " + " ".join(str(m.id) for m in leased))
                chosen = [m for m in leased if rng.random() < 0.8]
                if chosen:
                    note("a " + " ".join(str(m.id) for m in chosen))
                    storage.ack("q", [(m.id, m.token) for m in chosen], time.time())
                    note("A " + " ".join(str(m.id) for m in chosen))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    """
)


def _run_child(path: str, durability: str, seed: int, lines_before_kill: int, threads: int) -> list[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, durability, str(seed), str(threads)], stdout=subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < lines_before_kill:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.decode())
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the child died before it was killed"
    return lines + rest.decode().splitlines(keepends=True)


@pytest.mark.parametrize("threads", [1, 4])
def test_sigkill_at_random_moments_loses_no_put_and_undoes_no_ack(tmp_path, threads):
    """A child puts, leases and acks in a loop (with four threads, their calls share combined
    transactions and fsyncs) and is killed at random moments, under both durabilities. After
    each kill: every put that returned and whose ack never started is there with its body, no
    returned ack is undone, no message has a body nobody put, and every lease that returned
    still counts as an attempt (a lease is committed, if not synced, before it returns)."""
    path = str(tmp_path / "crash.db")
    rng = random.Random(20240611 + threads)
    returned: dict[int, bytes] = {}
    bodies_started: set[bytes] = set()
    leased: dict[int, int] = {}  # id -> how many leases of it returned
    ack_attempted: set[int] = set()
    ack_returned: set[int] = set()
    for round_number in range(24):
        durability = "full" if round_number % 2 else "normal"
        for line in _run_child(path, durability, round_number, rng.randint(3, 120 * threads), threads):
            if not line.endswith("\n"):
                continue  # a torn last line: the kill came mid-write
            kind, *items = line.split()
            if kind == "p":
                bodies_started.update(item.encode() for item in items)
            elif kind == "P":
                for item in items:
                    mid, body = item.split(":")
                    returned[int(mid)] = body.encode()
            elif kind == "L":
                for mid in map(int, items):
                    leased[mid] = leased.get(mid, 0) + 1
            elif kind == "a":
                ack_attempted.update(int(mid) for mid in items)
            elif kind == "A":
                ack_returned.update(int(mid) for mid in items)
        storage = SQLiteStorage(path)
        try:
            present = {m.id: m for m in storage.peek("q", 10**9, time.time())}
        finally:
            storage.close()
        for mid, body in returned.items():
            if mid in ack_returned:
                assert mid not in present, f"round {round_number}: message {mid} was acked but came back"
            elif mid not in ack_attempted:
                assert mid in present, f"round {round_number}: put {mid} returned but is gone"
                assert present[mid].body == body, f"round {round_number}: {mid} has the wrong body"
        for mid, message in present.items():
            assert message.body in bodies_started, f"round {round_number}: {mid} has a body nobody put"
            assert message.attempts >= leased.get(mid, 0), f"round {round_number}: {mid} lost a lease's attempt"
    assert len(ack_returned) > 20
    assert len(returned) - len(ack_attempted) > 20
    assert any(mid not in ack_attempted for mid in leased), "no lease of a message left unacked returned"


# -- fork --------------------------------------------------------------------------------------


def _run_fresh(script: str, path: Any) -> None:
    """Run ``script`` in a fresh interpreter with ``path`` as its argument; it must print "ok".
    Forking from there, with no other thread alive (forking pytest itself, whose other tests
    leave threads behind, could leave the child a lock held by one of them)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


FORKING = textwrap.dedent(
    """
    import os, sys, time
    from mqlite.storage import Envelope, QueueSpec
    from mqlite.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(sys.argv[1])
    storage.open_queue(QueueSpec("q", None))
    storage.put("q", [Envelope(b"before")], time.time())
    parent_connection = storage._conn
    pid = os.fork()
    if pid == 0:  # the child: use the inherited storage object, then leave without cleanup
        code = 1
        try:
            [m] = storage.lease("q", 1, time.time(), 60.0)
            assert storage._conn is not parent_connection
            storage.ack("q", [(m.id, m.token)], time.time())
            storage.put("q", [Envelope(b"from child")], time.time())
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    assert [m.body for m in storage.peek("q", 10, time.time())] == [b"from child"]
    storage.put("q", [Envelope(b"after")], time.time())
    assert storage.counts("q", time.time()) == (2, 0, 0)
    storage.close()
    print("ok")
    """
)


def test_a_forked_child_reopens_instead_of_sharing_the_parents_connection(tmp_path):
    """A storage object made before a fork works in the child (on a connection of its own) and
    in the parent, each seeing what the other committed."""
    _run_fresh(FORKING, tmp_path / "fork.db")


FORK_THEN_PARENT_CLOSES = textwrap.dedent(
    """
    import os, sys
    import mqlite

    path = sys.argv[1]
    parent = mqlite.Queue("jobs", storage=f"sqlite:///{path}")
    parent.put("parent")
    opened, closed = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker: its own storage, then more puts after the parent has closed its own
        code = 1
        try:
            mine = mqlite.Queue("jobs", storage=f"sqlite:///{path}")
            mine.put("child before")
            os.write(opened[1], b"x")
            assert os.read(closed[0], 1) == b"x"
            for number in range(5):
                mine.put(f"child after {number}")
            code = 0
        finally:
            os._exit(code)
    assert os.read(opened[0], 1) == b"x"
    parent.close()  # the last connection of this process: SQLite may checkpoint and drop the WAL
    os.write(closed[1], b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    with mqlite.Queue("jobs", storage=f"sqlite:///{path}") as fresh:
        bodies = [m.body for m in fresh.peek(10)]
    assert bodies == ["parent", "child before"] + [f"child after {n}" for n in range(5)], bodies
    print("ok")
    """
)


def test_a_child_forked_while_the_parent_had_the_file_open_keeps_every_put(tmp_path):
    """SQLite keeps each file's locks in tables shared by the whole process: a child forked
    while the parent had a connection open inherited them without the locks themselves, so
    its own new connection took no lock, the parent closing last deleted the WAL the child
    wrote to, and the child's puts (which had returned) were lost."""
    _run_fresh(FORK_THEN_PARENT_CLOSES, tmp_path / "fork.db")


FORK_WITH_MESSAGES_HELD = textwrap.dedent(
    """
    import os, sys
    import mqlite

    q = mqlite.Queue("jobs", storage=f"sqlite:///{sys.argv[1]}", lease=60.0)
    q.put_many(["held", "job1", "job2", "job3", "free"])
    first = q.get()  # held by the queue's own consumer
    consumer = q.consumer(prefetch=3)
    buffered = consumer.get()  # one handed out, two prefetched
    assert (first.body, buffered.body, consumer.held) == ("held", "job1", 3)
    pid = os.fork()
    if pid == 0:  # the child holds nothing of the parent's, and closing it gives nothing back
        code = 1
        try:
            assert consumer.held == 0, consumer.held
            mine = consumer.get_nowait()  # from the storage, not the parent's prefetch buffer
            assert mine.body == "free", mine.body
            q.close()  # releases the child's own delivery only
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    stats = q.stats()
    assert (stats.ready, stats.in_flight) == (1, 4), stats  # "free" back; the parent's 4 still out
    assert [consumer.get().body, consumer.get().body] == ["job2", "job3"]
    first.ack()
    buffered.ack()
    assert q.get().body == "free"
    q.close()
    print("ok")
    """
)


def test_a_forked_child_does_not_hand_out_or_release_the_parents_deliveries(tmp_path):
    """Consumers made before a fork: in the child they hold none of the parent's deliveries,
    so the child neither gives out the parent's prefetched messages again nor releases the
    parent's leases when it closes the queue (which made another consumer receive a message
    the parent still held)."""
    _run_fresh(FORK_WITH_MESSAGES_HELD, tmp_path / "fork.db")


FORK_MID_TRANSACTION = textwrap.dedent(
    """
    import asyncio, os, sys, threading, time
    import mqlite
    from mqlite import _keeper
    from mqlite.storage import sqlite

    path = sys.argv[1]
    store = mqlite.SQLiteStorage(path, busy_timeout=10.0)
    q = mqlite.Queue("jobs", storage=store)

    async def use_async():  # the parent's I/O threads and lease keeper now exist
        await q.aput("async")
        await (await q.aget()).aack()

    asyncio.run(use_async())
    with q.consumer(auto_extend=True) as consumer:
        q.put("kept")
        consumer.get().ack()

    inside, leave = threading.Event(), threading.Event()
    insert = sqlite.insert_plain

    def slow_insert(conn, qid, rows):  # holds the write transaction open
        insert(conn, qid, rows)
        inside.set()
        assert leave.wait(10)

    sqlite.insert_plain = slow_insert
    writer = threading.Thread(target=q.put, args=("from a thread",))
    writer.start()
    assert inside.wait(10)
    threading.Timer(0.2, leave.set).start()  # the transaction ends by itself, fork or not
    pid = os.fork()  # waits for that transaction
    if pid == 0:
        code = 1
        try:
            sqlite.insert_plain = insert
            began = time.monotonic()
            q.put("from the child")  # the inherited storage object, reopened
            assert time.monotonic() - began < 5, "the child waited for a lock nobody holds"

            async def child_async():
                await asyncio.wait_for(q.aput("async in the child"), 10)

            asyncio.run(child_async())
            with q.consumer(lease=30, auto_extend=True) as consumer:
                message = consumer.get()
                keeper = _keeper.keeper(q.storage)._thread
                assert keeper is not None and keeper.is_alive(), "no lease keeper runs in the child"
                message.release()
            code = 0
        finally:
            os._exit(code)
    writer.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    bodies = sorted(m.body for m in q.peek(10))
    assert bodies == ["async in the child", "from a thread", "from the child"], bodies
    q.close()
    store.close()
    print("ok")
    """
)


def test_a_fork_waits_for_the_transaction_under_way_and_the_child_works(tmp_path):
    """A fork while another thread is inside a write transaction: the child must neither hang
    on a lock inherited as held nor wait for a lock the parent no longer holds; its async calls
    (the parent's I/O threads do not exist there) and lease keeper must work."""
    _run_fresh(FORK_MID_TRANSACTION, tmp_path / "fork.db")


# -- a blocked get wakes when another process puts ---------------------------------------------


def _put_when_told(path: str, go: Any) -> None:
    go.wait(60)
    with mqlite.Queue("wake", storage=f"sqlite:///{path}") as q:
        q.put("from another process")


def _aget_from_other_process(path: str, go: Any, results: Any) -> None:
    import asyncio

    async def main() -> None:
        async with mqlite.Queue("wake", storage=f"sqlite:///{path}") as q:
            go.set()
            msg = await q.aget(timeout=60)
            await msg.aack()
            results.put(msg.body)

    asyncio.run(main())


def test_a_blocked_get_wakes_when_another_process_puts(tmp_path):
    path = str(tmp_path / "wake.db")
    go = SPAWN.Event()
    producer = SPAWN.Process(target=_put_when_told, args=(path, go))
    producer.start()
    with mqlite.Queue("wake", storage=f"sqlite:///{path}") as q:
        assert q.qsize() == 0
        go.set()  # the producer puts while (or just before) this get waits
        msg = q.get(timeout=60)
        assert msg.body == "from another process"
        msg.ack()
    producer.join(60)
    assert producer.exitcode == 0


def test_a_blocked_aget_in_another_process_wakes_when_this_process_puts(tmp_path):
    path = str(tmp_path / "wake.db")
    go = SPAWN.Event()
    results = SPAWN.Queue()
    consumer = SPAWN.Process(target=_aget_from_other_process, args=(path, go, results))
    consumer.start()
    assert go.wait(60)
    with mqlite.Queue("wake", storage=f"sqlite:///{path}") as q:
        q.put("to a coroutine in another process")
    assert results.get(timeout=60) == "to a coroutine in another process"
    consumer.join(60)
    assert consumer.exitcode == 0


# -- join and maxsize backpressure see what other processes do -----------------------------------


def _take_and_ack(path: str, name: str, count: int, go: Any) -> None:
    assert go.wait(60)
    with SQLiteStorage(path) as storage, mqlite.Queue(name, storage, lease=600.0) as q:
        for _ in range(count):
            q.get(timeout=60).ack()


def test_join_returns_when_another_process_acks_the_last_message(tmp_path):
    """join() must not sleep until a lease ends (600 s here) when the acks happen elsewhere."""
    path = str(tmp_path / "join.db")
    go = SPAWN.Event()
    consumer = SPAWN.Process(target=_take_and_ack, args=(path, "join", 3, go))
    consumer.start()
    with mqlite.Queue("join", storage=f"sqlite:///{path}") as q:
        q.put_many(["a", "b", "c"])
        go.set()
        started = time.monotonic()
        assert q.join(timeout=120) is True
        # Returning at the timeout would also give True; the poll (<= 50 ms) must be what woke it.
        assert time.monotonic() - started < 60
        assert q.qsize() == 0
    consumer.join(60)
    assert consumer.exitcode == 0


def test_ajoin_returns_when_another_process_acks_the_last_message(tmp_path):
    import asyncio

    path = str(tmp_path / "ajoin.db")
    go = SPAWN.Event()
    consumer = SPAWN.Process(target=_take_and_ack, args=(path, "ajoin", 2, go))
    consumer.start()

    async def main() -> tuple[bool, float]:
        async with mqlite.Queue("ajoin", storage=f"sqlite:///{path}") as q:
            await q.aput_many(["a", "b"])
            go.set()
            started = time.monotonic()
            return await q.ajoin(timeout=120), time.monotonic() - started

    joined, waited = asyncio.run(main())
    assert joined is True
    assert waited < 60
    consumer.join(60)
    assert consumer.exitcode == 0


def test_a_put_blocked_on_maxsize_wakes_when_another_process_gets(tmp_path):
    path = str(tmp_path / "room.db")
    go = SPAWN.Event()
    consumer = SPAWN.Process(target=_take_and_ack, args=(path, "room", 1, go))
    consumer.start()
    with mqlite.Queue("room", storage=f"sqlite:///{path}", maxsize=2) as q:
        q.put_many(["a", "b"])
        with pytest.raises(mqlite.Full):
            q.put_nowait("c")
        go.set()
        started = time.monotonic()
        q.put("c", timeout=120)  # room is made by the other process's get
        assert time.monotonic() - started < 60
        assert q.qsize() == 2
    consumer.join(60)
    assert consumer.exitcode == 0
