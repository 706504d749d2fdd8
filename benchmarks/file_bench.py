"""FileStorage workloads W5f-W8f of issue 4: now part of ``python -m mqlite bench``.

    python benchmarks/file_bench.py [--quick] [--repeat N] [--markdown FILE]

is the same as ``python -m mqlite bench --only W5f,W6f,W7f,W8f [...]``: peers interleaved,
medians, every message checked. The runners and the peers' real durability are described in
:mod:`mqlite.storage._file_bench`.
"""

from __future__ import annotations

import sys

from mqlite.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "W5f,W6f,W7f,W8f", *sys.argv[1:]]))
