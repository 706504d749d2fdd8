"""Giving a :class:`~mqlite.storage.file.FileStorage`'s disk space back: deleting settled
segments, carrying the live messages of the oldest segments forward, and compaction.

The log only grows by appending; these are the ways its old segments go, and the rule that
decides when (:meth:`SpaceKeeper._reclaim`), which keeps the directory within twice the peak
live size plus one segment at every moment (``docs/file-format.md``, "Compaction", has the
long form and the figures). :class:`SpaceKeeper` is a mixin of ``FileStorage``, as
:class:`~mqlite.storage._group_commit.GroupCommit` is: its state lives on the storage, which
provides the writing side (appending records, rolling to a new segment, switching files).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Final

from .._errors import StorageError
from . import _log
from ._index import Entry, Index
from ._snapshot import entry_cost, snap_msg, snapshot_records, snapshot_size

__all__ = ["SpaceKeeper"]

_WRITE_CHUNK: Final = 1 << 20  # bytes of snapshot written at a time
_IDLE_COMPACT_MIN: Final = 64 << 10  # dead bytes below which close() and open leave the log as it is


log = logging.getLogger("mqlite")


class SnapshotNotWritten(OSError):
    """Compaction failed before its snapshot replaced anything: the log is as it was."""


class SpaceKeeper:
    """Mixin: delete the log's settled segments, carry the oldest ones' live messages forward
    and compact, so that the directory stays within ``2 x peak live + one segment``.

    The class that mixes it in calls :meth:`_init_space` in its constructor, runs :meth:`_roll`
    (with its lock held) every quarter segment appended and when a segment fills, and provides
    the attributes and writing methods declared below.
    """

    # -- what the storage provides -------------------------------------------------------------

    path: str
    segment_size: int
    _full: bool
    _closed: bool
    _index: Index
    _segment: int  # the segment appended to
    _seg_bytes: int  # where the next record goes in it
    _zeroed: int  # its file's size, zero padding included
    _written: int  # the log position after the last record appended
    _versions: dict[int, int]  # segment -> its format version
    _fd: int
    _lock: threading.Lock  # the storage's lock: held while the log changes

    def _write(self, kind: int, payload: bytes) -> int:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _unpad(self) -> None:
        raise NotImplementedError

    def _start_segment(self) -> None:
        raise NotImplementedError

    def _swap_fd(self, fd: int, *, synced: bool) -> None:
        raise NotImplementedError

    def _flush_position(self) -> None:
        raise NotImplementedError

    def _max_padding(self) -> int:
        raise NotImplementedError

    def _file(self, number: int) -> str:
        raise NotImplementedError

    def _usable(self) -> None:
        raise NotImplementedError

    def _fail(self, exc: BaseException, what: str) -> Exception:
        raise NotImplementedError

    def _init_space(self) -> None:
        """Set up the space-keeping state: no segments known yet, nothing carried."""
        self._sizes: dict[int, int] = {}  # segment -> its size in bytes (records only)
        self._starts: dict[int, int] = {}  # segment -> the last id given before it (see _drop_settled)
        self._carried: dict[int, int] = {}  # message id -> the segment its latest CARRY is in
        self._check_at = self.segment_size // 4  # the log position of the next space check (see _roll)
        self._peak_live = 0  # the largest live_bytes() seen at a space check since the last compaction
        self._level: tuple[int, int, int] | None = None  # _reclaim's last look: (head segment, level, _written)
        self._carry_always = False  # tests: carry whenever it lets the oldest segment go
        self.compactions = 0
        self.segments_dropped = 0
        self.carries = 0  # messages carried forward so that their segment could be deleted
        self.carried_bytes = 0  # bytes of CARRY records written

    # -- the space check ---------------------------------------------------------------------

    def _roll(self) -> None:
        """A space check is due (every quarter segment written) or the current segment is full:
        delete the oldest segments whose messages are all settled (:meth:`_drop_settled`), give
        space back if it is due (:meth:`_reclaim`), then start the next segment if the current
        one is full."""
        if self._closed:
            # Only close() appends now: its clean-shutdown record must stay the log's last. A
            # compaction would delete the segment holding it, and the next open would take the
            # close for a crash and end the leases a clean close keeps.
            return
        step = max(self.segment_size // 4, 1)
        self._check_at = self._written + step
        self._drop_settled()
        live = self.live_bytes()
        self._peak_live = max(self._peak_live, live)
        if self._carry_always:
            while self._deletable():
                self._carry_segments(1)
        elif len(self._deletable()) < len(self._sizes) - 1:
            # A segment of format version 1 is followed by no segment start: carrying cannot
            # delete it, only compaction can, so the rule of version 1 stays until it is gone.
            if self._space_due(live):
                self._compact_locked()
                return
        else:
            self._reclaim(live)
        if self._seg_bytes < self.segment_size:
            return
        self._start_segment()
        if not self._carry_always and len(self._deletable()) == len(self._sizes) - 1:
            self._reclaim(live)  # the segment just closed joins the ones carrying can delete

    def _space_due(self, live: int) -> bool:
        """The compaction rule for a log that still has version 1 segments (which only
        compaction deletes): half a segment dead, and waiting longer could leave no room for
        the snapshot beside the segments (``total + live >= 2 x peak + segment / 2``; the
        argument is :meth:`_reclaim`'s, with ``live`` for the headroom)."""
        total = sum(self._sizes.values())
        half = self.segment_size // 2
        return total - live >= half and total + live >= 2 * self._peak_live + half

    def _reclaim(self, live: int) -> None:
        """Give space back by carrying the live messages of the oldest segments forward and
        deleting those segments: as late as the bound allows, or early when it is cheap.

        Carrying the oldest ``k`` segments writes, one segment after the other, its live
        messages' ``CARRY`` records (``cost_i``, estimated by
        :func:`~mqlite.storage._snapshot.entry_cost`), syncs them and deletes the segment
        (``size_i``), so the directory peaks at ``total + max over j <= k of (cost_j + sum over
        i < j of (cost_i - size_i))``. The *level* is ``total`` (with the most zeros the head
        can hold) plus that maximum over all the segments carrying can delete. A check carries
        the oldest segments up to the last whose term brings the level to the mark,
        ``2 x peak + segment / 2`` (``peak``: the largest live size at a check since the last
        compaction), then, while the log holds at least as many dead bytes as live ones, any
        further oldest segment whose live messages take at most a quarter of it.

        Why the directory stays within ``2 x peak + segment``: after a check the level is
        below the mark; waiting raises it only by the bytes appended (old segments' messages
        can only be settled; deleting a settled oldest segment lowers ``total`` by what it
        adds to the sum; a roll adds the closed segment's term, for a level of at most ``live
        + one segment``, which the check right after the roll handles); carrying oldest
        segments stays below the level and leaves the level of the rest. So by the next check
        (a quarter segment plus one record later) every carry stays below ``2 x peak + 3/4
        segment + one record``, the last quarter being slack for that record and the
        estimates. ``total + live`` bounds the level, so below the mark, with fewer dead bytes
        than live ones (nothing cheap to expect), no message is looked at; after a look that
        carried nothing the level found is kept, plus what is appended, until the next roll.
        ``docs/file-format.md`` ("Compaction") has the long form and the figures: a queue
        consumed in order rewrites little or nothing, where compacting (which needs room for
        ``total + live`` at once) rewrote every live byte every half segment of dead bytes.
        """
        segment = self.segment_size
        records = sum(self._sizes.values())
        total = records + self._max_padding()  # the directory's size at most, with the zeros
        mark = 2 * self._peak_live + segment // 2
        dead = records - live
        if dead < segment // 2 or (total + live < mark and dead < live):
            return
        level = self._level
        if level is not None and level[0] == self._segment and level[1] + self._written - level[2] < mark:
            return  # no roll since the last look: the level only grew by what was appended
        numbers = self._deletable()
        costs = self._costs(numbers)
        count = top = run = 0
        for j, (cost, number) in enumerate(zip(costs, numbers, strict=True), 1):
            term = run + cost
            top = max(top, term)
            if total + term >= mark:
                count = j
            run += cost - self._sizes[number]
        while dead >= live and count < len(numbers) and costs[count] * 4 <= self._sizes[numbers[count]]:
            count += 1  # cheap, and the log is mostly dead: a drained backlog kept by stragglers
        if count:
            self._level = None
            self._carry_segments(count)
        else:
            self._level = (self._segment, total + top, self._written)

    def _deletable(self) -> list[int]:
        """The oldest segments, in order, that carrying their live messages forward would let
        go: each followed by a segment start (``SEGMENT_START`` or a snapshot), never the
        segment appended to."""
        numbers: list[int] = []
        for number in sorted(self._sizes)[:-1]:
            if self._starts.get(number + 1) is None or number + 1 not in self._sizes:
                break
            numbers.append(number)
        return numbers

    def _live_in(self, numbers: list[int]) -> Iterator[tuple[int, str, int, Entry]]:
        """The live messages whose latest full record (a put or a ``CARRY``) is in one of the
        oldest segments ``numbers``: (position in ``numbers``, queue name, id, index entry). A
        segment's puts have the ids above its own start up to the next segment's start."""
        if not numbers:
            return
        position = {number: i for i, number in enumerate(numbers)}
        uppers = [self._starts[number + 1] for number in numbers]
        top, last = uppers[-1], numbers[-1]
        carried = self._carried
        for name, queue in self._index.queues.items():
            for mid, entry in queue.entries.items():
                where = carried.get(mid)
                if where is None:
                    if mid <= top:
                        yield bisect.bisect_left(uppers, mid), name, mid, entry
                elif where <= last:
                    yield position[where], name, mid, entry

    def _costs(self, numbers: list[int]) -> list[int]:
        """What carrying each of the oldest segments ``numbers`` forward writes (estimated)."""
        costs = [0] * len(numbers)
        for i, _name, _mid, entry in self._live_in(numbers):
            costs[i] += entry_cost(entry)
        return costs

    def _carry_segments(self, count: int) -> None:
        """Carry the live messages of the oldest ``count`` segments forward as ``CARRY``
        records at the head and delete those segments, one after the other: each segment's
        records are synced (durability "full") before it goes. A carried message is carried
        again only when the segment holding its ``CARRY`` is among the oldest."""
        numbers = self._deletable()[:count]
        pinned: list[dict[str, list[_log.SnapMsg]]] = [{} for _ in numbers]
        for i, name, mid, entry in self._live_in(numbers):
            pinned[i].setdefault(name, []).append(snap_msg(mid, entry))
        carried = self._carried
        head = self._segment
        for number, queues in zip(numbers, pinned, strict=True):
            for name, messages in queues.items():
                messages.sort()
                for at in range(0, len(messages), _log.SNAP_BATCH):
                    batch = messages[at : at + _log.SNAP_BATCH]
                    before = self._written
                    self._write(_log.CARRY, _log.encode_carry(name, batch))
                    self.carried_bytes += self._written - before
                    for message in batch:
                        carried[message.id] = head
                    self.carries += len(batch)
            if queues and self._full:
                self._flush()
                os.fdatasync(self._fd)  # the carried state is on disk before its old segment goes
            self._delete_segment(number)
            if self._full:
                _log.sync_directory(self.path)
        if numbers:
            for mid in [mid for mid, where in carried.items() if where <= numbers[-1]]:
                del carried[mid]  # settled since (a live one was carried again)

    def _drop_settled(self) -> None:
        """Delete the oldest segments while every message put in them is settled.

        Segment N can go once the segment after it starts with a ``SEGMENT_START`` (or is a
        snapshot) that says the last id given before it, and no message held has an id at or
        below that: replay then begins at N + 1, skipping what later records say of those
        settled messages. A FIFO queue's oldest segments empty first, so a backlog draining
        frees them one by one without rewriting anything; a long-lived message pins its segment
        until a space check carries it forward (:meth:`_reclaim`)."""
        if len(self._sizes) < 2:
            return
        low = self._index.min_live_id()
        dropped = False
        while len(self._sizes) > 1:
            oldest = min(self._sizes)
            start = self._starts.get(oldest + 1)
            if start is None or oldest + 1 not in self._sizes or (low is not None and low <= start):
                break
            self._delete_segment(oldest)
            dropped = True
        if dropped and self._full:
            _log.sync_directory(self.path)

    def _delete_segment(self, number: int) -> None:
        """Delete segment ``number`` (the oldest) and forget it; the caller syncs the directory."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(number))
        del self._sizes[number]
        self._starts.pop(number, None)
        self._versions.pop(number, None)
        self.segments_dropped += 1

    # -- compaction --------------------------------------------------------------------------

    def live_bytes(self) -> int:
        """An estimate of the size of a snapshot of the current state, in bytes: what compaction
        would write (see :func:`~mqlite.storage._snapshot.snapshot_size`)."""
        return snapshot_size(self._index)

    def _mostly_dead(self) -> bool:
        """Whether the log holds at least as many dead bytes as live ones, and
        ``_IDLE_COMPACT_MIN`` or more: then compacting rewrites at most as many bytes as it
        reclaims. The rule for the moments the log does not grow (close, open)."""
        live = self.live_bytes()
        return sum(self._sizes.values()) - live >= max(live, _IDLE_COMPACT_MIN)

    def _compact_if_possible(self, when: str) -> None:
        """Compact, but if the snapshot cannot even be written (a full disk), only warn: the
        log is as it was, and giving space back is never worth refusing to open or close."""
        try:
            self._compact_locked()
        except SnapshotNotWritten as exc:
            log.warning("mqlite: %s: compaction %s skipped, the log is unchanged: %s", self.path, when, exc)

    def compact(self) -> None:
        """Rewrite the live state as a snapshot segment and delete the older segments.

        Crash-safe at every step: the snapshot is written to a temporary file, synced, renamed
        into place and the directory synced before any old segment is deleted; an interrupted
        compaction leaves either the old segments or the new snapshot as the log's start.
        Takes the storage's lock; the storage's own checks, which hold it, call
        :meth:`_compact_locked`.
        """
        with self._lock:
            self._usable()
            try:
                self._compact_locked()
            except SnapshotNotWritten as exc:  # nothing changed: the storage goes on as it was
                raise StorageError(f"{self.path}: compaction failed, the log is unchanged: {exc}") from exc
            except OSError as exc:
                raise self._fail(exc, "compaction failed") from exc

    def _compact_locked(self) -> None:
        """:meth:`compact` with the storage's lock held: write the snapshot as the next segment
        through a temporary file, then append to it and delete the older segments."""
        self._unpad()  # the old segments and the snapshot, on disk together, stay within bounds
        number = self._segment + 1
        final_path = self._file(number)
        temp_path = final_path[: -len(_log.SUFFIX)] + _log.TEMP_SUFFIX
        try:
            fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SnapshotNotWritten(f"cannot create {temp_path!r}: {exc}") from exc
        size = 0
        try:
            chunks: list[bytes] = [_log.file_header(number)]
            buffered = len(chunks[0])
            for chunk in snapshot_records(self._index):
                chunks.append(chunk)
                buffered += len(chunk)
                if buffered >= _WRITE_CHUNK:
                    data = b"".join(chunks)
                    _log.write_all(fd, data)
                    size += len(data)
                    chunks, buffered = [], 0
            data = b"".join(chunks)
            _log.write_all(fd, data)
            size += len(data)
            os.fdatasync(fd)
        except BaseException as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp_path)
            if isinstance(exc, OSError):
                raise SnapshotNotWritten(f"cannot write {temp_path!r}: {exc}") from exc
            raise
        os.close(fd)
        os.rename(temp_path, final_path)
        _log.sync_directory(self.path)
        fd = os.open(final_path, os.O_WRONLY | os.O_CLOEXEC)
        old = sorted(self._sizes)
        self._written += size
        self._swap_fd(fd, synced=True)
        self._segment = number
        self._seg_bytes = self._zeroed = size
        self._flush_position()
        self._sizes = {number: size}
        self._starts = {number: self._index.last_id}
        self._versions = {number: _log.VERSION}
        self._carried = {}
        self._level = None
        self._peak_live = size
        self._check_at = self._written + max(self.segment_size // 4, 1)
        for gone in old:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file(gone))
        _log.sync_directory(self.path)
        self.compactions += 1
