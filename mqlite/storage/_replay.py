"""Replay: rebuild a :class:`~mqlite.storage.file.FileStorage`'s index from its segment files at open.

Opening a file storage replays its log on a fresh :class:`~mqlite.storage._index.Index`: every
operation record repeats the call that wrote it (and checks it got the recorded result), and a
snapshot's records restore the index it was written from. This module holds that whole job,
apart from the storage's writing side: finding the segments and where the log begins (the
newest snapshot), removing what a compaction left behind, verifying every record's checksum,
cutting a torn tail off the newest segment, skipping corrupt records with ``salvage=True``, and
the fast paths that make a log of a million puts replay in well under a second (runs of plain
puts, batches of plain puts; snapshot messages are restored in bulk by
:mod:`~mqlite.storage._snapshot`). See ``docs/file-format.md``.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Final, final

from .._errors import CorruptStorage
from . import _log
from ._index import IN_FLIGHT, READY, Entry, Index, QueueIndex
from ._snapshot import restore_messages

__all__ = ["Replayer", "expire_leases"]

# The storage's logger: what replay finds (torn tails, skipped records) is reported under the
# name users configure for the file storage.
log = logging.getLogger("mqlite.storage.file")

_EXPIRED: Final = float("-inf")
_NO_HEADERS: Final[dict[str, str]] = {}
_PUT_FAST: Final = struct.Struct("<dQII")  # a PUT record's head and its queue name's length
_U32: Final = struct.Struct("<I")
_NEVER: Final = float("inf")
_NO_PRIORITY: Final = 1 << 40  # no i32 priority: the run has not looked up an eligible heap yet
_RUN_STRUCTS: dict[int, struct.Struct] = {}


class _Diverged(Exception):
    """Replaying a record gave another result than the one it recorded."""


def _run_struct(name_size: int) -> struct.Struct:
    """The layout of a whole one-message PUT record into a queue whose name has ``name_size``
    bytes, up to its body: frame, put head, name, envelope."""
    found = _RUN_STRUCTS.get(name_size)
    if found is None:
        found = _RUN_STRUCTS[name_size] = struct.Struct(f"<IIBdQII{name_size}siBdI")
    return found


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the log is replayed, if it is enabled.

    Replay creates one tracked object (an index ``Entry``) per live message and none of them is
    garbage; every full collection during replay traverses all of them again (for 1M messages,
    8 full collections took 0.65 s of a 1.9 s open). Reference counting still frees everything
    else at once, and the collector runs again as soon as the replay ends. The pause is
    process-wide, like the collector; an application that disabled the collector itself keeps it
    disabled.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@final
class Replayer:
    """Rebuilds the index of the log in ``directory``; :meth:`run` does it once, at open.

    After :meth:`run`, ``index`` holds the state the log describes and ``replayed_records``
    counts the records applied; ``versions`` maps each segment to its format version and
    ``starts`` each segment that begins with a ``SEGMENT_START`` or a snapshot to the last id
    given before it (what the storage needs to delete older segments). The storage takes them
    over and appends to the newest segment.
    The replayer only reads, except where the log itself needs repair: it removes segments a
    snapshot replaced and files a compaction left unfinished, truncates a torn tail off the
    newest segment and rewrites a newest segment's incomplete file header (a crash while the
    storage wrote them). ``salvage=True`` skips corrupt records (logging each) instead of
    raising :class:`~mqlite.CorruptStorage`.
    """

    def __init__(self, directory: str, *, salvage: bool) -> None:
        self.path = directory
        self.salvage = salvage
        self.index = Index()
        self.replayed_records = 0
        self.versions: dict[int, int] = {}
        self.starts: dict[int, int] = {}
        self.carried: dict[int, int] = {}  # message id -> the segment of its latest CARRY
        # Ids up to base_id were given in segments deleted since: records may name them, and
        # replay skips them (0: the log is complete, so every id a record names must be known).
        self.base_id = 0
        self._version = _log.VERSION  # the format version of the segment being replayed
        self._segment = 0  # the segment being replayed
        self._names: dict[bytes, str] = {}  # queue names met in records, decoded once
        self._snap_queue: QueueIndex | None = None  # the queue a snapshot is restoring
        self._snap_count = 0  # messages the current snapshot restored so far
        self._in_snapshot = False  # between a SNAP_BEGIN and its SNAP_END
        self._records_end = 0  # where the records of the segment last replayed ended
        self.skipped = False  # salvage skipped something: the state may lack what it held

    def _file(self, number: int) -> str:
        """The path of segment ``number``."""
        return os.path.join(self.path, _log.segment_name(number))

    def run(self) -> tuple[list[int], int]:
        """Replay the log; return the numbers of its segments (oldest first, the newest is the
        one to append to; empty for a new directory) and the type of the last record applied
        (0: none; anything but ``CLOSE`` means the process that wrote it did not close)."""
        segments: list[int] = []
        for name in os.listdir(self.path):
            stem, dot, suffix = name.partition(".")
            if "." + suffix == _log.TEMP_SUFFIX and len(stem) == 16:
                log.info("mqlite: removing %s, left over from a compaction that did not finish", name)
                os.unlink(os.path.join(self.path, name))
            elif dot and "." + suffix == _log.SUFFIX and len(stem) == 16:
                try:
                    segments.append(int(stem, 16))
                except ValueError:
                    continue
        segments.sort()
        base = self._find_base(segments)
        replaced: list[int] = []  # segments before the snapshot: removed once it replayed cleanly
        if base is not None and base != segments[0]:
            replaced = segments[: segments.index(base)]
            segments = segments[segments.index(base) :]
        if segments and base is None and segments[0] != 1 and not self.salvage:
            first = self._first_kind(segments[0])
            if first == 0:
                raise CorruptStorage(
                    f"{self._file(segments[0])}: the log starts here, but the file header or the record at "
                    f"offset {_log.HEADER_SIZE} (a snapshot or a segment start) is damaged; "
                    "open with salvage=True to load what is left"
                )
            if first != _log.SEGMENT_START:
                raise CorruptStorage(
                    f"{self.path}: the log starts at {_log.segment_name(segments[0])}, but neither segment 1, a "
                    "snapshot nor a segment start is there; open with salvage=True to load what is left"
                )
        for before, after in itertools.pairwise(segments):
            if after != before + 1 and not self.salvage:
                raise CorruptStorage(
                    f"{self.path}: segment {_log.segment_name(before + 1)} is missing between "
                    f"{_log.segment_name(before)} and {_log.segment_name(after)}"
                )
        last_kind = 0
        with _collector_paused():
            for position, number in enumerate(segments):
                last_kind = self._replay_segment(number, newest=position == len(segments) - 1, last_kind=last_kind)
        if self.base_id:
            self.index.recount_dead()
        if base is not None and replaced and not self.salvage:  # with salvage, delete nothing
            for number in replaced:
                log.info("mqlite: removing %s, replaced by the snapshot in %s", self._file(number), self._file(base))
                os.unlink(self._file(number))
            _log.sync_directory(self.path)
        return segments, last_kind

    def _first_kind(self, number: int) -> int:
        """The type of segment ``number``'s first record; 0 if it has none, or if that record
        or the file header does not check out (a damaged byte must not make a segment look
        like a snapshot, which would make the segments before it look replaced)."""
        with open(self._file(number), "rb") as stream:
            head = stream.read(_log.HEADER_SIZE + _log.FRAME_SIZE)
            if len(head) < _log.HEADER_SIZE + _log.FRAME_SIZE:
                return 0
            _, length, _ = _log.FRAME.unpack_from(head, _log.HEADER_SIZE)
            data = head + stream.read(length)
        try:
            if _log.check_header(data)[0] != number:
                return 0
        except ValueError:
            return 0
        first = next(_log.scan(data, _log.HEADER_SIZE), None)
        return 0 if first is None or isinstance(first, _log.Bad) else first[1]

    def _find_base(self, segments: list[int]) -> int | None:
        """The newest segment that starts with a snapshot: the log begins there."""
        for number in reversed(segments):
            if self._first_kind(number) == _log.SNAP_BEGIN:
                return number
        return None

    def _replay_segment(self, number: int, *, newest: bool, last_kind: int) -> int:
        """Apply the records of segment ``number``; return the type of the last record applied
        (``last_kind`` if none was).

        The records end where the file ends or where only zero bytes remain: preallocated
        space (``durability="full"`` writes records over zeros written ahead), removed here. A
        bad record ends the ``newest`` segment (truncated there, with a warning) if it is a torn
        tail: one that reaches the end of the file or its zero padding, what a crash during an
        append leaves, unless good records follow it to the end (a damaged length field also
        makes a record seem to run past the end; what follows shows it is not the tail).
        Anywhere else it raises :class:`~mqlite.CorruptStorage`, or with ``salvage=True`` is
        skipped up to the next record that checks out.
        """
        path = self._file(number)
        self._segment = number
        self._in_snapshot = False  # a snapshot lies within one file
        with open(path, "rb") as stream:
            data = stream.read()
        try:
            found, self._version = _log.check_header(data)
            if found != number:
                raise ValueError(f"its header says segment {found}")
            self.versions[number] = self._version
        except ValueError as exc:
            if newest and len(data) < _log.HEADER_SIZE:
                log.warning("mqlite: %s: incomplete file header (a crash while creating it); rewriting it", path)
                with open(path, "wb") as stream:
                    stream.write(_log.file_header(number))
                    stream.flush()
                    os.fdatasync(stream.fileno())
                return last_kind
            if self.salvage:
                self.skipped = True
                log.error("mqlite: %s: skipping the whole segment: %s", path, exc)
                return last_kind
            raise CorruptStorage(f"{path}: bad file header at offset 0: {exc}") from None
        start = _log.HEADER_SIZE
        limit = _log.padding_start(data)
        while True:
            stopped, last_kind = self._replay_records(data, start, limit, path, last_kind)
            if stopped is None and self._in_snapshot:
                # Compaction syncs a snapshot before giving it its name, so no crash leaves
                # one unfinished: the file was cut short by something else.
                if not self.salvage:
                    raise CorruptStorage(
                        f"{path}: the snapshot ends at offset {self._records_end} before its end record "
                        "(the file was cut short); open with salvage=True to load what is left"
                    )
                self.skipped = True
                self._in_snapshot = False
                log.error("mqlite: %s: the snapshot ends at offset %d before its end record", path, self._records_end)
            if stopped is None:
                if self._records_end < len(data):
                    # zero padding (preallocated space): dropped here, the storage preallocates anew
                    os.truncate(path, self._records_end)
                return last_kind
            tail = data[stopped.offset :]
            torn = newest and stopped.runs_past_end and not _log.good_records_follow(data, stopped.offset, limit)
            if torn and not self._in_snapshot:  # a snapshot is synced before it is named: never torn
                log.warning(
                    "mqlite: %s: cutting off a torn tail of %d bytes at offset %d (%s)",
                    path,
                    len(tail),
                    stopped.offset,
                    stopped.why,
                )
                os.truncate(path, stopped.offset)
                return last_kind
            if not self.salvage:
                raise CorruptStorage(
                    f"{path}: corrupt record at offset {stopped.offset}: {stopped.why}; "
                    "open with salvage=True to skip it and keep the rest"
                )
            resumed = _log.resync(data, stopped.offset, limit)
            self.skipped = True
            log.error(
                "mqlite: %s: skipping corrupt bytes %d..%d (%s)",
                path,
                stopped.offset,
                limit if resumed is None else resumed,
                stopped.why,
            )
            if resumed is None:
                if newest:
                    os.truncate(path, stopped.offset)
                return last_kind
            start = resumed

    def _replay_records(
        self, data: bytes, start: int, limit: int, path: str, last_kind: int
    ) -> tuple[_log.Bad | None, int]:
        """Apply the records of segment ``data`` from offset ``start`` up to its zero padding at
        ``limit``; return where a bad record stopped the scan (None at the end of the records,
        which is then in ``_records_end``) and the type of the last record applied.

        Every record's checksum is verified before it is applied. Most records go through
        :meth:`_apply`. A *run* of plain puts into one queue (one message each, without group,
        dedup key, headers or delay, into a queue with no dedup window entries and nothing due),
        the bulk of a log written by producers, is inserted by the loop itself: one
        ``unpack_from`` reads the frame, the put head, the queue name and the envelope of such a
        record, and the entry goes straight into the queue's eligible heap, as ``Index.put``
        would put it. The run state (queue, due time, eligible heap) is checked once, when the
        run starts after a record that went through :meth:`_apply`; plain puts change none of it.
        """
        view = memoryview(data)
        size = len(data)
        pos = start
        frame_unpack = _log.FRAME.unpack_from
        frame_size = _log.FRAME_SIZE
        crc32 = zlib.crc32
        types = _log.TYPES
        apply = self._apply
        heappush = heapq.heappush
        put_kind = _log.PUT
        replayed = 0
        index = self.index
        last_id = index.last_id
        # The current run of plain puts; run_unpack is None outside a run.
        run_unpack: Callable[[bytes, int], tuple[Any, ...]] | None = None
        run_size = run_fixed = run_name_size = 0
        run_name = b""
        run_due = 0.0
        run_queue: QueueIndex | None = None
        run_entries: dict[int, Entry] = {}
        run_eligible: dict[int, list[int]] = {}
        run_priority = _NO_PRIORITY
        run_heap: list[int] = []
        try:
            while pos < limit:
                if run_unpack is not None and pos + run_size <= size:
                    crc, length, kind, now, mid, count, name_size, name, priority, flags, delay, body_size = run_unpack(
                        data, pos
                    )
                    end = pos + frame_size + length
                    if (
                        kind == put_kind
                        and count == 1
                        and name_size == run_name_size
                        and name == run_name
                        and not flags
                        and delay <= 0.0
                        and body_size == length - run_fixed
                        and mid > last_id
                        and now < run_due
                        and end <= size
                        and crc32(view[pos + 4 : end]) == crc
                    ):
                        if priority != run_priority:
                            heap = run_eligible.get(priority)
                            if heap is not None:
                                run_priority, run_heap = priority, heap
                        if priority == run_priority:
                            run_entries[mid] = Entry(
                                data[end - body_size : end],
                                priority,
                                None,
                                _NO_HEADERS,
                                now,
                                READY,
                                now,
                            )
                            heappush(run_heap, mid)
                            run_queue.n_ready += 1  # type: ignore[union-attr]
                            last_id = index.last_id = mid
                            replayed += 1
                            last_kind = put_kind
                            pos = end
                            continue
                        # a priority without an eligible heap yet: _apply creates it
                # any other record: the general path
                if pos + frame_size > size:
                    return _log.Bad(pos, "incomplete record header", True), last_kind
                crc, length, kind = frame_unpack(data, pos)
                end = pos + frame_size + length
                if end > size:
                    return _log.Bad(pos, f"record of {length} bytes runs past the end of the file", True), last_kind
                if crc32(view[pos + 4 : end]) != crc:
                    return _log.Bad(pos, "checksum mismatch", end >= limit), last_kind
                if kind not in types:
                    return _log.Bad(pos, f"unknown record type {kind}", end >= limit), last_kind
                run_unpack = None
                try:
                    if kind != put_kind or not self._put_batch(data, pos + frame_size, end):
                        apply(kind, view[pos + frame_size : end])
                except _Diverged as exc:
                    if not self.salvage:
                        raise CorruptStorage(
                            f"{path}: {_log.NAMES[kind]} record at offset {pos}: replay diverged: {exc}"
                        ) from None
                    self.skipped = True
                    log.error(
                        "mqlite: %s: %s record at offset %d: replay diverged: %s", path, _log.NAMES[kind], pos, exc
                    )
                except (ValueError, KeyError, IndexError, TypeError, struct.error, _log.CorruptRecord) as exc:
                    if not self.salvage:
                        raise CorruptStorage(
                            f"{path}: {_log.NAMES[kind]} record at offset {pos} does not decode: {exc!r}"
                        ) from None
                    self.skipped = True
                    log.error("mqlite: %s: skipping %s record at offset %d: %r", path, _log.NAMES[kind], pos, exc)
                    index = self.index
                    last_id = index.last_id
                    pos = end
                    continue
                last_kind = kind
                replayed += 1
                index = self.index
                last_id = index.last_id
                if kind == put_kind:
                    run = self._put_run(view[pos + frame_size : end])
                    if run is not None:
                        run_queue, run_name, run_due = run
                        run_name_size = len(run_name)
                        run_struct = _run_struct(run_name_size)
                        run_unpack, run_size = run_struct.unpack_from, run_struct.size
                        run_fixed = run_size - frame_size  # the payload bytes before the body
                        run_entries, run_eligible = run_queue.entries, run_queue.eligible
                        run_priority, run_heap = _NO_PRIORITY, []
                pos = end
            self._records_end = pos
            return None, last_kind
        finally:
            self.replayed_records += replayed

    def _put_batch(self, data: bytes, start: int, end: int) -> bool:
        """Apply the PUT record ``data[start:end]`` if it is a batch of plain messages (several
        envelopes, none with a group, dedup key, headers or delay) into a known queue with no
        dedup entries and nothing due: build the entries straight from the bytes, without
        ``Envelope`` objects, as ``Index.put`` would. Return False, having changed nothing, for
        any other record (``_apply`` takes it)."""
        if end - start < _PUT_FAST.size:
            return False
        now, first_id, count, name_size = _PUT_FAST.unpack_from(data, start)
        index = self.index
        pos = start + _PUT_FAST.size + name_size
        if count < 2 or first_id <= index.last_id or pos > end:
            return False
        name = data[start + _PUT_FAST.size : pos]
        queue = self._names.get(name)
        if queue is None:
            queue = self._names[name] = name.decode("utf-8", "surrogatepass")
        target = index.queues.get(queue)
        if (
            target is None
            or target.dedup
            or (target.delayed and target.delayed[0][0] <= now)
            or (target.in_flight and target.in_flight[0][0] <= now)
        ):
            return False
        unpack = _log.ENVELOPE.unpack_from
        head = _log.ENVELOPE.size
        bodies: list[bytes] = []
        append = bodies.append
        priorities: set[int] = set()
        for _ in range(count):
            if pos + head > end:
                return False
            priority, flags, delay, body_size = unpack(data, pos)
            if flags or not delay <= 0.0:
                return False
            pos += head
            append(data[pos : pos + body_size])
            pos += body_size
            priorities.add(priority)
        if pos != end or len(priorities) != 1:
            return False  # stray bytes (the general decoder reports them), or mixed priorities
        (priority,) = priorities
        entries = target.entries
        mid = first_id
        for body in bodies:
            entries[mid] = Entry(body, priority, None, _NO_HEADERS, now, READY, now)
            mid += 1
        target.n_ready += count
        index.last_id = mid - 1
        heap = target.eligible.get(priority)
        if heap is None:
            heap = target.eligible[priority] = []
            target.levels.append(priority)
            target.levels.sort(reverse=True)
        # Every id in any heap is at most the old last_id, below first_id: appended in order,
        # the new ids keep the heap a heap (this is what pushing them one by one gives).
        heap.extend(range(first_id, mid))
        return True

    def _put_run(self, payload: memoryview) -> tuple[QueueIndex, bytes, float] | None:
        """After a PUT record was applied: its queue, the queue name's bytes and the time from
        which something in the queue is due, if plain puts into that queue can follow as a run
        (the queue has no dedup entries to expire); else None."""
        (name_size,) = _U32.unpack_from(payload, _log.PUT_HEAD.size)
        start = _log.PUT_HEAD.size + 4
        name = payload[start : start + name_size].tobytes()
        queue = self._names.get(name)
        if queue is None:
            queue = self._names[name] = name.decode("utf-8", "surrogatepass")
        target = self.index.queues.get(queue)
        if target is None or target.dedup:
            return None
        due = _NEVER
        if target.delayed:
            due = target.delayed[0][0]
        if target.in_flight:
            due = min(due, target.in_flight[0][0])
        return target, name, due

    def _carry(self, index: Index, queue: str, messages: Iterator[_log.SnapTuple]) -> None:
        """Apply a ``CARRY``: a message put in a deleted segment comes back in the state it
        records; one the log still holds must already be in exactly that state."""
        target = index.queue(queue)
        for item in messages:
            mid = item[0]
            entry = target.entries.get(mid)
            if entry is None:
                if mid > self.base_id:
                    raise _Diverged(f"carried message {mid}, which the log never put")
                restore_messages(target, [item])
            else:
                state, deadline, enqueued_at, attempts, token, priority, group, headers, body = item[1:]
                held = (entry.state, entry.enqueued_at, entry.attempts, entry.token, entry.priority, entry.group)
                if held != (state, enqueued_at, attempts, token, priority, group) or entry.body != body:
                    raise _Diverged(f"carried message {mid} differs from the one replayed")
                if state != READY and entry.deadline != deadline:
                    raise _Diverged(f"carried message {mid} has another deadline than the one replayed")
                if dict(entry.headers) != dict(headers or {}):
                    raise _Diverged(f"carried message {mid} has other headers than the one replayed")
            self.carried[mid] = self._segment

    def _check_known(self, unknown: list[int], what: str) -> None:
        """Ids a record names must be known, except those given in deleted segments."""
        for mid in unknown:
            if mid > self.base_id:
                raise _Diverged(f"{what} message {mid}, which the log never put")

    def _check_count(self, what: str, count: int, recorded: int) -> None:
        """A call run again must do what it recorded; after deleted segments, it can find fewer
        messages (those it found then and that are settled since were put in them)."""
        if count > recorded or (count < recorded and not self.base_id):
            raise _Diverged(f"{what} {count} messages, not {recorded}")

    def _apply(self, kind: int, buf: memoryview) -> None:
        """Apply one record to the index, as the call that wrote it did."""
        index = self.index
        data = buf
        if kind == _log.PUT:
            now, first_id, count, name_size = _PUT_FAST.unpack_from(data, 0)
            if count == 1 and first_id > index.last_id:
                pos = _PUT_FAST.size + name_size
                priority, flags, delay, body_size = _log.ENVELOPE.unpack_from(data, pos)
                pos += _log.ENVELOPE.size
                if not flags and delay <= 0.0 and pos + body_size == len(data):
                    # The common put (one plain message, nothing due in its queue): insert it as
                    # Index.put would (a ready entry in its priority's eligible heap), without
                    # building an Envelope. The conformance machine's reopen rule checks this.
                    name = data[_PUT_FAST.size : _PUT_FAST.size + name_size].tobytes()
                    queue = self._names.get(name)
                    if queue is None:
                        queue = self._names[name] = name.decode("utf-8", "surrogatepass")
                    target = index.queues.get(queue)
                    if (
                        target is not None
                        and not target.dedup
                        and not (target.delayed and target.delayed[0][0] <= now)
                        and not (target.in_flight and target.in_flight[0][0] <= now)
                    ):
                        index.last_id = first_id
                        entry = Entry(data[pos:].tobytes(), priority, None, _NO_HEADERS, now, READY, now)
                        heap = target.eligible.get(priority)
                        if heap is None:
                            target.adopt(first_id, entry, _NO_HEADERS, 0)
                        else:  # what adopt does for a ready message without a group, inlined
                            target.entries[first_id] = entry
                            target.n_ready += 1
                            heapq.heappush(heap, first_id)
                        return
            put = _log.decode_put(data)
            if not put.first_id:  # every envelope was a duplicate: the put stored nothing
                index.touch(put.queue, put.now)
                return
            if put.first_id <= index.last_id:
                raise _Diverged(f"id {put.first_id} was already given")
            if self.skipped:  # salvage skipped records, which may have held dedup entries
                keys = [envelope.dedup_key for envelope in put.envelopes if envelope.dedup_key is not None]
                if keys and len(put.envelopes) > 1:  # which envelopes were new is unknown: no guessing
                    raise _Diverged("a batch with dedup keys, after skipped records: its duplicates are unknown")
                if keys:  # one envelope and an id: it was new, whatever the replayed state says
                    index.queue(put.queue).dedup.pop(keys[0], None)
            index.last_id = put.first_id - 1
            before = index.last_id
            index.put(put.queue, put.envelopes, put.now, 0)
            if bool(put.first_id) != (index.last_id > before):
                raise _Diverged("the put stored another number of messages")
        elif kind == _log.LEASE:
            lease = _log.decode_lease(data)
            if self.base_id:
                # The log begins after deleted segments: lease the ids the record names. Running
                # the lease again could pick others, as messages it found then may be missing
                # (settled since, put in those segments) and may have held a group back.
                try:
                    unknown = index.lease_ids(lease.queue, lease.ids, lease.now, lease.lease, lease.first_token)
                except ValueError as exc:
                    raise _Diverged(str(exc)) from None
                self._check_known(unknown, "leased")
            else:
                if lease.ids:
                    index.last_token = lease.first_token - 1
                taken = index.lease(lease.queue, lease.n, lease.now, lease.lease)
                if tuple(m.id for m in taken) != lease.ids:
                    raise _Diverged(f"leased {[m.id for m in taken]}, recorded {list(lease.ids)}")
        elif kind in (_log.ACK, _log.NACK, _log.RELEASE, _log.REJECT, _log.EXTEND):
            settle = _log.decode_settle(data)
            if kind == _log.ACK:
                index.ack(settle.queue, settle.handles, settle.now)
            elif kind == _log.NACK:
                delay, error = _log.decode_nack_extra(data, settle.rest)
                index.nack(settle.queue, settle.handles, settle.now, delay, error)
            elif kind == _log.RELEASE:
                index.release(settle.queue, settle.handles, settle.now)
            elif kind == _log.REJECT:
                reason, _ = _log.unpack_opt(data, settle.rest)
                index.reject(settle.queue, settle.handles, settle.now, reason)
            else:
                index.extend(settle.queue, settle.handles, settle.now, _log.decode_float(data, settle.rest))
        elif kind == _log.TICK:
            now, queue = _log.decode_tick(data)
            index.touch(queue, now)
        elif kind == _log.SPEC:
            spec, _ = _log.decode_spec(data)
            index.open_queue(spec)
        elif kind == _log.REDRIVE:
            redrive = _log.decode_redrive(data, self._version)
            if redrive.ids is not None:
                try:
                    unknown = index.redrive_ids(redrive.queue, redrive.ids, redrive.now)
                except ValueError as exc:
                    raise _Diverged(str(exc)) from None
                self._check_known(unknown, "redriven")
            else:
                moved = index.redrive(redrive.queue, redrive.now, redrive.max_messages)
                self._check_count("redrive moved", moved, redrive.moved)
        elif kind == _log.PURGE:
            now, removed, queue = _log.decode_purge(data)
            self._check_count("purge removed", index.purge(queue, now), removed)
        elif kind == _log.CARRY:
            queue, items = _log.decode_carry(data)
            self._carry(index, queue, items)
        elif kind == _log.SEGMENT_START:
            start = _log.decode_segment_start(data)
            if not index.queues and not index.last_id and not index.last_token:
                # the log begins here (older segments were deleted): start from what it says
                for snap in start.queues:
                    target = index.queue(snap.spec.name)
                    target.spec = snap.spec
                    for key, mid, first_at in snap.dedup:
                        target.dedup[key] = (mid, first_at)
                        target.dedup_order.append((first_at, key))
                index.last_id, index.last_token = start.last_id, start.last_token
                self.base_id = start.last_id
            elif (index.last_id, index.last_token) != (start.last_id, start.last_token):
                raise _Diverged(
                    f"the segment starts at id {start.last_id} and token {start.last_token}, "
                    f"replay reached {index.last_id} and {index.last_token}"
                )
            self.starts[self._segment] = start.last_id
        elif kind == _log.RECOVER:
            expire_leases(self.index)
        elif kind == _log.SNAP_BEGIN:
            last_id, last_token, _queues = _log.decode_snap_begin(data)
            self.starts[self._segment] = last_id
            self.base_id = 0  # a snapshot holds every message: nothing before it is named again
            self.carried = {}
            self.index = Index()
            self.index.last_id, self.index.last_token = last_id, last_token
            self._snap_queue = None
            self._snap_count = 0
            self._in_snapshot = True
        elif kind == _log.SNAP_QUEUE:
            snap = _log.decode_snap_queue(data)
            target = self.index.queue(snap.spec.name)
            target.spec = snap.spec
            target.dead_by_source = dict(snap.dead_by_source)
            for key, mid, first_at in snap.dedup:
                target.dedup[key] = (mid, first_at)
                target.dedup_order.append((first_at, key))
            self._snap_queue = target
        elif kind == _log.SNAP_MSG:
            if self._snap_queue is None:
                raise _log.CorruptRecord("a snapshot message outside a snapshot queue")
            self._snap_count += restore_messages(self._snap_queue, _log.decode_snap_msgs(data))
        elif kind == _log.SNAP_END:
            messages, _queues = _log.decode_snap_end(data)
            if messages != self._snap_count:
                raise _Diverged(f"the snapshot holds {self._snap_count} messages, not {messages}")
            self._snap_queue = None
            self._in_snapshot = False
        # CLOSE: nothing to apply; it only says the log ended cleanly.


def expire_leases(index: Index) -> None:
    """End every running lease in ``index`` now: the next call on each queue fails those attempts.

    What a ``RECOVER`` record says, and what the storage does at open when the log does not end
    with ``CLOSE``: the process that handed those leases out is gone."""
    for queue in index.queues.values():
        for mid, entry in queue.entries.items():
            if entry.state == IN_FLIGHT:
                entry.deadline = _EXPIRED
                heapq.heappush(queue.in_flight, (_EXPIRED, mid, entry.token))
