"""Smoke test of ``python -m mqlite bench``: it completes and accounts for every message.

Never asserts speed: only that each workload ran and lost, duplicated or reordered nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mqlite import _bench

TINY = _bench.Settings(n=400, n_threads=400, repeat=2, memory_n=2_000, batch=7)


@pytest.fixture(scope="module")
def report() -> _bench.Report:
    return _bench.run(TINY)


def test_every_workload_ran(report: _bench.Report) -> None:
    names = {row.workload.name for row in report.rows}
    assert names == {"W1", "W2-1x1", "W2-4x4", "W3", "W4"}
    for row in report.rows:
        if row.skipped is not None:  # a peer from the `bench` extra is not installed
            assert row.impl.needs is not None
            continue
        assert len(row.rates) == TINY.repeat, (row.impl.label, row.check.error)


def test_no_message_lost_duplicated_or_reordered(report: _bench.Report) -> None:
    for row in report.rows:
        if row.skipped is not None:
            continue
        check = row.check
        assert check.error is None, (row.workload.name, row.impl.label, check.error)
        assert check.lost == 0, (row.workload.name, row.impl.label)
        assert check.duplicated == 0, (row.workload.name, row.impl.label)
        assert check.out_of_order == 0, (row.workload.name, row.impl.label)
        # STOP sentinels are not counted: every run received exactly its N messages
        assert check.received == TINY.repeat * (row.n - row.n % 4), (row.workload.name, row.impl.label)
    assert report.clean


def test_memory_figure(report: _bench.Report) -> None:
    assert report.memory is not None
    assert set(report.memory.per_message) == {"mqlite.Queue (memory storage)", "queue.Queue", "collections.deque"}
    assert all(value > 0 for value in report.memory.per_message.values())


def test_text_and_markdown_render(report: _bench.Report) -> None:
    text = _bench.render_text(report)
    markdown = _bench.render_markdown(report)
    for name in ("W1", "W2-1x1", "W2-4x4", "W3", "W4"):
        assert name in text
        assert f"| {name} |" in markdown


FILE = dataclasses.replace(TINY, file=True, reopen_n=3_000)
FILE_WORKLOADS = {"W5f", "W6f", "W7f", "W8f"}


@pytest.fixture(scope="module")
def file_report(tmp_path_factory: pytest.TempPathFactory) -> _bench.Report:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MQLITE_BENCH_DIR", str(tmp_path_factory.mktemp("bench")))
        return _bench.run(FILE, only=sorted(FILE_WORKLOADS), memory=False)


def test_file_workloads_account_for_every_message(file_report: _bench.Report) -> None:
    """W5f-W8f (FileStorage and its peers) ran every repetition and each run received exactly
    the messages it stored; the raw rows (machine limits) receive nothing."""
    assert {row.workload.name for row in file_report.rows} == FILE_WORKLOADS
    for row in file_report.rows:
        label = (row.workload.name, row.impl.label)
        if row.skipped is not None:
            assert row.impl.needs is not None
            continue
        assert row.check.clean, (label, row.check)
        runs = min(FILE.repeat, row.workload.repeat or FILE.repeat)
        assert len(row.rates) == runs, label
        if row.impl.label.startswith(("machine limit", "raw read")):
            assert row.check.received == 0, label
            continue
        per_run = row.n - row.n % 8 if row.workload.name == "W7f" else row.n
        assert row.check.received == runs * per_run, label


def test_file_targets_are_judged(file_report: _bench.Report) -> None:
    """Every W5f-W8f target whose rows ran gets a verdict; W8f's is in seconds per 1M."""
    judged = {(t.workload, t.impl): verdict for t, _, verdict in _bench.target_results(file_report)}
    assert {workload for workload, _ in judged} >= {"W6f", "W7f", "W8f"}
    assert all(verdict in ("PASS", "MISS", "n/a") for verdict in judged.values())
    text = _bench.render_text(file_report)
    assert "per 1,000,000 <= 2 s; scaled from N = 3,000" in text
    for name in FILE_WORKLOADS:
        assert f"| {name} |" in _bench.render_markdown(file_report)


def test_verify_counts_what_went_wrong() -> None:
    sent = [_bench.make_bodies(0, 5), _bench.make_bodies(1, 3)]
    a, b = sent
    check = _bench.verify(sent, [[a[0], a[2], a[1], a[1], b[0]], [b[1], a[3]]])
    assert (check.lost, check.duplicated, check.out_of_order) == (2, 1, 1)  # a[4], b[2] lost; a[1] twice, late
    assert not check.clean


def test_cli_quick_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bench.Settings, "quick", classmethod(lambda cls: TINY))
    out = tmp_path / "bench.md"
    assert _bench.main(quick=True, repeat=1, only="W1,W4", markdown=str(out)) == 0
    text = out.read_text()
    assert "| W1 |" in text
    assert "| W4 |" in text
    assert "| W2" not in text
