"""How fast can *any* pure-Python queue with leases and acks be? The floor behind W1's target.

    python benchmarks/leased_floor.py [--n 200000] [--repeat 5]

Issue 2 asks W1 (one thread: put N, then get + ack N) to reach 1.0x ``queue.Queue``'s
put / get + task_done while every message is leased and acked. This script measures, in one
process and interleaved, ``queue.Queue`` against ``BareLeasedQueue``: the least a leased queue
can do in pure Python and still be one - an id per message, a lock and a condition like
``queue.Queue``'s, a lease deadline read from the clock, an in-flight table keyed by id, a
message object handed to the caller, an ack that checks the delivery is still the current one.
No priorities, groups, delays, dedup, attempts, dead letters, serializers, validation,
storage interface or waking across threads and event loops: every feature mqlite has beyond
this only adds time. If the bare design is already slower than ``queue.Queue``, the 1.0x target
cannot be met by a pure-Python leased queue, and the gap to mqlite is the price of its features.
"""

from __future__ import annotations

import argparse
import itertools
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable


class BareMessage:
    """A delivery: the body and what its ack needs."""

    __slots__ = ("_queue", "body", "id", "token")

    def __init__(self, owner: BareLeasedQueue, mid: int, token: int, body: bytes) -> None:
        self._queue = owner
        self.id = mid
        self.token = token
        self.body = body

    def ack(self) -> bool:
        return self._queue.ack(self.id, self.token)


class BareLeasedQueue:
    """FIFO with leases and acks and nothing else."""

    def __init__(self, lease: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._ready: deque[int] = deque()
        self._bodies: dict[int, bytes] = {}
        self._in_flight: dict[int, tuple[int, float]] = {}
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._lease = lease

    def put(self, body: bytes) -> int:
        with self._lock:
            mid = next(self._ids)
            self._bodies[mid] = body
            self._ready.append(mid)
            self._not_empty.notify()
            return mid

    def get(self) -> BareMessage:
        with self._not_empty:
            while not self._ready:
                self._not_empty.wait()
            mid = self._ready.popleft()
            token = next(self._tokens)
            self._in_flight[mid] = (token, time.monotonic() + self._lease)
            return BareMessage(self, mid, token, self._bodies[mid])

    def ack(self, mid: int, token: int) -> bool:
        with self._lock:
            held = self._in_flight.get(mid)
            if held is None or held[0] != token:
                return False
            del self._in_flight[mid]
            del self._bodies[mid]
            return True


def run_stdlib(bodies: list[bytes]) -> float:
    q: queue.Queue[bytes] = queue.Queue()
    started = time.perf_counter()
    for body in bodies:
        q.put(body)
    for _ in bodies:
        q.get()
        q.task_done()
    return len(bodies) / (time.perf_counter() - started)


def run_bare(bodies: list[bytes]) -> float:
    q = BareLeasedQueue()
    started = time.perf_counter()
    for body in bodies:
        q.put(body)
    for _ in bodies:
        q.get().ack()
    return len(bodies) / (time.perf_counter() - started)


def run_mqlite(bodies: list[bytes]) -> float:
    import mqlite
    from mqlite.serializers import RAW

    q: mqlite.Queue[bytes] = mqlite.Queue("floor", serializer=RAW)
    started = time.perf_counter()
    for body in bodies:
        q.put(body)
    for _ in bodies:
        q.get().ack()
    rate = len(bodies) / (time.perf_counter() - started)
    q.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bodies = [i.to_bytes(8, "big") * 8 for i in range(args.n)]
    runners: dict[str, Callable[[list[bytes]], float]] = {
        "queue.Queue put / get + task_done": run_stdlib,
        "BareLeasedQueue put / get + ack": run_bare,
        "mqlite.Queue put / get + ack": run_mqlite,
    }
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeat):
        for name, runner in runners.items():
            rates[name].append(runner(bodies))
    baseline = statistics.median(rates["queue.Queue put / get + task_done"])
    print(f"W1 shape, N = {args.n:,}, median of {args.repeat} interleaved runs")
    print(f"{'implementation':36} {'msg/s':>10} {'us/msg':>7} {'vs queue.Queue':>15}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:36} {median:>10,.0f} {1e6 / median:>7.2f} {median / baseline:>14.2f}x")


if __name__ == "__main__":
    main()
