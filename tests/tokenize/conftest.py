"""Fixtures of the tokenize tests (data builders live in tokenize_helpers.py)."""

from __future__ import annotations

import pytest

from .tokenize_helpers import Planted, planted


@pytest.fixture
def planted_data() -> Planted:
    return planted()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """See ``tests/conftest.py::one_thread``."""
