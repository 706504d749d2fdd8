"""The on-disk format of :class:`~mqlite.storage.file.FileStorage`: segment files of framed records.

``docs/file-format.md`` is the normative description; this module is its implementation. A
segment starts with a 24-byte file header; then come records, each framed as::

    crc32 u32 | length u32 | type u8 | payload (length bytes)

little-endian, where ``crc32`` (``zlib.crc32``) covers ``length``, ``type`` and the payload. The
payload encodings of every record type are below, next to their encoders and decoders.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, NamedTuple

from .base import Envelope, Handle, QueueSpec

MAGIC: Final = b"MQLOG\r\n\x1a"
VERSION: Final = 2
"""The format version new segments are written in. Version 1 segments are still read: they
differ in how a ``LEASE`` and a ``REDRIVE`` replay (docs/file-format.md, "Versions")."""
READS: Final = (1, 2)
HEADER = struct.Struct("<8sHHQI")  # magic, version, flags (0), segment number, crc32 of the first 20 bytes
HEADER_SIZE: Final = HEADER.size  # 24
FRAME = struct.Struct("<IIB")  # crc32, payload length, type
FRAME_SIZE: Final = FRAME.size  # 9
MAX_PAYLOAD: Final = 1 << 31  # the largest record payload written (the length field is a u32)
SUFFIX: Final = ".seg"
TEMP_SUFFIX: Final = ".tmp"

# Record types. Operation records replay a Storage call on the index; snapshot records restore it.
SPEC: Final = 1
PUT: Final = 2
LEASE: Final = 3
ACK: Final = 4
NACK: Final = 5
RELEASE: Final = 6
REJECT: Final = 7
EXTEND: Final = 8
REDRIVE: Final = 9
PURGE: Final = 10
TICK: Final = 11
CLOSE: Final = 12
RECOVER: Final = 13
SEGMENT_START: Final = 14
CARRY: Final = 15
SNAP_BEGIN: Final = 20
SNAP_QUEUE: Final = 21
SNAP_MSG: Final = 22
SNAP_END: Final = 23
TYPES: Final = frozenset(
    (SPEC, PUT, LEASE, ACK, NACK, RELEASE, REJECT, EXTEND, REDRIVE, PURGE, TICK, CLOSE, RECOVER, SEGMENT_START, CARRY)
) | frozenset((SNAP_BEGIN, SNAP_QUEUE, SNAP_MSG, SNAP_END))
NAMES: Final = {
    SPEC: "SPEC",
    PUT: "PUT",
    LEASE: "LEASE",
    ACK: "ACK",
    NACK: "NACK",
    RELEASE: "RELEASE",
    REJECT: "REJECT",
    EXTEND: "EXTEND",
    REDRIVE: "REDRIVE",
    PURGE: "PURGE",
    TICK: "TICK",
    CLOSE: "CLOSE",
    RECOVER: "RECOVER",
    SEGMENT_START: "SEGMENT_START",
    CARRY: "CARRY",
    SNAP_BEGIN: "SNAP_BEGIN",
    SNAP_QUEUE: "SNAP_QUEUE",
    SNAP_MSG: "SNAP_MSG",
    SNAP_END: "SNAP_END",
}

NONE32: Final = 0xFFFFFFFF
Buf = bytes | memoryview
_U32 = struct.Struct("<I")
_D = struct.Struct("<d")
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_PUT_HEAD = struct.Struct("<dQI")  # now, first new id (0: none), envelope count
_ENVELOPE = struct.Struct("<iBdI")  # priority, flags, delay, body length
_LEASE_HEAD = struct.Struct("<ddQII")  # now, lease seconds, first token, n asked, n taken
_SETTLE_HEAD = struct.Struct("<dI")  # now, handle count
_REDRIVE = struct.Struct("<dqI")  # now, max_messages (-1: None), moved
_PURGE = struct.Struct("<dI")  # now, removed
_SPEC = struct.Struct("<qd")  # max_attempts (-1: None), dedup_window
_SNAP_BEGIN = struct.Struct("<QQI")  # last id, last token, queue count
_SNAP_END = struct.Struct("<QI")  # message count, queue count

F_GROUP: Final = 1
F_DEDUP: Final = 2
F_HEADERS: Final = 4
F_BODY: Final = 8  # SNAP_MSG only: always set (reserved: bodies stored elsewhere)


class CorruptRecord(Exception):
    """A record whose payload does not decode although its checksum matched (a bug or a
    foreign writer); the replayer reports it as corruption at the record's offset."""


# -- primitives --------------------------------------------------------------------------------


def pack_str(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return _U32.pack(len(data)) + data


_NAMES_PACKED: dict[str, bytes] = {}


def pack_name(queue: str) -> bytes:
    """``pack_str`` for queue names, which every operation record carries: remembered, since a
    process uses few names (the cache is emptied if it ever holds 1,024)."""
    packed = _NAMES_PACKED.get(queue)
    if packed is None:
        if len(_NAMES_PACKED) >= 1024:
            _NAMES_PACKED.clear()
        packed = _NAMES_PACKED[queue] = pack_str(queue)
    return packed


def pack_opt(text: str | None) -> bytes:
    return _U32.pack(NONE32) if text is None else pack_str(text)


def unpack_str(buf: Buf, pos: int) -> tuple[str, int]:
    (size,) = _U32.unpack_from(buf, pos)
    pos += 4
    end = pos + size
    if end > len(buf):
        raise CorruptRecord("string runs past the record")
    return str(buf[pos:end], "utf-8", "surrogatepass"), end


def unpack_opt(buf: Buf, pos: int) -> tuple[str | None, int]:
    (size,) = _U32.unpack_from(buf, pos)
    if size == NONE32:
        return None, pos + 4
    return unpack_str(buf, pos)


def pack_headers(headers: Mapping[str, str]) -> bytes:
    return pack_str(json.dumps(dict(headers), ensure_ascii=False, separators=(",", ":")))


def unpack_headers(buf: Buf, pos: int) -> tuple[dict[str, str], int]:
    text, pos = unpack_str(buf, pos)
    value = json.loads(text)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise CorruptRecord("headers are not a JSON object of strings")
    return value, pos


_LENGTH_TYPE = struct.Struct("<IB")


def frame(kind: int, payload: bytes) -> bytes:
    """One framed record."""
    head = _LENGTH_TYPE.pack(len(payload), kind)
    return b"".join((_U32.pack(zlib.crc32(payload, zlib.crc32(head))), head, payload))


def file_header(segment: int, version: int = VERSION) -> bytes:
    body = HEADER.pack(MAGIC, version, 0, segment, 0)[:20]
    return body + _U32.pack(zlib.crc32(body))


def check_header(data: bytes) -> tuple[int, int]:
    """The segment number and format version in a file header, or raise ValueError saying what
    is wrong."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"file header is {len(data)} bytes, not {HEADER_SIZE}")
    magic, version, _flags, segment, crc = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError("not an mqlite log segment (bad magic)")
    if crc != zlib.crc32(data[:20]):
        raise ValueError("file header checksum mismatch")
    if version not in READS:
        raise ValueError(
            f"format version {version} is not supported (this mqlite reads versions {', '.join(map(str, READS))})"
        )
    return int(segment), int(version)


def segment_name(number: int) -> str:
    return f"{number:016x}{SUFFIX}"


# -- writing segment files ---------------------------------------------------------------------


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than it was given)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` to ``fd`` at ``offset`` (``os.pwrite`` may write less than it was given)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def padding_start(data: bytes) -> int:
    """The offset where the zero bytes at the end of ``data`` begin (``len(data)`` if its last
    byte is not zero): a segment's records end at or before it, the rest is preallocated space
    (docs/file-format.md, "Padding"). Looks back 64 KiB at a time, so a file without padding
    costs one small slice."""
    end = len(data)
    step = 1 << 16
    while end > 0:
        begin = max(end - step, 0)
        kept = len(data[begin:end].rstrip(b"\0"))
        if kept:
            return begin + kept
        end = begin
    return 0


def sync_directory(path: str) -> None:
    """``fsync`` the directory ``path``, so that files created, renamed or deleted in it stay so
    after a power loss (syncing a file does not sync its directory entry)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- scanning ----------------------------------------------------------------------------------


class Bad(NamedTuple):
    """Where scanning stopped: a record that is incomplete or fails its checksum.
    ``runs_past_end``: the record reaches the end of the file or its zero padding, so it is the
    last one written (a torn tail if the segment is the newest)."""

    offset: int
    why: str
    runs_past_end: bool


def scan(data: bytes, start: int) -> Iterator[tuple[int, int, memoryview] | Bad]:
    """Yield ``(offset, type, payload)`` for each good record from ``start`` up to the
    segment's zero padding; at a bad one yield :class:`Bad` and stop. ``payload`` is a view into
    ``data``."""
    view = memoryview(data)
    size = len(data)
    limit = padding_start(data)
    pos = start
    unpack = FRAME.unpack_from
    crc32 = zlib.crc32
    while pos < limit:
        if pos + FRAME_SIZE > size:
            yield Bad(pos, "incomplete record header", True)
            return
        crc, length, kind = unpack(data, pos)
        end = pos + FRAME_SIZE + length
        if end > size:
            yield Bad(pos, f"record of {length} bytes runs past the end of the file", True)
            return
        if crc32(view[pos + 4 : end]) != crc:
            yield Bad(pos, "checksum mismatch", end >= limit)
            return
        if kind not in TYPES:
            yield Bad(pos, f"unknown record type {kind}", end >= limit)
            return
        yield pos, kind, view[pos + FRAME_SIZE : end]
        pos = end


def resync(data: bytes, start: int, limit: int | None = None) -> int | None:
    """The first offset after ``start`` and before ``limit`` (default: the end) where a
    well-formed record begins (salvage), or None."""
    view = memoryview(data)
    size = len(data)
    crc32 = zlib.crc32
    for pos in range(start + 1, min(size - FRAME_SIZE + 1, size if limit is None else limit)):
        crc, length, kind = FRAME.unpack_from(data, pos)
        end = pos + FRAME_SIZE + length
        if kind in TYPES and end <= size and crc32(view[pos + 4 : end]) == crc:
            return pos
    return None


def good_records_follow(data: bytes, start: int, limit: int) -> bool:
    """Whether well-formed records begin after ``start`` and run, one after another, to the
    end of the records (``limit``: the zero padding, or the end of the file).

    Tells a damaged record from a torn tail: after a crash during an append, nothing complete
    follows the torn record but, at most, pieces of its own payload; a run of good records
    reaching the end means the record at ``start`` was damaged where it lay."""
    resumed = resync(data, start, limit)
    return resumed is not None and not any(isinstance(item, Bad) for item in scan(data, resumed))


# -- operation records -------------------------------------------------------------------------


def encode_envelopes(envelopes: Sequence[Envelope]) -> list[bytes]:
    """The per-envelope part of a PUT record (before the index assigns ids)."""
    parts: list[bytes] = []
    append = parts.append
    pack = _ENVELOPE.pack
    for envelope in envelopes:
        body = envelope.body
        assert isinstance(body, bytes)
        flags = 0
        extra = b""
        if envelope.group is not None:
            flags |= F_GROUP
            extra += pack_str(envelope.group)
        if envelope.dedup_key is not None:
            flags |= F_DEDUP
            extra += pack_str(envelope.dedup_key)
        if envelope.headers:
            flags |= F_HEADERS
            extra += pack_headers(envelope.headers)
        append(pack(envelope.priority, flags, envelope.delay, len(body)))
        if extra:
            append(extra)
        append(body)
    return parts


def encode_put(queue: str, now: float, first_id: int, count: int, envelopes: list[bytes]) -> bytes:
    return b"".join((_PUT_HEAD.pack(now, first_id, count), pack_name(queue), *envelopes))


class Put(NamedTuple):
    now: float
    first_id: int
    queue: str
    envelopes: list[Envelope]


PUT_HEAD = _PUT_HEAD
ENVELOPE = _ENVELOPE


def decode_put(buf: Buf) -> Put:
    now, first_id, count = _PUT_HEAD.unpack_from(buf, 0)
    queue, pos = unpack_str(buf, _PUT_HEAD.size)
    envelopes: list[Envelope] = []
    unpack = _ENVELOPE.unpack_from
    size = _ENVELOPE.size
    for _ in range(count):
        priority, flags, delay, body_len = unpack(buf, pos)
        pos += size
        group = dedup_key = None
        headers: dict[str, str] | None = None
        if flags:
            if flags & F_GROUP:
                group, pos = unpack_str(buf, pos)
            if flags & F_DEDUP:
                dedup_key, pos = unpack_str(buf, pos)
            if flags & F_HEADERS:
                headers, pos = unpack_headers(buf, pos)
        end = pos + body_len
        if end > len(buf):
            raise CorruptRecord("body runs past the record")
        envelopes.append(Envelope(bytes(buf[pos:end]), priority, group, dedup_key, headers, delay))
        pos = end
    if pos != len(buf):
        raise CorruptRecord(f"{len(buf) - pos} stray bytes after the envelopes")
    return Put(now, first_id, queue, envelopes)


def encode_lease(queue: str, now: float, lease: float, first_token: int, n: int, ids: Sequence[int]) -> bytes:
    packed = _Q.pack(ids[0]) if len(ids) == 1 else struct.pack(f"<{len(ids)}Q", *ids)
    return b"".join((_LEASE_HEAD.pack(now, lease, first_token, n, len(ids)), pack_name(queue), packed))


class Lease(NamedTuple):
    now: float
    lease: float
    first_token: int
    n: int
    queue: str
    ids: tuple[int, ...]


def decode_lease(buf: Buf) -> Lease:
    now, lease, first_token, n, taken = _LEASE_HEAD.unpack_from(buf, 0)
    queue, pos = unpack_str(buf, _LEASE_HEAD.size)
    if pos + 8 * taken != len(buf):
        raise CorruptRecord("lease record has the wrong size")
    return Lease(now, lease, first_token, n, queue, struct.unpack_from(f"<{taken}Q", buf, pos))


def encode_settle(queue: str, now: float, handles: Sequence[Handle], extra: bytes = b"") -> bytes:
    if len(handles) == 1:
        packed = _QQ.pack(*handles[0])
    else:
        flat = [x for handle in handles for x in handle]
        packed = struct.pack(f"<{len(flat)}Q", *flat)
    return b"".join((_SETTLE_HEAD.pack(now, len(handles)), pack_name(queue), packed, extra))


class Settle(NamedTuple):
    now: float
    queue: str
    handles: list[Handle]
    rest: int  # offset of the verb's own fields


def decode_settle(buf: Buf) -> Settle:
    now, count = _SETTLE_HEAD.unpack_from(buf, 0)
    queue, pos = unpack_str(buf, _SETTLE_HEAD.size)
    flat = struct.unpack_from(f"<{2 * count}Q", buf, pos)
    handles = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return Settle(now, queue, handles, pos + 16 * count)


def encode_nack_extra(delay: float, error: str | None) -> bytes:
    return _D.pack(delay) + pack_opt(error)


def decode_nack_extra(buf: Buf, pos: int) -> tuple[float, str | None]:
    (delay,) = _D.unpack_from(buf, pos)
    error, _ = unpack_opt(buf, pos + 8)
    return delay, error


def decode_float(buf: Buf, pos: int) -> float:
    (value,) = _D.unpack_from(buf, pos)
    return float(value)


def encode_redrive(queue: str, now: float, max_messages: int | None, ids: Sequence[int]) -> bytes:
    """A REDRIVE record; with a ``max_messages`` limit it names the ids moved (version 2)."""
    head = _REDRIVE.pack(now, -1 if max_messages is None else max_messages, len(ids)) + pack_name(queue)
    if max_messages is None:
        return head
    return head + struct.pack(f"<{len(ids)}Q", *ids)


class Redrive(NamedTuple):
    now: float
    max_messages: int | None
    moved: int
    queue: str
    ids: tuple[int, ...] | None  # the ids moved: version 2 records with a limit name them


def decode_redrive(buf: Buf, version: int = VERSION) -> Redrive:
    now, max_messages, moved = _REDRIVE.unpack_from(buf, 0)
    queue, pos = unpack_str(buf, _REDRIVE.size)
    ids: tuple[int, ...] | None = None
    if version >= 2 and max_messages >= 0:
        if pos + 8 * moved != len(buf):
            raise CorruptRecord("redrive record has the wrong size")
        ids = struct.unpack_from(f"<{moved}Q", buf, pos)
    return Redrive(now, None if max_messages < 0 else max_messages, moved, queue, ids)


def encode_segment_start(
    last_id: int, last_token: int, queues: Sequence[tuple[QueueSpec, Sequence[tuple[str, int, float]]]]
) -> bytes:
    """The first record of a segment started by a roll (version 2): the id and token counters,
    and every queue's settings and dedup entries, as they are when the segment starts. Replay
    can begin here once the older segments are deleted."""
    parts = [_SNAP_BEGIN.pack(last_id, last_token, len(queues))]
    for spec, dedup in queues:
        item = encode_snap_queue(spec, {}, dedup, 0)
        parts.append(_U32.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


class SegmentStart(NamedTuple):
    last_id: int
    last_token: int
    queues: list[SnapQueue]


def decode_segment_start(buf: Buf) -> SegmentStart:
    last_id, last_token, count = _SNAP_BEGIN.unpack_from(buf, 0)
    pos = _SNAP_BEGIN.size
    queues: list[SnapQueue] = []
    for _ in range(count):
        (size,) = _U32.unpack_from(buf, pos)
        pos += 4
        if pos + size > len(buf):
            raise CorruptRecord("segment start queue runs past the record")
        queues.append(decode_snap_queue(buf[pos : pos + size]))
        pos += size
    if pos != len(buf):
        raise CorruptRecord("stray bytes after the segment start's queues")
    return SegmentStart(last_id, last_token, queues)


def encode_purge(queue: str, now: float, removed: int) -> bytes:
    return _PURGE.pack(now, removed) + pack_name(queue)


def decode_purge(buf: Buf) -> tuple[float, int, str]:
    now, removed = _PURGE.unpack_from(buf, 0)
    queue, _ = unpack_str(buf, _PURGE.size)
    return now, removed, queue


def encode_tick(queue: str, now: float) -> bytes:
    return _D.pack(now) + pack_name(queue)


def decode_tick(buf: Buf) -> tuple[float, str]:
    (now,) = _D.unpack_from(buf, 0)
    queue, _ = unpack_str(buf, 8)
    return now, queue


def encode_spec(spec: QueueSpec) -> bytes:
    max_attempts = -1 if spec.max_attempts is None else spec.max_attempts
    return pack_str(spec.name) + _SPEC.pack(max_attempts, spec.dedup_window) + pack_str(spec.dead_letter)


def decode_spec(buf: Buf, pos: int = 0) -> tuple[QueueSpec, int]:
    name, pos = unpack_str(buf, pos)
    max_attempts, dedup_window = _SPEC.unpack_from(buf, pos)
    dead_letter, pos = unpack_str(buf, pos + _SPEC.size)
    return QueueSpec(name, None if max_attempts < 0 else max_attempts, dead_letter, dedup_window), pos


# -- snapshot records --------------------------------------------------------------------------


def encode_snap_begin(last_id: int, last_token: int, queues: int) -> bytes:
    return _SNAP_BEGIN.pack(last_id, last_token, queues)


def decode_snap_begin(buf: Buf) -> tuple[int, int, int]:
    last_id, last_token, queues = _SNAP_BEGIN.unpack_from(buf, 0)
    return last_id, last_token, queues


def encode_snap_queue(
    spec: QueueSpec, dead_by_source: Mapping[str, int], dedup: Sequence[tuple[str, int, float]], messages: int
) -> bytes:
    extra = json.dumps({"dead_by_source": dict(dead_by_source), "dedup": list(dedup)}, separators=(",", ":"))
    return encode_spec(spec) + pack_str(extra) + _U32.pack(messages)


class SnapQueue(NamedTuple):
    spec: QueueSpec
    dead_by_source: dict[str, int]
    dedup: list[tuple[str, int, float]]
    messages: int


def decode_snap_queue(buf: Buf) -> SnapQueue:
    spec, pos = decode_spec(buf)
    text, pos = unpack_str(buf, pos)
    (messages,) = _U32.unpack_from(buf, pos)
    extra = json.loads(text)
    dead = {str(k): int(v) for k, v in extra["dead_by_source"].items()}
    dedup = [(str(k), int(i), float(t)) for k, i, t in extra["dedup"]]
    return SnapQueue(spec, dead, dedup, messages)


SNAP_BATCH: Final = 4096
"""Messages per SNAP_MSG record."""
_SNAP_ITEM = struct.Struct("<QBddIQiBII")
# id, state, deadline, enqueued_at, attempts, token, priority, flags, strings length, body length
SNAP_ITEM_SIZE: Final = _SNAP_ITEM.size  # the fixed-size part of a message in a SNAP_MSG or CARRY record


class SnapMsg(NamedTuple):
    id: int
    state: int
    deadline: float
    enqueued_at: float
    attempts: int
    token: int
    priority: int
    group: str | None
    headers: Mapping[str, str] | None
    body: bytes


def encode_snap_msgs(messages: Sequence[SnapMsg]) -> bytes:
    """A batch of messages: a count, the fixed-size fields of each, then each one's strings and body."""
    fixed: list[bytes] = [_U32.pack(len(messages))]
    tails: list[bytes] = []
    pack = _SNAP_ITEM.pack
    for m in messages:
        flags = F_BODY
        strings = b""
        if m.group is not None:
            flags |= F_GROUP
            strings += pack_str(m.group)
        if m.headers:
            flags |= F_HEADERS
            strings += pack_headers(m.headers)
        fixed.append(
            pack(
                m.id,
                m.state,
                m.deadline,
                m.enqueued_at,
                m.attempts,
                m.token,
                m.priority,
                flags,
                len(strings),
                len(m.body),
            )
        )
        if strings:
            tails.append(strings)
        tails.append(m.body)
    return b"".join(fixed) + b"".join(tails)


SnapTuple = tuple[int, int, float, float, int, int, int, "str | None", "Mapping[str, str] | None", bytes]


def decode_snap_msgs(buf: Buf) -> Iterator[SnapTuple]:
    """The messages of a SNAP_MSG record, as plain tuples in :class:`SnapMsg` field order."""
    (count,) = _U32.unpack_from(buf, 0)
    pos = 4 + count * _SNAP_ITEM.size
    if pos > len(buf):
        raise CorruptRecord("snapshot batch is shorter than its count says")
    data = bytes(buf)
    for (
        mid,
        state,
        deadline,
        enqueued_at,
        attempts,
        token,
        priority,
        flags,
        strings,
        body_len,
    ) in _SNAP_ITEM.iter_unpack(data[4:pos]):
        if strings:
            group: str | None = None
            headers: Mapping[str, str] | None = None
            at = pos
            if flags & F_GROUP:
                group, at = unpack_str(data, at)
            if flags & F_HEADERS:
                headers, at = unpack_headers(data, at)
            if at != pos + strings:
                raise CorruptRecord("snapshot message strings have the wrong length")
            end = at + body_len
            yield mid, state, deadline, enqueued_at, attempts, token, priority, group, headers, data[at:end]
        else:
            end = pos + body_len
            yield mid, state, deadline, enqueued_at, attempts, token, priority, None, None, data[pos:end]
        pos = end
    if pos != len(data):
        raise CorruptRecord("snapshot batch has the wrong length")


def encode_snap_end(messages: int, queues: int) -> bytes:
    return _SNAP_END.pack(messages, queues)


def decode_snap_end(buf: Buf) -> tuple[int, int]:
    messages, queues = _SNAP_END.unpack_from(buf, 0)
    return messages, queues


def encode_carry(queue: str, messages: Sequence[SnapMsg]) -> bytes:
    """A CARRY record (version 2): messages of ``queue`` in their full current state, as a
    ``SNAP_MSG`` batch, written at the head so that the segment holding their puts can go."""
    return pack_name(queue) + encode_snap_msgs(messages)


def decode_carry(buf: Buf) -> tuple[str, Iterator[SnapTuple]]:
    queue, pos = unpack_str(buf, 0)
    return queue, decode_snap_msgs(buf[pos:])
