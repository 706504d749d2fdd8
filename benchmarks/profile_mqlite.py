"""Profile mqlite in the bench workloads W1, W2 (1x1) and W4 with cProfile.

    python benchmarks/profile_mqlite.py [W1|W2|W4 ...] [--n 50000] [--top 25]

Prints, per workload, the functions where the time goes as microseconds per message (own time
and cumulative time divided by N). cProfile inflates call-heavy code, so read the figures as a
ranking and compare them with the plain msg/s of ``python -m mqlite bench``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from collections.abc import Callable

from mqlite import _bench

_thread_profiles: list[cProfile.Profile] = []


def _w2(n: int) -> tuple[float, _bench.Check]:
    """W2 1x1 with every producer and consumer thread under its own profiler (cProfile only
    sees the thread that enabled it); their stats are merged afterwards."""
    original = _bench._threads

    def profiled(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            profiler = cProfile.Profile()
            _thread_profiles.append(profiler)
            profiler.runcall(work)

        return run

    def threads(
        producers: list[Callable[[], None]], consumers: list[Callable[[], None]], before_stop: Callable[[], object]
    ) -> tuple[float, str | None]:
        return original([profiled(w) for w in producers], [profiled(w) for w in consumers], before_stop)

    _bench._threads = threads  # type: ignore[assignment]
    try:
        return _bench._mqlite_handoff(1, 1)(n)
    finally:
        _bench._threads = original  # type: ignore[assignment]


WORKLOADS: dict[str, Callable[[int], tuple[float, _bench.Check]]] = {
    "W1": _bench.w1_mqlite,
    "W2": _w2,
    "W4": _bench.w4_mqlite,
}


def profile(name: str, n: int, top: int) -> None:
    run = WORKLOADS[name]
    run(min(n, 5_000))  # warm up imports and caches
    profiler = cProfile.Profile()
    profiler.enable()
    elapsed, check = run(n)
    profiler.disable()
    if not check.clean:
        raise SystemExit(f"{name}: messages went missing under the profiler: {check}")
    stats = pstats.Stats(profiler)
    for other in _thread_profiles[-2:] if name == "W2" else []:  # the measured run's two threads
        stats.add(other)
    rows = []
    for (path, line, function), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{path.rsplit('/', 1)[-1]}:{line}({function})"
        rows.append((own, cumulative, calls, where))
    rows.sort(reverse=True)
    print(f"\n== {name}: N={n:,}, {elapsed:.2f}s under cProfile ({n / elapsed:,.0f} msg/s profiled)")
    print(f"{'own us/msg':>10} {'cum us/msg':>10} {'calls/msg':>9}  function")
    for own, cumulative, calls, where in rows[:top]:
        print(f"{own / n * 1e6:10.2f} {cumulative / n * 1e6:10.2f} {calls / n:9.2f}  {where}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", default=["W1", "W2", "W4"])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for name in args.workloads:
        profile(name.upper(), args.n, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
