"""FileStorage group commit (durability "full"): a sync waits for callers about to append, and
a failed sync fails its leader, every caller waiting for it, and the storage."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest

import mqlite
from mqlite.storage import Envelope, QueueSpec
from mqlite.storage.file import FileStorage

T0 = 1_000_000.0


def test_a_sync_waits_for_a_caller_about_to_append(tmp_path, monkeypatch):
    """A put blocked on the storage's lock while another put appends is counted as pending; the
    other put's sync waits for its record, so one fdatasync covers both."""
    storage = FileStorage(str(tmp_path / "mq"), durability="full")
    storage.open_queue(QueueSpec("q"))
    entered = threading.Event()
    real_gather = storage._gather

    class Signalling:
        def __enter__(self) -> None:
            real_gather.__enter__()
            if threading.current_thread() is second:
                entered.set()

        def __exit__(self, *exc_info: object) -> None:
            real_gather.__exit__(*exc_info)

    real_append = storage._append

    def append(kind: int, payload: bytes) -> int:
        end = real_append(kind, payload)
        if threading.current_thread() is not second:
            second.start()
            assert entered.wait(timeout=60)  # the second put is now pending, waiting for our lock
            storage._sync_seconds = 60.0  # the gather bound: only the second append can end the wait
        return end

    syncs: list[int] = []
    real_sync = os.fdatasync

    def counting_sync(fd: int) -> None:
        syncs.append(storage._written)
        real_sync(fd)

    second = threading.Thread(target=storage.put, args=("q", [Envelope(b"second")], T0))
    monkeypatch.setattr(storage, "_gather", Signalling())
    monkeypatch.setattr(storage, "_append", append)
    monkeypatch.setattr(os, "fdatasync", counting_sync)
    storage.put("q", [Envelope(b"first")], T0)
    second.join(timeout=60)
    assert not second.is_alive(), "the second put never returned"
    monkeypatch.undo()
    assert len(syncs) == 1, f"two puts took {len(syncs)} syncs"
    assert storage.counts("q", T0) == (2, 0, 0)
    storage.close()


def _count_appends(storage: FileStorage, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Condition, list[int]]:
    """Record the log position after every append in the list returned, notifying the
    condition returned each time."""
    appended = threading.Condition()
    puts: list[int] = []
    real_append = storage._append

    def counting_append(kind: int, payload: bytes) -> int:
        end = real_append(kind, payload)
        with appended:
            puts.append(end)
            appended.notify_all()
        return end

    monkeypatch.setattr(storage, "_append", counting_append)
    return appended, puts


def _run_threads(target: Callable[[int], None], n: int) -> None:
    """Run ``target(0)`` ... ``target(n - 1)`` in threads of their own and wait for them all."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def test_records_waiting_for_one_sync_are_written_in_one_write(tmp_path, monkeypatch):
    """Under "full", a synced call's record waits in memory for the sync's leader, who writes
    every record waiting in one ``pwrite`` (not one write per caller, each releasing the GIL
    with the storage's lock held). The first sync is held until all eight puts appended: the
    eight records reach the file in at most two writes (the first leader's own, and the rest),
    and each put returns only after a sync covered it."""
    storage = FileStorage(str(tmp_path / "mq"), durability="full")
    storage.open_queue(QueueSpec("q"))
    appended, puts = _count_appends(storage, monkeypatch)

    real_sync = os.fdatasync
    synced: list[int] = []

    def first_sync_waits(fd: int) -> None:
        if not synced:
            with appended:
                assert appended.wait_for(lambda: len(puts) == 8, timeout=60)
        real_sync(fd)
        synced.append(storage._flushed)

    real_pwrite = os.pwrite
    record_writes: list[bytes] = []

    def counting_pwrite(fd: int, data: bytes, offset: int) -> int:
        if bytes(data).strip(b"\0"):  # not the zeros written ahead of the records
            record_writes.append(bytes(data))
        return real_pwrite(fd, data, offset)

    returned: list[int] = []

    def put(n: int) -> None:
        storage.put("q", [Envelope(b"body-%d" % n)], T0)
        returned.append(n)

    monkeypatch.setattr(os, "fdatasync", first_sync_waits)
    monkeypatch.setattr(os, "pwrite", counting_pwrite)
    _run_threads(put, 8)
    monkeypatch.undo()
    assert len(returned) == 8
    assert 1 <= len(record_writes) <= 2, f"8 puts took {len(record_writes)} writes"
    assert sum(data.count(b"body-") for data in record_writes) == 8
    assert len(synced) <= 2
    assert max(synced) >= max(puts)
    storage.close()
    reopened = FileStorage(str(tmp_path / "mq"))
    assert sorted(m.body for m in reopened.peek("q", 10, T0)) == sorted(b"body-%d" % n for n in range(8))
    reopened.close()


def test_a_failed_fdatasync_fails_the_leader_and_every_waiter(tmp_path, monkeypatch):
    storage = FileStorage(str(tmp_path / "mq"), durability="full")
    storage.open_queue(QueueSpec("q"))
    appended, puts = _count_appends(storage, monkeypatch)

    def failing_sync(fd: int) -> None:
        with appended:
            assert appended.wait_for(lambda: len(puts) == 8, timeout=60)
        raise OSError(5, "Input/output error")

    errors: list[BaseException] = []

    def put(n: int) -> None:
        try:
            storage.put("q", [Envelope(b"%d" % n)], T0)
        except BaseException as exc:
            errors.append(exc)

    monkeypatch.setattr(os, "fdatasync", failing_sync)
    _run_threads(put, 8)
    monkeypatch.undo()
    assert len(errors) == 8
    assert all(isinstance(error, mqlite.StorageError) for error in errors)
    assert sum("fdatasync failed" in str(error) for error in errors) == 1
    with pytest.raises(mqlite.StorageError, match="open the directory again"):
        storage.put("q", [Envelope(b"later")], T0)
    storage.close()


def test_many_threads_through_segment_rolls_and_compactions_all_return(tmp_path):
    """Puts and acks from many threads while tiny segments roll, compact and go (which sync and
    switch or delete files under the group commit): every call returns and every message is
    accounted for."""
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability="full", segment_size=4096)
    storage.open_queue(QueueSpec("q"))
    failures: list[BaseException] = []
    acked: list[int] = []

    def produce(n: int) -> None:
        try:
            for i in range(150):
                storage.put("q", [Envelope(b"%d-%d" % (n, i) * 5)], T0)
        except BaseException as exc:
            failures.append(exc)

    def consume() -> None:
        try:
            for _ in range(300):
                for message in storage.lease("q", 4, T0, 30.0):
                    storage.ack("q", [(message.id, message.token)], T0)
                    acked.append(message.id)
        except BaseException as exc:
            failures.append(exc)

    def compact() -> None:
        try:
            for _ in range(5):
                storage.compact()
                storage.lease("q", 0, T0, 30.0)  # let the others run between compactions
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=consume) for _ in range(2)]
    threads.append(threading.Thread(target=compact))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call never returned"
    assert failures == []
    assert storage.compactions >= 5
    assert storage.segments_dropped > 0  # old segments went by themselves too (settled or carried)
    left = storage.counts("q", T0)
    storage.close()
    assert left[0] + left[2] == 900 - len(acked)
    reopened = FileStorage(directory)
    assert reopened.counts("q", T0)[0] + reopened.counts("q", T0)[2] == 900 - len(acked)
    reopened.close()


def test_a_leader_interrupted_during_its_sync_does_not_leave_the_storage_stuck(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) reaching the thread that leads a sync is not a failed sync:
    that put raises it, but the storage goes on; the next call leads a sync of its own, and the
    interrupted put's record, already written, is synced by it."""
    storage = FileStorage(str(tmp_path / "mq"), durability="full")
    storage.open_queue(QueueSpec("q"))
    storage._prealloc = 0  # no preallocation sync: the only fdatasync is the leader's
    real_sync = os.fdatasync
    interrupts = [KeyboardInterrupt()]

    def interrupted_sync(fd: int) -> None:
        if interrupts:
            raise interrupts.pop()
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", interrupted_sync)
    with pytest.raises(KeyboardInterrupt):
        storage.put("q", [Envelope(b"interrupted")], T0)
    done = threading.Event()

    def later() -> None:
        storage.put("q", [Envelope(b"later")], T0)
        done.set()

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    assert done.wait(60), "the put after the interruption never returned"
    monkeypatch.undo()
    storage.close()
    reopened = FileStorage(str(tmp_path / "mq"))
    assert [m.body for m in reopened.peek("q", 10, T0)] == [b"interrupted", b"later"]
    reopened.close()
