"""Space reclaim of FileStorage: churn 1,000,000 messages through one queue with a bounded live
set and check the directory against issue 4, point 5: "within 2x its peak live size plus one
segment".

    python benchmarks/file_churn.py [messages] [live] [segment MiB] [body bytes]

Keeps about ``live`` messages queued, putting batches of 1,000 and leasing + acking batches of
1,000 (storage calls, ``durability="normal"``: the records are the same as with "full", which
also keeps up to a sixteenth of a segment of preallocated zeros after them, which the space
rules count; tests/test_file_storage.py checks the bound under both)
until ``messages`` went through, then drains and closes. After every call it measures:

* the directory: the sum of the sizes of its files (segments, snapshot, lock file);
* the live size: ``FileStorage.live_bytes()``, the storage's own estimate of what a snapshot of
  the live state takes (checked against the real snapshot each time one is written), measured
  whenever the live count reaches a new peak and every 50 calls;
* during a compaction the old segments and the new, complete snapshot are on disk together for
  a moment, and during a carry the ``CARRY`` records are written while the segment they let go
  is still there; a sample between calls cannot see either: the script wraps ``os.rename``
  (which FileStorage calls to move a finished snapshot into place, before it deletes the old
  segments) and ``os.unlink`` (which deletes a segment) to measure the directory at those
  moments, and adds up the bytes rewritten (snapshots and ``CARRY`` records) against the bytes
  of records appended (write amplification).

Temporary files go to ``$MQLITE_BENCH_DIR`` or the system's temp directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from mqlite.storage import Envelope, QueueSpec
from mqlite.storage.file import FileStorage

MiB = 1 << 20
BATCH = 1_000


def directory_size(path: str) -> int:
    """Bytes in the files of ``path`` (FileStorage keeps no subdirectories)."""
    return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())


class MomentProbe:
    """Measures ``path`` whenever ``os.rename`` is called (compaction's last step before it
    deletes the old segments) or a file in it is unlinked (a carry's last step: its records are
    written and synced, the segment not yet deleted): the directory's largest moments."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.peak = 0
        self.renames = 0
        self.unlinks = 0
        self.rewritten = 0  # bytes of the snapshots renamed in: what compaction wrote
        self._rename = os.rename
        self._unlink = os.unlink

    def __enter__(self) -> MomentProbe:
        def unlink(path: str) -> None:
            if os.path.dirname(os.path.abspath(path)) == self.path:
                self.peak = max(self.peak, directory_size(self.path))
                self.unlinks += 1
            self._unlink(path)

        def rename(src: str, dst: str) -> None:
            if os.path.dirname(os.path.abspath(src)) == self.path:
                self.peak = max(self.peak, directory_size(self.path))
                self.renames += 1
                self.rewritten += os.path.getsize(src)
            self._rename(src, dst)

        os.rename = rename  # type: ignore[assignment]
        os.unlink = unlink  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        os.rename = self._rename
        os.unlink = self._unlink


def churn(total: int, live: int, segment_size: int, body_size: int) -> bool:
    """Run one churn and print its figures; return whether the bound held, transient included."""
    parent = tempfile.mkdtemp(prefix="mqlite-churn-", dir=os.environ.get("MQLITE_BENCH_DIR"))
    path = os.path.join(parent, "log")
    storage = FileStorage(path, durability="normal", segment_size=segment_size)
    storage.open_queue(QueueSpec("q", None))
    batch = [Envelope(b"x" * body_size)] * BATCH
    put = acked = calls = 0
    peak_live_count = peak_live_bytes = 0
    peak_dir = 0
    worst_estimate = 1.0  # largest (real snapshot size / live_bytes() just before) seen
    size = directory_size(path)
    print(
        f"churn {total:,} messages of {body_size} bytes, about {live:,} live, "
        f"segment_size {segment_size / MiB:g} MiB, in {parent}"
    )
    began = time.perf_counter()
    probe = MomentProbe(os.path.abspath(path)).__enter__()
    while acked < total:
        compactions = storage.compactions
        if put < total and put - acked < live:
            storage.put("q", batch, time.time())
            put += len(batch)
        else:
            leased = storage.lease("q", BATCH, time.time(), 60.0)
            storage.ack("q", [(m.id, m.token) for m in leased], time.time())
            acked += len(leased)
        calls += 1
        size = directory_size(path)
        count = put - acked
        if count > peak_live_count or calls % 50 == 0:
            estimate = storage.live_bytes()
            peak_live_bytes = max(peak_live_bytes, estimate)
            peak_live_count = max(peak_live_count, count)
        peak_dir = max(peak_dir, size)
        if storage.compactions != compactions:
            # the snapshot is the whole directory now (plus the lock file)
            worst_estimate = max(worst_estimate, size / max(storage.live_bytes(), 1))
        if calls % 200 == 0:
            print(
                f"  put {put:>9,} acked {acked:>9,} live {count:>7,}  directory {size / MiB:7.1f} MiB"
                f"  compactions {storage.compactions}"
            )
    elapsed = time.perf_counter() - began
    probe.__exit__()
    # every byte appended since open, snapshots included (a private counter: a benchmark's view)
    carried = int(getattr(storage, "carried_bytes", 0))
    appended = int(getattr(storage, "_written", 0)) - probe.rewritten - carried
    peak_transient = probe.peak
    drained = directory_size(path)
    storage.close()
    closed = directory_size(path)
    bound = 2 * peak_live_bytes + segment_size
    peak_any = max(peak_dir, peak_transient)
    print(
        f"done in {elapsed:.1f} s, {storage.compactions} compactions, {storage.segments_dropped} segments deleted"
        f" ({probe.renames + probe.unlinks} moments measured)"
    )
    print(
        f"peak live: {peak_live_count:,} messages, {peak_live_bytes / MiB:.2f} MiB by live_bytes() "
        f"({peak_live_count * body_size / MiB:.2f} MiB of bodies); real snapshots were at most "
        f"{worst_estimate:.2f}x the estimate"
    )
    print(
        f"records appended {appended / MiB:,.0f} MiB, snapshots written by compaction "
        f"{probe.rewritten / MiB:,.0f} MiB ({probe.rewritten / max(appended, 1):.2f} bytes rewritten per byte appended)"
    )
    print(
        f"carried forward (CARRY records, so that old segments could go): {carried / MiB:,.0f} MiB; "
        f"rewritten in all {(probe.rewritten + carried) / max(appended, 1):.2f} bytes per byte appended"
    )
    print(f"bound 2 x peak live + one segment = {bound / MiB:.1f} MiB")
    print(f"peak directory between calls: {peak_dir / MiB:.1f} MiB ({peak_dir / bound:.2f}x the bound)")
    print(
        f"peak inside a compaction or a carry (old segments + what replaces them): {peak_transient / MiB:.1f} MiB"
        f" ({peak_transient / bound:.2f}x the bound)"
    )
    print(f"after draining: {drained / MiB:.2f} MiB; after close: {closed / MiB:.2f} MiB")
    verdict = peak_any <= bound
    print(
        "bound held between calls: "
        f"{'yes' if peak_dir <= bound else 'NO'}; including those moments: {'yes' if verdict else 'NO'}"
    )
    shutil.rmtree(parent, ignore_errors=True)
    return verdict


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    live = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    segments = [int(sys.argv[3]) * MiB] if len(sys.argv) > 3 else [64 * MiB, 4 * MiB]
    body_size = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    for segment_size in segments:
        churn(total, live, segment_size, body_size)
        print()


if __name__ == "__main__":
    main()
