"""``FileStorage``: one process's queues in an append-only, checksummed log in a directory.

The state lives in the same in-memory :class:`~mqlite.storage._index.Index` as the memory
storage; every call that changes it appends a record describing the call (with its results, so
replay can check itself) to the log. Opening replays the log on a fresh index. Compaction writes
a snapshot of the index as a new segment and deletes the older ones. See ``docs/file-format.md``
for the format and ``docs/storages.md`` for the promises.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import heapq
import itertools
import logging
import operator
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Final, Literal, final

from .. import _validate
from .._errors import CorruptStorage, StorageError, StorageLocked
from . import _log
from ._index import DELAYED, IN_FLIGHT, READY, Entry, Index, QueueIndex
from .base import Envelope, Handle, Leased, Outcome, QueueSpec, QueueStats, Storage

__all__ = ["FileStorage"]

log = logging.getLogger("mqlite.storage.file")

MiB: Final = 1 << 20
LOCK_NAME: Final = "LOCK"
_ENTRY_OVERHEAD: Final = 48  # bytes a live message costs in a snapshot beyond its body and strings
_WRITE_CHUNK: Final = 1 << 20
_BODY: Final = operator.attrgetter("body")
_META: Final = operator.attrgetter("meta")
_IDLE_COMPACT_MIN: Final = 64 << 10  # dead bytes below which close() and open leave the log as it is
_EXPIRED: Final = float("-inf")
_NO_HEADERS: Final[dict[str, str]] = {}
_PUT_FAST: Final = struct.Struct("<dQII")  # a PUT record's head and its queue name's length
_U32: Final = struct.Struct("<I")
_NEVER: Final = float("inf")
_NO_PRIORITY: Final = 1 << 40  # no i32 priority: the run has not looked up an eligible heap yet
_RUN_STRUCTS: dict[int, struct.Struct] = {}
_MAX_GATHER: Final = 0.005  # seconds: the longest a sync waits for callers about to append
_NO_GATHER: Final = contextlib.nullcontext()
_SYNCED_KINDS: Final = frozenset((_log.PUT, _log.ACK, _log.NACK, _log.REJECT, _log.REDRIVE, _log.PURGE, _log.SPEC))

Durability = Literal["full", "normal"]


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


class _Gather:
    """``with storage._gather:`` around the part of a synced call that appends its record: counts
    the caller in ``_pending`` until it has appended (or given up), so that a sync about to start
    waits for its record (see ``FileStorage._commit``). Does nothing with durability "normal"."""

    __slots__ = ("storage",)

    def __init__(self, storage: FileStorage) -> None:
        self.storage = storage

    def __enter__(self) -> None:
        storage = self.storage
        if storage._full:
            with storage._sync_mutex:
                storage._pending += 1

    def __exit__(self, *exc_info: object) -> None:
        storage = self.storage
        if storage._full:
            with storage._sync_mutex:
                storage._pending -= 1
                gate = storage._gatherer
                if gate is not None and not storage._pending:
                    storage._gatherer = None
                    gate.release()


_COVERED: Final = 1
_RETRY: Final = 2
_FAILED: Final = 3


class _Waiter:
    """A caller waiting for a sync past ``end``: blocked on its own ``gate`` until a leader sets
    ``outcome`` (covered by a sync, to try again, or the sync failed) and releases it."""

    __slots__ = ("end", "gate", "outcome")

    def __init__(self, end: int) -> None:
        self.end = end
        self.gate = threading.Lock()
        self.gate.acquire()
        self.outcome = 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@final
class FileStorage(Storage):
    """Queues in an append-only log of checksummed records, in one directory, for one process.

    ``durability="full"`` (default): a put, ack, nack, reject, redrive, purge or queue
    declaration has reached the disk (``fdatasync``) before the call returns, so it survives
    power loss; concurrent callers share one ``fdatasync`` (group commit). Leases, releases and
    extends are written to the OS but not synced by themselves (the next synced record carries
    them). ``"normal"``: every change is written to the OS before the call returns; it survives
    a killed process, not an OS crash or power loss.

    ``segment_size``: the log rolls over to a new segment file past this size. Every quarter
    segment written, if the log holds half a segment of dead bytes or more, the live state is
    rewritten as a snapshot segment and the older segments are deleted: the directory stays
    within 2 x its peak live size + one segment, even during a compaction. With a live set
    larger than a segment, compaction rewrites about ``2 x live / segment_size`` bytes per byte
    appended, so choose a segment at least as large as the live set. :meth:`close` and opening
    (for a process that died before closing) compact a log that holds at least as many dead
    bytes as live ones, so a drained queue gives its space back. ``salvage=True`` skips corrupt
    records (logging each) instead of raising :class:`~mqlite.CorruptStorage`.

    One process at a time: the directory is locked with ``fcntl.flock``; a second opener, in this
    or another process, gets :class:`~mqlite.StorageLocked` naming the holder's pid. Messages in
    flight when the process died are ready again at the next open (that delivery counts as a
    failed attempt, as a lease expiry would). Safe to call from many threads.
    """

    blocking_io: ClassVar[bool] = True
    requires_bytes: ClassVar[bool] = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        durability: Durability = "full",
        segment_size: int = 64 * MiB,
        salvage: bool = False,
    ) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or path, not {type(directory).__name__}")
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        if isinstance(segment_size, bool) or not isinstance(segment_size, int):
            raise TypeError(f"segment_size must be an int, not {type(segment_size).__name__}")
        if segment_size < 1024:
            raise ValueError(f"segment_size must be >= 1024 bytes, got {segment_size}")
        self.path = os.path.abspath(os.fspath(directory))
        self.durability: Durability = durability
        self.segment_size = segment_size
        self.salvage = bool(salvage)
        self._full = durability == "full"
        self._lock = threading.Lock()
        self._sync_mutex = threading.Lock()  # guards the group-commit state below
        self._sync_idle = threading.Condition(self._sync_mutex)  # notified when _syncing becomes False
        self._syncing = False  # a leader is gathering or syncing; callers that need a sync wait for it
        self._waiters: list[_Waiter] = []
        self._pending = 0  # callers inside a synced call that have not appended yet (durability "full")
        self._gatherer: threading.Lock | None = None  # released when _pending drops to 0
        self._sync_seconds = 0.001  # how long the last fdatasync took: the most a sync waits for appends
        self._gather = _Gather(self)
        self._index = Index()
        self._fd = -1
        self._segment = 0
        self._seg_bytes = 0
        self._sizes: dict[int, int] = {}
        self._written = 0
        self._check_at = segment_size // 4  # the log position of the next compaction check
        self._synced = 0
        self._failed: BaseException | None = None
        self._closed = False
        self._names: dict[bytes, str] = {}
        self._snap_queue: QueueIndex | None = None
        self._snap_count = 0
        self.replayed_records = 0
        self.compactions = 0
        self._lock_fd = self._take_lock()
        try:
            self._load()
        except BaseException:
            self._release_files()
            raise

    def __repr__(self) -> str:
        state = " closed" if self._closed else " failed" if self._failed is not None else ""
        return f"<FileStorage {self.path!r} durability={self.durability!r}{state}>"

    # -- opening -----------------------------------------------------------------------------

    def _take_lock(self) -> int:
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the storage directory {self.path!r}: {exc}") from exc
        if not os.path.isdir(self.path):
            raise StorageError(f"{self.path!r} is not a directory")
        lock_path = os.path.join(self.path, LOCK_NAME)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the lock file {lock_path!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(f"cannot lock {lock_path!r}: {exc}") from exc
            who = f"process {holder}" + (" (this process)" if holder == str(os.getpid()) else "")
            raise StorageLocked(
                f"FileStorage {self.path!r} is in use by {who}; it serves one process and one opener at a time"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _release_files(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1

    def _file(self, number: int) -> str:
        return os.path.join(self.path, _log.segment_name(number))

    def _load(self) -> None:
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
        if base is not None and base != segments[0]:
            for number in segments[: segments.index(base)]:
                log.info("mqlite: removing %s, replaced by the snapshot in %s", self._file(number), self._file(base))
                os.unlink(self._file(number))
            segments = segments[segments.index(base) :]
            self._fsync_dir()
        if segments and base is None and segments[0] != 1 and not self.salvage:
            raise CorruptStorage(
                f"{self.path}: the log starts at {_log.segment_name(segments[0])}, but neither segment 1 nor a "
                "snapshot segment is there; open with salvage=True to load what is left"
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
                last_kind = self._replay(number, newest=position == len(segments) - 1, last_kind=last_kind)
        if segments:
            self._segment = segments[-1]
            self._sizes = {number: os.path.getsize(self._file(number)) for number in segments}
            self._seg_bytes = self._sizes[self._segment]
            self._fd = os.open(self._file(self._segment), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:
            self._fd = self._create_segment(1)
            self._segment = 1
            self._sizes = {1: _log.HEADER_SIZE}
            self._seg_bytes = _log.HEADER_SIZE
        if last_kind not in (0, _log.CLOSE):
            # The process stopped without close(): leases it handed out end now.
            self._expire_leases()
            end = self._append(_log.RECOVER, b"")
            self._commit(end)
        if not self.salvage and self._mostly_dead():
            # a process that died without close() could not give the space back; do it now
            # (salvage=True leaves the files as they are: they may be wanted for inspection)
            try:
                self._compact_locked()
            except OSError as exc:
                raise StorageError(f"{self.path}: compaction after replay failed: {exc}") from exc

    def _find_base(self, segments: list[int]) -> int | None:
        """The newest segment that starts with a snapshot: the log begins there."""
        for number in reversed(segments):
            with open(self._file(number), "rb") as stream:
                head = stream.read(_log.HEADER_SIZE + _log.FRAME_SIZE)
            if len(head) == _log.HEADER_SIZE + _log.FRAME_SIZE and head[-1] == _log.SNAP_BEGIN:
                return number
        return None

    def _replay(self, number: int, *, newest: bool, last_kind: int) -> int:
        path = self._file(number)
        with open(path, "rb") as stream:
            data = stream.read()
        try:
            found = _log.check_header(data)
            if found != number:
                raise ValueError(f"its header says segment {found}")
        except ValueError as exc:
            if newest and len(data) < _log.HEADER_SIZE:
                log.warning("mqlite: %s: incomplete file header (a crash while creating it); rewriting it", path)
                with open(path, "wb") as stream:
                    stream.write(_log.file_header(number))
                    stream.flush()
                    os.fdatasync(stream.fileno())
                return last_kind
            if self.salvage:
                log.error("mqlite: %s: skipping the whole segment: %s", path, exc)
                return last_kind
            raise CorruptStorage(f"{path}: bad file header at offset 0: {exc}") from None
        start = _log.HEADER_SIZE
        while True:
            stopped, last_kind = self._replay_records(data, start, path, last_kind)
            if stopped is None:
                return last_kind
            tail = data[stopped.offset :]
            if newest and (stopped.runs_past_end or not tail.strip(b"\0")):
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
            resumed = _log.resync(data, stopped.offset)
            log.error(
                "mqlite: %s: skipping corrupt bytes %d..%d (%s)",
                path,
                stopped.offset,
                len(data) if resumed is None else resumed,
                stopped.why,
            )
            if resumed is None:
                if newest:
                    os.truncate(path, stopped.offset)
                return last_kind
            start = resumed

    # -- replay ------------------------------------------------------------------------------

    def _replay_records(self, data: bytes, start: int, path: str, last_kind: int) -> tuple[_log.Bad | None, int]:
        """Apply the records of segment ``data`` from offset ``start``; return where a bad record
        stopped the scan (None at the end of the data) and the type of the last record applied.

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
        index = self._index
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
            while pos < size:
                if run_unpack is not None and pos + run_size <= size:
                    crc, length, kind, now, mid, count, name_size, name, priority, flags, delay, body_size = (
                        run_unpack(data, pos)
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
                    return _log.Bad(pos, "checksum mismatch", end == size), last_kind
                if kind not in types:
                    return _log.Bad(pos, f"unknown record type {kind}", end == size), last_kind
                run_unpack = None
                try:
                    if kind != put_kind or not self._put_batch(data, pos + frame_size, end):
                        apply(kind, view[pos + frame_size : end])
                except _Diverged as exc:
                    if not self.salvage:
                        raise CorruptStorage(
                            f"{path}: {_log.NAMES[kind]} record at offset {pos}: replay diverged: {exc}"
                        ) from None
                    log.error(
                        "mqlite: %s: %s record at offset %d: replay diverged: %s", path, _log.NAMES[kind], pos, exc
                    )
                except (ValueError, KeyError, IndexError, TypeError, struct.error, _log.CorruptRecord) as exc:
                    if not self.salvage:
                        raise CorruptStorage(
                            f"{path}: {_log.NAMES[kind]} record at offset {pos} does not decode: {exc!r}"
                        ) from None
                    log.error("mqlite: %s: skipping %s record at offset %d: %r", path, _log.NAMES[kind], pos, exc)
                    index = self._index
                    last_id = index.last_id
                    pos = end
                    continue
                last_kind = kind
                replayed += 1
                index = self._index
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
        index = self._index
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
        target = self._index.queues.get(queue)
        if target is None or target.dedup:
            return None
        due = _NEVER
        if target.delayed:
            due = target.delayed[0][0]
        if target.in_flight:
            due = min(due, target.in_flight[0][0])
        return target, name, due

    def _apply(self, kind: int, buf: memoryview) -> None:
        """Apply one record to the index, as the call that wrote it did."""
        index = self._index
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
            if put.first_id:
                if put.first_id <= index.last_id:
                    raise _Diverged(f"id {put.first_id} was already given")
                index.last_id = put.first_id - 1
            before = index.last_id
            index.put(put.queue, put.envelopes, put.now, 0)
            if bool(put.first_id) != (index.last_id > before):
                raise _Diverged("the put stored another number of messages")
        elif kind == _log.LEASE:
            lease = _log.decode_lease(data)
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
            now, max_messages, moved, queue = _log.decode_redrive(data)
            if index.redrive(queue, now, max_messages) != moved:
                raise _Diverged(f"redrive moved another number of messages than {moved}")
        elif kind == _log.PURGE:
            now, removed, queue = _log.decode_purge(data)
            if index.purge(queue, now) != removed:
                raise _Diverged(f"purge removed another number of messages than {removed}")
        elif kind == _log.RECOVER:
            self._expire_leases()
        elif kind == _log.SNAP_BEGIN:
            last_id, last_token, _queues = _log.decode_snap_begin(data)
            self._index = Index()
            self._index.last_id, self._index.last_token = last_id, last_token
            self._snap_queue = None
            self._snap_count = 0
        elif kind == _log.SNAP_QUEUE:
            snap = _log.decode_snap_queue(data)
            target = self._index.queue(snap.spec.name)
            target.spec = snap.spec
            target.dead_by_source = dict(snap.dead_by_source)
            for key, mid, first_at in snap.dedup:
                target.dedup[key] = (mid, first_at)
                target.dedup_order.append((first_at, key))
            self._snap_queue = target
        elif kind == _log.SNAP_MSG:
            if self._snap_queue is None:
                raise _log.CorruptRecord("a snapshot message outside a snapshot queue")
            self._snap_count += _restore(self._snap_queue, _log.decode_snap_msgs(data))
        elif kind == _log.SNAP_END:
            messages, _queues = _log.decode_snap_end(data)
            if messages != self._snap_count:
                raise _Diverged(f"the snapshot holds {self._snap_count} messages, not {messages}")
            self._snap_queue = None
        # CLOSE: nothing to apply; it only says the log ended cleanly.

    def _expire_leases(self) -> None:
        """End every running lease now: the next call on each queue fails those attempts."""
        for queue in self._index.queues.values():
            for mid, entry in queue.entries.items():
                if entry.state == IN_FLIGHT:
                    entry.deadline = _EXPIRED
                    heapq.heappush(queue.in_flight, (_EXPIRED, mid, entry.token))

    # -- writing -----------------------------------------------------------------------------

    def _usable(self) -> None:
        if self._closed:
            raise StorageError(f"{self!r} is closed")
        if self._failed is not None:
            raise StorageError(
                f"{self!r} failed writing its log ({self._failed}); close it and open the directory again"
            ) from self._failed

    def _fail(self, exc: BaseException, what: str) -> StorageError:
        """Remember a write failure: the index may be ahead of the log, so refuse further calls."""
        self._failed = exc
        return StorageError(f"{self.path}: {what}: {exc}; the storage must be reopened")

    def _append(self, kind: int, payload: bytes) -> int:
        """Append one record (the caller holds ``_lock``); return the log position after it."""
        data = _log.frame(kind, payload)
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._seg_bytes)
            raise self._fail(exc, f"cannot append to {_log.segment_name(self._segment)}") from exc
        self._seg_bytes += len(data)
        self._sizes[self._segment] = self._seg_bytes
        self._written += len(data)
        end = self._written
        if self._seg_bytes >= self.segment_size or self._written >= self._check_at:
            try:
                self._roll()
            except OSError as exc:
                raise self._fail(exc, "cannot start a new segment") from exc
        return end

    def _commit(self, end: int) -> None:
        """With durability "full", return once the log is on disk up to ``end``.

        Group commit. The first caller to find no sync running becomes the *leader*; callers
        arriving while a sync runs queue a private lock in ``_waiters`` and block on it (no
        shared lock to take again when they wake). Before it syncs, the leader waits until the
        callers already inside a synced call (``_pending``: between entering the call and
        appending its record) have appended, for at most as long as the last sync took, so their
        records share this sync instead of paying for the next one. It then syncs everything
        appended so far with ``_sync_mutex`` released (appends go on meanwhile) and wakes every
        waiter the sync covered (:meth:`_release_covered`). If some were not covered, one of
        them is woken to try again: whichever thread reaches ``_commit`` first leads the next
        sync, often a caller that is already running, so no thread wake-up sits between syncs.
        """
        if not self._full:
            return
        mutex = self._sync_mutex
        while True:
            with mutex:
                if self._synced >= end:
                    return
                if not self._syncing:
                    self._syncing = True
                    break
                waiter = _Waiter(end)
                self._waiters.append(waiter)
            waiter.gate.acquire()  # released once a sync covered us, it failed, or to try again
            if waiter.outcome == _COVERED:
                return
            if waiter.outcome == _FAILED:
                raise StorageError(f"{self!r} could not make the record durable") from self._failed
        self._lead()

    def _lead(self) -> None:
        """Run one sync as the leader (``_syncing`` is set and this thread owns it)."""
        mutex = self._sync_mutex
        mutex.acquire()
        try:
            if self._pending and self._failed is None:
                gate = threading.Lock()
                gate.acquire()
                self._gatherer = gate
                mutex.release()
                try:
                    gate.acquire(timeout=self._sync_seconds)
                finally:
                    mutex.acquire()
                    self._gatherer = None
            fd, upto = self._fd, self._written
            error: StorageError | None = None
            if self._failed is not None or fd < 0:
                error = StorageError(f"{self!r} could not make the record durable")
            else:
                mutex.release()
                try:
                    started = time.monotonic()
                    os.fdatasync(fd)
                    self._sync_seconds = min(time.monotonic() - started, _MAX_GATHER)
                except OSError as exc:
                    self._failed = exc
                    error = StorageError(f"{self.path}: fdatasync failed: {exc}; the storage must be reopened")
                finally:
                    mutex.acquire()
            if error is not None:
                for waiter in self._waiters:
                    waiter.outcome = _FAILED
                    waiter.gate.release()
                self._waiters = []
                self._syncing = False
                self._sync_idle.notify_all()
                raise error from self._failed
            self._synced = max(self._synced, upto)
            self._syncing = False
            self._release_covered()
        finally:
            mutex.release()

    def _release_covered(self) -> None:
        """With ``_sync_mutex`` held and no sync running: wake the waiters that ``_synced``
        covers, and one of the others (if any) to lead the next sync or wait again."""
        waiters = self._waiters
        if waiters:
            synced = self._synced
            rest: list[_Waiter] = []
            for waiter in waiters:
                if waiter.end <= synced:
                    waiter.outcome = _COVERED
                    waiter.gate.release()
                else:
                    rest.append(waiter)
            if rest:
                retry = rest.pop(0)
                retry.outcome = _RETRY
                retry.gate.release()
            self._waiters = rest
        self._sync_idle.notify_all()

    def _wait_idle(self) -> None:
        """With ``_sync_mutex`` held: wait until no leader is gathering or syncing."""
        while self._syncing:
            self._sync_idle.wait()

    def _swap_fd(self, fd: int, *, synced: bool) -> None:
        """Make ``fd`` the file appended to, closing the old one once no sync uses it."""
        with self._sync_mutex:
            self._wait_idle()
            old = self._fd
            if synced or not self._full:
                pass
            elif old >= 0:
                os.fdatasync(old)
            if old >= 0:
                os.close(old)
            self._fd = fd
            if self._full:
                self._synced = self._written
                self._release_covered()

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _create_segment(self, number: int) -> int:
        fd = os.open(self._file(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        _write_all(fd, _log.file_header(number))
        if self._full:
            os.fdatasync(fd)
            self._fsync_dir()
        return fd

    def _roll(self) -> None:
        """A compaction check is due (every quarter segment written) or the current segment is
        full: compact if the dead bytes reached half a segment, else start the next segment if
        the current one is full.

        Why this rule keeps the directory within 2 x peak live + one segment even while a
        compaction has the old segments and the new snapshot on disk together: a check that
        does not compact saw ``total - live < 1/2 segment``; by the next check a quarter segment
        more was appended (plus the record that crossed the mark), so the segments total less
        than ``live + 3/4 segment + one record`` when a compaction starts, and its snapshot adds
        ``live`` again. The last quarter segment is headroom for that record and for
        :meth:`live_bytes` being an estimate. Checking at every roll only (every full segment)
        would allow ``2 x live + 2 segments``. The price is write amplification when live
        exceeds a segment: each compaction rewrites all live bytes to reclaim half a segment or
        more, so about ``2 x live / segment_size`` bytes are rewritten per byte appended.
        """
        if self._closed:
            # Only close() appends now: its clean-shutdown record must stay the log's last. A
            # compaction would delete the segment holding it, and the next open would take the
            # close for a crash and end the leases a clean close keeps.
            return
        step = max(self.segment_size // 4, 1)
        self._check_at = self._written + step
        live = self.live_bytes()
        total = sum(self._sizes.values())
        if total - live >= self.segment_size // 2:
            self._compact_locked()
            return
        if self._seg_bytes < self.segment_size:
            return
        number = self._segment + 1
        fd = self._create_segment(number)
        self._swap_fd(fd, synced=False)
        self._segment = number
        self._seg_bytes = _log.HEADER_SIZE
        self._sizes[number] = self._seg_bytes
        self._written += _log.HEADER_SIZE
        self._check_at += _log.HEADER_SIZE
        if self._full:
            with self._sync_mutex:
                self._synced = max(self._synced, self._written)
                if not self._syncing:
                    self._release_covered()

    # -- compaction --------------------------------------------------------------------------

    def live_bytes(self) -> int:
        """An estimate of the size of a snapshot of the current state, in bytes.

        Runs at every compaction check (each quarter segment appended), so it avoids a Python
        loop over plain messages: bodies are summed with ``map`` and only messages with a
        priority, group or headers (``Entry.meta`` set) are visited one by one.
        """
        total = 0
        for queue in self._index.queues.values():
            total += 64 + 2 * len(queue.spec.name) + sum(24 + len(key) for key in queue.dedup)
            entries = queue.entries.values()
            total += _ENTRY_OVERHEAD * len(entries) + sum(map(len, map(_BODY, entries)))  # bodies are bytes
            for _priority, group, headers in filter(None, map(_META, entries)):
                if group is not None:
                    total += len(group) + 4
                if headers:
                    total += 8 + sum(len(k) + len(v) + 6 for k, v in headers.items())
        return total

    def _mostly_dead(self) -> bool:
        """Whether the log holds at least as many dead bytes as live ones, and
        ``_IDLE_COMPACT_MIN`` or more: then compacting rewrites at most as many bytes as it
        reclaims. The rule for the moments the log does not grow (close, open)."""
        live = self.live_bytes()
        return sum(self._sizes.values()) - live >= max(live, _IDLE_COMPACT_MIN)

    def compact(self) -> None:
        """Rewrite the live state as a snapshot segment and delete the older segments.

        Crash-safe at every step: the snapshot is written to a temporary file, synced, renamed
        into place and the directory synced before any old segment is deleted; an interrupted
        compaction leaves either the old segments or the new snapshot as the log's start.
        Called with the storage's lock held (the log rolls) or by users (then it takes it).
        """
        with self._lock:
            self._usable()
            try:
                self._compact_locked()
            except OSError as exc:
                raise self._fail(exc, "compaction failed") from exc

    def _compact_locked(self) -> None:
        number = self._segment + 1
        final_path = self._file(number)
        temp_path = final_path[: -len(_log.SUFFIX)] + _log.TEMP_SUFFIX
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        size = 0
        try:
            chunks: list[bytes] = [_log.file_header(number)]
            buffered = len(chunks[0])
            for chunk in self._snapshot_records():
                chunks.append(chunk)
                buffered += len(chunk)
                if buffered >= _WRITE_CHUNK:
                    data = b"".join(chunks)
                    _write_all(fd, data)
                    size += len(data)
                    chunks, buffered = [], 0
            data = b"".join(chunks)
            _write_all(fd, data)
            size += len(data)
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp_path)
            raise
        os.close(fd)
        os.rename(temp_path, final_path)
        self._fsync_dir()
        fd = os.open(final_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        old = sorted(self._sizes)
        self._written += size
        self._swap_fd(fd, synced=True)
        self._segment = number
        self._seg_bytes = size
        self._sizes = {number: size}
        self._check_at = self._written + max(self.segment_size // 4, 1)
        for gone in old:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file(gone))
        self._fsync_dir()
        self.compactions += 1

    def _snapshot_records(self) -> Iterator[bytes]:
        index = self._index
        queues = [
            queue
            for queue in index.queues.values()
            if queue.entries or queue.dedup or queue.dead_by_source or queue.spec != QueueSpec(queue.spec.name, None)
        ]
        frame = _log.frame
        yield frame(_log.SNAP_BEGIN, _log.encode_snap_begin(index.last_id, index.last_token, len(queues)))
        total = 0
        for queue in queues:
            dedup = sorted(((key, mid, first_at) for key, (mid, first_at) in queue.dedup.items()), key=lambda d: d[2])
            yield frame(
                _log.SNAP_QUEUE, _log.encode_snap_queue(queue.spec, queue.dead_by_source, dedup, len(queue.entries))
            )
            entries = queue.entries
            batch: list[_log.SnapMsg] = []
            for mid in sorted(entries):
                e = entries[mid]
                body = e.body
                assert isinstance(body, bytes)
                batch.append(
                    _log.SnapMsg(
                        mid,
                        e.state,
                        e.deadline,
                        e.enqueued_at,
                        e.attempts,
                        e.token,
                        e.priority,
                        e.group,
                        e.headers,
                        body,
                    )
                )
                if len(batch) >= _log.SNAP_BATCH:
                    yield frame(_log.SNAP_MSG, _log.encode_snap_msgs(batch))
                    batch = []
            if batch:
                yield frame(_log.SNAP_MSG, _log.encode_snap_msgs(batch))
            total += len(entries)
        yield frame(_log.SNAP_END, _log.encode_snap_end(total, len(queues)))

    # -- the Storage interface ---------------------------------------------------------------

    def _tick(self, queue: str, now: float) -> None:
        """Before a call applies time to ``queue``, log that (replay must apply it at this point,
        before later records; e.g. an expired lease can move a message to another queue)."""
        index = self._index.queues.get(queue)
        if index is not None and (index.delayed or index.in_flight):
            wakeup = index.next_wakeup()
            if wakeup is not None and wakeup <= now:
                self._append(_log.TICK, _log.encode_tick(queue, now))

    def open_queue(self, spec: QueueSpec) -> None:
        _validate.queue_name(spec.name)
        if spec.dead_letter:
            _validate.queue_name(spec.dead_letter, "dead_letter")
        with self._gather, self._lock:
            self._usable()
            known = self._index.queues.get(spec.name)
            if known is not None and known.spec == spec:
                return
            self._index.open_queue(spec)
            end = self._append(_log.SPEC, _log.encode_spec(spec))
        self._commit(end)

    def put(self, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int = 0) -> list[int] | None:
        envelopes = [self._checked(envelope) for envelope in envelopes]
        parts = _log.encode_envelopes(envelopes)
        with self._gather, self._lock:
            self._usable()
            self._tick(queue, now)
            index = self._index
            first = index.last_id + 1
            ids = index.put(queue, envelopes, now, maxsize)
            if ids is None:
                return None
            fresh = index.last_id >= first
            end = self._append(_log.PUT, _log.encode_put(queue, now, first if fresh else 0, len(envelopes), parts))
        self._commit(end)
        return ids

    @staticmethod
    def _checked(envelope: Envelope) -> Envelope:
        body = envelope.body
        if type(body) is bytes:
            return envelope
        if isinstance(body, (bytes, bytearray, memoryview)):
            return envelope._replace(body=bytes(body))
        raise TypeError(f"FileStorage stores bytes bodies, not {type(body).__name__} (use a serializer)")

    def lease(self, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        with self._lock:
            self._usable()
            self._tick(queue, now)
            first_token = self._index.last_token + 1
            taken = self._index.lease(queue, n, now, lease)
            if taken:
                self._append(_log.LEASE, _log.encode_lease(queue, now, lease, first_token, n, [m.id for m in taken]))
        return taken

    def _settle(
        self,
        kind: int,
        queue: str,
        handles: Sequence[Handle],
        now: float,
        call: Callable[[], list[Outcome]],
        extra: bytes,
    ) -> list[Outcome]:
        handles = [(int(mid), int(token)) for mid, token in handles]
        with self._gather if kind in _SYNCED_KINDS else _NO_GATHER, self._lock:
            self._usable()
            self._tick(queue, now)
            outcomes = call()
            if Outcome.DONE not in outcomes:
                return outcomes
            end = self._append(kind, _log.encode_settle(queue, now, handles, extra))
        if kind in _SYNCED_KINDS:
            self._commit(end)
        return outcomes

    def ack(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        return self._settle(_log.ACK, queue, handles, now, lambda: self._index.ack(queue, handles, now), b"")

    def nack(self, queue: str, handles: Sequence[Handle], now: float, delay: float, error: str | None) -> list[Outcome]:
        return self._settle(
            _log.NACK,
            queue,
            handles,
            now,
            lambda: self._index.nack(queue, handles, now, delay, error),
            _log.encode_nack_extra(delay, error),
        )

    def release(self, queue: str, handles: Sequence[Handle], now: float) -> list[Outcome]:
        return self._settle(_log.RELEASE, queue, handles, now, lambda: self._index.release(queue, handles, now), b"")

    def reject(self, queue: str, handles: Sequence[Handle], now: float, reason: str | None) -> list[Outcome]:
        return self._settle(
            _log.REJECT,
            queue,
            handles,
            now,
            lambda: self._index.reject(queue, handles, now, reason),
            _log.pack_opt(reason),
        )

    def extend(self, queue: str, handles: Sequence[Handle], now: float, seconds: float) -> list[Outcome]:
        return self._settle(
            _log.EXTEND,
            queue,
            handles,
            now,
            lambda: self._index.extend(queue, handles, now, seconds),
            _log.encode_nack_extra(seconds, None)[:8],
        )

    def redrive(self, queue: str, now: float, max_messages: int | None) -> int:
        with self._gather, self._lock:
            self._usable()
            self._tick(queue, now)
            self._tick(self._index.queue(queue).spec.dead_letter_queue, now)
            moved = self._index.redrive(queue, now, max_messages)
            if not moved:
                return 0
            end = self._append(_log.REDRIVE, _log.encode_redrive(queue, now, max_messages, moved))
        self._commit(end)
        return moved

    def purge(self, queue: str, now: float) -> int:
        with self._gather, self._lock:
            self._usable()
            self._tick(queue, now)
            removed = self._index.purge(queue, now)
            if not removed:
                return 0
            end = self._append(_log.PURGE, _log.encode_purge(queue, now, removed))
        self._commit(end)
        return removed

    def peek(self, queue: str, n: int, now: float) -> list[Leased]:
        with self._lock:
            self._usable()
            self._tick(queue, now)
            return self._index.peek(queue, n, now)

    def counts(self, queue: str, now: float) -> tuple[int, int, int]:
        with self._lock:
            self._usable()
            self._tick(queue, now)
            return self._index.counts(queue, now)

    def stats(self, queue: str, now: float) -> QueueStats:
        with self._lock:
            self._usable()
            self._tick(queue, now)
            return self._index.stats(queue, now)

    def next_wakeup(self, queue: str, now: float) -> float | None:
        with self._lock:
            self._usable()
            self._tick(queue, now)
            return self._index.next_wakeup(queue, now)

    def close(self) -> None:
        """Give space back if the log is mostly dead, write a clean-shutdown record, sync, and
        unlock the directory. Idempotent.

        Compaction otherwise runs only while the log grows, so a drained queue left idle would
        keep its dead segments: if :meth:`_mostly_dead`, the live state is first rewritten as a
        snapshot (the next open then replays only the snapshot). Opening runs the same check
        after replay, for a process that died before it could close.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._failed is None and self._fd >= 0:
                    if self._mostly_dead():
                        try:
                            self._compact_locked()
                        except OSError as exc:
                            raise self._fail(exc, "compaction at close failed") from exc
                    self._append(_log.CLOSE, b"")
                    with self._sync_mutex:
                        self._wait_idle()
                        os.fdatasync(self._fd)
                        self._synced = self._written
                        self._release_covered()
            finally:
                with self._sync_mutex:
                    self._wait_idle()
                    self._release_files()


def _restore(queue: QueueIndex, messages: Iterable[_log.SnapTuple]) -> int:
    """Put snapshot messages back into ``queue`` in the state they were in (they come in id order).

    A ready message without a group goes straight into ``entries`` and its priority's eligible
    heap (ids arrive in increasing order, so appending keeps the heap a heap). Any other message
    goes through ``adopt``, which does the group bookkeeping, and then leaves ready for its state
    (delayed or in flight) as the index itself would move it.
    """
    entries = queue.entries
    eligible = queue.eligible
    fresh: dict[int, list[int]] = {}
    last_priority: int | None = None
    heap: list[int] = []
    n_ready = 0
    count = 0
    for mid, state, deadline, enqueued_at, attempts, token, priority, group, headers, body in messages:
        count += 1
        if state == READY and group is None:
            entry = Entry(body, priority, None, headers or _NO_HEADERS, enqueued_at, READY, 0.0, attempts, token)
            entries[mid] = entry
            n_ready += 1
            if priority != last_priority:
                found = eligible.get(priority)
                if found is None:
                    found = eligible[priority] = []
                    queue.levels.append(priority)
                    queue.levels.sort(reverse=True)
                heap, last_priority = found, priority
            if heap and heap[-1] > mid:
                fresh[priority] = heap
            heap.append(mid)
            continue
        queue.n_ready += n_ready
        n_ready = 0
        last_priority = None
        headers = headers or _NO_HEADERS
        old = Entry(body, priority, group, headers, enqueued_at, READY, enqueued_at)
        queue.adopt(mid, old, headers, attempts)
        entry = entries[mid]
        if state == DELAYED:
            entry.state = DELAYED
            entry.deadline = deadline
            queue.n_ready -= 1
            queue.n_delayed += 1
            heapq.heappush(queue.delayed, (deadline, mid))
        elif state == IN_FLIGHT:
            entry.state = IN_FLIGHT
            entry.deadline = deadline
            queue.n_ready -= 1
            queue.n_in_flight += 1
            heapq.heappush(queue.in_flight, (deadline, mid, token))
            if group is not None:
                queue.groups[group].busy = mid
        entry.token = token  # a lease that ended keeps its token (late ack, reject) until the next delivery
    queue.n_ready += n_ready
    for unordered in fresh.values():
        heapq.heapify(unordered)  # appended ids met ids that adopt pushed: restore the heap order
    return count


def from_url(rest: str) -> FileStorage:
    """``file://`` URLs: ``file:///abs/dir`` (absolute), ``file://rel/dir`` (relative to the
    working directory), with optional ``?durability=normal&segment_size=N&salvage=1``."""
    path, _, query = rest.partition("?")
    if not path:
        raise ValueError("file:// URL needs a directory, e.g. 'file:///var/lib/app/mq' or 'file://mq'")
    if path.startswith("/"):
        path = "/" + path.lstrip("/")
    options: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, equals, value = item.partition("=")
        if not equals or key not in ("durability", "segment_size", "salvage"):
            raise ValueError(f"file:// URL option {item!r} is not one of durability=, segment_size=, salvage=")
        options[key] = value
    durability = options.get("durability", "full")
    if durability not in ("full", "normal"):
        raise ValueError(f"file:// URL option durability must be 'full' or 'normal', got {durability!r}")
    try:
        segment_size = int(options.get("segment_size", 64 * MiB))
    except ValueError:
        raise ValueError(f"file:// URL option segment_size must be an int, got {options['segment_size']!r}") from None
    salvage = options.get("salvage", "0").lower() in ("1", "true", "yes")
    return FileStorage(path, durability=durability, segment_size=segment_size, salvage=salvage)  # type: ignore[arg-type]
