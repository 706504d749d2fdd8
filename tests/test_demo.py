"""``python -m mqlite demo``: the README's first command must keep working."""

from __future__ import annotations

import subprocess
import sys

from mqlite._demo import run


def test_demo_settles_every_message_and_dead_letters_the_poison_one() -> None:
    acked = run(messages_per_producer=5)
    # 2 thread producers x 5 + 2 async producers x 5 + a batch of 3, one of them poison
    assert sum(acked.values()) == 2 * 5 + 2 * 5 + 3 - 1


def test_demo_runs_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mqlite", "demo", "--messages", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "dead letter" in done.stdout
    assert "acked per consumer" in done.stdout
