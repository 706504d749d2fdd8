"""FileStorage under SIGKILL: a child process puts and acks in a loop and is killed at random
moments; after each kill every put that returned and was not acked is there, with its body, no
ack that returned is undone, and every lease that returned still counts as an attempt."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mqlite.storage import QueueSpec
from mqlite.storage.file import FileStorage

CHILD = textwrap.dedent(
    """
    import os, random, sys, threading, time
    from mqlite.storage import Envelope, QueueSpec
    from mqlite.storage.file import FileStorage

    directory, durability, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    storage = FileStorage(directory, durability=durability, segment_size=int(sys.argv[4]))
    storage.open_queue(QueueSpec("q", None))
    out = sys.stdout.fileno()

    def note(line):
        os.write(out, (line + "\\n").encode())  # one write: lines of threads never mix

    def work(thread):
        rng = random.Random(seed * 100 + thread)
        n = 0
        while True:
            n += 1
            body = b"body-%d-%d-%d" % (seed, thread, n)
            note("p %s" % body.decode())
            [mid] = storage.put("q", [Envelope(body)], time.time())
            note("P %d %s" % (mid, body.decode()))
            if rng.random() < 0.6:
                for message in storage.lease("q", rng.randint(1, 3), time.time(), 30.0):
                    note("L %d" % message.id)
                    if rng.random() < 0.8:
                        note("a %d" % message.id)
                        storage.ack("q", [(message.id, message.token)], time.time())
                        note("A %d" % message.id)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(int(sys.argv[5]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)


def _run_child(directory: str, durability: str, seed: int, lines_before_kill: int, threads: int = 1) -> list[str]:
    """Start the child (``threads`` threads putting, leasing and acking), read
    ``lines_before_kill`` lines of its log, SIGKILL it, return every line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, directory, durability, str(seed), "8192", str(threads)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < lines_before_kill:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.decode().rstrip("\n"))
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read().decode()  # what it wrote before dying is still in the pipe
    finally:
        child.wait()
        child.stdout.close()
    lines.extend(line for line in rest.split("\n") if line)
    assert child.returncode == -signal.SIGKILL, f"the child ended on its own: {child.returncode}"
    return lines


@pytest.mark.parametrize("threads", [1, 4])
def test_sigkill_at_random_moments_loses_no_returned_put_and_undoes_no_returned_ack(tmp_path, threads):
    """With four threads, records of calls that have not returned wait in memory for a sync
    (durability "full") while other threads' calls write: what a returned call wrote must be in
    the file all the same."""
    rng = random.Random(4)
    directory = str(tmp_path / "mq")
    returned: dict[int, bytes] = {}  # put returned: id -> body
    acked: set[int] = set()  # ack returned
    leased: dict[int, int] = {}  # id -> how many leases of it returned
    ack_started: set[int] = set()
    bodies_started: set[bytes] = set()
    kills = 24
    for round_number in range(kills):
        durability = "full" if round_number % 2 == 0 else "normal"
        lines = _run_child(directory, durability, round_number, rng.randint(1, 400), threads)
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "p":
                bodies_started.add(rest.encode())
            elif kind == "P":
                mid, body = rest.split(" ")
                returned[int(mid)] = body.encode()
            elif kind == "a":
                ack_started.add(int(rest))
            elif kind == "A":
                acked.add(int(rest))
            elif kind == "L":
                leased[int(rest)] = leased.get(int(rest), 0) + 1
        storage = FileStorage(directory)
        try:
            storage.open_queue(QueueSpec("q", None))
            present = {m.id: m for m in storage.peek("q", 10**9, time.time())}
            for mid in returned:
                if mid in acked:
                    assert mid not in present, f"round {round_number}: message {mid} was acked but came back"
                elif mid not in ack_started:  # an ack that started and never returned may or may not have happened
                    assert mid in present, f"round {round_number}: message {mid} was put (returned) and is lost"
            for mid, message in present.items():
                assert message.body in bodies_started, f"round {round_number}: {mid} has a body nobody put"
                if mid in returned:
                    assert message.body == returned[mid], f"round {round_number}: {mid} has the wrong body"
                assert message.lease_expires_at is None, "leases of the killed process must have ended"
                assert message.attempts >= leased.get(mid, 0), f"round {round_number}: {mid} lost a lease's attempt"
        finally:
            storage.close()
    assert len(returned) > kills, "the children made too little progress to test anything"
    assert acked, "no ack ever returned"
    assert any(mid not in acked for mid in leased), "no lease of a message left unacked returned"
    print(f"{kills} kills: {len(returned)} puts returned, {len(acked)} acks returned")


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_kill_right_after_open_leaves_a_usable_log(tmp_path, durability):
    directory = str(tmp_path / "mq")
    for seed in range(3):
        _run_child(directory, durability, seed, 1)
    storage = FileStorage(directory)
    try:
        storage.open_queue(QueueSpec("q", None))
        assert all(m.body.startswith(b"body-") for m in storage.peek("q", 1000, time.time()))
    finally:
        storage.close()
