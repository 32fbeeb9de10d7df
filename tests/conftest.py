"""Fixtures shared by the tests of the generated CPU kernels."""

from __future__ import annotations

import pytest


@pytest.fixture
def generated_for_small_calls(monkeypatch):
    """The public ops take the generated kernels from a size on (``MIN_GENERATED_MACS``); the
    small cases of a test module marked with this fixture must reach them too."""
    import nbconv.cpu._launch as launch  # after the root conftest has set up Numba

    monkeypatch.setattr(launch, "MIN_GENERATED_MACS", 0)
