"""Snapshots of a file storage's index: writing one, estimating its size, restoring its messages.

Compaction rewrites a :class:`~mqlite.storage.file.FileStorage`'s live state as a snapshot (a
segment that starts with ``SNAP_BEGIN``) and deletes the older segments; replay restores the
index from it. Both directions of the mapping between index entries and snapshot messages live
here, next to the estimate of a snapshot's size that decides when compaction pays off. The byte
encodings are in :mod:`~mqlite.storage._log`; see ``docs/file-format.md``.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Iterable, Iterator
from typing import Final

from . import _log
from ._index import DELAYED, IN_FLIGHT, READY, Entry, Index, QueueIndex
from .base import QueueSpec

__all__ = ["dedup_entries", "entry_cost", "restore_messages", "snap_msg", "snapshot_records", "snapshot_size"]

_ENTRY_OVERHEAD: Final = _log.SNAP_ITEM_SIZE  # bytes a live message costs in a snapshot beyond its body and strings
_BODY: Final = operator.attrgetter("body")
_META: Final = operator.attrgetter("meta")
_NO_HEADERS: Final[dict[str, str]] = {}


def snapshot_size(index: Index) -> int:
    """An estimate of the size of a snapshot of ``index``, in bytes (``FileStorage.live_bytes``).

    Runs at every space check (each quarter segment appended), so it avoids a Python
    loop over plain messages: bodies are summed with ``map`` and only messages with a
    priority, group or headers (``Entry.meta`` set) are visited one by one.
    """
    total = 0
    for queue in index.queues.values():
        total += 64 + 2 * len(queue.spec.name) + sum(24 + len(key) for key in queue.dedup)
        entries = queue.entries.values()
        total += _ENTRY_OVERHEAD * len(entries) + sum(map(len, map(_BODY, entries)))  # bodies are bytes
        for _priority, group, headers in filter(None, map(_META, entries)):
            if group is not None:
                total += len(group) + 4
            if headers:
                total += 8 + sum(len(k) + len(v) + 6 for k, v in headers.items())
    return total


def snapshot_records(index: Index) -> Iterator[bytes]:
    """The framed records of a snapshot of ``index``: ``SNAP_BEGIN``, then per queue that holds
    anything (messages, dedup entries, dead-letter counts or a non-default spec) a ``SNAP_QUEUE``
    and its messages in id order, ``SNAP_MSG`` batches of up to ``SNAP_BATCH``; ``SNAP_END``
    last, with the counts replay checks. Made lazily, so compaction writes it in chunks."""
    queues = [
        queue
        for queue in index.queues.values()
        if queue.entries or queue.dedup or queue.dead_by_source or queue.spec != QueueSpec(queue.spec.name, None)
    ]
    frame = _log.frame
    yield frame(_log.SNAP_BEGIN, _log.encode_snap_begin(index.last_id, index.last_token, len(queues)))
    total = 0
    for queue in queues:
        dedup = dedup_entries(queue)
        yield frame(
            _log.SNAP_QUEUE, _log.encode_snap_queue(queue.spec, queue.dead_by_source, dedup, len(queue.entries))
        )
        entries = queue.entries
        batch: list[_log.SnapMsg] = []
        for mid in sorted(entries):
            batch.append(snap_msg(mid, entries[mid]))
            if len(batch) >= _log.SNAP_BATCH:
                yield frame(_log.SNAP_MSG, _log.encode_snap_msgs(batch))
                batch = []
        if batch:
            yield frame(_log.SNAP_MSG, _log.encode_snap_msgs(batch))
        total += len(entries)
    yield frame(_log.SNAP_END, _log.encode_snap_end(total, len(queues)))


def entry_cost(e: Entry) -> int:
    """What one live message takes in a snapshot or a ``CARRY`` record, estimated as
    :func:`snapshot_size` does for all of them at once."""
    body = e.body
    assert isinstance(body, bytes)
    cost = _ENTRY_OVERHEAD + len(body)
    if e.meta is not None:
        _priority, group, headers = e.meta
        if group is not None:
            cost += len(group) + 4
        if headers:
            cost += 8 + sum(len(k) + len(v) + 6 for k, v in headers.items())
    return cost


def snap_msg(mid: int, e: Entry) -> _log.SnapMsg:
    """Message ``mid`` in its full state, as snapshots and ``CARRY`` records write it."""
    body = e.body
    assert isinstance(body, bytes)
    return _log.SnapMsg(
        mid, e.state, e.deadline, e.enqueued_at, e.attempts, e.token, e.priority, e.group, e.headers, body
    )


def restore_messages(queue: QueueIndex, messages: Iterable[_log.SnapTuple]) -> int:
    """Put snapshot messages back into ``queue`` in the state they were in (they come in id
    order); return how many there were (replay checks the total against ``SNAP_END``).

    A ready message without a group goes straight into ``entries`` and its priority's eligible
    heap, appended: a snapshot's ids arrive in increasing order into empty heaps, which keeps
    them heaps; a carried message can land in a heap holding larger ids, which is then
    heapified. Any other message
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
            if heap and heap[(len(heap) - 1) // 2] > mid:
                fresh[priority] = heap  # the new leaf's parent is larger: heapify at the end
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


def dedup_entries(queue: QueueIndex) -> list[tuple[str, int, float]]:
    """A queue's dedup entries as ``(key, id, first put at)``, oldest first: how snapshots and
    segment starts record them, and the order that restores ``dedup_order``."""
    return sorted(((key, mid, first_at) for key, (mid, first_at) in queue.dedup.items()), key=lambda d: d[2])
