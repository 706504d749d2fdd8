"""``open_storage``: turn a storage URL into a storage."""

from __future__ import annotations

from collections.abc import Callable

from .storage.base import Storage
from .storage.file import from_url as _file_url
from .storage.memory import MemoryStorage
from .storage.sqlite import from_url as _sqlite_url

__all__ = ["open_storage", "register_scheme"]

_factories: dict[str, Callable[[str], Storage]] = {}


def register_scheme(scheme: str, factory: Callable[[str], Storage]) -> None:
    """Make ``open_storage`` hand URLs of ``scheme`` (the part before ``://``, in any case) to
    ``factory``, which receives the rest of the URL."""
    _factories[scheme.lower()] = factory


def _memory(rest: str) -> Storage:
    if rest:
        raise ValueError(f"memory:// takes nothing after the scheme, got 'memory://{rest}'")
    return MemoryStorage()


register_scheme("memory", _memory)
register_scheme("file", _file_url)
register_scheme("sqlite", _sqlite_url)


def open_storage(url: str) -> Storage:
    """Open the storage a URL names: ``memory://`` (a new private in-memory storage),
    ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (:class:`SQLiteStorage`), and
    ``file:///absolute/dir`` or ``file://relative/dir`` (:class:`FileStorage`); options go in
    a query string (``?durability=normal``; for ``file://`` also ``segment_size=`` and
    ``salvage=``). An unknown scheme, option or a malformed URL raises ``ValueError`` naming it.
    """
    if not isinstance(url, str):
        raise TypeError(f"storage URL must be a str, not {type(url).__name__}")
    scheme, separator, rest = url.partition("://")
    if not separator or not scheme:
        raise ValueError(f"storage URL {url!r} must look like 'scheme://...', e.g. 'memory://'")
    factory = _factories.get(scheme.lower())
    if factory is None:
        known = ", ".join(f"{name}://" for name in sorted(_factories))
        raise ValueError(f"storage URL {url!r} has an unknown scheme {scheme!r}; known: {known}")
    return factory(rest)
