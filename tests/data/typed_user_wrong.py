"""A user's mistake ``mypy --strict`` must catch (tests/test_typing.py): a body of the wrong type."""

from __future__ import annotations

import mqlite

counts: mqlite.Queue[int] = mqlite.Queue("counts")
counts.put("three")
