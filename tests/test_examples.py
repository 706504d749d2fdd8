"""Every program in examples/ runs by itself, finishes, and prints its key lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

EXPECTED: dict[str, list[str]] = {
    "email_workers.py": [
        "queued 10 emails",
        "sent 'Welcome aboard' to ada@example.com (attempt 1)",
        "attempt 1 for flaky@example.com failed: SMTP server did not answer",
        "sent 'Welcome aboard' to flaky@example.com (attempt 2)",
        "dead letter: bounce@example.com after 3 attempts: ValueError: mailbox bounce@example.com does not exist",
        "done: 9 sent, 1 dead-lettered",
    ],
    "async_pipeline.py": [
        "pipeline started with 12 photos",
        "published https://example.com/photo-0.jpg",
        "stage 'downloads' done",
        "stage 'resizes' done",
        "stage 'publishes' done",
        "all 12 photos published: True",
    ],
    "orders_in_sequence.py": [
        "carol  pay failed (payment gateway timeout); will retry",
        "alice: create -> pay -> ship",
        "bob: create -> pay -> ship",
        "carol: create -> pay -> ship",
        "dave: create -> pay -> ship",
        "every customer in sequence: True; overlapping orders of one customer: 0",
    ],
    "retries_and_dead_letters.py": [
        "#1 https://shop.example/ok: delivered on attempt 1",
        "#2 https://shop.example/flaky: attempt 1 failed (503 Service Unavailable); retry in 0.05s",
        "#2 https://shop.example/flaky: delivered on attempt 3",
        "#3 https://shop.example/broken: attempt 3 failed (500 Internal Server Error); dead-lettered",
        "#4 https://shop.example/ok: rejected (poison)",
        "dead letter #3 https://shop.example/broken: {'x-death-reason': 'max_attempts', 'x-death-queue': 'webhooks',"
        " 'x-death-attempts': '3', 'x-death-detail': 'RuntimeError: 500 Internal Server Error'}",
        "dead letter #4 https://shop.example/ok: {'x-death-reason': 'rejected'",
        "dropped poison message #4",
        "redrive moved 1 message(s)",
        "#3 https://shop.example/broken: delivered on attempt 1",
        "after the redrive: QueueStats(ready=0, delayed=0, in_flight=0, dead=0, oldest_ready_age=None)",
    ],
    "jobs_across_processes.py": [
        "queued 12 report jobs in jobs.db",
        "Mar failed on attempt 1 (the warehouse did not answer); back in the queue",
        "Mar: report-Mar.pdf (built by worker-",
        "workers exited cleanly: True",
        "12 reports, each month exactly once: True",
    ],
    "survive_a_crash.py": [
        "child: paid invoice 1",
        "child exit code: -9 (killed by signal 9)",
        "after the restart: 4 invoices waiting",
        "parent: charged invoice 2 (attempt 2)",
        "parent: charged invoice 3 (attempt 1)",
        "every unpaid invoice charged, the paid one not again: True",
    ],
}


def test_every_example_is_checked() -> None:
    assert {path.name for path in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_prints_its_key_lines(name: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for line in EXPECTED[name]:
        assert line in result.stdout, f"{line!r} missing from the output of {name}:\n{result.stdout}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_has_a_docstring_saying_how_to_run_it(name: str) -> None:
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    assert text.startswith('"""')
    assert f"python examples/{name}" in text
