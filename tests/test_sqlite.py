"""SQLiteStorage: the conformance state machine (with reopen), schema and file safety, the front."""

from __future__ import annotations

import itertools
import os
import tempfile

from hypothesis import settings

from mqlite.storage.sqlite import SQLiteStorage
from mqlite.testing import make_conformance_test

_dirs = tempfile.TemporaryDirectory(prefix="mqlite-sqlite-conformance-")
_numbers = itertools.count()


def _fresh() -> SQLiteStorage:
    path = os.path.join(_dirs.name, f"c{next(_numbers)}.db")
    return SQLiteStorage(path, durability="normal", poll_interval=None)


def _reopen(old: object) -> SQLiteStorage:
    assert isinstance(old, SQLiteStorage)
    return SQLiteStorage(old.path, durability="normal", poll_interval=None)


TestSQLiteConformance = make_conformance_test(
    _fresh,
    persistent=True,
    reopen=_reopen,
    settings=settings(stateful_step_count=40, deadline=None),
)
