"""``Producer``: a handle that puts messages with default options."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, final

from typing_extensions import TypeVar

from . import _validate

if TYPE_CHECKING:
    from ._queue import Queue

__all__ = ["Producer"]

T = TypeVar("T", default=Any)  # a Queue made without a type is a Queue[Any], as DESIGN.md writes it

_OPTIONS = frozenset({"delay", "priority", "group", "dedup_key", "headers", "block", "timeout"})


@final
class Producer(Generic[T]):
    """A putting handle on a queue that carries default options for its puts.

    Made by :meth:`Queue.producer`, e.g. ``urgent = q.producer(priority=10)``. Options given to
    a call override the defaults. The defaults are checked once, when the producer is made.
    """

    __slots__ = ("_defaults", "_queue")

    def __init__(self, queue: Queue[T], defaults: dict[str, Any]) -> None:
        unknown = set(defaults) - _OPTIONS
        if unknown:
            raise TypeError(f"unknown producer option(s): {', '.join(sorted(unknown))}")
        options = {k: v for k, v in defaults.items() if k not in ("block", "timeout")}
        queue._options(**{"delay": 0.0, "priority": 0, "group": None, "dedup_key": None, "headers": None, **options})
        if "timeout" in defaults:
            _validate.timeout(defaults["timeout"])
        if "block" in defaults:
            _validate.flag("block", defaults["block"])
        self._queue = queue
        self._defaults = defaults

    def __repr__(self) -> str:
        return f"<Producer for {self._queue.name!r} {self._defaults!r}>"

    @property
    def queue(self) -> Queue[T]:
        """The queue this producer puts into."""
        return self._queue

    @property
    def defaults(self) -> dict[str, Any]:
        """A copy of the default options."""
        return dict(self._defaults)

    def _merged(self, options: dict[str, Any], allowed: frozenset[str], *, sync: bool = True) -> dict[str, Any]:
        unknown = set(options) - allowed
        if unknown:
            raise TypeError(f"unknown put option(s): {', '.join(sorted(unknown))}")
        merged = {k: v for k, v in self._defaults.items() if k in allowed}
        merged.update(options)
        if not sync:
            merged.pop("block", None)
        return merged

    def put(self, body: T, **options: Any) -> int:
        """:meth:`Queue.put` with this producer's defaults."""
        return self._queue.put(body, **self._merged(options, _OPTIONS))

    def put_nowait(self, body: T, **options: Any) -> int:
        """:meth:`Queue.put_nowait` with this producer's defaults."""
        merged = self._merged(options, _OPTIONS)
        merged.pop("block", None)
        merged.pop("timeout", None)
        return self._queue.put_nowait(body, **merged)

    def put_many(self, bodies: Iterable[T], **options: Any) -> list[int]:
        """:meth:`Queue.put_many` with this producer's defaults."""
        return self._queue.put_many(bodies, **self._merged(options, _OPTIONS))

    async def aput(self, body: T, **options: Any) -> int:
        """:meth:`Queue.aput` with this producer's defaults."""
        return await self._queue.aput(body, **self._merged(options, _OPTIONS, sync=False))

    async def aput_many(self, bodies: Iterable[T], **options: Any) -> list[int]:
        """:meth:`Queue.aput_many` with this producer's defaults."""
        return await self._queue.aput_many(bodies, **self._merged(options, _OPTIONS, sync=False))
