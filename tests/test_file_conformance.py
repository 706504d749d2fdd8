"""The conformance state machine on FileStorage, with the reopen rule (close, replay, compare).

Small segments make the log roll and compact every few steps, so replay runs over snapshots,
several segments and crash-free reopens; tests/test_file_crash.py covers reopening after a kill.
One machine runs ``durability="full"``, whose segments carry preallocated zeros.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis.stateful import invariant, rule

from mqlite.storage import Storage
from mqlite.storage.file import Durability, FileStorage
from mqlite.testing import StorageConformance
from mqlite.testing._machine import NAMES


def _new(segment_size: int, durability: Durability = "normal") -> FileStorage:
    return FileStorage(tempfile.mkdtemp(prefix="mqlite-conf-"), durability=durability, segment_size=segment_size)


def _reopen(old: Storage) -> Storage:
    assert isinstance(old, FileStorage)
    return FileStorage(old.path, durability=old.durability, segment_size=old.segment_size)


class _FileConformance(StorageConformance):
    """Adds a compaction rule; removes the storage's directory after each run."""

    @rule()
    def compact(self) -> None:
        """Rewrite the log as a snapshot now: nothing may change, now or after a reopen."""
        assert isinstance(self.storage, FileStorage)
        self.storage.compact()

    def teardown(self) -> None:
        super().teardown()
        assert isinstance(self.storage, FileStorage)
        shutil.rmtree(self.storage.path, ignore_errors=True)


class FileStorageConformance(_FileConformance):
    storage_factory = staticmethod(lambda: _new(1024))
    reopen_storage = staticmethod(_reopen)


class FileStorageBigSegmentsConformance(_FileConformance):
    storage_factory = staticmethod(lambda: _new(64 << 20))
    reopen_storage = staticmethod(_reopen)


def _never_compacting(storage: FileStorage) -> FileStorage:
    """Space comes back only by deleting segments, carrying their live messages forward at
    every check: replay then begins at a segment start, skipping records of messages put in
    deleted segments and taking carried messages back."""
    storage.live_bytes = lambda: sum(storage._sizes.values())  # type: ignore[method-assign]
    storage._carry_always = True
    return storage


class FileStorageSegmentDropConformance(_FileConformance):
    storage_factory = staticmethod(lambda: _never_compacting(_new(1024)))
    reopen_storage = staticmethod(lambda old: _never_compacting(_reopen(old)))  # type: ignore[arg-type]

    @rule()
    def compact(self) -> None:
        """(No compaction here.)"""

    @rule()
    def drain(self) -> None:
        """Let every lease and delay run out, then lease and ack everything, so that old
        segments empty."""
        self.clock.advance(5000.0)
        for _ in range(3):  # a dead letter made by an ended lease is drained in the next round
            for queue in dict.fromkeys(NAMES):
                for _ in range(50):
                    if not self.process(queue, 3, 30.0, "ack", 0.0, None, "now").values:
                        break


def _padded(storage: Storage) -> FileStorage:
    """Preallocate a page at a time even in the machine's tiny segments (real ones get no
    padding below 64 KiB), so that zeros follow the records at every step."""
    assert isinstance(storage, FileStorage)
    storage._prealloc = 4096
    return storage


class FileStorageFullConformance(_FileConformance):
    """``durability="full"``: segments preallocated with zeros, cut at every roll, compaction
    and close."""

    storage_factory = staticmethod(lambda: _padded(_new(2048, "full")))
    reopen_storage = staticmethod(lambda old: _padded(_reopen(old)))

    @invariant()
    def nothing_left_in_memory(self) -> None:
        """Records wait in memory only for a sync that their caller waits for: once a call has
        returned, every record is in the file (a killed process loses none)."""
        assert isinstance(self.storage, FileStorage)
        assert not self.storage._out, f"{len(self.storage._out)} records still in memory after a call returned"


TestFileStorageConformance = FileStorageConformance.TestCase
TestFileStorageConformance.settings = settings(stateful_step_count=50, deadline=None)
TestFileStorageBigSegmentsConformance = FileStorageBigSegmentsConformance.TestCase
TestFileStorageBigSegmentsConformance.settings = settings(stateful_step_count=50, deadline=None, max_examples=60)
TestFileStorageSegmentDropConformance = FileStorageSegmentDropConformance.TestCase
TestFileStorageSegmentDropConformance.settings = settings(stateful_step_count=50, deadline=None)
TestFileStorageFullConformance = FileStorageFullConformance.TestCase
TestFileStorageFullConformance.settings = settings(stateful_step_count=50, deadline=None, max_examples=60)


def test_counterexample_a_lease_kept_by_a_clean_close_whose_record_was_compacted_away():
    """The machine's counterexample at 5,000 examples, replayed step by step with the invariant
    after each step, as hypothesis ran it: the clean-close record crossed the compaction mark,
    the roll compacted it away, and reopening took the close for a crash, dead-lettering a
    message leased at max_attempts (fixed in 91a8459)."""
    machine = FileStorageConformance()
    plain = (0, None, None, None, 0.0)
    held: list[object] = []
    steps = [
        lambda: machine.open_queues(a=None, b=None, b_dead_letter="", dead=None),
        *[machine.reopen] * 6,
        lambda: machine.put_one(dt=0.0, edge=None, option=plain, queue="a"),
        lambda: machine.put_many(dt=0.0, maxsize=0, options=[plain] * 4, queue="a.dead"),
        lambda: machine.lease(dt=0.0, n=1, queue="a", seconds=0.5),
        lambda: machine.lease(dt=0.0, n=1, queue="a.dead", seconds=2.0),
        lambda: machine.put_one(dt=0.0, edge=None, option=plain, queue="a"),
        lambda: machine.put_one(dt=0.5, edge=None, option=plain, queue="a"),
        lambda: held.extend(machine.lease(dt=0.0, n=3, queue="a", seconds=0.5).values),
        lambda: machine.put_one(dt=0.0, edge=None, option=plain, queue="a"),
        lambda: machine.put_one(dt=0.5, edge=None, option=(0, None, None, {"h": "1"}, 0.0), queue="a"),
        lambda: machine.put_one(dt=0.0, edge=None, option=(0, None, None, None, 0.5), queue="a.dead"),
        lambda: machine.settle(amount=0.0, dt=0.0, held=[held[2], held[2]], text=None, verb="ack"),
        lambda: machine.process(amount=0.0, n=2, queue="a", seconds=0.5, text=None, verb="ack", when="expiry"),
        lambda: machine.advance(queue="a", seconds=0.5),
        lambda: machine.lease(dt=0.0, n=1, queue="a", seconds=0.5),
        lambda: machine.manage(action="open", dt=0.0, max_attempts=1, max_messages=None, queue="a", shared=False),
        lambda: machine.process(amount=0.0, n=1, queue="a.dead", seconds=0.5, text=None, verb="ack", when="now"),
        machine.reopen,
    ]
    try:
        for step in steps:
            step()
            machine.same_observables()
    finally:
        machine.teardown()


def test_counterexample_a_carry_made_inside_a_tick_shows_the_state_after_it():
    """Found at 5,000 examples: a compaction check ran inside the TICK record's append, before
    time was applied to the index, so the CARRY written there recorded a lease that had already
    ended; replay then kept the message in flight after its ack in the dead-letter queue."""
    machine = FileStorageSegmentDropConformance()
    try:
        machine.open_queues(a=1, b=None, b_dead_letter="", dead=1)
        machine.put_one(dt=0.0, edge=None, option=(0, "g1", None, None, 0.0), queue="a")
        plain = (0, None, None, None, 0.0)
        machine.put_many(dt=0.0, maxsize=0, options=[plain, plain, (0, None, None, {"h": "2"}, 0.0)], queue="a")
        machine.lease(dt=0.0, n=1, queue="a", seconds=0.5)
        held = machine.lease(dt=0.0, n=3, queue="a", seconds=0.5)
        machine.put_one(dt=0.0, edge=None, option=plain, queue="a.dead")
        machine.settle(amount=0.0, dt=0.0, held=[held.values[2]], text=None, verb="release")
        machine.drain()
        machine.reopen()
        machine.same_observables()
        machine.put_one(dt=0.0, edge=None, option=plain, queue="a")
        machine.lease(dt=0.0, n=1, queue="a", seconds=0.5)
        machine.drain()
        machine.same_observables()
        machine.reopen()
        machine.same_observables()
    finally:
        machine.teardown()
