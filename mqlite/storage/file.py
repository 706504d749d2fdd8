"""``FileStorage``: one process's queues in an append-only, checksummed log in a directory.

The state lives in the same in-memory :class:`~mqlite.storage._index.Index` as the memory
storage; every call that changes it appends a record describing the call (with its results, so
replay can check itself) to the log. Opening replays the log on a fresh index. Old segments go
once their messages are settled or carried forward, and compaction writes a snapshot of the
index as a new segment. See ``docs/file-format.md`` for the format and ``docs/storages.md`` for
the promises.

This module holds the storage's public surface and its writing side (appending records,
preallocating, rolling segments). The record format is in :mod:`~mqlite.storage._log`;
rebuilding the index from the log at open is in :mod:`~mqlite.storage._replay`; what a snapshot
holds (and the estimate of its size) is in :mod:`~mqlite.storage._snapshot`; giving space back
(deleting, carrying, compacting, and when) is in :mod:`~mqlite.storage._space`; sharing one
``fdatasync`` among concurrent callers (group commit) is in
:mod:`~mqlite.storage._group_commit`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Literal, final

from .. import _validate
from .._errors import StorageError, StorageLocked
from . import _log
from ._descriptors import Descriptors
from ._group_commit import GroupCommit
from ._index import Index
from ._replay import Replayer, expire_leases
from ._snapshot import dedup_entries
from ._space import SpaceKeeper
from .base import LIMIT_MAX, Envelope, Handle, Leased, Outcome, QueueSpec, QueueStats, Storage

__all__ = ["FileStorage"]

MiB: Final = 1 << 20
LOCK_NAME: Final = "LOCK"
_PAGE: Final = 4096
_NO_GATHER: Final = contextlib.nullcontext()
_SYNCED_KINDS: Final = frozenset((_log.PUT, _log.ACK, _log.NACK, _log.REJECT, _log.REDRIVE, _log.PURGE, _log.SPEC))

Durability = Literal["full", "normal"]


@final
class FileStorage(Storage, GroupCommit, SpaceKeeper):
    """Queues in an append-only log of checksummed records, in one directory, for one process.

    ``durability="full"`` (default): a put, ack, nack, reject, redrive, purge or queue
    declaration has reached the disk (``fdatasync``) before the call returns, so it survives
    power loss; concurrent callers share one ``fdatasync`` (group commit). Leases, releases and
    extends are written to the OS but not synced by themselves (the next synced record carries
    them). Under ``"full"`` the segment is preallocated: zeros are written and synced ahead of
    the records (up to 1 MiB, and at most a sixteenth of a segment), because syncing a record
    written over blocks the file already has costs the disk less than syncing one that grows
    the file (no metadata to journal; about 1.4x the syncs per second on this project's test
    machine). ``"normal"``: every change is written to the OS before the call returns; it
    survives a killed process, not an OS crash or power loss.

    ``segment_size``: the log rolls over to a new segment file past this size. Every quarter
    segment written, the oldest segments whose messages are all settled are deleted (a FIFO
    backlog draining frees them one after the other, rewriting nothing); when the directory
    nears its bound, or when it is cheap, the few live messages of the oldest segments are
    carried forward (rewritten at the head) so that those segments can go too: the directory
    stays within 2 x its peak live size + one segment, also while carrying. A queue consumed in
    order rewrites little or nothing; messages that stay long are rewritten about once per pass
    through the log. A segment at least as large as the live set keeps the rewriting lowest.
    :meth:`close` and opening (for a process that died before closing) compact a log that
    holds at least as many dead bytes as live ones (and 64 KiB or more), so a drained queue
    gives its space back.
    ``salvage=True`` skips corrupt records (logging each) instead of raising
    :class:`~mqlite.CorruptStorage`.

    One process at a time: the directory is locked with ``fcntl.flock``; a second opener, in this
    or another process, gets :class:`~mqlite.StorageLocked` naming the holder's pid. Messages in
    flight when the process died are ready again at the next open (that delivery counts as a
    failed attempt, as a lease expiry would). Safe to call from many threads.
    """

    blocking_io: ClassVar[bool] = True
    requires_bytes: ClassVar[bool] = True
    preallocate: ClassVar[int] = MiB
    """The most zeros written ahead of the records at a time under ``durability="full"``
    (0: none); each storage uses at most ``segment_size // 16`` of it, in whole 4 KiB pages (so
    none with segments below 64 KiB: a page of zeros there would be most of the room the space
    bound leaves beside a full segment)."""

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
        path = os.fspath(directory)
        if not isinstance(path, str):
            raise TypeError(f"directory must be a str path, not {type(path).__name__}")
        if not path or "\x00" in path:
            raise ValueError(f"directory must be a non-empty path without NUL, got {path!r}")
        if not isinstance(salvage, bool):
            raise TypeError(f"salvage must be a bool, not {type(salvage).__name__}")
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        if isinstance(segment_size, bool) or not isinstance(segment_size, int):
            raise TypeError(f"segment_size must be an int, not {type(segment_size).__name__}")
        if segment_size < 1024:
            raise ValueError(f"segment_size must be >= 1024 bytes, got {segment_size}")
        self.path = os.path.abspath(path)
        self.durability: Durability = durability
        self.segment_size = segment_size
        self.salvage = salvage
        self._full = durability == "full"
        self._lock = threading.Lock()
        self._init_group_commit()
        self._index = Index()
        self._descriptors = Descriptors(self)
        self._fd = -1
        self._segment = 0
        self._seg_bytes = 0  # where the next record goes in the current segment
        self._zeroed = 0  # the current segment file's size: ``_seg_bytes`` + its zero padding
        self._prealloc = 0
        if self._full and self.preallocate > 0:
            self._prealloc = min(self.preallocate, segment_size // 16) // _PAGE * _PAGE
        self._written = 0  # the log position after the last record appended (counting from the open)
        # Durability "full": records wait in _out until a flush writes them to the current
        # segment at _out_pos; _flushed is the log position written to the OS so far.
        self._out: list[bytes] = []
        self._out_pos = 0
        self._flushed = 0
        self._flush_lock = threading.Lock()  # serializes flushes (lock order: _lock, then this)
        self._failed: BaseException | None = None
        self._closed = False
        self._versions: dict[int, int] = {}  # segment -> its format version
        self.replayed_records = 0
        self._init_space()
        self._opener = os.getpid()
        self._forked = False
        self._lock_fd = self._take_lock()
        _open_storages.add(self)  # from the lock on: a child forked while it loads must drop it
        try:
            self._load()
        except BaseException as exc:
            self._release_files()
            _open_storages.discard(self)
            if isinstance(exc, OSError):  # listing, opening, creating, cutting files: name the storage
                raise StorageError(f"cannot open the log in {self.path!r}: {exc}") from exc
            raise

    @property
    def _fd(self) -> int:
        """The descriptor of the segment being appended to (-1: none)."""
        return self._descriptors.segment

    @_fd.setter
    def _fd(self, fd: int) -> None:
        self._descriptors.segment = fd

    @property
    def _lock_fd(self) -> int:
        """The descriptor of the lock file, whose ``flock`` is the directory's lock (-1: none)."""
        return self._descriptors.lock

    @_lock_fd.setter
    def _lock_fd(self, fd: int) -> None:
        self._descriptors.lock = fd

    def __repr__(self) -> str:
        state = " closed" if self._closed else " failed" if self._failed is not None else ""
        return f"<FileStorage {self.path!r} durability={self.durability!r}{state}>"

    # -- opening -----------------------------------------------------------------------------

    def _take_lock(self) -> int:
        """Create the directory if needed and ``flock`` its lock file (writing our pid into it, for
        the error a second opener gets); return the lock file's descriptor."""
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
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: let go of the lock, or no later open of this process works
            os.close(fd)
            raise StorageError(f"cannot write the lock file {lock_path!r}: {exc}") from exc
        return fd

    def _release_files(self) -> None:
        """Close the segment being appended to and the lock file (which drops the lock)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1

    def _file(self, number: int) -> str:
        """The path of segment ``number``."""
        return os.path.join(self.path, _log.segment_name(number))

    def _load(self) -> None:
        """Replay the log (see :class:`~mqlite.storage._replay.Replayer`), then open its newest
        segment for appending (or start segment 1), end the leases of a process that did not
        close, and give space back if the log is mostly dead."""
        replayer = Replayer(self.path, salvage=self.salvage)
        segments, last_kind = replayer.run()
        self._index = replayer.index
        self.replayed_records = replayer.replayed_records
        self._starts = dict(replayer.starts)
        self._versions = dict(replayer.versions)
        self._carried = dict(replayer.carried)
        if segments:
            self._segment = segments[-1]
            self._sizes = {number: os.path.getsize(self._file(number)) for number in segments}
            self._seg_bytes = self._zeroed = self._sizes[self._segment]
            self._fd = os.open(self._file(self._segment), os.O_WRONLY | os.O_CLOEXEC)
            self._out_pos = self._seg_bytes
            if self._versions.get(self._segment, _log.VERSION) < _log.VERSION:
                self._start_segment()  # records of this version never go into an older version's segment
        else:
            self._fd = self._create_segment(1)
            self._segment = 1
            self._sizes = {1: _log.HEADER_SIZE}
            self._versions = {1: _log.VERSION}
            self._seg_bytes = self._zeroed = self._out_pos = _log.HEADER_SIZE
        if last_kind not in (0, _log.CLOSE):
            # The process stopped without close(): leases it handed out end now.
            expire_leases(self._index)
            end = self._append(_log.RECOVER, b"")
            self._commit(end)
        if not self.salvage:
            # a process that died without close() could not give the space back; do it now
            # (salvage=True leaves the files as they are: they may be wanted for inspection)
            try:
                self._drop_settled()
                if self._mostly_dead():
                    self._compact_if_possible("after replay")
            except OSError as exc:
                raise StorageError(f"{self.path}: compaction after replay failed: {exc}") from exc

    # -- writing -----------------------------------------------------------------------------

    def _left_behind(self) -> None:
        """In a child forked from the process that opened the storage: drop this copy of its
        descriptors, without unlocking (the lock and the files stay the parent's, which goes on
        using them; a child closing its copy does not release the parent's ``flock``), and
        refuse every call from now on. The child starts with fresh locks and group-commit state,
        since a thread of the parent may have held them at the fork."""
        self._forked = True
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._init_group_commit()
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1

    def _usable(self) -> None:
        """Raise :class:`~mqlite.StorageError` if the storage is closed, a write failed, or this
        process is a fork of the one that opened it."""
        if self._forked:
            raise StorageError(
                f"{self!r} was opened by process {self._opener}, and this process ({os.getpid()}) is a fork "
                "of it: a FileStorage serves only the process that opened it (open the directory in the "
                "child instead, once the parent has closed it)"
            )
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
        """Append one record (the caller holds ``_lock``); return the log position after it.
        Runs the space check when one is due, and rolls a full segment."""
        end = self._write(kind, payload)
        if self._seg_bytes >= self.segment_size or end >= self._check_at:
            try:
                self._roll()
            except OSError as exc:
                raise self._fail(exc, "cannot start a new segment") from exc
        return end

    def _write(self, kind: int, payload: bytes) -> int:
        """Append one record at the end of the current segment; return the log position after it.

        Durability "normal" writes it to the OS at once. Under "full" it waits in ``_out`` for
        the next :meth:`_flush`: the group commit's leader writes every record waiting in one
        ``pwrite`` before its ``fdatasync``, and calls that do not wait for a sync flush before
        they return. One write per sync instead of one per call matters with many threads: each
        write releases the GIL while the writer holds the storage's lock, and the threads that
        run meanwhile only queue up on that lock, and writes landing during a running ``fdatasync``
        slow it down (W7f, 8 producers back to back: 21-32k puts/s before, 31-36k after)."""
        at = self._seg_bytes
        try:
            data = _log.frame(kind, payload)  # in the try: a payload past 4 GiB fails here
            size = len(data)
            if at + size > self._zeroed and self._prealloc:
                self._pad(size)
            if self._full:
                self._out.append(data)
            else:
                written = os.pwrite(self._fd, data, at)
                if written < size:
                    _log.pwrite_all(self._fd, data[written:], at + written)
        except BaseException as exc:  # an OSError, or an interruption (KeyboardInterrupt) mid-write
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, at)
                self._zeroed = at
            failure = self._fail(exc, f"cannot append to {_log.segment_name(self._segment)}")
            if isinstance(exc, OSError):
                raise failure from exc
            raise  # the index is ahead of the log now: the storage refuses every later call
        self._seg_bytes += size
        self._sizes[self._segment] = self._seg_bytes
        self._written += size
        return self._written

    def _flush(self) -> None:
        """Durability "full": write the records waiting in ``_out`` to the current segment, in
        one ``pwrite``. Called with the storage's lock held, or without it by the group commit's
        leader: appends may then go on meanwhile, and they only add to the end of ``_out``."""
        with self._flush_lock:
            out = self._out
            n = len(out)
            if not n:
                return
            data = out[0] if n == 1 else b"".join(out[:n])
            del out[:n]
            at = self._out_pos
            try:
                _log.pwrite_all(self._fd, data, at)
            except BaseException as exc:  # as in _write: the records taken from _out are lost
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, at)
                failure = self._fail(exc, f"cannot append to {_log.segment_name(self._segment)}")
                if isinstance(exc, OSError):
                    raise failure from exc
                raise
            self._out_pos = at + len(data)
            self._flushed += len(data)

    def _flush_position(self) -> None:
        """With nothing waiting in ``_out``: the next flush starts at the current end of the
        current segment (called once a new segment is the one appended to)."""
        with self._flush_lock:
            self._out_pos = self._seg_bytes
            self._flushed = self._written

    def _pad(self, need: int) -> None:
        """Preallocate: write and sync zeros from the end of the current segment file to at
        least ``need`` bytes past the next record's offset plus one preallocation step, in
        whole pages, but not past the end of the segment (it rolls there). Records then
        overwrite blocks the file already has, and their ``fdatasync`` has only data to write.
        Replay takes trailing zeros for the end of the records. Failing to write the zeros (a
        full disk) only turns preallocation off: the append that needed it goes on and fails by
        itself if the space really is gone. A failed ``fdatasync`` is another matter: records
        written before it (unsynced, by calls that did not wait for a sync) may have been
        dropped with its error, which a later sync of the same file would not report again, so
        it propagates and the append fails the storage."""
        least = self._seg_bytes + need
        end = min(least + self._prealloc, max(least, self.segment_size))
        end = -(-end // _PAGE) * _PAGE
        try:
            _log.pwrite_all(self._fd, bytes(end - self._zeroed), self._zeroed)
        except OSError:
            self._prealloc = 0
            os.ftruncate(self._fd, self._seg_bytes)
            self._zeroed = self._seg_bytes
            return
        os.fdatasync(self._fd)
        self._zeroed = end

    def _unpad(self) -> None:
        """Cut the current segment file's zero padding off (before it stops being the one
        appended to, and at close), so that only the segment written last can have any. Flushes
        first: every record waiting is written below the cut."""
        self._flush()
        if self._zeroed > self._seg_bytes:
            os.ftruncate(self._fd, self._seg_bytes)
            self._zeroed = self._seg_bytes

    def _max_padding(self) -> int:
        """The most zeros the segment appended to holds after its records (durability
        "full", see :meth:`_pad`); the space rules count them in the directory's size."""
        return self._prealloc + _PAGE if self._prealloc else 0

    def _swap_fd(self, fd: int, *, synced: bool) -> None:
        """Make ``fd`` the file appended to, closing the old one once no sync uses it.

        Under durability "full" the old file is synced first, unless ``synced`` says its state
        is durable another way (a compaction's snapshot, synced before it took the old
        segments' place); then every waiter the appended records cover is released."""
        with self._sync_mutex:
            self._wait_idle()
            old = self._fd
            if self._full and not synced and old >= 0:
                try:
                    os.fdatasync(old)
                except OSError:
                    os.close(fd)  # the new file is not taken: do not leak it
                    raise
            if old >= 0:
                os.close(old)
            self._fd = fd
            if self._full:
                self._synced = self._written
                self._release_covered()

    def _create_segment(self, number: int) -> int:
        """Create segment ``number`` with its file header (synced, with its directory entry,
        under durability "full"); return its descriptor, open for writing."""
        fd = os.open(self._file(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _log.write_all(fd, _log.file_header(number))
            if self._full:
                os.fdatasync(fd)
                _log.sync_directory(self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _start_segment(self) -> None:
        """Roll: create the next segment and write its ``SEGMENT_START`` record (the counters,
        every queue's settings and dedup entries as they are now), synced with its header under
        durability "full", so that replay can begin there once older segments are deleted.

        The old segment is synced before the new one exists: a power cut must not find a
        newer segment on disk while the old one's last records are torn, as a torn tail is
        only cut off the newest segment and anywhere else means corruption."""
        number = self._segment + 1
        self._unpad()
        if self._full and self._fd >= 0:
            os.fdatasync(self._fd)
        fd = self._create_segment(number)
        self._swap_fd(fd, synced=self._full)
        self._segment = number
        self._seg_bytes = self._zeroed = _log.HEADER_SIZE
        self._sizes[number] = self._seg_bytes
        self._versions[number] = _log.VERSION
        self._written += _log.HEADER_SIZE
        self._check_at += _log.HEADER_SIZE
        self._flush_position()
        index = self._index
        queues = [(queue.spec, dedup_entries(queue)) for queue in index.queues.values()]
        self._write(_log.SEGMENT_START, _log.encode_segment_start(index.last_id, index.last_token, queues))
        self._starts[number] = index.last_id
        if self._full:
            self._flush()
            os.fdatasync(fd)
            with self._sync_mutex:
                self._synced = max(self._synced, self._written)
                if not self._syncing:
                    self._release_covered()

    # -- the Storage interface ---------------------------------------------------------------

    def _tick(self, queue: str, now: float) -> None:
        """Before a call applies time to ``queue``, log that (replay must apply it at this point,
        before later records; e.g. an expired lease can move a message to another queue)."""
        index = self._index.queues.get(queue)
        if index is not None and (index.delayed or index.in_flight):
            wakeup = index.next_wakeup()
            if wakeup is not None and wakeup <= now:
                # Apply time first: the append can run a space check, whose snapshot or
                # CARRY records must show the state as of this point in the log.
                self._index.touch(queue, now)
                self._append(_log.TICK, _log.encode_tick(queue, now))
                if self._full:
                    self._flush()  # the call may not sync; a tick is rare

    def open_queue(self, spec: QueueSpec) -> None:
        _validate.queue_name(spec.name)
        if spec.dead_letter:
            _validate.queue_name(spec.dead_letter, "dead_letter")
        if spec.max_attempts is not None and spec.max_attempts > LIMIT_MAX:
            spec = spec._replace(max_attempts=LIMIT_MAX)
        record = _log.encode_spec(spec)  # before the index changes: a call that fails changes nothing
        with self._gather, self._lock:
            self._usable()
            known = self._index.queues.get(spec.name)
            if known is not None and known.spec == spec:
                return
            self._index.open_queue(spec)
            end = self._append(_log.SPEC, record)
        self._commit(end)

    def put(self, queue: str, envelopes: Sequence[Envelope], now: float, maxsize: int = 0) -> list[int] | None:
        envelopes = [self._checked(envelope) for envelope in envelopes]
        parts = _log.encode_envelopes(envelopes)
        size = sum(map(len, parts))
        if size > _log.MAX_PAYLOAD - 4096:  # the record's length field, with room for its header
            raise ValueError(
                f"a put of {size:,} bytes is larger than one FileStorage record can hold "
                f"({_log.MAX_PAYLOAD:,} bytes); put fewer or smaller messages at a time"
            )
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

    def count_new(self, queue: str, envelopes: Sequence[Envelope], now: float) -> int:
        with self._lock:
            self._usable()
            return self._index.count_new(queue, envelopes, now)

    @staticmethod
    def _checked(envelope: Envelope) -> Envelope:
        body = envelope.body
        if type(body) is bytes:
            return envelope
        if isinstance(body, (bytes, bytearray, memoryview)):
            return envelope._replace(body=bytes(body))
        raise TypeError(f"FileStorage stores bytes bodies, not {type(body).__name__} (use a serializer)")

    def lease(self, queue: str, n: int, now: float, lease: float) -> list[Leased]:
        n = min(n, LIMIT_MAX)  # the record stores it, and replay leases it again
        with self._lock:
            self._usable()
            self._tick(queue, now)
            first_token = self._index.last_token + 1
            taken = self._index.lease(queue, n, now, lease)
            if taken:
                self._append(_log.LEASE, _log.encode_lease(queue, now, lease, first_token, n, [m.id for m in taken]))
                if self._full:
                    self._flush()
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
        synced = kind in _SYNCED_KINDS
        with self._gather if synced else _NO_GATHER, self._lock:
            self._usable()
            self._tick(queue, now)
            outcomes = call()
            if Outcome.DONE not in outcomes:
                return outcomes
            end = self._append(kind, _log.encode_settle(queue, now, handles, extra))
            if self._full and not synced:
                self._flush()
        if synced:
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
        if max_messages is not None:
            max_messages = min(max_messages, LIMIT_MAX)  # stored in the record
        with self._gather, self._lock:
            self._usable()
            self._tick(queue, now)
            self._tick(self._index.queue(queue).spec.dead_letter_queue, now)
            moved = self._index.redrive_moving(queue, now, max_messages)
            if not moved:
                return 0
            end = self._append(_log.REDRIVE, _log.encode_redrive(queue, now, max_messages, moved))
        self._commit(end)
        return len(moved)

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
            if self._forked:  # the parent's files: nothing to write, nothing of ours to let go
                return
            try:
                if self._failed is None and self._fd >= 0:
                    try:
                        self._drop_settled()
                    except OSError as exc:
                        raise self._fail(exc, "deleting settled segments at close failed") from exc
                    if self._mostly_dead():
                        try:
                            self._compact_if_possible("at close")
                        except OSError as exc:
                            raise self._fail(exc, "compaction at close failed") from exc
                    self._append(_log.CLOSE, b"")
                    self._flush()
                    with contextlib.suppress(OSError):  # padding left behind is dropped at open
                        self._unpad()
                    with self._sync_mutex:
                        self._wait_idle()
                        try:
                            os.fdatasync(self._fd)
                            if os.fstat(self._fd).st_nlink == 0:
                                raise FileNotFoundError(errno.ENOENT, "the log's segment was deleted while open")
                        except OSError as exc:
                            raise self._fail(exc, "fdatasync at close failed") from exc
                        self._synced = self._written
                        self._release_covered()
            finally:
                with self._sync_mutex:
                    self._wait_idle()
                    self._release_files()
                _open_storages.discard(self)  # only now: a child forked before must drop the lock


_open_storages: weakref.WeakSet[FileStorage] = weakref.WeakSet()
"""The storages open in this process, for :func:`_after_fork_in_child`."""


def _after_fork_in_child() -> None:
    """A forked child inherits every open storage's descriptors, and with the lock file's, the
    directory's ``flock``: left open, it would keep the directory locked after the parent closed
    it, and a write through it would land in the parent's log behind the parent's back."""
    for storage in list(_open_storages):
        storage._left_behind()
    _open_storages.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
    flag = options.get("salvage", "0").lower()
    if flag not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(f"file:// URL option salvage must be 1/true/yes or 0/false/no, got {options['salvage']!r}")
    salvage = flag in ("1", "true", "yes")
    return FileStorage(path, durability=durability, segment_size=segment_size, salvage=salvage)  # type: ignore[arg-type]
