"""The examples in the public docstrings and in README.md run and print what they say."""

from __future__ import annotations

import doctest
import pathlib

import nbconv
import nbconv._conv

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_docstring_examples():
    result = doctest.testmod(nbconv._conv, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_numpy_example():
    text = (ROOT / "README.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md", "exec"), {})
