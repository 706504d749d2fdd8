"""FileStorage deletes its oldest segments once every message put in them is settled (format
version 2): each rolled segment starts with a SEGMENT_START record, replay can begin there, and
records naming messages of deleted segments are skipped. Version 1 logs still open."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from _churn import churn_step

from mqlite import CorruptStorage
from mqlite.storage import Envelope, QueueSpec, _log
from mqlite.storage.file import FileStorage

T0 = 1_000_000.0
DATA = Path(__file__).parent / "data"


def _segments(directory: str) -> list[int]:
    return sorted(int(name[:16], 16) for name in os.listdir(directory) if name.endswith(_log.SUFFIX))


def _observed(storage: FileStorage, now: float, queues: list[str]) -> dict[str, Any]:
    """What users can see of each queue: every message in order, with its state, and the counts."""
    seen: dict[str, Any] = {}
    for queue in queues:
        messages = [
            (m.id, m.body, m.attempts, m.priority, m.group, dict(m.headers), m.lease_expires_at)
            for m in storage.peek(queue, 10**6, now)
        ]
        stats = storage.stats(queue, now)
        seen[queue] = (messages, storage.counts(queue, now), stats.dead)
    return seen


def _crash_copy(storage: FileStorage, target: str) -> str:
    """The storage's files as a process killed now would leave them."""
    shutil.copytree(storage.path, target, ignore=shutil.ignore_patterns("LOCK"))
    return target


def _backlog(directory: str, count: int) -> FileStorage:
    """A storage with 16 KiB segments holding a backlog of ``count`` messages of ~75 bytes."""
    storage = FileStorage(directory, durability="normal", segment_size=16 << 10)
    storage.open_queue(QueueSpec("q"))
    for n in range(count):
        storage.put("q", [Envelope(b"message %05d " % n + bytes(60))], T0)
    return storage


def test_a_draining_fifo_backlog_frees_segments_without_compaction(tmp_path):
    directory = str(tmp_path / "log")
    storage = _backlog(directory, 2_000)
    now = T0
    assert len(_segments(directory)) > 8
    while True:
        now += 0.001
        taken = storage.lease("q", 10, now, 30.0)
        if not taken:
            break
        storage.ack("q", [(m.id, m.token) for m in taken], now)
    assert storage.segments_dropped > 8
    assert storage.compactions == 0
    assert len(_segments(directory)) <= 8  # the newest hold the leases and acks of the drain
    storage.close()
    assert len(_segments(directory)) == 1  # all settled: close deletes the rest
    assert FileStorage(directory, durability="normal").counts("q", now) == (0, 0, 0)


def _workload(storage: FileStorage, rng: random.Random, steps: int) -> float:
    """Every kind of record, FIFO-ish so that old segments empty: puts (groups, priorities,
    delays, dedup keys, headers), leases, acks, nacks to the dead-letter queue, releases,
    extends, limited and full redrives, purges; some leases are left running."""
    now = T0
    running: list[Any] = []
    for step in range(steps):
        now += 0.01
        choice = rng.randrange(12)
        if choice < 4:
            envelopes = [
                Envelope(
                    b"body %d %d" % (step, k) + bytes(rng.randrange(0, 80)),
                    priority=rng.choice((0, 0, 0, 1)),
                    group=rng.choice((None, None, "a", "b")),
                    dedup_key=rng.choice((None, None, None, f"key{rng.randrange(20)}")),
                    headers=rng.choice((None, {"h": "v"})),
                    delay=rng.choice((0.0, 0.0, 0.0, 0.05)),
                )
                for k in range(rng.randrange(1, 4))
            ]
            storage.put("q", envelopes, now)
        elif choice < 8:
            for message in storage.lease("q", rng.randrange(1, 4), now, rng.choice((0.05, 30.0))):
                roll = rng.random()
                handle = (message.id, message.token)
                if roll < 0.6:
                    storage.ack("q", [handle], now)
                elif roll < 0.75:
                    storage.nack("q", [handle], now, 0.0, "failed")
                elif roll < 0.85:
                    storage.release("q", [handle], now)
                elif roll < 0.9:
                    storage.extend("q", [handle], now, 10.0)
                    running.append(handle)
                else:
                    running.append(handle)
        elif choice == 8:
            for message in storage.lease("q.dead", 2, now, 30.0):
                storage.ack("q.dead", [(message.id, message.token)], now)
        elif choice == 9:
            storage.redrive("q", now, rng.choice((None, 1, 2)))
        elif choice == 10 and rng.random() < 0.1:
            storage.purge("q", now)
        elif running:
            storage.ack("q", [running.pop(0)], now)
    return now


@pytest.mark.parametrize("seed", range(6))
def test_replay_from_a_segment_start_gives_what_the_storage_held(tmp_path, seed):
    """After segments were deleted, the log begins at a SEGMENT_START: a reopen (after a
    crash, and after a clean close) must show exactly what the running storage showed."""
    rng = random.Random(seed)
    directory = str(tmp_path / "log")
    storage = FileStorage(directory, durability="normal", segment_size=4096)
    storage.open_queue(QueueSpec("q", max_attempts=2, dedup_window=1.0))
    storage.open_queue(QueueSpec("q.dead"))
    now = _workload(storage, rng, 600)
    assert storage.segments_dropped > 0
    queues = ["q", "q.dead"]
    expected = _observed(storage, now, queues)
    crashed = _crash_copy(storage, str(tmp_path / "crashed"))
    storage.close()
    assert _segments(crashed)[0] > 1
    with open(os.path.join(crashed, _log.segment_name(_segments(crashed)[0])), "rb") as stream:
        head = stream.read(_log.HEADER_SIZE + _log.FRAME_SIZE)
    assert head[-1] in (_log.SEGMENT_START, _log.SNAP_BEGIN)

    reopened = FileStorage(crashed, durability="normal", segment_size=4096)
    after_crash = _observed(reopened, now, queues)
    # a crash ends the leases that were running: compare everything else
    for queue in queues:
        assert [m[:6] for m in after_crash[queue][0]] == [m[:6] for m in expected[queue][0]]
        assert sum(after_crash[queue][1]) == sum(expected[queue][1])
        assert after_crash[queue][2] == expected[queue][2]
    reopened.close()

    clean = FileStorage(directory, durability="normal", segment_size=4096)
    assert _observed(clean, now, queues) == expected
    clean.close()


def test_a_long_lived_message_pins_its_segment_and_carrying_still_bounds_the_space(tmp_path):
    directory = str(tmp_path / "log")
    segment_size = 8 << 10
    storage = FileStorage(directory, durability="normal", segment_size=segment_size)
    storage.open_queue(QueueSpec("q"))
    storage.put("q", [Envelope(b"pinned", delay=10_000.0)], T0)
    peak = 0
    for n in range(3_000):
        storage.put("q", [Envelope(b"churn %d" % n + bytes(40))], T0)
        for message in storage.lease("q", 1, T0, 30.0):
            storage.ack("q", [(message.id, message.token)], T0)
        peak = max(
            peak, sum(os.path.getsize(os.path.join(directory, _log.segment_name(s))) for s in _segments(directory))
        )
    assert storage.carries > 0  # the pinned message went forward, so its segments could go
    assert peak <= 2 * storage.live_bytes() + segment_size + 4096
    assert [m.body for m in storage.peek("q", 10, T0)] == [b"pinned"]
    storage.close()


@pytest.mark.parametrize("live", [400, 2_000])
def test_a_queue_consumed_in_order_rewrites_nothing(tmp_path, live):
    """Puts and in-order consumption with a live set several segments large (400 messages:
    about 5 segments; 2,000: about 28): the oldest segments empty by themselves and are
    deleted, nothing is carried or compacted, and the directory stays within twice the peak
    live size plus one segment."""
    directory = str(tmp_path / "log")
    segment_size = 8 << 10
    storage = FileStorage(directory, durability="normal", segment_size=segment_size)
    storage.open_queue(QueueSpec("q", None))
    rng = random.Random(5)
    now = T0
    peak_live = worst = 0
    for _ in range(6_000):
        now += 0.001
        churn_step(storage, rng, now, live)
        peak_live = max(peak_live, storage.live_bytes())
        on_disk = sum(os.path.getsize(os.path.join(directory, _log.segment_name(n))) for n in _segments(directory))
        worst = max(worst, on_disk - (2 * peak_live + segment_size))
    assert storage.segments_dropped > 100
    assert storage.carried_bytes == 0
    assert storage.compactions == 0
    storage.close()
    assert worst <= 0, f"the directory exceeded 2 x peak live + one segment by {worst} bytes"


@pytest.mark.parametrize("live", [30, 50])
def test_a_segment_that_closes_holding_live_messages_can_go_at_once(tmp_path, live):
    """A live set much smaller than a segment (30-50 messages, 64 KiB segments), consumed in
    order: when a segment closes it still holds the live set, and waiting a quarter segment
    for it to empty would put the directory past twice the peak live size plus one segment.
    The check right after the roll carries it."""
    directory = str(tmp_path / "log")
    segment_size = 64 << 10
    storage = FileStorage(directory, durability="normal", segment_size=segment_size)
    storage.open_queue(QueueSpec("q", None))
    batch = [Envelope(b"x" * 100)] * 5
    put = acked = 0
    peak_live = worst = 0
    while acked < 40_000:
        if put - acked < live:
            storage.put("q", batch, T0)
            put += len(batch)
        else:
            taken = storage.lease("q", len(batch), T0, 60.0)
            storage.ack("q", [(m.id, m.token) for m in taken], T0)
            acked += len(taken)
        peak_live = max(peak_live, storage.live_bytes())
        on_disk = sum(os.path.getsize(os.path.join(directory, _log.segment_name(n))) for n in _segments(directory))
        worst = max(worst, on_disk - (2 * peak_live + segment_size))
    storage.close()
    assert worst <= 0, f"the directory exceeded 2 x peak live + one segment by {worst} bytes"
    assert storage.carries > 0


def test_a_lease_naming_a_message_the_log_never_put_is_corruption(tmp_path):
    """Skipping unknown ids is only for ids given before the log's first segment."""
    directory = str(tmp_path / "log")
    storage = _backlog(directory, 2_000)
    for _ in range(100):
        taken = storage.lease("q", 10, T0, 30.0)
        storage.ack("q", [(m.id, m.token) for m in taken], T0)
    assert storage.segments_dropped > 0
    last_id = storage._index.last_id
    storage._append(_log.LEASE, _log.encode_lease("q", T0, 30.0, storage._index.last_token + 1, 1, [last_id + 5]))
    crashed = _crash_copy(storage, str(tmp_path / "crashed"))
    storage.close()
    with pytest.raises(CorruptStorage, match="never put"):
        FileStorage(crashed, durability="normal")


@pytest.mark.parametrize("fixture", ["v1-log-one-segment", "v1-log-compacted"])
def test_a_version_1_log_opens_and_goes_on_in_version_2_segments(tmp_path, fixture):
    """Logs written by mqlite before format version 2 (tests/data, made by commit 211fb74):
    the same state, then new records go to a new version 2 segment, and it all reopens."""
    directory = str(tmp_path / "log")
    shutil.copytree(DATA / fixture, directory)
    expected = json.loads((DATA / f"{fixture}.json").read_text())
    now = T0 + 100
    queues = ["orders", "orders.dead", "mail"]

    def observed(storage: FileStorage) -> dict[str, Any]:
        return {
            queue: {
                "peek": [
                    [m.id, m.body.decode(), m.attempts, m.priority, m.group, dict(m.headers), m.lease_expires_at]
                    for m in storage.peek(queue, 100, now)
                ],
                "counts": list(storage.counts(queue, now)),
            }
            for queue in queues
        }

    storage = FileStorage(directory, durability="normal")
    assert observed(storage) == expected
    newest = _segments(directory)[-1]
    with open(os.path.join(directory, _log.segment_name(newest)), "rb") as stream:
        assert _log.check_header(stream.read(_log.HEADER_SIZE)) == (newest, 2)
    storage.redrive("orders", now, 1)
    [leased] = storage.lease("orders", 1, now, 30.0)
    storage.ack("orders", [(leased.id, leased.token)], now)
    after = observed(storage)
    storage.close()
    reopened = FileStorage(directory, durability="normal")
    assert observed(reopened) == after
    reopened.close()


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_draining_backlog_carries_its_stragglers_instead_of_compacting(tmp_path, durability):
    """A backlog drains while a few of its messages stay in flight: each oldest segment goes
    once those few are carried forward, and a reopen (after a crash and after a clean close)
    shows what the storage held."""
    rng = random.Random(7)
    directory = str(tmp_path / "log")
    storage = FileStorage(directory, durability=durability, segment_size=16 << 10)
    storage.open_queue(QueueSpec("q", max_attempts=None))
    now = T0
    for n in range(2_000):
        storage.put("q", [Envelope(b"message %05d " % n + bytes(60), group=rng.choice((None, None, None, "g")))], now)
    while True:
        now += 0.01
        taken = storage.lease("q", 10, now, 30.0)
        if not taken:
            break
        storage.ack("q", [(m.id, m.token) for m in taken if rng.random() > 0.02], now)  # the rest stay in flight
    assert storage.carries > 0  # space was due while the oldest segment held stragglers
    assert storage.segments_dropped > 0
    assert storage.compactions == 0
    expected = _observed(storage, now, ["q"])
    crashed = _crash_copy(storage, str(tmp_path / "crashed"))
    storage.close()
    reopened = FileStorage(crashed, durability="normal")
    after_crash = _observed(reopened, now, ["q"])
    assert [m[:6] for m in after_crash["q"][0]] == [m[:6] for m in expected["q"][0]]
    reopened.close()
    clean = FileStorage(directory, durability="normal")
    assert _observed(clean, now, ["q"]) == expected
    clean.close()


def test_a_roll_syncs_the_old_segment_before_the_new_one_exists(tmp_path, monkeypatch):
    """Under durability "full", a power cut during a roll must not find a newer segment on disk
    while the old one's last records are torn: a torn tail is cut only from the newest segment,
    anywhere else it is corruption and the log would open only with salvage."""
    events: list[tuple[str, str]] = []
    real_fdatasync = os.fdatasync
    real_create = FileStorage._create_segment

    def fdatasync(fd: int) -> None:
        events.append(("sync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fdatasync(fd)

    def create(storage: FileStorage, number: int) -> int:
        events.append(("create", _log.segment_name(number)))
        return real_create(storage, number)

    storage = FileStorage(str(tmp_path / "mq"), segment_size=4096)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(FileStorage, "_create_segment", create)
    while not any(kind == "create" for kind, _ in events):
        storage.put("q", [Envelope(b"x" * 200)], T0)
    storage.close()
    created = next(i for i, (kind, _) in enumerate(events) if kind == "create")
    old = _log.segment_name(1)
    assert events[created - 1] == ("sync", old)  # the old segment's last records, synced first ...
    assert ("sync", old) not in events[created:]  # ... not after the new segment exists
