"""The thread policy: fit trains with the requested torch threads and restores the caller's."""

from __future__ import annotations

import pytest
import torch

import natvi
from natvi._threads import limit_threads
from natvi.parameterizations import Natural
from tests.optim.toy_models import LogisticReg, classification_data


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads, inside", [(1, 1), (None, 2), (3, 3)])
def test_fit_trains_with_the_requested_threads_and_restores_the_callers(
    two_threads, threads, inside
):
    X, y = classification_data(N=40)
    seen = []
    natvi.fit(LogisticReg(3, Natural()), X, y, iterations=2, progress=False, threads=threads,
              callback=lambda model, history: seen.append(torch.get_num_threads()))
    assert seen == [inside, inside]
    assert torch.get_num_threads() == 2


def test_fit_restores_threads_when_training_raises(two_threads):
    X, y = classification_data(N=40)

    def boom(model, history):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        natvi.fit(LogisticReg(3, Natural()), X, y, iterations=2, progress=False, callback=boom)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_threads_raise_value_error(threads):
    X, y = classification_data(N=40)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        natvi.fit(LogisticReg(3, Natural()), X, y, iterations=1, progress=False, threads=threads)


def test_limit_threads_returns_a_restorer(two_threads):
    restore = limit_threads(1)
    assert torch.get_num_threads() == 1
    restore()
    assert torch.get_num_threads() == 2


def test_retain_freed_memory_sets_glibcs_thresholds_and_refuses_bad_sizes():
    import platform
    import sys

    with pytest.raises(ValueError, match="max_block_bytes"):
        natvi.retain_freed_memory(0)
    with pytest.raises(ValueError, match="max_block_bytes"):
        natvi.retain_freed_memory(True)
    took = natvi.retain_freed_memory()
    if sys.platform.startswith("linux"):
        assert took == (platform.libc_ver()[0] == "glibc")
    else:
        assert took is False
