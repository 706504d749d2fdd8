"""Argument checks shared by the front: each error names the argument and what was wrong."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .storage.base import DEATH_HEADERS

MAX_NAME_LENGTH = 200
MAX_KEY_LENGTH = 1024
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
MAX_COUNT = 2**31 - 1  # counts and limits (max_messages, prefetch, max_attempts, ...): what every storage stores


def queue_name(name: object, what: str = "queue name") -> str:
    """Return ``name`` if it is a valid queue name, else raise naming the problem.

    Names become file and table names in persistent storages, so they are strict: 1 to 200
    characters, no path separators, no ``..``, no NUL or other control characters, no
    whitespace, and not starting with a dot.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    for bad, why in (("/", "a path separator '/'"), ("\\", "a path separator '\\'"), ("..", "'..'")):
        if bad in name:
            raise ValueError(f"{what} {name!r} must not contain {why}")
    if name.startswith("."):
        raise ValueError(f"{what} {name!r} must not start with '.'")
    for char in name:
        if not char.isprintable() or char.isspace():
            raise ValueError(f"{what} {name!r} must not contain whitespace or control characters ({char!r})")
    return name


def seconds(what: str, value: object, *, positive: bool = False) -> float:
    """A finite, non-negative (or positive) number of seconds, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    result = float(value)
    if math.isnan(result) or math.isinf(result):
        raise ValueError(f"{what} must be a finite number of seconds, got {result!r}")
    if result < 0.0 or (positive and result == 0.0):
        raise ValueError(f"{what} must be {'positive' if positive else '>= 0'}, got {result!r}")
    return result


def flag(what: str, value: object) -> bool:
    """A bool (``block``): a str or None is more likely a mistake than a choice."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {type(value).__name__}")
    return value


def timeout(value: object) -> float | None:
    """None (wait forever) or a finite number of seconds >= 0."""
    return None if value is None else seconds("timeout", value)


def count(what: str, value: object, *, minimum: int = 1) -> int:
    """An int from ``minimum`` to :data:`MAX_COUNT` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not minimum <= value <= MAX_COUNT:
        raise ValueError(f"{what} must be between {minimum} and {MAX_COUNT}, got {value}")
    return value


def priority(value: object) -> int:
    """An int within the 32-bit signed range that every storage can index."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"priority must be an int, not {type(value).__name__}")
    low, high = PRIORITY_RANGE
    if not low <= value <= high:
        raise ValueError(f"priority must be between {low} and {high}, got {value}")
    return value


def key(what: str, value: object) -> str | None:
    """None or a non-empty str of at most 1024 characters (groups and dedup keys)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str or None, not {type(value).__name__}")
    if not value or len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} must be 1 to {MAX_KEY_LENGTH} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL")
    if not value.isascii():
        _utf8(what, value)
    return value


def _utf8(what: str, value: str) -> None:
    """Refuse text that has no UTF-8 form (a lone surrogate, as ``os.fsdecode`` makes of bad
    bytes): every persistent storage writes text as UTF-8, and would fail at the write."""
    try:
        value.encode()
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{what} {value!r} cannot be written as UTF-8: {error.reason} at index {error.start}"
        ) from None


def headers(value: object) -> Mapping[str, str] | None:
    """None or a mapping of str to str, copied, without the reserved ``x-death-*`` names."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, not {type(value).__name__}")
    copied: dict[str, str] = {}
    items: Any = value.items()
    for name, text in items:
        if not isinstance(name, str):
            raise TypeError(f"headers must map str to str; got a {type(name).__name__} name {name!r}")
        if not isinstance(text, str):
            raise TypeError(f"headers must map str to str; got {name!r}: {type(text).__name__}")
        if name in DEATH_HEADERS:
            raise ValueError(f"header {name!r} is reserved for dead letters")
        if not (name.isascii() and text.isascii()):
            _utf8("header name", name)
            _utf8(f"header {name!r} value", text)
        copied[name] = text
    return copied or None
