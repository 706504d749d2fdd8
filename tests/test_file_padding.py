"""FileStorage preallocation under ``durability="full"``: zeros written ahead of the records,
cut off when a segment stops being appended to, and taken for the end of the records at open,
while a damaged record before them is still a torn tail (last written) or corruption (not)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys

import pytest

from mqlite import CorruptStorage, StorageError
from mqlite.storage import Envelope, QueueSpec, _log
from mqlite.storage.file import FileStorage

T0 = 1_000_000.0
Q = "jobs"


def _segments(directory: str) -> list[str]:
    return sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(_log.SUFFIX))


def _open(directory: str, **options: object) -> FileStorage:
    storage = FileStorage(directory, **options)  # type: ignore[arg-type]
    storage.open_queue(QueueSpec(Q))
    return storage


def _put(storage: FileStorage, *bodies: bytes) -> list[int]:
    ids = storage.put(Q, [Envelope(body) for body in bodies], T0)
    assert ids is not None
    return ids


def _bodies(storage: FileStorage) -> list[bytes]:
    return [m.body for m in storage.peek(Q, 1000, T0)]


def _crash_copy(storage: FileStorage, target: str) -> str:
    """The storage's files as a process killed now would leave them (it stays open)."""
    shutil.copytree(storage.path, target)
    return target


def _records_end(path: str) -> int:
    with open(path, "rb") as stream:
        data = stream.read()
    end = _log.HEADER_SIZE
    for item in _log.scan(data, _log.HEADER_SIZE):
        assert not isinstance(item, _log.Bad)
        offset, _kind, payload = item
        end = offset + _log.FRAME_SIZE + len(payload)
    return end


def test_full_durability_preallocates_zeros_in_whole_pages_and_close_cuts_them(tmp_path):
    storage = _open(str(tmp_path / "log"))
    _put(storage, b"a", b"b")
    [segment] = _segments(storage.path)
    size = os.path.getsize(segment)
    end = _records_end(segment)
    assert size % 4096 == 0
    assert size - end >= 4096
    with open(segment, "rb") as stream:
        assert not stream.read()[end:].strip(b"\0")
    storage.close()
    assert os.path.getsize(segment) == _records_end(segment)


def test_normal_durability_does_not_preallocate(tmp_path):
    storage = _open(str(tmp_path / "log"), durability="normal")
    _put(storage, b"a")
    [segment] = _segments(storage.path)
    assert os.path.getsize(segment) == _records_end(segment)
    storage.close()


def test_padding_is_the_end_of_the_records_at_open_and_is_removed_without_a_warning(tmp_path, caplog):
    storage = _open(str(tmp_path / "log"))
    _put(storage, b"first", b"second")
    [leased] = storage.lease(Q, 1, T0, 30.0)
    storage.ack(Q, [(leased.id, leased.token)], T0)
    crashed = _crash_copy(storage, str(tmp_path / "crashed"))
    storage.close()
    [segment] = _segments(crashed)
    assert os.path.getsize(segment) > _records_end(segment)
    with caplog.at_level(logging.WARNING, logger="mqlite"):
        reopened = _open(crashed)
    assert _bodies(reopened) == [b"second"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    _put(reopened, b"third")  # appends where the records ended and preallocates anew
    reopened.close()
    assert _bodies(_open(crashed)) == [b"second", b"third"]


def test_a_record_torn_inside_the_padding_is_cut_with_a_warning(tmp_path, caplog):
    """A power loss can persist the start of the last record and lose its end: its tail then
    reads as the zeros it was written over."""
    storage = _open(str(tmp_path / "log"))
    _put(storage, b"kept")
    before = storage._seg_bytes
    _put(storage, b"torn " * 20)
    crashed = _crash_copy(storage, str(tmp_path / "crashed"))
    storage.close()
    [segment] = _segments(crashed)
    with open(segment, "r+b") as stream:
        stream.seek(before + 40)
        stream.write(bytes(60))  # the record's last 60 bytes lost
    with caplog.at_level(logging.WARNING, logger="mqlite"):
        reopened = _open(crashed)
    assert _bodies(reopened) == [b"kept"]
    assert any("torn tail" in r.getMessage() and f"offset {before}" in r.getMessage() for r in caplog.records)
    _put(reopened, b"after")
    reopened.close()
    assert _bodies(_open(crashed)) == [b"kept", b"after"]


def test_a_bad_record_before_good_ones_and_the_padding_is_corruption(tmp_path):
    storage = _open(str(tmp_path / "log"))
    _put(storage, b"one")
    middle = storage._seg_bytes
    _put(storage, b"two")
    _put(storage, b"three")
    crashed = _crash_copy(storage, str(tmp_path / "crashed"))
    storage.close()
    [segment] = _segments(crashed)
    with open(segment, "r+b") as stream:
        stream.seek(middle + _log.FRAME_SIZE + 2)
        byte = stream.read(1)
        stream.seek(middle + _log.FRAME_SIZE + 2)
        stream.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CorruptStorage, match=f"offset {middle}"):
        _open(crashed)
    salvaged = _open(crashed, salvage=True)
    assert _bodies(salvaged) == [b"one", b"three"]
    salvaged.close()


def test_an_older_segment_left_with_padding_replays(tmp_path):
    """A crash between rolling to a new segment and cutting the old one's padding leaves the
    padding in an older segment: it is the end of that segment's records too."""
    directory = str(tmp_path / "log")
    storage = _open(directory, segment_size=4096)
    bodies = [b"message %03d " % n + bytes(40) for n in range(60)]
    for body in bodies:
        _put(storage, body)
    storage.close()
    segments = _segments(directory)
    assert len(segments) >= 2
    with open(segments[0], "ab") as stream:
        stream.write(bytes(8192))
    reopened = _open(directory)
    assert _bodies(reopened) == bodies
    assert os.path.getsize(segments[0]) == _records_end(segments[0])
    reopened.close()


def test_sealed_segments_keep_no_padding(tmp_path):
    directory = str(tmp_path / "log")
    storage = _open(directory, segment_size=64 << 10)  # the smallest that pads: a page is 1/16 of it
    for n in range(150):
        _put(storage, *(b"message %04d " % (10 * n + i) + bytes(80) for i in range(10)))
    *sealed, newest = _segments(directory)
    assert sealed
    for path in sealed:
        assert os.path.getsize(path) == _records_end(path)
    assert os.path.getsize(newest) > _records_end(newest)
    storage.close()


def test_padding_stops_at_the_end_of_the_segment(tmp_path):
    """The log rolls once a segment reaches segment_size: zeros past that would never be used."""
    segment_size = 64 << 10
    storage = _open(str(tmp_path / "log"), segment_size=segment_size)
    assert storage._prealloc == 4096
    while len(_segments(storage.path)) == 1:
        _put(storage, b"y" * 200)
        [path] = _segments(storage.path)[-1:]
        size = os.path.getsize(path)
        assert size <= max(segment_size, -(-_records_end(path) // 4096) * 4096)
    storage.close()


def test_a_full_disk_while_preallocating_turns_preallocation_off_and_appends_go_on(tmp_path, monkeypatch):
    directory = str(tmp_path / "log")
    storage = _open(directory, segment_size=1 << 20)
    real = _log.pwrite_all

    def no_room_for_zeros(fd: int, data: bytes, offset: int) -> None:
        if len(data) >= 4096 and not data.strip(b"\0"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(_log, "pwrite_all", no_room_for_zeros)
    bodies = [b"x" * 3000 for _ in range(40)]  # more than the first preallocation step
    for body in bodies:
        _put(storage, body)
    assert storage._prealloc == 0
    [segment] = _segments(directory)
    assert os.path.getsize(segment) == _records_end(segment)
    storage.close()
    monkeypatch.undo()
    assert _bodies(_open(directory)) == bodies


def test_a_failed_sync_of_the_zeros_fails_the_storage_instead_of_a_later_sync_passing_for_it(tmp_path, monkeypatch):
    """fsyncgate: records another call wrote without waiting for a sync (a lease) are in the
    file when the preallocation's fdatasync fails; the kernel may have dropped them with that
    error, and a later fdatasync of the file would succeed without them. So the failure must
    fail the storage, not only turn preallocation off."""
    directory = str(tmp_path / "log")
    storage = _open(directory, segment_size=1 << 20)
    _put(storage, b"seed")
    real = os.fdatasync
    calls = {"pad": 0}

    def failing_in_pad(fd: int) -> None:
        if sys._getframe(1).f_code.co_name == "_pad":
            calls["pad"] += 1
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing_in_pad)
    def until_the_next_preallocation() -> None:
        for _ in range(200):
            _put(storage, b"x" * 3000)

    with pytest.raises(StorageError, match="Input/output error"):
        until_the_next_preallocation()
    assert calls["pad"] == 1
    with pytest.raises(StorageError, match="open the directory again"):
        _put(storage, b"after")
    monkeypatch.undo()
    storage.close()
    assert _bodies(_open(directory))[0] == b"seed"
