"""How far can *any* pure-Python group commit scale? The floor behind W7f's 4x target.

    python benchmarks/group_commit_floor.py [--n 5000] [--repeat 5] [--threads 8]

Issue 4 asks 8 producer threads putting with ``durability="full"`` (each put on disk before it
returns) to reach 4x the rate of one producer. This script measures, in one process and
interleaved repetition by repetition, one thread against ``--threads`` threads for:

- ``bare leader``: the least a group commit can be in Python. A put appends its 100-byte
  record to a list under a lock; the first caller to find no sync running writes every waiting
  record in one ``os.pwrite`` and ``os.fdatasync``s them, then wakes the callers it covered
  (each blocked on a lock of its own) and hands the next sync to one of those it did not; no
  index, no encoding, no checksum, no work between puts.
- ``bare syncer``: the same, but a dedicated thread runs the syncs back to back and every
  caller just waits (one more thread hop per put, no leader hand-off).
- ``mqlite``: ``FileStorage(durability="full")`` through ``Queue.put`` (RAW bodies of 64 bytes),
  what ``python -m mqlite bench`` times as W7f.

Every variant writes over a pre-zeroed file (as FileStorage's preallocation does), so the syncs
cost what they cost mqlite. If the bare variants, which do nothing but the commit, stay below 4x,
the target is out of reach of any pure-Python group commit on this machine: the wait to wake a
thread and hand it the GIL, not the disk, sets the pace. Directory: ``$MQLITE_BENCH_DIR`` or the
system's temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import mqlite
from mqlite.serializers import RAW

RECORD = b"r" * 100
PREZEROED = 4 << 20


class Waiter:
    """A caller blocked on its own ``gate`` until a sync covers ``end`` (``covered``) or it is
    handed the next sync."""

    __slots__ = ("covered", "end", "gate")

    def __init__(self, end: int) -> None:
        self.end = end
        self.gate = threading.Lock()
        self.gate.acquire()
        self.covered = False


class BareLeaderLog:
    """Group commit led by the first caller that finds no sync running."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.write(self.fd, b"\0" * PREZEROED)
        os.fsync(self.fd)
        self.lock = threading.Lock()  # guards the records waiting to be written
        self.waiting: list[bytes] = []
        self.appended = 0  # bytes appended so far (written or waiting)
        self.written = 0
        self.mutex = threading.Lock()  # guards the sync state below
        self.syncing = False
        self.synced = 0
        self.waiters: list[Waiter] = []

    def put(self, record: bytes) -> None:
        with self.lock:
            self.waiting.append(record)
            self.appended += len(record)
            end = self.appended
        while True:
            with self.mutex:
                if self.synced >= end:
                    return
                if not self.syncing:
                    self.syncing = True
                    break
                waiter = Waiter(end)
                self.waiters.append(waiter)
            waiter.gate.acquire()
            if waiter.covered:
                return
        with self.lock:
            data = b"".join(self.waiting)
            self.waiting = []
            upto = self.appended
        os.pwrite(self.fd, data, self.written)
        self.written += len(data)
        os.fdatasync(self.fd)
        with self.mutex:
            self.synced = upto
            self.syncing = False
            rest = []
            for waiter in self.waiters:
                if waiter.end <= upto:
                    waiter.covered = True
                    waiter.gate.release()
                else:
                    rest.append(waiter)
            if rest:
                rest.pop(0).gate.release()  # not covered: leads the next sync
            self.waiters = rest

    def close(self) -> None:
        os.close(self.fd)


class BareSyncerLog:
    """Group commit run by a dedicated thread that syncs back to back while records wait."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.write(self.fd, b"\0" * PREZEROED)
        os.fsync(self.fd)
        self.lock = threading.Lock()
        self.have = threading.Condition(self.lock)
        self.waiting: list[bytes] = []
        self.gates: list[threading.Lock] = []
        self.written = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, record: bytes) -> None:
        gate = threading.Lock()
        gate.acquire()
        with self.lock:
            self.waiting.append(record)
            self.gates.append(gate)
            self.have.notify()
        gate.acquire()

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.waiting and not self.stopping:
                    self.have.wait()
                if not self.waiting:
                    return
                data = b"".join(self.waiting)
                gates = self.gates
                self.waiting, self.gates = [], []
            os.pwrite(self.fd, data, self.written)
            self.written += len(data)
            os.fdatasync(self.fd)
            for gate in gates:
                gate.release()

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.have.notify()
        self.thread.join()
        os.close(self.fd)


class MqliteLog:
    """``Queue.put`` on ``FileStorage(durability="full")``."""

    def __init__(self, path: str) -> None:
        self.storage = mqlite.FileStorage(path, durability="full")
        self.queue: mqlite.Queue[bytes] = mqlite.Queue("bench", self.storage, serializer=RAW)
        self.body = RECORD[:64]

    def put(self, record: bytes) -> None:
        self.queue.put(self.body)

    def close(self) -> None:
        self.queue.close()
        self.storage.close()


Log = BareLeaderLog | BareSyncerLog | MqliteLog


def rate(make: Callable[[str], Log], threads: int, n: int, directory: str) -> float:
    """Puts per second of ``threads`` threads putting ``n`` records in all, from a common start."""
    path = tempfile.mkdtemp(dir=directory)
    log = make(os.path.join(path, "log"))
    per = n // threads
    start = threading.Barrier(threads + 1)

    def produce() -> None:
        put = log.put
        start.wait()
        for _ in range(per):
            put(RECORD)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    log.close()
    shutil.rmtree(path)
    return per * threads / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="puts per run (default 5000)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--threads", type=int, default=8, help="producer threads (default 8)")
    args = parser.parse_args()
    variants: dict[str, Callable[[str], Log]] = {
        "bare leader": BareLeaderLog,
        "bare syncer": BareSyncerLog,
        "mqlite FileStorage full": MqliteLog,
    }
    one: dict[str, list[float]] = {name: [] for name in variants}
    many: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(dir=os.environ.get("MQLITE_BENCH_DIR")) as directory:
        for _ in range(args.repeat):
            for name, make in variants.items():
                one[name].append(rate(make, 1, args.n, directory))
                many[name].append(rate(make, args.threads, args.n, directory))
    print(f"{args.n} puts per run, median of {args.repeat} interleaved repetitions")
    print(f"| group commit | 1 thread puts/s | {args.threads} threads puts/s | ratio |")
    print("| --- | --- | --- | --- |")
    for name in variants:
        single, multi = statistics.median(one[name]), statistics.median(many[name])
        print(f"| {name} | {single:,.0f} | {multi:,.0f} | {multi / single:.2f}x |")


if __name__ == "__main__":
    main()
