"""The conformance kit: how any storage, ours or yours, proves it keeps the delivery rules (``docs/semantics.md``).

* :class:`FakeClock` - a manual, monotone clock for tests (``clock=`` of a ``Queue``).
* :class:`ReferenceModel` - an obviously correct (slow) storage: the oracle.
* :class:`StorageConformance` / :func:`make_conformance_test` - a hypothesis state machine that
  runs a storage and the model side by side and compares every answer.

Usage in a test module::

    from mqlite.testing import make_conformance_test

    TestMyStorage = make_conformance_test(MyStorage)                       # in-memory kind
    TestMyDiskStorage = make_conformance_test(
        lambda: MyDiskStorage(tempfile.mkdtemp()), persistent=True,
        reopen=lambda old: MyDiskStorage(old.path),
    )

The state machine needs ``hypothesis`` (``pip install mqlite[test]``); it is imported on first
use, so ``FakeClock`` and ``ReferenceModel`` work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import FakeClock as FakeClock
from ._model import ReferenceModel as ReferenceModel

if TYPE_CHECKING:
    from ._machine import StorageConformance as StorageConformance, make_conformance_test as make_conformance_test

__all__ = ["FakeClock", "ReferenceModel", "StorageConformance", "make_conformance_test"]


def __getattr__(name: str) -> Any:
    """Import the hypothesis-based names on first use, so the rest works without hypothesis."""
    if name in ("StorageConformance", "make_conformance_test"):
        from . import _machine

        return getattr(_machine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
