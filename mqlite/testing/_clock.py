"""``FakeClock``: a manual clock for tests, so time moves only when a test says so."""

from __future__ import annotations

import math
import threading
from typing import final

__all__ = ["FakeClock"]


@final
class FakeClock:
    """A callable returning seconds, like ``time.time``, that moves only when told to.

    Pass it as ``clock=`` to a :class:`mqlite.Queue` (or give its readings as ``now`` to a
    storage) to test delays, leases and dedup windows without sleeping. It starts at a fixed,
    large value (``1_000_000.0`` by default) so that times never look like "zero" by accident,
    and it never goes back. It is safe to read and move from several threads.
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = _check("start", start)

    def __call__(self) -> float:
        """The current fake time in seconds."""
        with self._lock:
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self():r})"

    @property
    def now(self) -> float:
        """The current fake time in seconds (same as calling the clock)."""
        return self()

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0, finite) and return the new time."""
        seconds = _check("seconds", seconds)
        with self._lock:
            moved = self._now + seconds
            if math.isinf(moved):
                raise ValueError(f"seconds={seconds!r} would move the clock past every finite time")
            self._now = moved
            return moved

    def set(self, t: float) -> float:
        """Move the clock to ``t`` and return it; ValueError if ``t`` is earlier than now."""
        t = _check("t", t, minimum=-math.inf)
        with self._lock:
            if t < self._now:
                raise ValueError(f"t must not be earlier than the clock ({self._now!r}), got {t!r}: it is monotone")
            self._now = t
            return t


def _check(name: str, value: float, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number of seconds, got an int too large for a float") from None
    if math.isnan(value) or math.isinf(value) or value < minimum:
        bound = "" if minimum == -math.inf else f" >= {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return value
