"""The churn step the file storage's space tests share."""

from __future__ import annotations

import random

from mqlite.storage import Envelope
from mqlite.storage.file import FileStorage


def churn_step(storage: FileStorage, rng: random.Random, now: float, live: int, stragglers: float = 0.0) -> None:
    """One call on queue "q": put 1-8 messages of 10-120 bytes while fewer than ``live`` are
    ready, else lease 1-8 (oldest first) and ack them, leaving a ``stragglers`` share of them in
    flight (their leases outlast the tests, so they pin the segments they were put in)."""
    if storage.counts("q", now)[0] < live:
        storage.put("q", [Envelope(b"p" * rng.randint(10, 120)) for _ in range(rng.randint(1, 8))], now)
    else:
        taken = storage.lease("q", rng.randint(1, 8), now, 30.0)
        storage.ack("q", [(m.id, m.token) for m in taken if rng.random() >= stragglers], now)
