"""Storages and the interface they implement.

:class:`Storage` is the interface (see ``docs/storages.md`` for writing one);
:class:`MemoryStorage` is the in-process storage; :class:`SQLiteStorage` keeps queues in one
SQLite database file that processes on one host share; :class:`FileStorage` keeps them in an
append-only log in a directory, for one process. Every storage is checked by the conformance
suite in :mod:`mqlite.testing`.
"""

from __future__ import annotations

from .base import (
    DEATH_ATTEMPTS as DEATH_ATTEMPTS,
    DEATH_DETAIL as DEATH_DETAIL,
    DEATH_HEADERS as DEATH_HEADERS,
    DEATH_QUEUE as DEATH_QUEUE,
    DEATH_REASON as DEATH_REASON,
    Envelope as Envelope,
    Handle as Handle,
    Leased as Leased,
    Outcome as Outcome,
    QueueSpec as QueueSpec,
    QueueStats as QueueStats,
    Storage as Storage,
)
from .file import FileStorage as FileStorage
from .memory import MemoryStorage as MemoryStorage
from .sqlite import SQLiteStorage as SQLiteStorage

__all__ = [
    "DEATH_ATTEMPTS",
    "DEATH_DETAIL",
    "DEATH_HEADERS",
    "DEATH_QUEUE",
    "DEATH_REASON",
    "Envelope",
    "FileStorage",
    "Handle",
    "Leased",
    "MemoryStorage",
    "Outcome",
    "QueueSpec",
    "QueueStats",
    "SQLiteStorage",
    "Storage",
]
