"""Counts: GP regression with a Poisson likelihood on generated data with a known rate.

Inputs ``x ~ U(0, 10)``, counts ``y ~ Poisson(λ(x))`` with the rate function
``λ(x) = exp(f(x))``, ``f(x) = 1 + sin(x) + 0.5 cos(2.3 x)`` (:func:`true_log_rate`). The true
rate at the test inputs is returned in ``problem.truth["rate_test"]``.

Example:
    >>> from models import poisson_counts
    >>> problem = poisson_counts.build(num_data=300)
"""

from __future__ import annotations

import numpy as np
import torch

from models._problem import SVGP_DEFAULTS, Problem, assemble, check_overrides

__all__ = ["build", "make_data", "true_log_rate"]

DEFAULTS = {**SVGP_DEFAULTS, "num_data": 500, "num_inducing": 30, "num_test": 500}


def true_log_rate(x: np.ndarray) -> np.ndarray:
    """``f(x) = 1 + sin(x) + 0.5 cos(2.3 x)``, the log of the generating rate."""
    return 1.0 + np.sin(x) + 0.5 * np.cos(2.3 * x)


def make_data(
    num_data: int, num_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X [N, 1], y [N] counts, X_test [N*, 1], y_test [N*])``."""
    if num_data < 2 or num_test < 1:
        raise ValueError(f"need num_data >= 2 and num_test >= 1, got {num_data}, {num_test}.")
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 10.0, size=(num_data, 1))
    X_test = np.linspace(0.0, 10.0, num_test)[:, None]
    y = rng.poisson(np.exp(true_log_rate(X[:, 0]))).astype(float)
    y_test = rng.poisson(np.exp(true_log_rate(X_test[:, 0]))).astype(float)
    return X, y, X_test, y_test


def build(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Problem:
    """The Poisson-count SVGP; settings: see ``DEFAULTS``."""
    from natvi.likelihoods import Poisson

    s = check_overrides("poisson_counts", overrides, DEFAULTS) | {"seed": seed, "dtype": dtype}
    data = make_data(s["num_data"], s["num_test"], seed)
    rate = torch.as_tensor(np.exp(true_log_rate(data[2][:, 0])), dtype=dtype)
    return assemble("poisson_counts", data, Poisson(), s, truth={"rate_test": rate})
