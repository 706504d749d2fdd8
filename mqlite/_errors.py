"""The exceptions mqlite raises.

Every error is an :class:`Error`; each is also the exception that code written for the
standard library already catches::

    Error
    ├── Empty            also queue.Empty and asyncio.QueueEmpty
    ├── Full             also queue.Full and asyncio.QueueFull
    ├── QueueClosed      also queue.ShutDown and asyncio.QueueShutDown (Python 3.13+)
    ├── LeaseLost
    ├── SerializationError   also ValueError
    └── StorageError
        ├── CorruptStorage
        └── StorageLocked

Bad arguments raise the built-in ``ValueError`` or ``TypeError`` with a message naming the
argument.
"""

from __future__ import annotations

import asyncio
import queue

__all__ = [
    "CorruptStorage",
    "Empty",
    "Error",
    "Full",
    "LeaseLost",
    "QueueClosed",
    "SerializationError",
    "StorageError",
    "StorageLocked",
]


class Error(Exception):
    """Base class of every exception raised by mqlite."""


class Empty(Error, queue.Empty, asyncio.QueueEmpty):
    """Raised by a non-blocking get, or a get whose timeout ran out, when no message is eligible."""


class Full(Error, queue.Full, asyncio.QueueFull):
    """Raised by a non-blocking put, or a put whose timeout ran out, while the queue is at maxsize."""


_shutdown_bases: tuple[type[BaseException], ...] = tuple(
    base
    for base in (getattr(queue, "ShutDown", None), getattr(asyncio, "QueueShutDown", None))
    if isinstance(base, type)
)


class QueueClosed(Error, *_shutdown_bases):  # type: ignore[misc]
    """Raised by every call on a queue (or a consumer) that *your code* closed, and by the
    calls that closing woke.

    On Python 3.13+ it is also ``queue.ShutDown`` and ``asyncio.QueueShutDown``.
    """


class LeaseLost(Error):
    """Raised when a settle verb no longer applies to this delivery.

    The lease ended and the message was delivered again, dead-lettered, or settled through
    another delivery; or this delivery was already settled with a different verb; or the
    message came from ``peek()`` and was never leased. Nothing was changed.
    """


class SerializationError(Error, ValueError):
    """Raised when the serializer cannot encode a body (nothing was enqueued), or by ``peek()``
    when it cannot decode a stored one (a get instead moves such a message to the dead-letter
    queue, since it would fail every delivery)."""


class StorageError(Error):
    """Raised when the storage fails or cannot be opened; the message names the storage."""


class CorruptStorage(StorageError):
    """Raised when stored data fails its checksum; the message names the file and offset."""


class StorageLocked(StorageError):
    """Raised when another process holds a single-process storage; the message names its pid."""
