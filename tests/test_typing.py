"""Typing as users see it: ``mypy --strict`` on small programs that use the public API.

``Queue[T]`` carries the body type to producers, consumers, messages and their bodies; a
queue made without a type is a ``Queue[Any]`` (no annotation needed, as in DESIGN.md); a body of
the wrong type is an error. Needs mypy (the ``dev`` extra); skipped where it is not installed.
"""

from __future__ import annotations

import pathlib

import pytest

mypy_api = pytest.importorskip("mypy.api")

DATA = pathlib.Path(__file__).parent / "data"


def _mypy(path: pathlib.Path, cache: pathlib.Path) -> tuple[str, int]:
    out, err, status = mypy_api.run(["--strict", "--no-error-summary", f"--cache-dir={cache}", str(path)])
    return out + err, status


def test_a_typed_user_program_passes_mypy_strict(tmp_path: pathlib.Path) -> None:
    report, status = _mypy(DATA / "typed_user.py", tmp_path)
    assert status == 0, report


def test_a_body_of_the_wrong_type_is_a_mypy_error(tmp_path: pathlib.Path) -> None:
    report, status = _mypy(DATA / "typed_user_wrong.py", tmp_path)
    assert status == 1
    assert 'Argument 1 to "put" of "Queue" has incompatible type "str"; expected "int"' in report
