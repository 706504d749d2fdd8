"""Descriptors a storage opened itself, closed even if the storage is dropped without ``close()``.

Python's own files close when they are garbage-collected; raw descriptors from ``os.open`` do
not. A storage dropped unclosed would otherwise keep them for the life of the process: the file
log's directory lock (so every later open of that directory in this process failed with
``StorageLocked`` naming this very process), an SQLite WAL's descriptor pinning a deleted file's
space. Each storage keeps its descriptors in a :class:`Descriptors` that a ``weakref.finalize``
closes once the storage is collected; the holder refers to nothing else, so the finalizer does
not keep the storage alive.
"""

from __future__ import annotations

import contextlib
import os
import weakref

__all__ = ["Descriptors"]


class Descriptors:
    """The descriptors of one storage (-1 for none), closed together by :meth:`close`: a file
    log's ``segment`` and ``lock``, an SQLite storage's ``wal``."""

    __slots__ = ("lock", "segment", "wal")

    def __init__(self, owner: object) -> None:
        self.segment = -1
        self.lock = -1
        self.wal = -1
        weakref.finalize(owner, self.close)

    def close(self) -> None:
        """Close every descriptor still held (a storage collected without ``close()``)."""
        fds = (self.segment, self.lock, self.wal)
        self.segment = self.lock = self.wal = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
