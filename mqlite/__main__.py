"""Command line: ``python -m mqlite demo`` and ``python -m mqlite bench``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command named in ``argv`` and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mqlite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="producers and consumers in threads and coroutines")
    demo.add_argument("--messages", type=int, default=5, help="messages per producer (default 5)")
    bench = commands.add_parser("bench", help="throughput against the standard library and peers")
    bench.add_argument("--quick", action="store_true", help="small N and few repetitions (a smoke run)")
    bench.add_argument("--repeat", type=int, default=None, help="repetitions per workload (median reported)")
    bench.add_argument("--only", default=None, help="comma-separated workload names, e.g. W1,W4")
    bench.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        run(args.messages)
        return 0
    from ._bench import main as bench_main

    return bench_main(quick=args.quick, repeat=args.repeat, only=args.only, markdown=args.markdown)


if __name__ == "__main__":
    sys.exit(main())
