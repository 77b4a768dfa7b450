"""Fixtures of the serving tests."""

from __future__ import annotations

import pytest
from .serve_fixtures import make_run_dir

from semconv.artifacts import RunDir


@pytest.fixture()
def run_dir(tmp_path) -> RunDir:
    return make_run_dir(tmp_path / "run")
