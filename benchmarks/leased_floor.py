"""How fast can *any* pure-Python queue with leases and acks be? The floor behind W1's and W4's targets.

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

The same for W4 (one producer coroutine, one consumer coroutine: ``await put``, then
``await get`` + ``await ack``), whose targets are 0.5x ``asyncio.Queue`` and 2x culsans:
``BareAsyncLeasedQueue`` is the same bare design for coroutines of *one* event loop (futures
for waiting getters, no lock), more favourable than anything that also serves threads and
other loops as mqlite must. culsans runs too when it is installed (``pip install 'mqlite[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import itertools
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from mqlite import _bench


class _Acking(Protocol):
    def ack(self, mid: int, token: int) -> bool: ...


class BareMessage:
    """A delivery: the body and what its ack needs."""

    __slots__ = ("_queue", "body", "id", "token")

    def __init__(self, owner: _Acking, mid: int, token: int, body: bytes) -> None:
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


class BareAsyncMessage(BareMessage):
    """A delivery of :class:`BareAsyncLeasedQueue`, acked by a coroutine."""

    __slots__ = ()

    async def aack(self) -> bool:
        return self._queue.ack(self.id, self.token)


class BareAsyncLeasedQueue:
    """FIFO with leases and acks for the coroutines of one event loop, and nothing else."""

    def __init__(self, lease: float = 30.0) -> None:
        self._ready: deque[int] = deque()
        self._bodies: dict[int, bytes] = {}
        self._in_flight: dict[int, tuple[int, float]] = {}
        self._getters: deque[asyncio.Future[None]] = deque()
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._lease = lease

    async def put(self, body: bytes) -> int:
        mid = next(self._ids)
        self._bodies[mid] = body
        self._ready.append(mid)
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break
        return mid

    async def get(self) -> BareAsyncMessage:
        while not self._ready:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            await getter
        mid = self._ready.popleft()
        token = next(self._tokens)
        self._in_flight[mid] = (token, time.monotonic() + self._lease)
        return BareAsyncMessage(self, mid, token, self._bodies[mid])

    def ack(self, mid: int, token: int) -> bool:
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


def _w4(runner: Callable[[int], tuple[float, _bench.Check]]) -> Callable[[list[bytes]], float]:
    """A W4 runner of ``python -m mqlite bench`` (one producer and one consumer coroutine, the
    bench's own bodies), as messages per second; a run that lost, duplicated or reordered a
    message fails."""

    def rate(bodies: list[bytes]) -> float:
        elapsed, check = runner(len(bodies))
        if check.lost or check.duplicated or check.out_of_order or check.error:
            raise SystemExit(f"a W4 run did not deliver every message once, in order: {check}")
        return len(bodies) / elapsed

    return rate


def run_bare_async(n: int) -> tuple[float, _bench.Check]:
    """The bench's W4 skeleton around :class:`BareAsyncLeasedQueue`."""

    def setup() -> _bench.AsyncSide:
        q = BareAsyncLeasedQueue()

        async def receive() -> bytes:
            message = await q.get()
            await message.aack()
            return message.body

        return q.put, receive, lambda: None

    return _bench._async_to_async(n, setup)


def _table(title: str, runners: dict[str, Callable[[list[bytes]], float]], bodies: list[bytes], repeat: int) -> None:
    """Run ``runners`` interleaved ``repeat`` times and print medians against the first."""
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, runner in runners.items():
            rates[name].append(runner(bodies))
    baseline_name = next(iter(runners))
    baseline = statistics.median(rates[baseline_name])
    print(f"{title}, N = {len(bodies):,}, median of {repeat} interleaved runs")
    print(f"{'implementation':40} {'msg/s':>10} {'us/msg':>7} {'vs ' + baseline_name.split()[0]:>18}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:40} {median:>10,.0f} {1e6 / median:>7.2f} {median / baseline:>17.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bodies = [i.to_bytes(8, "big") * 8 for i in range(args.n)]
    _table(
        "W1 shape",
        {
            "queue.Queue put / get + task_done": run_stdlib,
            "BareLeasedQueue put / get + ack": run_bare,
            "mqlite.Queue put / get + ack": run_mqlite,
        },
        bodies,
        args.repeat,
    )
    print()
    async_runners: dict[str, Callable[[list[bytes]], float]] = {
        "asyncio.Queue await put / get + task_done": _w4(_bench.w4_asyncio),
        "BareAsyncLeasedQueue put / get + ack": _w4(run_bare_async),
        "mqlite.Queue aput / aget + aack": _w4(_bench.w4_mqlite),
    }
    if importlib.util.find_spec("culsans") is not None:
        async_runners["culsans async_q put / get + task_done"] = _w4(_bench._w4_mixed("culsans"))
    _table("W4 shape", async_runners, bodies, args.repeat)


if __name__ == "__main__":
    main()
