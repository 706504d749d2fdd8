"""FileStorage replay: the inlined loop for runs of plain puts and the bulk path for batches of
plain messages give the index the general path gives it, check every record's checksum, and
still report, cut or salvage bad records."""

from __future__ import annotations

import logging
import os
import random
import shutil
from typing import Any

import pytest

from mqlite import CorruptStorage
from mqlite.storage import Envelope, QueueSpec, _log
from mqlite.storage._replay import Replayer
from mqlite.storage.file import FileStorage

T0 = 1_000_000.0


def _segments(directory: str) -> list[str]:
    return sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(_log.SUFFIX))


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0x40]))


def _state(storage: FileStorage, *, exact: bool = True) -> Any:
    """Everything replay rebuilds, as plain values: counters and, per queue, every entry's
    fields, the eligible heaps in their list order, the timer heaps and the counts.

    ``exact=False`` leaves out the stale items of the timer heaps (lazy deletion): a live
    storage drops them when a call checks what is due, which replay does not repeat."""
    index = storage._index

    def timers(queue: Any) -> tuple[list[Any], list[Any]]:
        if exact:
            return list(queue.delayed), list(queue.in_flight)
        entries = queue.entries
        delayed = [
            (at, mid)
            for at, mid in queue.delayed
            if mid in entries and entries[mid].state == 1 and entries[mid].deadline == at
        ]
        in_flight = [
            (at, mid, token)
            for at, mid, token in queue.in_flight
            if mid in entries
            and entries[mid].state == 2
            and entries[mid].deadline == at
            and entries[mid].token == token
        ]
        return sorted(delayed), sorted(in_flight)

    queues = {}
    for name, queue in index.queues.items():
        entries = {
            mid: (e.body, e.meta, e.enqueued_at, e.state, e.deadline, e.attempts, e.token)
            for mid, e in queue.entries.items()
        }
        queues[name] = (
            queue.spec,
            entries,
            {priority: list(heap) for priority, heap in queue.eligible.items()},
            list(queue.levels),
            timers(queue),
            {group: (list(g.ids), g.busy) for group, g in queue.groups.items()},
            dict(queue.dedup),
            (queue.n_ready, queue.n_delayed, queue.n_in_flight),
        )
    return index.last_id, index.last_token, queues


def _mixed_log(directory: str, seed: int, *, segment_size: int = 64 << 20) -> Any:
    """Write a log of long runs of plain puts broken by every other kind of record; return the
    state of the storage just before it closed."""
    rng = random.Random(seed)
    storage = FileStorage(directory, durability="normal", segment_size=segment_size)
    storage.open_queue(QueueSpec("q", max_attempts=2))
    storage.open_queue(QueueSpec("dd", dedup_window=5.0))
    now = T0
    for _ in range(60):
        for _ in range(rng.randrange(1, 40)):  # a run of plain puts, mostly into "q"
            now += 0.01
            queue = "q" if rng.random() < 0.9 else "r"
            priority = 0 if rng.random() < 0.9 else rng.choice((-3, 1, 7))
            storage.put(queue, [Envelope(b"%.2f" % now * rng.randrange(1, 4), priority)], now)
        now += 0.01
        choice = rng.randrange(9)
        if choice == 0:  # a delayed message that falls due in the middle of a later run
            storage.put("q", [Envelope(b"late", delay=rng.uniform(0.05, 0.5))], now)
        elif choice == 1:
            storage.lease("q", rng.randrange(1, 5), now, rng.uniform(0.05, 0.5))
        elif choice == 2:
            for message in storage.lease("q", rng.randrange(1, 5), now, 30.0):
                storage.ack("q", [(message.id, message.token)], now)
        elif choice == 3:
            for message in storage.lease("q", 2, now, 30.0):
                storage.nack("q", [(message.id, message.token)], now, rng.choice((0.0, 0.2)), "boom")
        elif choice == 4:
            storage.put("q", [Envelope(b"g", group=rng.choice("ab")), Envelope(b"h", headers={"k": "v"})], now)
        elif choice == 5:
            storage.put("dd", [Envelope(b"d", dedup_key=rng.choice("xyz"))], now)
        elif choice == 6:
            storage.purge("r", now)
        elif choice == 7:
            priority = rng.choice((0, 0, 2))  # a batch of plain messages, now and then with mixed priorities
            batch = [Envelope(b"batch %d" % n, priority) for n in range(rng.randrange(2, 60))]
            if rng.random() < 0.2:
                batch.append(Envelope(b"other priority", priority + 1))
            storage.put(rng.choice(("q", "q", "r")), batch, now)
        else:
            storage.put(f"fresh{rng.randrange(3)}", [Envelope(b"new queue")], now)
    state = _state(storage, exact=False)
    storage.close()
    return state


@pytest.mark.parametrize("seed", range(4))
def test_runs_of_plain_puts_replay_to_the_state_the_log_was_written_from(tmp_path, monkeypatch, seed):
    # Replay must run over every record here: no snapshot, no deleted segment (after which
    # leases replay by id, leaving the eligible heaps equivalent but not item for item equal).
    monkeypatch.setattr(FileStorage, "live_bytes", lambda self: sum(self._sizes.values()))  # never compact
    monkeypatch.setattr(FileStorage, "_drop_settled", lambda self: None)
    directory = str(tmp_path / "mq")
    written = _mixed_log(directory, seed, segment_size=1 << 14 if seed % 2 else 64 << 20)
    shutil.copytree(directory, directory + ".copy")
    storage = FileStorage(directory, durability="normal")
    replayed = _state(storage)
    assert _state(storage, exact=False) == written
    records = storage.replayed_records
    storage.close()
    # The general path alone (no runs) builds exactly the same index, heap order included.
    monkeypatch.setattr(Replayer, "_put_run", lambda self, payload: None)
    monkeypatch.setattr(Replayer, "_put_batch", lambda self, data, start, end: False)
    storage = FileStorage(directory + ".copy", durability="normal")
    assert _state(storage) == replayed
    assert storage.replayed_records == records
    storage.close()


def _plain(directory: str, count: int) -> dict[int, bytes]:
    storage = FileStorage(directory, durability="normal")
    bodies: dict[int, bytes] = {}
    for n in range(count):
        body = b"plain %d" % n
        [mid] = storage.put("q", [Envelope(body)], T0 + n)
        bodies[mid] = body
    storage.close()
    return bodies


def _contents(directory: str, **options: Any) -> dict[int, bytes]:
    storage = FileStorage(directory, **options)
    try:
        return {m.id: m.body for m in storage.peek("q", 10**9, T0 + 10**6)}  # type: ignore[misc]
    finally:
        storage.close()


def _record_offsets(path: str) -> list[int]:
    with open(path, "rb") as stream:
        data = stream.read()
    return [item[0] for item in _log.scan(data, _log.HEADER_SIZE) if not isinstance(item, _log.Bad)]


def test_a_flipped_byte_inside_a_run_is_corruption_at_that_record(tmp_path):
    directory = str(tmp_path / "mq")
    _plain(directory, 500)
    [segment] = _segments(directory)
    offsets = _record_offsets(segment)
    victim = offsets[300]
    _flip(segment, victim + 30)  # inside the put head of the 300th record, in the middle of the run
    with pytest.raises(CorruptStorage) as caught:
        FileStorage(directory)
    assert f"offset {victim}" in str(caught.value)
    assert os.path.basename(segment) in str(caught.value)


def test_a_flipped_body_byte_inside_a_run_is_corruption_at_that_record(tmp_path):
    directory = str(tmp_path / "mq")
    _plain(directory, 500)
    [segment] = _segments(directory)
    offsets = _record_offsets(segment)
    victim = offsets[200]
    _flip(segment, offsets[201] - 2)  # the last body byte of record 200
    with pytest.raises(CorruptStorage, match=f"offset {victim}"):
        FileStorage(directory)


def test_salvage_skips_a_bad_record_inside_a_run_and_keeps_the_rest(tmp_path, caplog):
    directory = str(tmp_path / "mq")
    bodies = _plain(directory, 500)
    [segment] = _segments(directory)
    offsets = _record_offsets(segment)
    _flip(segment, offsets[100] + 40)
    _flip(segment, offsets[400] - 1)
    with caplog.at_level(logging.ERROR, logger="mqlite.storage.file"):
        found = _contents(directory, salvage=True)
    assert len(caplog.records) == 2
    assert len(found) == len(bodies) - 2
    for mid, body in found.items():
        assert body == bodies[mid]


@pytest.mark.parametrize("seed", range(3))
def test_a_torn_tail_inside_a_run_is_cut_and_a_prefix_kept(tmp_path, caplog, seed):
    original = str(tmp_path / "original")
    bodies = _plain(original, 300)
    [segment] = _segments(original)
    size = os.path.getsize(segment)
    rng = random.Random(seed)
    for cut in sorted({rng.randrange(size // 2, size) for _ in range(8)}):
        copy = str(tmp_path / f"cut{cut}")
        shutil.copytree(original, copy)
        os.truncate(_segments(copy)[0], cut)
        found = _contents(copy)
        ids = sorted(found)
        assert ids == list(range(1, len(ids) + 1))
        assert len(ids) >= 140
        assert all(found[mid] == bodies[mid] for mid in ids)
        shutil.rmtree(copy)


def test_a_damaged_length_field_in_the_newest_segment_is_corruption_not_a_torn_tail(tmp_path, caplog):
    """A length field damaged to run past the end looks like a torn tail, but the good records
    after it show it is not the last one written: cutting there would drop puts that returned."""
    directory = str(tmp_path / "mq")
    bodies = _plain(directory, 50)
    [segment] = _segments(directory)
    size = os.path.getsize(segment)
    victim = _record_offsets(segment)[10]
    _flip(segment, victim + 7)  # the length's high byte: the record now claims a gigabyte
    with pytest.raises(CorruptStorage, match=f"offset {victim}: record of .* runs past the end of the file"):
        FileStorage(directory)
    assert os.path.getsize(segment) == size  # nothing cut
    with caplog.at_level(logging.ERROR, logger="mqlite"):
        found = _contents(directory, salvage=True)
    assert sorted(found) == [mid for mid in sorted(bodies) if mid != 11]
    assert all(found[mid] == bodies[mid] for mid in found)


def test_salvage_replays_a_duplicate_put_as_nothing_and_keeps_later_ids_and_bodies(tmp_path, caplog):
    """When the put that first used a dedup key is lost to damage, its duplicate (recorded as
    storing nothing) must not become a message, nor take the id of the next put."""
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability="normal")
    [first] = storage.put("q", [Envelope(b"first", dedup_key="k")], T0)
    [other] = storage.put("q", [Envelope(b"other")], T0 + 1)
    assert storage.put("q", [Envelope(b"duplicate", dedup_key="k")], T0 + 2) == [first]
    [later] = storage.put("q", [Envelope(b"later")], T0 + 3)
    [again] = storage.put("q", [Envelope(b"again", dedup_key="k")], T0 + 400)  # after the window: new
    # A batch with dedup keys: which of them were duplicates cannot be told once records are
    # skipped, so salvage skips it rather than guess ids for bodies.
    assert storage.put("q", [Envelope(b"dup", dedup_key="k"), Envelope(b"new", dedup_key="n")], T0 + 401) == [
        again,
        again + 1,
    ]
    [last] = storage.put("q", [Envelope(b"last")], T0 + 402)
    storage.close()
    [segment] = _segments(directory)
    _flip(segment, _record_offsets(segment)[1] - 1)  # the first put's last body byte
    with caplog.at_level(logging.ERROR, logger="mqlite"):
        found = _contents(directory, salvage=True)
    assert found == {other: b"other", later: b"later", again: b"again", last: b"last"}
    assert "its duplicates are unknown" in caplog.text


def test_a_damaged_first_record_does_not_make_older_segments_look_replaced(tmp_path, caplog):
    """Opening deletes the segments before a snapshot. A segment whose first record merely
    reads as a snapshot's, failing its checksum, must not get them deleted."""
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability="normal", segment_size=1024)
    ids = [storage.put("q", [Envelope(b"x" * 100 + b"%d" % n)], T0 + n)[0] for n in range(30)]
    storage.close()
    segments = _segments(directory)
    assert len(segments) >= 4
    victim = segments[len(segments) // 2]
    with open(victim, "r+b") as stream:
        stream.seek(_log.HEADER_SIZE + 8)
        assert stream.read(1)[0] == _log.SEGMENT_START
        stream.seek(_log.HEADER_SIZE + 8)
        stream.write(bytes([_log.SNAP_BEGIN]))
    with pytest.raises(CorruptStorage, match=os.path.basename(victim)):
        FileStorage(directory, durability="normal", segment_size=1024)
    assert _segments(directory) == segments
    with caplog.at_level(logging.ERROR, logger="mqlite"):
        storage = FileStorage(directory, durability="normal", segment_size=1024, salvage=True)
    assert len(storage.peek("q", 100, T0 + 100)) == len(ids)  # only a segment start was damaged
    storage.close()


@pytest.mark.parametrize("ticks", [True, False])
def test_a_run_stops_where_a_delayed_message_falls_due(tmp_path, monkeypatch, ticks):
    """A put at or after a delayed message's time makes it ready first (the put applies time),
    so the order of the eligible heap and the counts match the live storage. The writer logs a
    TICK before such a put; without it (``ticks=False``) the put record itself must apply time."""
    directory = str(tmp_path / "mq")
    storage = FileStorage(directory, durability="normal")
    if not ticks:
        monkeypatch.setattr(storage, "_tick", lambda queue, now: None)
    storage.put("q", [Envelope(b"first")], T0)
    storage.put("q", [Envelope(b"delayed", delay=1.0)], T0)
    for n in range(1, 30):
        storage.put("q", [Envelope(b"plain %d" % n)], T0 + n * 0.1)
    written = _state(storage, exact=False)
    storage.close()
    monkeypatch.undo()
    shutil.copytree(directory, directory + ".copy")
    storage = FileStorage(directory, durability="normal")
    replayed = _state(storage)
    assert _state(storage, exact=False) == written
    assert storage.counts("q", T0 + 3.0) == (31, 0, 0)
    assert [m.body for m in storage.lease("q", 3, T0 + 3.0, 30.0)] == [b"first", b"delayed", b"plain 1"]
    storage.close()
    monkeypatch.setattr(Replayer, "_put_run", lambda self, payload: None)
    monkeypatch.setattr(Replayer, "_put_batch", lambda self, data, start, end: False)
    storage = FileStorage(directory + ".copy", durability="normal")
    assert _state(storage) == replayed
    storage.close()


def _batched(directory: str, batches: int, size: int) -> dict[int, bytes]:
    storage = FileStorage(directory, durability="normal")
    bodies: dict[int, bytes] = {}
    for b in range(batches):
        sent = [b"batch %d item %d" % (b, n) for n in range(size)]
        ids = storage.put("q", [Envelope(body) for body in sent], T0 + b)
        assert ids is not None
        bodies.update(zip(ids, sent, strict=True))
    storage.close()
    return bodies


def test_batches_of_plain_messages_replay_in_order(tmp_path):
    directory = str(tmp_path / "mq")
    bodies = _batched(directory, 20, 50)
    storage = FileStorage(directory, durability="normal")
    taken = storage.lease("q", 10**6, T0 + 100, 30.0)
    storage.close()
    assert [m.id for m in taken] == sorted(bodies)
    assert all(m.body == bodies[m.id] for m in taken)


def test_a_flipped_byte_in_a_batch_is_corruption_and_salvage_drops_only_that_batch(tmp_path, caplog):
    directory = str(tmp_path / "mq")
    bodies = _batched(directory, 20, 50)
    [segment] = _segments(directory)
    offsets = _record_offsets(segment)  # SPEC, then one PUT per batch, then CLOSE
    victim = offsets[6]
    _flip(segment, (victim + offsets[7]) // 2)
    with pytest.raises(CorruptStorage, match=f"offset {victim}"):
        FileStorage(directory)
    with caplog.at_level(logging.ERROR, logger="mqlite.storage.file"):
        found = _contents(directory, salvage=True)
    assert caplog.records
    assert len(found) == len(bodies) - 50
    assert all(found[mid] == bodies[mid] for mid in found)


@pytest.mark.parametrize("payload", [b"\x01\x02\x03", b"\x00" * 23, b"\x00" * 24 + b"\xff\xff\x00\x00"])
def test_a_short_put_record_with_a_valid_checksum_is_corruption(tmp_path, payload):
    """A record that passes its checksum but does not decode (a bug or a foreign writer) is
    reported as corruption at its offset, by the general path and by the batch path alike."""
    directory = str(tmp_path / "mq")
    _plain(directory, 3)
    [segment] = _segments(directory)
    offset = os.path.getsize(segment)
    with open(segment, "ab") as stream:
        stream.write(_log.frame(_log.PUT, payload))
        stream.write(_log.frame(_log.CLOSE, b""))
    with pytest.raises(CorruptStorage, match=f"offset {offset} does not decode"):
        FileStorage(directory)
