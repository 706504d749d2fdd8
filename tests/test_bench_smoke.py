"""Smoke test of ``python -m mqlite bench``: it completes and accounts for every message.

Never asserts speed: only that each workload ran and lost, duplicated or reordered nothing.
"""

from __future__ import annotations

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
