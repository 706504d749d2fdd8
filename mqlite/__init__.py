"""mqlite: message-queue semantics without a server.

FIFO queues shared by threads and asyncio coroutines, with leases, acks, redelivery, dead
letters, delays, priorities and ordering groups, on pluggable storage::

    import mqlite

    q = mqlite.Queue("emails")
    q.put({"to": "ada@example.com"})
    with q.get() as msg:        # acked on success, nacked (retried) on an exception
        send(msg.body)

Layout: the front (``Queue``, ``Producer``, ``Consumer``, ``Message``) lives in private modules
and is re-exported here; storages live in :mod:`mqlite.storage`; the conformance kit in
:mod:`mqlite.testing`; serializers in :mod:`mqlite.serializers`.
"""

from __future__ import annotations

from . import serializers as serializers
from ._consumer import Consumer as Consumer
from ._errors import (
    CorruptStorage as CorruptStorage,
    Empty as Empty,
    Error as Error,
    Full as Full,
    LeaseLost as LeaseLost,
    QueueClosed as QueueClosed,
    SerializationError as SerializationError,
    StorageError as StorageError,
    StorageLocked as StorageLocked,
)
from ._message import Message as Message
from ._producer import Producer as Producer
from ._queue import Queue as Queue
from ._urls import open_storage as open_storage
from .serializers import Serializer as Serializer
from .storage import (
    FileStorage as FileStorage,
    MemoryStorage as MemoryStorage,
    QueueStats as QueueStats,
    SQLiteStorage as SQLiteStorage,
    Storage as Storage,
)

__version__ = "0.1.0"

__all__ = [
    "Consumer",
    "CorruptStorage",
    "Empty",
    "Error",
    "FileStorage",
    "Full",
    "LeaseLost",
    "MemoryStorage",
    "Message",
    "Producer",
    "Queue",
    "QueueClosed",
    "QueueStats",
    "SQLiteStorage",
    "SerializationError",
    "Serializer",
    "Storage",
    "StorageError",
    "StorageLocked",
    "open_storage",
    "serializers",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("mqlite."):
        _obj.__module__ = "mqlite"
del _name, _obj
