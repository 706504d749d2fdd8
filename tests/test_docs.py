"""Every ``>>>`` example in docs/*.md runs, so the documentation cannot rot."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def test_the_documented_pages_exist() -> None:
    names = {page.name for page in PAGES}
    assert {"api.md", "semantics.md", "concurrency.md", "storages.md", "file-format.md", "performance.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_examples_in_docs_run(page: Path) -> None:
    failures, tried = doctest.testfile(
        str(page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
        verbose=False,
        encoding="utf-8",
    )
    assert failures == 0, f"{failures} of {tried} examples failed in {page.name} (see the output above)"
