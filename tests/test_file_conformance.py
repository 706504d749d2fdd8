"""The conformance state machine on FileStorage, with the reopen rule (close, replay, compare).

Small segments make the log roll and compact every few steps, so replay runs over snapshots,
several segments and crash-free reopens; tests/test_file_crash.py covers reopening after a kill.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis.stateful import rule

from mqlite.storage import Storage
from mqlite.storage.file import FileStorage
from mqlite.testing import StorageConformance


def _new(segment_size: int) -> FileStorage:
    return FileStorage(tempfile.mkdtemp(prefix="mqlite-conf-"), durability="normal", segment_size=segment_size)


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


TestFileStorageConformance = FileStorageConformance.TestCase
TestFileStorageConformance.settings = settings(stateful_step_count=50, deadline=None)
TestFileStorageBigSegmentsConformance = FileStorageBigSegmentsConformance.TestCase
TestFileStorageBigSegmentsConformance.settings = settings(stateful_step_count=50, deadline=None, max_examples=60)
