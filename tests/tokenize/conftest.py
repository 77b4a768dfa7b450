"""Fixtures of the tokenize tests (data builders live in tokenize_helpers.py)."""

from __future__ import annotations

import pytest

from tokenize_helpers import Planted, planted


@pytest.fixture
def planted_data() -> Planted:
    return planted()


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The machine's 2 cores are shared by many processes: with 2 threads torch and faiss
    (OpenMP) run up to 100x slower here, so the unit tests use one of each."""
    import faiss
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
