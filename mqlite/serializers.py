"""Serializers turn message bodies into bytes for storages that keep bytes, and back.

A serializer is any object with ``dumps(obj) -> bytes`` and ``loads(data) -> obj`` (the
:class:`Serializer` protocol). Three ship with mqlite:

* :data:`JSON` (the default for persistent storages): safe, readable by any language.
* :data:`RAW`: bodies are ``bytes`` and stay exactly as given.
* :data:`PICKLE`: any picklable object. Never the default: unpickling runs code, so only use it
  when every producer is trusted.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, TypeVar, final, runtime_checkable

__all__ = ["JSON", "PICKLE", "RAW", "JsonSerializer", "PickleSerializer", "RawSerializer", "Serializer"]

T = TypeVar("T")


@runtime_checkable
class Serializer(Protocol[T]):
    """How bodies of type ``T`` become bytes. Raise any exception for a body you cannot encode;
    the queue reports it as :class:`mqlite.SerializationError` and enqueues nothing."""

    def dumps(self, obj: T, /) -> bytes:
        """Encode one body."""
        ...

    def loads(self, data: bytes, /) -> T:
        """Decode what :meth:`dumps` produced."""
        ...


@final
class JsonSerializer:
    """JSON in UTF-8, compact. Rejects NaN and infinities, which JSON cannot represent."""

    def dumps(self, obj: Any, /) -> bytes:
        """Encode ``obj`` as JSON."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    def loads(self, data: bytes, /) -> Any:
        """Decode JSON."""
        return json.loads(data)

    def __repr__(self) -> str:
        return "mqlite.serializers.JSON"


@final
class RawSerializer:
    """Bodies are bytes (or bytearray/memoryview, stored as bytes) and are stored unchanged."""

    def dumps(self, obj: object, /) -> bytes:
        """Return ``obj`` as bytes, or raise TypeError for anything else."""
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        raise TypeError(f"RAW bodies must be bytes, not {type(obj).__name__}")

    def loads(self, data: bytes, /) -> bytes:
        """Return ``data`` unchanged."""
        return bytes(data)

    def __repr__(self) -> str:
        return "mqlite.serializers.RAW"


@final
class PickleSerializer:
    """Pickle, highest protocol. Only for trusted producers: loading a pickle can run code."""

    def dumps(self, obj: Any, /) -> bytes:
        """Pickle ``obj``."""
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes, /) -> Any:
        """Unpickle ``data``."""
        return pickle.loads(data)

    def __repr__(self) -> str:
        return "mqlite.serializers.PICKLE"


JSON: Serializer[Any] = JsonSerializer()
"""JSON in UTF-8: dicts, lists, strings, numbers, booleans and None."""
RAW: Serializer[bytes] = RawSerializer()
"""Bytes in, bytes out."""
PICKLE: Serializer[Any] = PickleSerializer()
"""Any picklable object; trusted producers only."""
