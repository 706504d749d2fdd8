"""FileStorage's space bound, explored: whatever mix of puts, leases, acks, nacks, releases and
messages left in flight hypothesis makes up, the directory never holds more than twice the
peak live size plus one segment. Measured after every call and at the directory's largest
moments inside a call: every rename (a compaction's snapshot moving into place while the old
segments are still there) and every unlink (a carried segment going after its records were
written). Small segments make every space check, carry and roll happen within a few calls;
64 KiB is the smallest segment that durability "full" pads with preallocated zeros."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from mqlite.storage import Envelope, QueueSpec
from mqlite.storage.file import FileStorage

T0 = 1_000_000.0

# One call: ("put", messages, body size) | ("take", how many, share acked, share nacked); the
# rest of what is taken stays in flight until its lease (60 s) ends or the clock jumps.
_put = st.tuples(st.just("put"), st.integers(1, 8), st.integers(0, 300))
_shares = st.sampled_from([1.0, 0.9, 0.5, 0.0])
_take = st.tuples(st.just("take"), st.integers(1, 8), _shares, st.sampled_from([0.0, 0.3]))
_wait = st.tuples(st.just("wait"), st.sampled_from([1.0, 61.0]))
_calls = st.lists(st.one_of(_put, _put, _take, _take, _wait), min_size=50, max_size=400)


def _directory_bytes(directory: str) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())


@pytest.mark.parametrize(("durability", "segment"), [("normal", 8 << 10), ("full", 8 << 10), ("full", 64 << 10)])
@settings(max_examples=40, deadline=None)
@given(calls=_calls)
def test_the_directory_stays_within_twice_peak_live_plus_one_segment(durability, segment, calls):
    parent = tempfile.mkdtemp(prefix="mqlite-space-")
    with pytest.MonkeyPatch.context() as monkeypatch:
        try:
            worst = _run(os.path.join(parent, "log"), durability, segment, calls, monkeypatch)
        finally:
            shutil.rmtree(parent, ignore_errors=True)
    assert worst <= 0, f"the directory exceeded 2 x peak live + one segment by {worst} bytes"


def _run(
    directory: str, durability: str, segment: int, calls: list[tuple[object, ...]], monkeypatch: pytest.MonkeyPatch
) -> int:
    """Make ``calls`` on a new storage in ``directory``; return by how much the directory
    exceeded the bound at its worst (negative: never)."""
    if durability == "full":
        monkeypatch.setattr(os, "fdatasync", lambda fd: None)  # space does not depend on syncs
    storage = FileStorage(directory, durability=durability, segment_size=segment)
    storage.open_queue(QueueSpec("q", max_attempts=3))
    moments: list[int] = []
    rename, unlink = os.rename, os.unlink

    def measuring_rename(src: str, dst: str) -> None:
        moments.append(_directory_bytes(directory))
        rename(src, dst)

    def measuring_unlink(path: str) -> None:
        moments.append(_directory_bytes(directory))
        unlink(path)

    monkeypatch.setattr(os, "rename", measuring_rename)
    monkeypatch.setattr(os, "unlink", measuring_unlink)
    now = T0
    peak_live = 0
    worst = -(1 << 60)
    try:
        for call in calls:
            now += 0.01
            if call[0] == "put":
                _, count, size = call
                storage.put("q", [Envelope(b"b" * size) for _ in range(count)], now)
            elif call[0] == "take":
                _, count, acked, nacked = call
                taken = storage.lease("q", count, now, 60.0)
                cut_ack, cut_nack = int(len(taken) * acked), int(len(taken) * (acked + nacked))
                storage.ack("q", [(m.id, m.token) for m in taken[:cut_ack]], now)
                storage.nack("q", [(m.id, m.token) for m in taken[cut_ack:cut_nack]], now, 0.0, "failed")
            else:
                now += call[1]
                storage.counts("q", now)  # applies the time (leases end) and logs it
            peak_live = max(peak_live, storage.live_bytes())
            bound = 2 * peak_live + segment
            while moments:
                worst = max(worst, moments.pop() - bound)
            worst = max(worst, _directory_bytes(directory) - bound)
    finally:
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "unlink", unlink)
        storage.close()
    return worst
