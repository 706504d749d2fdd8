"""FileStorage: recovery from torn tails and corruption, the directory lock, permissions, group
commit, compaction bounds, URLs, and reopen timing (measured, not asserted)."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from _churn import churn_step

import mqlite
from mqlite import CorruptStorage, StorageLocked
from mqlite.storage import Envelope, QueueSpec, _log
from mqlite.storage.file import FileStorage

T0 = 1_000_000.0


def _segments(directory: str) -> list[str]:
    return sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(_log.SUFFIX))


def _fill(directory: str, count: int, *, segment_size: int = 64 << 20) -> dict[int, bytes]:
    """Put ``count`` messages one at a time (all stay live), close; return id -> body."""
    storage = FileStorage(directory, durability="normal", segment_size=segment_size)
    storage.open_queue(QueueSpec("q", None))
    bodies: dict[int, bytes] = {}
    for n in range(count):
        body = b"message %d " % n + bytes([n % 251]) * (n % 40)
        [mid] = storage.put("q", [Envelope(body, headers={"n": str(n)} if n % 3 == 0 else None)], T0 + n)
        bodies[mid] = body
    storage.close()
    return bodies


def _contents(directory: str, **options: object) -> dict[int, bytes]:
    storage = FileStorage(directory, **options)  # type: ignore[arg-type]
    try:
        return {m.id: m.body for m in storage.peek("q", 10**9, T0 + 10**6)}  # type: ignore[misc]
    finally:
        storage.close()


# -- torn tails and corruption -----------------------------------------------------------------


def test_random_truncations_of_the_newest_segment_recover_a_prefix(tmp_path, caplog):
    original = str(tmp_path / "original")
    bodies = _fill(original, 300)
    [segment] = _segments(original)
    size = os.path.getsize(segment)
    rng = random.Random(7)
    cuts = sorted({rng.randrange(0, size) for _ in range(25)} | {0, 10, _log.HEADER_SIZE, size - 1})
    for cut in cuts:
        copy = str(tmp_path / f"cut{cut}")
        shutil.copytree(original, copy)
        with open(_segments(copy)[0], "r+b") as stream:
            stream.truncate(cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mqlite.storage.file"):
            found = _contents(copy)
        if cut in (10, size - 1):  # inside the file header; inside the last record
            assert caplog.records, f"cut at {cut}: no warning about the torn tail"
        ids = sorted(found)
        assert ids == list(range(1, len(ids) + 1)), f"cut at {cut}: not a prefix: {ids[:5]}..."
        for mid, body in found.items():
            assert body == bodies[mid], f"cut at {cut}: message {mid} has the wrong body"
        # The recovered log accepts new writes and reopens cleanly.
        storage = FileStorage(copy)
        [new] = storage.put("q", [Envelope(b"after")], T0 + 10**6)
        storage.close()
        assert _contents(copy)[new] == b"after"
        shutil.rmtree(copy)


def _two_segments(tmp_path) -> tuple[str, dict[int, bytes]]:
    directory = str(tmp_path / "mq")
    bodies = _fill(directory, 400, segment_size=8192)
    assert len(_segments(directory)) >= 3, "the log should span several segments"
    return directory, bodies


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0x40]))


def test_a_flipped_byte_in_an_older_segment_raises_naming_file_and_offset(tmp_path):
    directory, _ = _two_segments(tmp_path)
    older = _segments(directory)[0]
    _flip(older, 3000)
    with pytest.raises(CorruptStorage) as caught:
        FileStorage(directory)
    message = str(caught.value)
    assert os.path.basename(older) in message
    assert "offset" in message
    # the failed open released the lock
    with pytest.raises(CorruptStorage):
        FileStorage(directory)


@pytest.mark.parametrize("seed", range(6))
def test_salvage_skips_corrupt_records_and_never_delivers_a_wrong_body(tmp_path, caplog, seed):
    directory, bodies = _two_segments(tmp_path)
    rng = random.Random(seed)
    segments = _segments(directory)
    for _ in range(3):
        victim = rng.choice(segments[:-1])
        _flip(victim, rng.randrange(_log.HEADER_SIZE, os.path.getsize(victim)))
    with caplog.at_level(logging.ERROR, logger="mqlite.storage.file"):
        found = _contents(directory, salvage=True)
    assert caplog.records, "salvage must log what it skipped"
    assert found, "salvage kept nothing"
    for mid, body in found.items():
        assert body == bodies[mid], f"message {mid} came back with a body that was never put under its id"
    assert len(found) >= len(bodies) - 40


def test_salvage_then_compact_leaves_a_clean_log(tmp_path):
    """Salvage repairs nothing on disk; compacting the salvaged state does, as the docs say."""
    directory, bodies = _two_segments(tmp_path)
    _flip(_segments(directory)[0], 3000)
    storage = FileStorage(directory, salvage=True)
    kept = {m.id: m.body for m in storage.peek("q", 10**9, T0 + 10**6)}
    storage.compact()
    storage.close()
    assert 0 < len(kept) < len(bodies)
    assert _contents(directory) == kept  # opens without salvage now


def test_a_flipped_byte_in_the_middle_of_the_newest_segment_is_corruption_not_a_torn_tail(tmp_path):
    directory = str(tmp_path / "mq")
    _fill(directory, 200)
    [segment] = _segments(directory)
    _flip(segment, os.path.getsize(segment) // 2)
    with pytest.raises(CorruptStorage, match="offset"):
        FileStorage(directory)


def test_a_damaged_file_header_is_corruption(tmp_path):
    directory, _ = _two_segments(tmp_path)
    _flip(_segments(directory)[0], 2)
    with pytest.raises(CorruptStorage, match="header"):
        FileStorage(directory)


def test_a_missing_segment_is_corruption(tmp_path):
    directory, _ = _two_segments(tmp_path)
    os.unlink(_segments(directory)[1])
    with pytest.raises(CorruptStorage, match="missing"):
        FileStorage(directory)


# -- the lock ----------------------------------------------------------------------------------


def test_a_second_opener_in_this_process_gets_storage_locked_with_our_pid(tmp_path):
    storage = FileStorage(tmp_path)
    try:
        with pytest.raises(StorageLocked, match=str(os.getpid())):
            FileStorage(tmp_path)
    finally:
        storage.close()
    FileStorage(tmp_path).close()  # closing released it


def test_a_second_process_gets_storage_locked_naming_the_holder(tmp_path):
    code = (
        "import sys; from mqlite.storage.file import FileStorage; s = FileStorage(sys.argv[1]); "
        "print('ready', flush=True); sys.stdin.read(); s.close()"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"ready"
        with pytest.raises(StorageLocked, match=rf"process {holder.pid}\b"):
            FileStorage(tmp_path)
    finally:
        holder.communicate(b"")
    FileStorage(tmp_path).close()


# -- safety ------------------------------------------------------------------------------------


def test_directory_and_files_are_private(tmp_path):
    directory = str(tmp_path / "new" / "mq")
    storage = FileStorage(directory, segment_size=1024)
    storage.open_queue(QueueSpec("q", None))
    for n in range(50):
        storage.put("q", [Envelope(b"x" * 100)], T0 + n)
    storage.compact()
    storage.close()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for name in os.listdir(directory):
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600, name


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "x" * 201, "tab\tname"])
def test_queue_names_are_validated(tmp_path, name):
    storage = FileStorage(tmp_path)
    try:
        with pytest.raises(ValueError, match="queue name"):
            storage.open_queue(QueueSpec(name, None))
    finally:
        storage.close()


def test_bodies_must_be_bytes(tmp_path):
    storage = FileStorage(tmp_path)
    try:
        with pytest.raises(TypeError, match="bytes"):
            storage.put("q", [Envelope("text")], T0)
        assert storage.put("q", [Envelope(bytearray(b"ok"))], T0) == [1]
        assert storage.peek("q", 1, T0)[0].body == b"ok"
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"durability": "sometimes"}, ValueError),
        ({"segment_size": 10}, ValueError),
        ({"segment_size": 1.5}, TypeError),
    ],
)
def test_bad_options_are_refused(tmp_path, kwargs, error):
    with pytest.raises(error):
        FileStorage(tmp_path, **kwargs)


# -- durability: group commit ------------------------------------------------------------------


def test_concurrent_puts_share_one_fdatasync(tmp_path, monkeypatch):
    """The first sync is held until all 8 puts are in the log; the next one covers them all."""
    storage = FileStorage(tmp_path, durability="full")
    storage.open_queue(QueueSpec("q", None))
    appended = threading.Condition()
    puts: list[int] = []
    real_append = storage._append

    def counting_append(kind: int, payload: bytes) -> int:
        end = real_append(kind, payload)
        if kind == _log.PUT:
            with appended:
                puts.append(end)
                appended.notify_all()
        return end

    syncs: list[int] = []
    real_sync = os.fdatasync

    def held_first_sync(fd: int) -> None:
        if not syncs:
            with appended:
                assert appended.wait_for(lambda: len(puts) == 8, timeout=30)
        syncs.append(fd)
        real_sync(fd)

    monkeypatch.setattr(storage, "_append", counting_append)
    monkeypatch.setattr(os, "fdatasync", held_first_sync)
    threads = [threading.Thread(target=storage.put, args=("q", [Envelope(b"%d" % n)], T0)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a put never returned"
    monkeypatch.undo()
    storage.close()
    assert 1 <= len(syncs) <= 2, f"8 concurrent puts took {len(syncs)} fdatasync calls"
    assert len(_contents(str(tmp_path))) == 8


def test_normal_durability_never_syncs_on_put(tmp_path, monkeypatch):
    storage = FileStorage(tmp_path, durability="normal")
    calls: list[int] = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    for n in range(20):
        storage.put("q", [Envelope(b"x")], T0 + n)
    monkeypatch.undo()
    storage.close()
    assert calls == []


# -- a full disk -------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_a_full_disk_fails_the_call_stops_the_storage_and_loses_nothing_that_returned(
    tmp_path, monkeypatch, durability
):
    """The disk fills while a put is written (under "full", while the sync leader writes the
    waiting records): that put raises a StorageError naming the log and the cause, the storage
    refuses every later call (its memory may be ahead of its log), nothing partial stays in the
    file, and reopening the directory gives back every put that returned and its acks, and
    nothing of the put that failed."""
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability=durability)
    storage.open_queue(QueueSpec("q", None))
    kept = [storage.put("q", [Envelope(b"kept-%d" % n)], T0)[0] for n in range(5)]
    [first] = storage.lease("q", 1, T0, 30.0)
    storage.ack("q", [(first.id, first.token)], T0)
    real = _log.pwrite_all
    real_pwrite = os.pwrite

    def no_space(fd: int, data: bytes, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_space_pwrite(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_log, "pwrite_all", no_space)
    monkeypatch.setattr(os, "pwrite", no_space_pwrite)
    with pytest.raises(mqlite.StorageError, match="No space left on device") as failed:
        storage.put("q", [Envelope(b"lost")], T0)
    assert directory in str(failed.value)
    monkeypatch.setattr(_log, "pwrite_all", real)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    with pytest.raises(mqlite.StorageError, match="close it and open the directory again"):
        storage.put("q", [Envelope(b"refused")], T0)
    with pytest.raises(mqlite.StorageError):
        storage.lease("q", 1, T0, 30.0)
    storage.close()
    reopened = FileStorage(directory, durability=durability)
    try:
        assert [m.body for m in reopened.peek("q", 10, T0)] == [b"kept-%d" % n for n in range(1, 5)]
        assert [m.id for m in reopened.peek("q", 10, T0)] == kept[1:]
        later = reopened.put("q", [Envelope(b"after")], T0)
        assert later[0] > kept[-1]
    finally:
        reopened.close()


# -- compaction --------------------------------------------------------------------------------


def _no_syncs(monkeypatch: pytest.MonkeyPatch, durability: str) -> None:
    """Space does not depend on syncs happening: skip them, for speed, where "full" would sync
    (its preallocated zeros are still written)."""
    if durability == "full":
        monkeypatch.setattr(os, "fdatasync", lambda fd: None)


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_churn_keeps_the_directory_within_twice_peak_live_plus_one_segment(tmp_path, monkeypatch, durability):
    _no_syncs(monkeypatch, durability)
    directory = str(tmp_path / "mq")
    segment_size = 64 << 10
    storage = FileStorage(directory, durability=durability, segment_size=segment_size)
    storage.open_queue(QueueSpec("q", None))
    rng = random.Random(3)
    peak_live = 0
    worst = 0.0
    now = T0
    for _ in range(20_000):
        now += 0.001
        storage.put("q", [Envelope(b"p" * rng.randint(10, 200))], now)
        if storage.counts("q", now)[0] > rng.randint(0, 300):
            for message in storage.lease("q", 4, now, 30.0):
                storage.ack("q", [(message.id, message.token)], now)
        peak_live = max(peak_live, storage.live_bytes())
        on_disk = sum(os.path.getsize(path) for path in _segments(directory))
        worst = max(worst, on_disk - (2 * peak_live + segment_size))
    assert storage.segments_dropped > 0
    storage.close()
    assert worst <= 0, f"the directory exceeded 2 x peak live + one segment by {worst} bytes"


def _directory_bytes(directory: str) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())


@pytest.mark.parametrize("stragglers", [0.0, 0.05])
@pytest.mark.parametrize("way", ["compaction", "carry"])
@pytest.mark.parametrize("durability", ["normal", "full"])
@pytest.mark.parametrize("live", [60, 400])
def test_reclaiming_space_stays_within_twice_peak_live_plus_one_segment(
    tmp_path, monkeypatch, live, durability, way, stragglers
):
    """The directory's largest moments are inside a compaction, when the finished snapshot is
    renamed in while every old segment is still there, and inside a carry, when the carried
    records are written and synced but their segment not yet deleted: measured at that rename
    and at every unlink, with a live set smaller (60 messages) and several times larger (400)
    than a segment, consumed in order (the oldest segments empty by themselves) or leaving a
    share of stragglers in flight (they pin old segments). Compaction is what a log with
    version 1 segments, which carrying cannot delete, still relies on."""
    _no_syncs(monkeypatch, durability)
    directory = str(tmp_path / "mq")
    segment_size = 8 << 10
    storage = FileStorage(directory, durability=durability, segment_size=segment_size)
    storage.open_queue(QueueSpec("q", None))
    if way == "compaction":
        storage._deletable = list  # type: ignore[method-assign]  # as with version 1 segments
    moments: list[int] = []
    rename, unlink = os.rename, os.unlink

    def measuring_rename(src: str, dst: str) -> None:
        moments.append(_directory_bytes(directory))
        rename(src, dst)

    def measuring_unlink(path: str) -> None:  # a carry's moment: records written, segment not yet gone
        moments.append(_directory_bytes(directory))
        unlink(path)

    monkeypatch.setattr(os, "rename", measuring_rename)
    monkeypatch.setattr(os, "unlink", measuring_unlink)
    rng = random.Random(5)
    peak_live = 0
    worst = -(1 << 60)
    now = T0
    for _ in range(3_000):
        now += 0.001
        churn_step(storage, rng, now, live, stragglers)
        peak_live = max(peak_live, storage.live_bytes())
        while moments:
            worst = max(worst, moments.pop() - (2 * peak_live + segment_size))
        worst = max(worst, _directory_bytes(directory) - (2 * peak_live + segment_size))
    monkeypatch.undo()
    if way == "compaction":
        assert storage.compactions > 3
    elif stragglers:
        assert storage.carries > 0
    storage.close()
    assert worst <= 0, f"the directory exceeded 2 x peak live + one segment by {worst} bytes"


def test_live_bytes_estimates_the_snapshot_of_mixed_messages(tmp_path):
    """live_bytes() decides when to compact: it must follow the real snapshot's size for plain
    messages and for ones with priorities, groups, headers, delays, leases and dedup keys."""
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability="normal")
    rng = random.Random(11)
    for name in ("a", "b"):
        storage.open_queue(QueueSpec(name, None))
        for n in range(1_500):
            envelope = Envelope(
                b"x" * rng.randint(0, 300),
                priority=rng.choice([0, 0, 3]),
                group=rng.choice([None, None, f"group-{n % 17}"]),
                headers=rng.choice([None, {"key": "v" * (n % 9), "other": "w"}]),
                delay=rng.choice([0.0, 0.0, 5.0]),
                dedup_key=rng.choice([None, f"dedup-{n}"]),
            )
            storage.put(name, [envelope], T0 + n * 0.001)
        storage.lease(name, 300, T0 + 2.0, 30.0)
    estimate = storage.live_bytes()
    storage.compact()
    [snapshot] = _segments(directory)
    assert 0.8 <= os.path.getsize(snapshot) / estimate <= 1.1, (os.path.getsize(snapshot), estimate)
    storage.close()


def test_close_gives_a_drained_queues_space_back_and_keeps_its_state(tmp_path):
    """A drained queue left with mostly dead segments shrinks to a small snapshot at close;
    ids keep counting up, dedup keys inside their window, attempts and delays survive it."""
    directory = str(tmp_path / "mq")
    segment_size = 4 << 20
    storage = FileStorage(directory, durability="normal", segment_size=segment_size)
    storage.open_queue(QueueSpec("q", None, dedup_window=3600.0))
    now = T0
    first_ids: dict[str, int] = {}
    for n in range(40):
        now += 1.0
        keys = [f"k{n}-{i}" for i in range(50)]
        ids = storage.put("q", [Envelope(b"b" * 200, dedup_key=key) for key in keys], now)
        assert ids is not None
        first_ids.update(zip(keys, ids, strict=True))
        leased = storage.lease("q", 50, now, 30.0)
        storage.ack("q", [(m.id, m.token) for m in leased], now)
    [kept] = storage.put("q", [Envelope(b"kept", headers={"h": "v"})], now)
    [message] = storage.lease("q", 1, now, 30.0)
    storage.nack("q", [(message.id, message.token)], now, 50.0, "retry later")
    before = _directory_bytes(directory)
    assert storage.compactions == 0
    assert before > 2 * storage.live_bytes()
    storage.close()
    assert storage.compactions == 1
    after = _directory_bytes(directory)
    assert after < before / 4, (before, after)
    assert len(_segments(directory)) == 1

    storage = FileStorage(directory, durability="normal", segment_size=segment_size)
    assert storage.replayed_records < 10
    [peeked] = storage.peek("q", 10, now + 1.0)
    assert (peeked.id, peeked.body, peeked.attempts, dict(peeked.headers)) == (kept, b"kept", 1, {"h": "v"})
    assert storage.lease("q", 1, now + 1.0, 30.0) == []  # still delayed
    assert storage.put("q", [Envelope(b"again", dedup_key="k3-7")], now + 1.0) == [first_ids["k3-7"]]
    [fresh] = storage.put("q", [Envelope(b"new")], now + 1.0)
    assert fresh > kept
    storage.close()


def test_open_gives_space_back_after_a_process_died_with_a_drained_queue(tmp_path):
    """A process that dies cannot compact at close: the next open does it after replay (a copy
    of the directory taken while the storage is open is what a kill leaves)."""
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability="normal", segment_size=4 << 20)
    storage.open_queue(QueueSpec("q", None))
    for n in range(20):
        storage.put("q", [Envelope(b"d" * 300)] * 100, T0 + n)
        storage.ack("q", [(m.id, m.token) for m in storage.lease("q", 100, T0 + n, 30.0)], T0 + n)
    [kept] = storage.put("q", [Envelope(b"kept")], T0 + 30)
    [message] = storage.lease("q", 1, T0 + 30, 30.0)
    crashed = str(tmp_path / "crashed")
    shutil.copytree(directory, crashed)
    storage.close()
    before = _directory_bytes(crashed)
    reopened = FileStorage(crashed, durability="normal", segment_size=4 << 20)
    assert reopened.compactions == 1
    after = _directory_bytes(crashed)
    assert after < before / 4, (before, after)
    [peeked] = reopened.peek("q", 10, T0 + 31)
    assert (peeked.id, peeked.attempts, peeked.token) == (kept, 1, 0)  # the lease ended with the process
    [again] = reopened.lease("q", 1, T0 + 31, 30.0)
    assert again.token > message.token
    reopened.close()
    assert _contents(crashed) == {kept: b"kept"}


def test_a_close_record_that_reaches_a_compaction_mark_still_ends_the_log_cleanly(tmp_path):
    """Appending the clean-shutdown record may cross the compaction mark; compacting then
    would delete the segment holding that record and the next open would take the close for a
    crash, ending the leases that a clean close keeps (found by the conformance machine: a
    message in flight at max_attempts was dead-lettered by reopening)."""
    storage = FileStorage(tmp_path / "q", segment_size=1024)
    storage.open_queue(QueueSpec("q", 1))
    storage._check_at = 1 << 60  # no compaction check while dead bytes pile up in segment 1
    ids = storage.put("q", [Envelope(b"x" * 30) for _ in range(10)], T0) or []
    leased = storage.lease("q", 10, T0, 30.0)
    assert storage.ack("q", [(m.id, m.token) for m in leased[1:]], T0)  # one lease left
    assert sum(storage._sizes.values()) - storage.live_bytes() >= 512  # half a segment dead
    assert storage.compactions == 0
    storage._check_at = storage._written + 1  # the close record crosses the mark
    storage.close()
    reopened = FileStorage(tmp_path / "q", segment_size=1024)
    assert reopened.counts("q", T0 + 1) == (0, 0, 1)  # still leased, not failed nor dead
    assert reopened.counts("q.dead", T0 + 1) == (0, 0, 0)
    [held] = reopened.peek("q", 1, T0 + 1)
    assert (held.id, held.attempts) == (ids[0], 1)
    reopened.close()


def test_close_leaves_a_small_log_alone(tmp_path):
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability="normal")
    storage.open_queue(QueueSpec("q", None))
    storage.put("q", [Envelope(b"x" * 100)] * 20, T0)
    storage.ack("q", [(m.id, m.token) for m in storage.lease("q", 20, T0, 30.0)], T0)
    storage.close()
    assert storage.compactions == 0
    assert [os.path.basename(path) for path in _segments(directory)] == [f"{1:016x}{_log.SUFFIX}"]


def test_a_compaction_interrupted_before_its_rename_leaves_the_old_log(tmp_path):
    directory = str(tmp_path / "mq")
    bodies = _fill(directory, 100)
    stray = os.path.join(directory, f"{2:016x}{_log.TEMP_SUFFIX}")
    with open(stray, "wb") as stream:
        stream.write(_log.file_header(2) + b"half a snapshot")
    assert _contents(directory) == bodies
    assert not os.path.exists(stray)


def test_a_compaction_interrupted_after_its_rename_starts_from_the_snapshot(tmp_path):
    directory = str(tmp_path / "mq")
    bodies = _fill(directory, 100)
    [first] = _segments(directory)
    kept = first + ".keep"
    shutil.copy(first, kept)
    storage = FileStorage(directory)
    storage.compact()
    storage.close()
    os.rename(kept, first)  # as if the crash came before the old segment was deleted
    assert len(_segments(directory)) == 2
    assert _contents(directory) == bodies
    assert len(_segments(directory)) == 1


def _compacted(directory: str, count: int) -> tuple[dict[int, bytes], str, list[int]]:
    """Fill, compact into a snapshot segment and close; return the bodies, the snapshot's path
    and the offsets of its records that hold messages, then of its end record."""
    bodies = _fill(directory, count)
    storage = FileStorage(directory)
    storage.compact()
    storage.close()
    [snapshot] = _segments(directory)
    with open(snapshot, "rb") as stream:
        data = stream.read()
    records = [record for record in _log.scan(data, _log.HEADER_SIZE) if not isinstance(record, _log.Bad)]
    return bodies, snapshot, [offset for offset, kind, _ in records if kind in (_log.SNAP_MSG, _log.SNAP_END)]


@pytest.mark.parametrize("where", ["inside a record", "between records"])
def test_a_snapshot_cut_short_is_corruption_not_a_torn_tail(tmp_path, where):
    """A snapshot is synced before it gets its name, so no crash leaves one unfinished: a
    snapshot that stops before its end record was damaged, and opening must not take what is
    left for the whole queue (it would drop every message after the cut, with only a warning)."""
    directory = str(tmp_path / "mq")
    bodies, snapshot, records = _compacted(directory, 2000)
    *batches, end = records
    cut = end if where == "between records" else batches[-1] + 1000
    os.truncate(snapshot, cut)
    with pytest.raises(CorruptStorage, match=os.path.basename(snapshot)) as caught:
        FileStorage(directory)
    assert f"offset {end if where == 'between records' else batches[-1]}" in str(caught.value)
    assert os.path.getsize(snapshot) == cut  # nothing was cut off or rewritten
    salvaged = _contents(directory, salvage=True)  # what is left, and nothing wrong
    assert all(bodies[mid] == body for mid, body in salvaged.items())
    assert len(salvaged) == (len(bodies) if where == "between records" else 0)


# -- URLs and the front ------------------------------------------------------------------------


def test_file_url_absolute_and_relative(tmp_path, monkeypatch):
    storage = mqlite.open_storage(f"file://{tmp_path}/abs?durability=normal")
    assert isinstance(storage, FileStorage)
    assert storage.path == str(tmp_path / "abs")
    assert storage.durability == "normal"
    storage.close()
    monkeypatch.chdir(tmp_path)
    storage = mqlite.open_storage("file://rel")
    assert isinstance(storage, FileStorage)
    assert storage.path == str(tmp_path / "rel")
    storage.close()
    with pytest.raises(ValueError, match="directory"):
        mqlite.open_storage("file://")
    with pytest.raises(ValueError, match="option"):
        mqlite.open_storage(f"file://{tmp_path}/x?colour=blue")


def test_queue_on_a_file_url_keeps_messages_across_restarts(tmp_path):
    url = f"file://{tmp_path}/mq"
    with mqlite.Queue("jobs", storage=url) as q:
        q.put({"n": 1})
        q.put({"n": 2})
        message = q.get()
        message.ack()
        q.get()  # held at close: released, no attempt counted
    with mqlite.Queue("jobs", storage=url) as q:
        assert q.qsize() == 1
        message = q.get()
        assert (message.body, message.attempts) == ({"n": 2}, 1)


# -- reopen time (measured and printed, not asserted) ------------------------------------------


def test_reopen_time_is_measured(tmp_path, record_property):
    directory = str(tmp_path / "mq")
    _fill(directory, 100_000)
    started = time.perf_counter()
    storage = FileStorage(directory)
    elapsed = time.perf_counter() - started
    assert storage.counts("q", T0 + 10**6) == (100_000, 0, 0)
    storage.close()
    record_property("reopen_100k_seconds", elapsed)
    print(f"reopen of 100,000 live messages (op log): {elapsed:.3f} s")


def test_an_interrupted_write_stops_the_storage_and_the_log_stays_consistent(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside the write of a put (durability "normal") leaves the index
    ahead of the log: the storage must refuse every later call (an ack of that message would
    name an id the log never got), and a reopen has exactly the puts that returned."""
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability="normal")
    storage.open_queue(QueueSpec("q", None))
    storage.put("q", [Envelope(b"kept")], T0)
    real_pwrite = os.pwrite

    def interrupted(fd: int, data: bytes, offset: int) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "pwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.put("q", [Envelope(b"interrupted")], T0)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    with pytest.raises(mqlite.StorageError, match="open the directory again"):
        storage.lease("q", 5, T0, 30.0)
    storage.close()
    reopened = FileStorage(directory)
    try:
        assert [m.body for m in reopened.peek("q", 10, T0)] == [b"kept"]
    finally:
        reopened.close()


def test_a_put_too_large_for_one_record_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    storage = FileStorage(str(tmp_path / "mq"), durability="normal")
    storage.open_queue(QueueSpec("q", None))
    monkeypatch.setattr(_log, "MAX_PAYLOAD", 64 << 10)  # 2 GiB in real life; too much for a test
    with pytest.raises(ValueError, match="larger than one FileStorage record can hold"):
        storage.put("q", [Envelope(b"x" * (40 << 10)), Envelope(b"y" * (40 << 10))], T0)
    assert storage.counts("q", T0) == (0, 0, 0)
    assert storage.put("q", [Envelope(b"x" * (40 << 10))], T0) == [1]
    storage.close()


# -- failures while opening ----------------------------------------------------------------------


def _fail_once(monkeypatch: pytest.MonkeyPatch, name: str, error: int, when: object = None) -> None:
    """Make ``os.<name>`` fail once with ``error`` (for a first argument ending in ``when``)."""
    real = getattr(os, name)
    state = {"failed": False}

    def failing(*args: object, **kwargs: object) -> object:
        if not state["failed"] and (when is None or str(args[0]).endswith(str(when))):
            state["failed"] = True
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize("call", ["ftruncate", "pwrite"])
def test_a_lock_file_that_cannot_be_written_is_a_storage_error_and_leaves_the_directory_unlocked(
    tmp_path, monkeypatch, call
):
    """A full disk as the pid is written into LOCK: the descriptor holding the flock leaked, so
    every later open of this process got StorageLocked, blaming a phantom holder."""
    directory = str(tmp_path / "log")
    _fill(directory, 2)
    _fail_once(monkeypatch, call, errno.ENOSPC)
    with pytest.raises(mqlite.StorageError, match="lock file"):
        FileStorage(directory)
    monkeypatch.undo()
    assert len(_contents(directory)) == 2  # opens again, everything kept


@pytest.mark.parametrize(("call", "error", "when"), [("listdir", errno.EIO, None), ("open", errno.EMFILE, ".seg")])
def test_an_os_error_while_opening_is_a_storage_error_naming_the_directory(tmp_path, monkeypatch, call, error, when):
    directory = str(tmp_path / "log")
    _fill(directory, 2)
    _fail_once(monkeypatch, call, error, when)
    with pytest.raises(mqlite.StorageError, match="cannot open the log") as caught:
        FileStorage(directory)
    assert isinstance(caught.value.__cause__, OSError)
    monkeypatch.undo()
    assert len(_contents(directory)) == 2


CRASH_DRAINED = """
import os, sys
from mqlite.storage import Envelope, QueueSpec
from mqlite.storage.file import FileStorage
storage = FileStorage(sys.argv[1])
storage.open_queue(QueueSpec("q", None))
for i in range(200):
    storage.put("q", [Envelope(b"%05d" % i + b"z" * 500)], 1000.0)
for _ in range(195):
    [m] = storage.lease("q", 1, 1000.0, 30.0)
    storage.ack("q", [(m.id, m.token)], 1000.0)
os._exit(0)  # dies with a mostly dead log, which the next open compacts
"""


def test_a_snapshot_that_cannot_be_written_at_open_or_close_only_skips_compaction(tmp_path, monkeypatch, caplog):
    """Giving space back is optional: a full disk just then must not stop the log from opening
    (to be drained, which is what frees space) nor from closing cleanly."""
    directory = str(tmp_path / "log")
    subprocess.run([sys.executable, "-c", CRASH_DRAINED, directory], check=True, timeout=120)
    _fail_once(monkeypatch, "open", errno.ENOSPC, ".tmp")
    with caplog.at_level(logging.WARNING, logger="mqlite"):
        storage = FileStorage(directory)
    assert "compaction after replay skipped" in caplog.text
    assert [m.body[:5] for m in storage.peek("q", 10, 1000.0)] == [b"%05d" % i for i in range(195, 200)]
    _fail_once(monkeypatch, "open", errno.ENOSPC, ".tmp")
    storage.close()
    assert "compaction at close skipped" in caplog.text
    monkeypatch.undo()
    with FileStorage(directory) as reopened:
        assert len(reopened.peek("q", 10, 1000.0)) == 5


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_a_log_deleted_while_open_is_reported_instead_of_synced_into_nothing(tmp_path, durability):
    """An operator's rm -rf of the directory: the open files live on, unlinked, and every put
    and the close reported success although it all vanishes with the process."""
    directory = str(tmp_path / "log")
    storage = FileStorage(directory, durability=durability)
    storage.open_queue(QueueSpec("q", None))
    storage.put("q", [Envelope(b"before")], T0)
    shutil.rmtree(directory)
    if durability == "full":  # the put's sync notices, and the storage refuses from then on
        with pytest.raises(mqlite.StorageError, match="deleted"):
            storage.put("q", [Envelope(b"after")], T0)
        with pytest.raises(mqlite.StorageError, match="open the directory again"):
            storage.put("q", [Envelope(b"later")], T0)
        storage.close()
    else:  # nothing is synced before close, whose sync notices
        storage.put("q", [Envelope(b"after")], T0)
        with pytest.raises(mqlite.StorageError, match="deleted"):
            storage.close()


# -- fork -------------------------------------------------------------------------------------


def _run_fresh(script: str, *arguments: str) -> None:
    """Run ``script`` in a fresh interpreter (forking there, with no thread of pytest's alive);
    it must print "ok"."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


FORK_LEAVES_THE_STORAGE_TO_THE_PARENT = textwrap.dedent(
    """
    import os, sys, time
    import mqlite
    from mqlite.storage import Envelope, QueueSpec
    from mqlite.storage.file import FileStorage

    path = sys.argv[1]
    storage = FileStorage(path, durability=sys.argv[2])
    storage.open_queue(QueueSpec("q", None))
    storage.put("q", [Envelope(b"before")], time.time())
    go, done = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: every call refused, naming the fork; close() harmless
        os.close(go[1])  # so that the read below ends if the parent dies
        code = 1
        try:
            try:
                storage.put("q", [Envelope(b"from the child")], time.time())
            except mqlite.StorageError as error:
                assert "fork" in str(error) and str(os.getppid()) in str(error), error
            else:
                raise AssertionError("the child could write into the parent's log")
            storage.close()
            code = 0
        finally:
            os.write(done[1], b"x" if code == 0 else b"!")
            os.read(go[0], 1)  # stay alive while the parent closes and reopens
            os._exit(code)
    assert os.read(done[0], 1) == b"x", "the child failed"
    [second] = storage.put("q", [Envelope(b"after")], time.time())
    assert second == 2
    storage.close()
    again = FileStorage(path)  # the child, still alive, no longer holds the directory's lock
    assert [m.body for m in again.peek("q", 10, time.time())] == [b"before", b"after"]
    again.close()
    os.write(go[1], b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    print("ok")
    """
)


FORK_WHILE_OPENING_OR_CLOSING = textwrap.dedent(
    """
    import os, sys, time
    from mqlite.storage import Envelope, QueueSpec, file
    from mqlite.storage.file import FileStorage

    path, moment = sys.argv[1], sys.argv[2]
    storage = FileStorage(path)
    storage.open_queue(QueueSpec("q", None))
    storage.put("q", [Envelope(b"kept")], time.time())
    storage.close()
    children = []
    go = os.pipe()

    def fork_here(original):
        def forking(*args, **kwargs):
            pid = os.fork()
            if pid == 0:  # a child that only waits, holding whatever it inherited
                os.close(go[1])
                os.read(go[0], 1)
                os._exit(0)
            children.append(pid)
            return original(*args, **kwargs)
        return forking

    if moment == "opening":
        file.Replayer.run = fork_here(file.Replayer.run)
    else:
        FileStorage._drop_settled = fork_here(FileStorage._drop_settled)
    storage = FileStorage(path)
    storage.close()
    assert children, "no fork happened"
    again = FileStorage(path)  # the children live on, but hold no lock
    assert [m.body for m in again.peek("q", 10, time.time())] == [b"kept"]
    again.close()
    os.write(go[1], b"x" * len(children))
    for pid in children:
        os.waitpid(pid, 0)
    print("ok")
    """
)


@pytest.mark.parametrize("moment", ["opening", "closing"])
def test_a_child_forked_while_the_storage_opens_or_closes_holds_no_lock(tmp_path, moment):
    _run_fresh(FORK_WHILE_OPENING_OR_CLOSING, str(tmp_path / "q"), moment)


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_a_forked_child_leaves_the_storage_and_its_lock_to_the_parent(tmp_path, durability):
    """A FileStorage serves the process that opened it. A child forked from it refuses every
    call (a write would land in the parent's log under ids the parent gives too) and drops its
    copy of the lock, so the parent can close and reopen while the child lives on."""
    _run_fresh(FORK_LEAVES_THE_STORAGE_TO_THE_PARENT, str(tmp_path / "q"), durability)


def test_a_storage_dropped_without_close_lets_its_lock_and_files_go(tmp_path):
    """Like Python's own files, a FileStorage collected unclosed closes its descriptors; its
    directory lock with them (it once stayed locked for the rest of the process, every later
    open failing with StorageLocked naming this very process)."""
    import gc

    directory = str(tmp_path / "q")
    storage = FileStorage(directory)
    storage.open_queue(QueueSpec("q", None))
    storage.put("q", [Envelope(b"kept")], T0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del storage
        gc.collect()
    assert _contents(directory) == {1: b"kept"}
