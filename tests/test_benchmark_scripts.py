"""Every script in benchmarks/ still runs: with tiny sizes, each finishes and prints its table.

The figures in docs/performance.md come from these scripts; a script that no longer runs would
leave figures nobody can reproduce. Speed is not checked here, only that each run completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

# script -> (tiny arguments, a line its output must contain)
RUNS: dict[str, tuple[list[str], str]] = {
    "cpu_per_message.py": (["W1", "--n", "500", "--repeat", "1"], "W1"),
    "file_bench.py": (["--quick", "--repeat", "1"], "W7f"),
    "file_churn.py": (["3000", "300", "1", "100"], "bound held between calls: yes; including those moments: yes"),
    "idle_waiters.py": (["--waiters", "2", "--seconds", "0.05", "--repeat", "1"], "| SQLite | 2 |"),
    "group_commit_floor.py": (["--n", "64", "--repeat", "1", "--threads", "4"], "| mqlite FileStorage full |"),
    "leased_floor.py": (["--n", "2000", "--repeat", "1"], "BareLeasedQueue put / get + ack"),
    "profile_mqlite.py": (["W1", "--n", "500", "--top", "3"], "W1"),
    "sqlite_churn.py": (["3000", "300"], "MiB"),
    "sqlite_page_size.py": (["--n", "20", "--batch", "100", "--repeat", "1"], "| W6 full put_many | 1024 |"),
}


def test_every_benchmark_script_is_run() -> None:
    assert {path.name for path in BENCHMARKS.glob("*.py")} == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_benchmark_script_runs(name: str, tmp_path: Path) -> None:
    arguments, expected = RUNS[name]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "MQLITE_BENCH_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert expected in result.stdout, result.stdout[-2000:]
