"""Solver tests run on one intra-op thread: their matrices are tiny, and on a loaded 2-core
machine two MKL/OpenMP threads made single tests 40× slower (spin-waiting), not faster."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
