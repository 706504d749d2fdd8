"""SQLiteStorage: the conformance state machine (with reopen), schema and file safety, the front."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

import pytest
from _doubles import TIMEOUT, LoopThread, async_wait_until, start_thread, wait_until
from hypothesis import settings

import mqlite
from mqlite.storage import Envelope, Outcome, QueueSpec, _sqlite_combiner, _sqlite_schema, sqlite as sqlite_module
from mqlite.storage.sqlite import SQLiteStorage
from mqlite.testing import FakeClock, make_conformance_test

_dirs = tempfile.TemporaryDirectory(prefix="mqlite-sqlite-conformance-")
atexit.register(_dirs.cleanup)  # explicitly, not by the finalizer (a ResourceWarning)
_numbers = itertools.count()


def _fresh() -> SQLiteStorage:
    path = os.path.join(_dirs.name, f"c{next(_numbers)}.db")
    return SQLiteStorage(path, durability="normal", poll_interval=None)


def _reopen(old: object) -> SQLiteStorage:
    assert isinstance(old, SQLiteStorage)
    return SQLiteStorage(old.path, durability="normal", poll_interval=None)


TestSQLiteConformance = make_conformance_test(
    _fresh,
    persistent=True,
    reopen=_reopen,
    settings=settings(stateful_step_count=40, deadline=None),
)


# -- files, schema and errors ------------------------------------------------------------------

T0 = 1_000_000.0


def test_files_are_created_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        storage = SQLiteStorage(tmp_path / "q.db")
        storage.put("q", [Envelope(b"x")], T0)
        names = sorted(os.listdir(tmp_path))
        assert names == ["q.db", "q.db-shm", "q.db-wal"]
        for name in names:
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
        storage.close()
    finally:
        os.umask(old)


def test_a_file_that_is_not_a_database_is_refused_by_path(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, this is not SQLite at all\n" * 200)
    with pytest.raises(mqlite.StorageError, match=r"notes\.txt.*not an mqlite database"):
        SQLiteStorage(path)
    assert path.read_bytes() == b"hello, this is not SQLite at all\n" * 200


def test_a_database_that_cannot_be_read_is_not_called_a_foreign_file():
    """Only SQLite's "not a database" means the file is not ours; a read-only directory (the
    WAL's -shm cannot be made) or a busy file is reported as what it is."""

    class ReadOnly:
        def execute(self, sql: str) -> None:
            error = sqlite3.OperationalError("attempt to write a readonly database")
            error.sqlite_errorname = "SQLITE_READONLY"
            raise error

    with pytest.raises(mqlite.StorageError, match=r"cannot read SQLite database 'app\.db' \(SQLite says: attempt"):
        _sqlite_schema.check_file(ReadOnly(), "app.db")  # type: ignore[arg-type]


def test_another_applications_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    with pytest.raises(mqlite.StorageError, match=r"app\.db.*not an mqlite one"):
        SQLiteStorage(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_a_file_another_process_is_creating_is_not_called_a_foreign_one(tmp_path):
    """Processes opening a new file at once: one may commit the schema while another checks
    what the file is. The check reads the file's id, version and tables in one snapshot, so it
    sees the file before or after the schema, never its tables without its application_id."""
    path = tmp_path / "q.db"
    with sqlite3.connect(path) as conn:  # as an opener leaves it just before creating the schema
        conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    creator = f"import mqlite; mqlite.SQLiteStorage({str(path)!r}).close()"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    class CreatedMidway:
        """A connection on which another process creates the schema right after the first read."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        @property
        def in_transaction(self) -> bool:
            return self.conn.in_transaction

        def execute(self, sql: str) -> sqlite3.Cursor:
            cursor = self.conn.execute(sql)
            if sql.startswith("PRAGMA application_id"):
                row = cursor.fetchone()  # the read is done (and the snapshot, if any, taken)
                subprocess.run([sys.executable, "-c", creator], check=True, env=env, timeout=60)
                return self.conn.execute("SELECT ?", row)
            return cursor

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        tables, setup = _sqlite_schema.check_file(CreatedMidway(conn), str(path))  # type: ignore[arg-type]
    finally:
        conn.close()
    assert (tables, setup) == (0, True)  # the state before the other process's commit
    storage = SQLiteStorage(path)  # create_or_upgrade then finds the schema under the write lock
    storage.open_queue(QueueSpec("q", None))
    storage.put("q", [Envelope(b"x")], T0)
    storage.close()


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "q.db"
    SQLiteStorage(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    knows = rf"schema version 99, newer than this mqlite knows \({sqlite_module.SCHEMA_VERSION}\)"
    with pytest.raises(mqlite.StorageError, match=knows):
        SQLiteStorage(path)


def test_an_older_schema_is_upgraded_in_place(tmp_path, monkeypatch):
    path = tmp_path / "q.db"
    storage = SQLiteStorage(path)
    [mid] = storage.put("q", [Envelope(b"kept")], T0) or []
    storage.close()
    version = sqlite_module.SCHEMA_VERSION
    monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", version + 1)  # where the schema code reads it
    monkeypatch.setitem(_sqlite_schema.UPGRADES, version, ("CREATE TABLE mq_example (x INTEGER)",))
    storage = SQLiteStorage(path)
    assert [m.id for m in storage.peek("q", 5, T0)] == [mid]
    storage.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version + 1
    assert conn.execute("SELECT count(*) FROM mq_example").fetchone()[0] == 0
    conn.close()


# The schema of version 1, frozen here so that the upgrade is tested on a real version-1 file.
_SCHEMA_V1 = (
    "CREATE TABLE mq_queues (qid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, max_attempts INTEGER,"
    " dead_letter TEXT NOT NULL DEFAULT '', dedup_window REAL NOT NULL DEFAULT 300.0)",
    "CREATE TABLE mq_counter (k INTEGER PRIMARY KEY CHECK (k = 0), last_id INTEGER NOT NULL)",
    "INSERT INTO mq_counter VALUES (0, 0)",
    "CREATE TABLE mq_messages (id INTEGER PRIMARY KEY, qid INTEGER NOT NULL, state INTEGER NOT NULL,"
    " priority INTEGER NOT NULL, grp TEXT, deadline REAL NOT NULL, attempts INTEGER NOT NULL,"
    " token INTEGER NOT NULL, enqueued_at REAL NOT NULL, headers TEXT, dead_from TEXT, body BLOB NOT NULL)",
    "CREATE INDEX mq_ready ON mq_messages (qid, priority DESC, id) WHERE state = 0",
    "CREATE INDEX mq_delayed ON mq_messages (qid, deadline) WHERE state = 1",
    "CREATE INDEX mq_leased ON mq_messages (qid, deadline) WHERE state = 2",
    "CREATE INDEX mq_group ON mq_messages (qid, grp, id) WHERE grp IS NOT NULL",
    "CREATE INDEX mq_busy ON mq_messages (qid, grp) WHERE state = 2 AND grp IS NOT NULL",
    "CREATE INDEX mq_dead ON mq_messages (qid, dead_from, id) WHERE dead_from IS NOT NULL",
    "CREATE TABLE mq_dedup (qid INTEGER NOT NULL, key TEXT NOT NULL, id INTEGER NOT NULL,"
    " first_at REAL NOT NULL, PRIMARY KEY (qid, key)) WITHOUT ROWID",
)


def test_a_version_1_file_is_upgraded_keeping_every_message_state_and_id(tmp_path):
    """Version 1 kept ready rows' deadline at their ready time, three indexes and a counter
    table; version 2 keeps -priority in a ready row's deadline and the counter in a row."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in _SCHEMA_V1:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {sqlite_module.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO mq_queues (qid, name, max_attempts, dead_letter) VALUES (1, 'q', 3, '')")
    conn.execute("INSERT INTO mq_queues (qid, name, max_attempts, dead_letter) VALUES (2, 'q.dead', 3, '')")
    rows = [  # id, qid, state, priority, grp, deadline, attempts, token, dead_from, body
        (1, 1, 0, 0, None, T0 - 5, 0, 0, None, b"ready p0"),
        (2, 1, 2, 0, None, T0 + 30, 1, 1, None, b"in flight"),
        (3, 1, 1, 0, None, T0 + 10, 0, 0, None, b"delayed"),
        (4, 1, 0, 5, None, T0 - 5, 1, 1, None, b"ready p5"),
        (5, 1, 0, 0, "g", T0 - 5, 0, 0, None, b"group head"),
        (6, 1, 0, 0, "g", T0 - 5, 0, 0, None, b"group second"),
        (7, 2, 0, 0, None, 0, 0, 4, "q", b"dead"),
    ]
    conn.executemany(
        "INSERT INTO mq_messages (id, qid, state, priority, grp, deadline, attempts, token, enqueued_at,"
        " dead_from, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
        rows,
    )
    conn.execute("UPDATE mq_counter SET last_id = 9")  # 8 and 9 were acked
    conn.close()

    storage = SQLiteStorage(path, poll_interval=None)  # next_wakeup names only delays and leases
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION == 2
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "mq_counter" not in names
    assert "mq_ready" not in names
    assert "mq_order" in names
    conn.close()
    assert storage.counts("q", T0) == (4, 1, 1)
    assert [m.body for m in storage.lease("q", 10, T0, 30.0)] == [b"ready p5", b"ready p0", b"group head"]
    assert storage.ack("q", [(2, 1)], T0) == [Outcome.DONE]  # the old delivery's token still works
    assert storage.put("q", [Envelope(b"new")], T0) == [10]  # ids go on after the counter
    assert storage.next_wakeup("q", T0) == T0 + 10
    # the delayed message is due, ahead of the new one; the group waits for its head
    assert [m.body for m in storage.lease("q", 5, T0 + 10, 30.0)] == [b"delayed", b"new"]
    assert [m.body for m in storage.lease("q.dead", 5, T0, 30.0)] == [b"dead"]
    assert storage.stats("q", T0 + 10).dead == 1
    storage.close()


def test_opening_a_second_storage_keeps_the_first_ones_locks(tmp_path):
    """Closing any descriptor of a file drops the process's POSIX locks on it; opening a second
    storage on the same file must not, or another process closing its connection would think
    it is the last one and delete the WAL that the first storage still uses."""
    path = tmp_path / "q.db"
    first = SQLiteStorage(path)
    first.put("q", [Envelope(b"x")], T0)
    second = SQLiteStorage(path)
    code = f"import sqlite3; c = sqlite3.connect({str(path)!r}); c.execute('SELECT 1 FROM mq_queues'); c.close()"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert os.path.exists(f"{path}-wal")
    assert [m.body for m in first.lease("q", 5, T0, 30.0)] == [b"x"]
    second.close()
    first.close()


def test_settings_are_checked_and_the_file_uses_wal_and_incremental_vacuum(tmp_path):
    with pytest.raises(ValueError, match="durability"):
        SQLiteStorage(tmp_path / "a.db", durability="sometimes")
    with pytest.raises(ValueError, match="poll_interval"):
        SQLiteStorage(tmp_path / "a.db", poll_interval=0)
    SQLiteStorage(tmp_path / "a.db").close()
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    conn.close()


def test_closed_storage_raises_storage_error(tmp_path):
    storage = SQLiteStorage(tmp_path / "q.db")
    storage.close()
    storage.close()
    with pytest.raises(mqlite.StorageError, match="closed"):
        storage.put("q", [Envelope(b"x")], T0)


def test_a_write_lock_held_past_busy_timeout_gives_storage_locked_then_calls_work_again(tmp_path):
    """Another connection holds the write lock: the put waits about ``busy_timeout`` in all
    (SQLite's busy handler and the retries together; it once waited twice that), raises
    :class:`~mqlite.StorageLocked` naming the file, stores nothing, and works once the lock
    is gone."""
    path = tmp_path / "locked.db"
    storage = SQLiteStorage(path, busy_timeout=1.0)
    storage.put("q", [Envelope(b"before")], T0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(mqlite.StorageLocked, match=r"locked\.db"):
        storage.put("q", [Envelope(b"refused")], T0)
    assert time.monotonic() - started < 2 * storage.busy_timeout  # generous: the bug took 2x
    holder.execute("COMMIT")
    holder.close()
    storage.put("q", [Envelope(b"after")], T0)
    assert [m.body for m in storage.peek("q", 10, T0)] == [b"before", b"after"]
    assert storage._connection().execute("PRAGMA busy_timeout").fetchone() == (1000,)
    storage.close()


def test_specs_live_in_the_database(tmp_path):
    """A second opener that never declared the queue applies the first one's max_attempts."""
    first = SQLiteStorage(tmp_path / "q.db")
    first.open_queue(QueueSpec("q", 1, "graveyard"))
    first.put("q", [Envelope(b"x")], T0)
    second = SQLiteStorage(tmp_path / "q.db")
    [m] = second.lease("q", 1, T0, 5.0)
    assert second.nack("q", [(m.id, m.token)], T0, 0.0, "boom") == [Outcome.DONE]
    [dead] = first.peek("graveyard", 5, T0)
    assert dict(dead.headers)["x-death-detail"] == "boom"
    assert first.stats("q", T0).dead == 1
    first.close()
    second.close()


# -- wake-ups across processes: one watcher looks for every blocked caller ---------------------


def test_next_wakeup_names_only_delays_and_lease_ends(tmp_path):
    """Blocked callers sleep until a delay or a lease ends; what other processes do reaches them
    through the watcher, not through a poll time in every answer."""
    storage = SQLiteStorage(tmp_path / "q.db", poll_interval=0.05)
    assert storage.lease("q", 1, T0, 10.0) == []
    assert storage.next_wakeup("q", T0) is None
    storage.put("q", [Envelope(b"x", delay=0.01)], T0)
    assert storage.next_wakeup("q", T0) == T0 + 0.01
    [m] = storage.lease("q", 1, T0 + 0.01, 10.0)
    assert storage.next_wakeup("q", T0 + 0.01) == T0 + 10.01
    storage.ack("q", [(m.id, m.token)], T0 + 0.02)
    assert storage.next_wakeup("q", T0 + 0.02) is None
    storage.close()


def _watchers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "mqlite-watcher"]


def test_blocked_getters_sleep_without_timers_one_watcher_looks_and_a_burst_is_relayed(tmp_path):
    """Twenty threads blocked in get sleep with no timer of their own; one thread looks for
    other connections' commits for all of them; five messages put through another connection
    reach five getters (the first woken relays to the next), the other fifteen sleep on."""
    path = tmp_path / "q.db"
    with SQLiteStorage(path, durability="normal") as storage, SQLiteStorage(path, durability="normal") as other:
        q: mqlite.Queue[str] = mqlite.Queue("jobs", storage)
        got: list[str] = []
        closed: list[BaseException] = []

        def worker() -> None:
            try:
                msg = q.get(timeout=TIMEOUT * 3)
            except mqlite.QueueClosed as error:
                closed.append(error)
                return
            got.append(msg.body)
            msg.ack()

        threads = [threading.Thread(target=worker) for _ in range(20)]
        for thread in threads:
            thread.start()
        channel = q._channel
        wait_until(lambda: len(channel.getters) == 20, what="twenty getters asleep")
        assert {waiter.wake_at for waiter in channel.getters} == {float("inf")}
        wait_until(lambda: len(_watchers()) == 1, what="the watcher")
        elsewhere: mqlite.Queue[str] = mqlite.Queue("jobs", other)
        elsewhere.put_many([f"m{i}" for i in range(5)])
        wait_until(lambda: len(got) == 5, what="five getters served")
        wait_until(lambda: len(channel.getters) == 15, what="fifteen getters asleep again")
        assert sorted(got) == [f"m{i}" for i in range(5)]
        q.close()
        for thread in threads:
            thread.join(TIMEOUT)
        assert len(closed) == 15
        elsewhere.close()


def test_blocked_coroutines_are_woken_by_another_connections_puts(tmp_path):
    path = tmp_path / "q.db"
    with SQLiteStorage(path, durability="normal") as storage, SQLiteStorage(path, durability="normal") as other:
        q: mqlite.Queue[str] = mqlite.Queue("jobs", storage)
        elsewhere: mqlite.Queue[str] = mqlite.Queue("jobs", other)

        async def main() -> list[str]:
            async def worker() -> str:
                msg = await q.aget(timeout=TIMEOUT * 3)
                await msg.aack()
                return msg.body

            tasks = [asyncio.create_task(worker()) for _ in range(8)]
            await async_wait_until(lambda: len(q._channel.getters) == 8, what="eight coroutines asleep")
            await asyncio.to_thread(elsewhere.put_many, [f"m{i}" for i in range(8)])
            return await asyncio.gather(*tasks)

        assert sorted(asyncio.run(main())) == [f"m{i}" for i in range(8)]
        q.close()
        elsewhere.close()


def test_the_watcher_looks_only_while_someone_waits_and_sees_every_change(tmp_path):
    """The watcher's rules, on a fake version counter: the first look of a thread counts as a
    change; a look that finds the same version wakes nobody; a change is seen even when it
    happened while nobody waited; the thread ends once nobody waited for ``idle_exit``, and a
    kick starts a new one."""
    from mqlite.storage._watcher import Watcher

    class Owner:
        version = 0
        looks = 0

        def read(self) -> int:
            self.looks += 1
            return self.version

    owner = Owner()
    waiting = threading.Event()
    changes: list[int] = []
    watcher = Watcher(owner, "read", 0.002, [(lambda: changes.append(owner.version), waiting.is_set)], idle_exit=0.05)
    waiting.set()
    watcher.kick()
    wait_until(lambda: changes == [0], what="the first look, counted as a change")
    looks = owner.looks
    wait_until(lambda: owner.looks > looks + 3, what="more looks")
    assert changes == [0]  # the same version: nobody woken
    owner.version = 1
    wait_until(lambda: changes == [0, 1], what="the change seen")
    waiting.clear()
    wait_until(lambda: watcher._thread is None, what="the thread to end while nobody waits")
    owner.version = 2  # while nobody waited and no thread ran
    waiting.set()
    watcher.kick()
    wait_until(lambda: changes == [0, 1, 2], what="the change made in the pause")
    watcher.stop()
    wait_until(lambda: watcher._thread is None, what="the thread to end at stop")


def test_the_watcher_backs_off_while_changes_bring_nothing_here_and_looks_often_while_leases_find_messages(
    monkeypatch,
):
    """Another process busy with a queue nobody here waits on changes the database at every look:
    waking the waiters each time is needed, but looking every millisecond is not; a lease that
    found messages (traffic for this process) brings the next look back to 1 ms."""
    from mqlite.storage import _watcher

    class Owner:
        version = 0

        def read(self) -> int:
            self.version += 1  # someone else commits between every two looks
            return self.version

    sleeps: list[float] = []
    monkeypatch.setattr(_watcher.time, "sleep", lambda seconds: sleeps.append(seconds))
    owner = Owner()
    waiting = threading.Event()
    waiting.set()
    changes: list[int] = []
    watcher = _watcher.Watcher(owner, "read", 0.05, [(lambda: changes.append(1), waiting.is_set)])
    watcher.kick()
    wait_until(lambda: len(sleeps) >= 9, what="nine looks")
    mark = len(sleeps)
    watcher.found()
    wait_until(lambda: len(sleeps) >= mark + 3, what="three more looks")
    watcher.stop()
    wait_until(lambda: watcher._thread is None, what="the thread to end")
    assert [round(s, 3) for s in sleeps[:9]] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05, 0.05]
    assert 0.001 in sleeps[mark : mark + 3]  # restarted by found()
    assert len(changes) >= 11  # every look saw a change and woke the waiters


def test_a_kick_as_the_idle_watcher_decides_to_end_starts_it_again(monkeypatch):
    """The thread, idle, checks under its lock that no kick came; a kick at that moment used to
    see the thread still running and return, and the thread then ended: nobody looked."""
    from mqlite.storage._watcher import Watcher

    class PausingEvent(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            self.checking, self.resume = threading.Event(), threading.Event()

        def is_set(self) -> bool:
            value = super().is_set()
            if not value and threading.current_thread().name == "mqlite-watcher" and not self.checking.is_set():
                self.checking.set()
                assert self.resume.wait(TIMEOUT)
            return value

    class Owner:
        looks = 0

        def read(self) -> int:
            self.looks += 1
            return 0

    owner = Owner()
    waiting = threading.Event()
    watcher = Watcher(owner, "read", 0.002, [(lambda: None, waiting.is_set)], idle_exit=0.01)
    watcher._kicked = PausingEvent()
    watcher.kick()  # nobody waits: the thread idles, then checks whether it may end
    assert watcher._kicked.checking.wait(TIMEOUT)
    waiting.set()
    kicker = threading.Thread(target=watcher.kick)  # a caller starts waiting just then
    kicker.start()
    watcher._kicked.resume.set()
    kicker.join(TIMEOUT)
    looks = owner.looks
    wait_until(lambda: owner.looks > looks + 2, what="looks for the new waiter")
    watcher.stop()


def test_a_watcher_that_cannot_start_leaves_no_waiter_behind_and_starts_at_the_next_wait(tmp_path, monkeypatch):
    """Thread.start failing (a thread limit) made the get raise with its waiter left in the
    deque, swallowing later wake-ups, and no watcher ever started again."""
    path = tmp_path / "q.db"
    with SQLiteStorage(path, durability="normal") as storage, SQLiteStorage(path, durability="normal") as other:
        q: mqlite.Queue[str] = mqlite.Queue("jobs", storage)
        real_start = threading.Thread.start
        failed: list[str] = []

        def start(self: threading.Thread) -> None:
            if self.name == "mqlite-watcher" and not failed:
                failed.append(self.name)
                raise RuntimeError("can't start new thread")
            real_start(self)

        monkeypatch.setattr(threading.Thread, "start", start)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            q.get(timeout=TIMEOUT)
        assert not q._channel.getters
        getter = threading.Thread(target=lambda: failed.append(q.get(timeout=TIMEOUT * 3).body))
        getter.start()
        wait_until(lambda: len(q._channel.getters) == 1, what="the getter asleep")
        mqlite.Queue("jobs", other).put("from elsewhere")
        getter.join(TIMEOUT * 3)
        assert failed == ["mqlite-watcher", "from elsewhere"]
        q.close()


@pytest.mark.parametrize("how", ["threads", "coroutines"])
def test_room_made_elsewhere_is_relayed_past_a_putter_that_does_not_fit(tmp_path, how):
    """Three putters wait on a full queue (maxsize 3), a batch of three first; another connection
    takes two. The batch cannot fit and passes the wake-up to the next putter, which fits: it
    must pass it on too, or the third putter sleeps although a place is free."""
    path = tmp_path / "q.db"
    with SQLiteStorage(path, durability="normal") as storage, SQLiteStorage(path, durability="normal") as other:
        q: mqlite.Queue[int] = mqlite.Queue("jobs", storage, maxsize=3)
        q.put_many([0, 1, 2])
        channel = q._channel
        looks: list[int] = []
        real_version = storage._data_version

        def counted() -> tuple[int, int]:
            looks.append(1)
            return real_version()

        storage._data_version = counted  # type: ignore[method-assign]
        loop = LoopThread() if how == "coroutines" else None

        def start(call: Any, *args: object) -> Any:
            if loop is not None:
                return loop.submit(getattr(q, "a" + call.__name__)(*args))
            return start_thread(call, *args)

        def finish(worker: Any) -> object:
            return worker.result(TIMEOUT) if loop is not None else worker.finish()

        big = start(q.put_many, [10, 11, 12])
        wait_until(lambda: len(channel.putters) == 1, what="the batch asleep")
        # the watcher's first look counts as a change and wakes the batch once: let that pass
        wait_until(lambda: len(looks) >= 2 and len(channel.putters) == 1, what="the batch asleep again")
        small = [start(q.put, 20), None]
        wait_until(lambda: len(channel.putters) == 2, what="the first small put asleep")
        small[1] = start(q.put, 21)
        wait_until(lambda: len(channel.putters) == 3, what="the second small put asleep")
        assert [w.need for w in channel.putters] == [3, 1, 1]
        taker: mqlite.Queue[int] = mqlite.Queue("jobs", other, maxsize=3)
        for message in taker.get_many(2):
            message.ack()
        finish(small[0])
        finish(small[1])
        assert q.qsize() == 3
        q.close()  # the batch can never fit now
        with pytest.raises(mqlite.QueueClosed):
            finish(big)
        if loop is not None:
            loop.close()


# -- group commit ------------------------------------------------------------------------------


def test_concurrent_calls_share_one_transaction_and_a_failing_call_fails_alone(tmp_path):
    storage = SQLiteStorage(tmp_path / "q.db")
    storage.put("q", [Envelope(b"warm-up")], T0)
    results: dict[str, object] = {}

    def put(name: str, body: object) -> None:
        try:
            results[name] = storage.put("q", [Envelope(body)], T0)
        except Exception as error:
            results[name] = error

    storage._conn_lock.acquire()  # hold the connection so callers pile up behind the first
    first = threading.Thread(target=put, args=("first", b"1"))
    first.start()
    wait_until(lambda: storage._busy and not storage._pending, what="the first caller to take its batch and wait")
    others = [
        threading.Thread(target=put, args=(name, body)) for name, body in [("a", b"a"), ("bad", object()), ("b", b"b")]
    ]
    for thread in others:
        thread.start()
    wait_until(lambda: len(storage._pending) == 3, what="three callers to queue")
    commits = storage._commits
    storage._conn_lock.release()
    for thread in [first, *others]:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert storage._commits == commits + 2  # the first alone, then a, bad and b in one transaction
    assert isinstance(results["bad"], mqlite.StorageError)
    assert "q.db" in str(results["bad"])
    ids = [results["first"], results["a"], results["b"]]
    assert all(isinstance(r, list) for r in ids)
    assert sorted(m.body for m in storage.peek("q", 10, T0)) == [b"1", b"a", b"b", b"warm-up"]
    storage.close()


def test_a_call_failing_in_its_cache_answer_fails_alone_and_the_batch_goes_on(tmp_path):
    """A lease with a bad argument fails where the cache looks at it, before any transaction:
    the put combined with it in the same batch must still be stored and return its id."""
    storage = SQLiteStorage(tmp_path / "q.db")
    storage.put("q", [Envelope(b"warm-up")], T0)
    [warm] = storage.lease("q", 1, T0, 30.0)
    storage.ack("q", [(warm.id, warm.token)], T0)
    assert storage.lease("q", 1, T0, 30.0) == []  # now the cache knows the queue is empty
    results: dict[str, object] = {}

    def call(name: str, function: object, *args: object) -> None:
        try:
            results[name] = function(*args)  # type: ignore[operator]
        except Exception as error:
            results[name] = error

    storage._conn_lock.acquire()  # callers pile up behind the first
    first = threading.Thread(target=call, args=("first", storage.peek, "q", 10, T0))  # writes nothing
    first.start()
    wait_until(lambda: storage._busy and not storage._pending, what="the first caller to take its batch and wait")
    bad = threading.Thread(target=call, args=("bad", storage.lease, "q", 1, "not a time", 30.0))
    bad.start()
    wait_until(lambda: len(storage._pending) == 1, what="the bad lease to queue")
    good = threading.Thread(target=call, args=("good", storage.put, "q", [Envelope(b"kept")], T0))
    good.start()
    wait_until(lambda: len(storage._pending) == 2, what="the put to queue behind it")
    storage._conn_lock.release()
    for thread in (first, bad, good):
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert isinstance(results["bad"], Exception)
    assert isinstance(results["good"], list), results["good"]
    assert [m.body for m in storage.peek("q", 10, T0)] == [b"kept"]
    storage.close()


def test_a_caller_interrupted_just_as_it_is_made_leader_hands_the_lead_on(tmp_path, monkeypatch):
    """Ctrl-C reaches a waiting caller right after the previous leader made it the next one:
    its call never runs, and the combiner does not stay busy with nobody leading (every later
    call would wait forever)."""
    storage = SQLiteStorage(tmp_path / "q.db")
    storage.put("q", [Envelope(b"warm-up")], T0)
    real_lock = threading.Lock
    victim: list[threading.Thread] = []

    class Gate:
        """A waiting caller's gate; the victim's wait ends in a KeyboardInterrupt once released."""

        def __init__(self) -> None:
            self.lock = real_lock()
            self.waits = 0

        def acquire(self) -> bool:
            self.waits += 1
            self.lock.acquire()
            if self.waits == 2 and threading.current_thread() in victim:
                raise KeyboardInterrupt
            return True

        def release(self) -> None:
            self.lock.release()

    monkeypatch.setattr(_sqlite_combiner, "_new_gate", Gate)
    outcome: dict[str, object] = {}

    def put(name: str) -> None:
        try:
            outcome[name] = storage.put("q", [Envelope(name.encode())], T0)
        except BaseException as error:
            outcome[name] = error

    storage._conn_lock.acquire()  # the first caller leads and waits for the connection
    first = threading.Thread(target=put, args=("first",))
    first.start()
    wait_until(lambda: storage._busy and not storage._pending, what="the first caller to lead")
    interrupted = threading.Thread(target=put, args=("interrupted",))
    victim.append(interrupted)
    interrupted.start()
    wait_until(lambda: len(storage._pending) == 1, what="the second caller to wait")
    storage._conn_lock.release()  # the first batch runs and makes the second caller lead
    for thread in (first, interrupted):
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert isinstance(outcome["interrupted"], KeyboardInterrupt)
    monkeypatch.undo()
    later = threading.Thread(target=put, args=("later",), daemon=True)
    later.start()
    later.join(TIMEOUT)
    assert not later.is_alive(), "the combiner stayed busy with nobody leading"
    assert [m.body for m in storage.peek("q", 10, T0)] == [b"warm-up", b"first", b"later"]
    storage.close()


def test_plain_batches_of_any_size_keep_ids_bodies_and_order(tmp_path):
    """Plain batches are inserted 100 rows per statement, then row by row for the rest."""
    storage = SQLiteStorage(tmp_path / "q.db", durability="normal")
    expected: list[bytes] = []
    next_id = 1
    for size in (1, 99, 100, 101, 250):
        bodies = [f"{size}-{i}".encode() for i in range(size)]
        assert storage.put("q", [Envelope(body) for body in bodies], T0 + size) == list(range(next_id, next_id + size))
        next_id += size
        expected += bodies
    leased = storage.lease("q", 1000, T0 + 1000, 30.0)
    assert [m.body for m in leased] == expected
    assert [m.id for m in leased] == list(range(1, next_id))
    assert {m.enqueued_at for m in leased if m.body.startswith(b"101-")} == {T0 + 101}
    storage.close()


def test_plain_puts_of_one_batch_share_one_insert_and_get_ids_in_arrival_order(tmp_path, monkeypatch):
    storage = SQLiteStorage(tmp_path / "q.db")
    storage.put("q", [Envelope(b"warm-up")], T0)
    merged: list[int] = []
    put_together = SQLiteStorage._put_together

    def spy(self: SQLiteStorage, conn: sqlite3.Connection, todo: list) -> set:
        answered = put_together(self, conn, todo)
        merged.append(len(answered))
        return answered

    monkeypatch.setattr(SQLiteStorage, "_put_together", spy)
    results: dict[str, object] = {}

    def put(name: str, envelopes: list[Envelope]) -> None:
        results[name] = storage.put("q", envelopes, T0)

    storage._conn_lock.acquire()  # callers pile up behind the first
    first = threading.Thread(target=put, args=("first", [Envelope(b"1")]))
    first.start()
    wait_until(lambda: storage._busy and not storage._pending, what="the first caller to take its batch and wait")
    later = [
        ("a", [Envelope(b"a")]),
        ("delayed", [Envelope(b"d", delay=5.0)]),  # not plain: runs on its own
        ("bc", [Envelope(b"b"), Envelope(b"c")]),
    ]
    threads = []
    for number, (name, envelopes) in enumerate(later, 1):
        threads.append(threading.Thread(target=put, args=(name, envelopes)))
        threads[-1].start()
        # one at a time, so the arrival order is known
        wait_until(lambda n=number: len(storage._pending) == n, what=f"caller {number} to queue")
    storage._conn_lock.release()
    for thread in [first, *threads]:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert merged == [2]  # a and bc in one insert
    assert results["a"] == [3]
    assert results["bc"] == [4, 5]
    assert results["delayed"] == [6]  # ran after the combined insert
    assert [m.body for m in storage.lease("q", 10, T0, 30.0)] == [b"warm-up", b"1", b"a", b"b", b"c"]
    storage.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc")
def test_full_durability_syncs_the_real_wal_of_a_database_opened_through_a_symlink(tmp_path, monkeypatch):
    """SQLite keeps the WAL beside the file a symlink points to; syncing a path beside the link
    would find nothing there and silently skip the fsync."""
    synced: list[str] = []
    monkeypatch.setattr(_sqlite_combiner, "_fdatasync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    (tmp_path / "real").mkdir()
    SQLiteStorage(tmp_path / "real" / "q.db").close()
    (tmp_path / "link.db").symlink_to(tmp_path / "real" / "q.db")
    storage = SQLiteStorage(tmp_path / "link.db")
    storage.put("q", [Envelope(b"x")], T0)
    assert synced == [os.path.realpath(tmp_path / "real" / "q.db-wal")]
    storage.close()


def test_a_wal_that_cannot_be_found_to_sync_fails_the_call_instead_of_skipping_the_fsync(tmp_path):
    storage = SQLiteStorage(tmp_path / "q.db")
    storage.path = str(tmp_path / "elsewhere.db")  # where no WAL is: what a wrong guess would meet
    with pytest.raises(mqlite.StorageError, match="WAL was not found"):
        storage.put("q", [Envelope(b"x")], T0)
    with pytest.raises(mqlite.StorageError, match="earlier fsync of the WAL failed"):
        storage.ack("q", [(1, 1)], T0)
    storage.close()


def test_full_durability_syncs_the_wal_for_durable_calls_only_and_shares_fsyncs(tmp_path, monkeypatch):
    """durability="full": the transaction commits with synchronous=NORMAL, then the caller of a
    durable call fsyncs the WAL before returning; a lease does not wait for an fsync, and one
    fsync serves every commit made before it started."""
    synced: list[int] = []
    monkeypatch.setattr(_sqlite_combiner, "_fdatasync", lambda fd: synced.append(os.fstat(fd).st_size))
    storage = SQLiteStorage(tmp_path / "q.db")
    assert storage._split
    assert storage._connection().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    [mid] = storage.put("q", [Envelope(b"x")], T0) or []
    assert len(synced) == 1
    assert synced[0] == os.path.getsize(tmp_path / "q.db-wal") > 0
    [leased] = storage.lease("q", 1, T0, 30.0)
    assert len(synced) == 1  # a lease is committed, not synced
    assert storage.ack("q", [(mid, leased.token)], T0) == [Outcome.DONE]
    assert len(synced) == 2
    storage._committed += 2  # two commits whose callers have not synced yet ...
    storage._sync_wal(storage._committed - 1)  # ... the first caller's fsync serves both
    storage._sync_wal(storage._committed)
    assert len(synced) == 3
    storage.close()
    normal = SQLiteStorage(tmp_path / "n.db", durability="normal")
    normal.put("q", [Envelope(b"x")], T0)
    assert len(synced) == 3
    assert not normal._split
    normal.close()


def test_a_put_refused_for_lack_of_room_syncs_nothing_but_a_duplicate_put_does(tmp_path, monkeypatch):
    """A producer waiting under maxsize retries its put after every change: a refusal changes
    nothing and promises nothing, so it must not cost an fsync each time. A duplicate put
    changes nothing either, but returns the id of a message whose commit may not be synced
    yet: it syncs."""
    synced: list[int] = []
    monkeypatch.setattr(_sqlite_combiner, "_fdatasync", lambda fd: synced.append(fd))
    storage = SQLiteStorage(tmp_path / "q.db")
    assert storage.put("q", [Envelope(b"x", dedup_key="k")], T0, maxsize=1) is not None
    assert len(synced) == 1
    assert storage.put("q", [Envelope(b"y")], T0, maxsize=1) is None  # full
    assert len(synced) == 1
    storage._committed += 1  # as if another caller's commit had not been synced yet
    assert storage.put("q", [Envelope(b"x", dedup_key="k")], T0, maxsize=1) is not None
    assert len(synced) == 2
    storage.close()


def test_a_failed_wal_fsync_fails_the_call_and_every_later_durable_one(tmp_path, monkeypatch):
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    """The call whose own sync failed may or may not have its change (it committed first);
    every later call is refused before it runs, so one that raises has changed nothing: a put
    that raised stores nothing (a retry would duplicate it), an ack that raised deletes nothing."""
    storage = SQLiteStorage(tmp_path / "q.db")
    storage.put("q", [Envelope(b"job")], T0)
    [job] = storage.lease("q", 1, T0, 30.0)
    monkeypatch.setattr(_sqlite_combiner, "_fdatasync", broken)
    with pytest.raises(mqlite.StorageError, match="committed, but the WAL could not be synced"):
        storage.put("q", [Envelope(b"x")], T0)
    monkeypatch.undo()
    with pytest.raises(mqlite.StorageError, match="an earlier fsync of the WAL failed"):
        storage.put("q", [Envelope(b"y")], T0)
    with pytest.raises(mqlite.StorageError, match="an earlier fsync of the WAL failed"):
        storage.ack("q", [(job.id, job.token)], T0)
    with pytest.raises(mqlite.StorageError, match="open the file again"):
        storage.lease("q", 5, T0, 30.0)
    storage.close()
    reopened = SQLiteStorage(tmp_path / "q.db")
    assert [m.body for m in reopened.peek("q", 5, T0)] == [b"job", b"x"]
    reopened.put("q", [Envelope(b"z")], T0)
    reopened.close()


# -- the front on SQLite -----------------------------------------------------------------------


def test_queue_on_a_sqlite_url_survives_reopening(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with mqlite.Queue("jobs", storage="sqlite:///jobs.db") as q:
        assert isinstance(q.storage, SQLiteStorage)
        q.put({"n": 1})
        q.put_many([{"n": 2}, {"n": 3}], group="g")
        with q.get() as msg:
            assert msg.body == {"n": 1}
    absolute = f"sqlite:///{tmp_path}/jobs.db"
    assert absolute.startswith("sqlite:////")
    with mqlite.Queue("jobs", storage=absolute) as q:
        assert q.qsize() == 2
        assert [m.body for m in q.peek(5)] == [{"n": 2}, {"n": 3}]
    with pytest.raises(ValueError, match=r"sqlite:///relative\.db"):
        mqlite.open_storage("sqlite://jobs.db")
    with pytest.raises(ValueError, match="unknown option"):
        mqlite.open_storage("sqlite:///jobs.db?sync=off")
    storage = mqlite.open_storage("sqlite:///jobs.db?durability=normal")
    assert isinstance(storage, SQLiteStorage)
    assert storage.durability == "normal"
    storage.close()


def test_async_front_on_sqlite(tmp_path):
    async def main() -> list[object]:
        with SQLiteStorage(tmp_path / "q.db") as storage:  # a storage used as a context manager
            async with mqlite.Queue("jobs", storage) as q:
                getter = asyncio.ensure_future(q.aget(timeout=30))
                await q.aput("hello")
                msg = await getter
                await msg.aack()
                await q.aput_many(["a", "b"])
                got = await q.aget_many(5, timeout=5)
                for m in got:
                    await m.aack()
                assert await q.ajoin(timeout=5)
            assert not storage._closed  # the queue did not close a storage it was given
        assert storage._closed
        return [msg.body, *(m.body for m in got)]

    assert asyncio.run(main()) == ["hello", "a", "b"]


def test_acked_rows_are_deleted_and_free_pages_returned(tmp_path):
    path = tmp_path / "space.db"
    storage = SQLiteStorage(path, durability="normal")
    for _ in range(20):
        storage.put("q", [Envelope(b"x" * 200)] * 1000, T0)
    storage.close()
    full = os.path.getsize(path)
    storage = SQLiteStorage(path, durability="normal")
    while leased := storage.lease("q", 1000, T0, 60.0):
        assert storage.ack("q", [(m.id, m.token) for m in leased], T0) == [Outcome.DONE] * len(leased)
    storage.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM mq_messages WHERE qid > 0").fetchone()[0] == 0
    conn.close()
    assert os.path.getsize(path) < full / 2


def test_a_database_deleted_while_open_is_reported_at_the_next_synced_call(tmp_path):
    """SQLite goes on writing an unlinked database in WAL mode; the sync of the WAL notices."""
    directory = tmp_path / "db"
    directory.mkdir()
    storage = SQLiteStorage(directory / "q.db", poll_interval=None)
    storage.put("q", [Envelope(b"before")], T0)
    shutil.rmtree(directory)
    with pytest.raises(mqlite.StorageError, match="deleted"):
        storage.put("q", [Envelope(b"after")], T0)
    with pytest.raises(mqlite.StorageError, match="open the file again"):
        storage.lease("q", 1, T0, 30.0)
    storage.close()


def test_expired_dedup_keys_are_deleted_whatever_else_the_process_writes(tmp_path):
    """Keys whose window closed are deleted every so many keyed puts into their queue; the
    sweep once hung on a process-wide write counter, so a queue whose keyed puts fell on the
    wrong counts (here, a plain put between each) kept every key it was ever given."""
    clock = FakeClock()
    storage = SQLiteStorage(tmp_path / "q.db", durability="normal")
    keyed = mqlite.Queue("keyed", storage, clock=clock, dedup_window=1.0)
    plain = mqlite.Queue("plain", storage, clock=clock)
    for number in range(3000):
        keyed.put("x", dedup_key=f"k{number}")
        keyed.get().ack()
        plain.put("y")
        plain.get().ack()
        clock.advance(2.0)  # the key's window is over
    rows = storage._connection().execute("SELECT count(*) FROM mq_dedup").fetchone()[0]
    assert rows <= 1100, rows
    keyed.close()
    plain.close()
    storage.close()


def test_a_storage_dropped_without_close_keeps_no_descriptor(tmp_path):
    """A queue per request on a durable SQLite URL, never closed: each dropped storage's WAL
    descriptor (opened for the fsyncs of durability="full") is closed when it is collected."""
    import gc

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def request(number: int) -> None:
        q: mqlite.Queue[str] = mqlite.Queue("jobs", storage=f"sqlite:///{tmp_path}/q{number}.db")
        q.put("job")  # durable: opens the WAL's descriptor to fsync it

    with warnings.catch_warnings():  # dropped unclosed on purpose: sqlite3 warns (3.13+) as it closes
        warnings.simplefilter("ignore", ResourceWarning)
        request(0)
        gc.collect()
        before = open_fds()
        for number in range(1, 30):
            request(number)
        gc.collect()
    assert open_fds() <= before + 2
