"""Shared test fixtures: float64 by default where exactness is asserted, seeded generators."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from natvi._threads import limit_threads

settings.register_profile("natvi", max_examples=40, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "natvi"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test, the caller's setting restored afterwards (small
    per-step ops: a second thread only spins on a loaded machine)."""
    restore = limit_threads(1)
    yield
    restore()


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
